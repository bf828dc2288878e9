//! The test network's DNS server: answers AAAA for every name the booted
//! overlays serve (and the test network's own services), over UDP and
//! TCP, authoritatively; A and other types of those names get an empty
//! answer (the network is IPv6-only), any other name NXDOMAIN.
//!
//! [`answer`] is pure (a query's bytes in, the reply's bytes out); [`serve`]
//! runs inside the test network's namespace as `mimg __dns` (spawned by
//! `src/tools/netns.rs`), until it is killed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const TTL: u32 = 5;

/// Names (lowercase, no trailing dot) and their addresses.
pub type Zone = BTreeMap<String, Vec<Ipv6Addr>>;

/// The reply to one query, or `None` for what is not a query at all.
pub fn answer(zone: &Zone, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let id = &q[0..2];
    let flags = u16::from_be_bytes([q[2], q[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    let rd = flags & 0x0100;
    let reply = |rcode: u16, question: &[u8], answers: &[Vec<u8>]| {
        let mut r = Vec::with_capacity(512);
        r.extend_from_slice(id);
        // QR, AA, RD copied, RA clear, rcode.
        r.extend_from_slice(&(0x8000 | 0x0400 | rd | rcode).to_be_bytes());
        r.extend_from_slice(&(if question.is_empty() { 0u16 } else { 1 }).to_be_bytes());
        r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(question);
        for a in answers {
            r.extend_from_slice(a);
        }
        r
    };
    if opcode != 0 || qdcount != 1 {
        return Some(reply(4, &[], &[])); // NOTIMP
    }
    // The question: labels, type, class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Some(reply(1, &[], &[])); // FORMERR (no compression in questions)
        }
        let l = q.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let Some(addrs) = zone.get(&name) else {
        return Some(reply(3, question, &[])); // NXDOMAIN
    };
    let mut answers = Vec::new();
    if (qtype == TYPE_AAAA || qtype == TYPE_ANY) && qclass == CLASS_IN {
        for a in addrs {
            let mut rr = vec![0xc0, 12]; // the name, as a pointer to the question
            rr.extend_from_slice(&TYPE_AAAA.to_be_bytes());
            rr.extend_from_slice(&CLASS_IN.to_be_bytes());
            rr.extend_from_slice(&TTL.to_be_bytes());
            rr.extend_from_slice(&16u16.to_be_bytes());
            rr.extend_from_slice(&a.octets());
            answers.push(rr);
        }
    }
    Some(reply(0, question, &answers))
}

/// Parse `NAME=ADDR` records into a zone.
pub fn zone_from_records(records: &[String]) -> anyhow::Result<Zone> {
    let mut z = Zone::new();
    for r in records {
        let (n, a) = r
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("`{r}` is not NAME=IPV6"))?;
        let a: Ipv6Addr = a.parse()?;
        z.entry(n.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(a);
    }
    Ok(z)
}

/// Answer on `listen` (UDP and TCP) until killed.
pub fn serve(listen: &[SocketAddr], zone: Zone) -> anyhow::Result<()> {
    use anyhow::Context;
    let zone = std::sync::Arc::new(zone);
    let mut threads = Vec::new();
    for addr in listen {
        let udp = UdpSocket::bind(addr).with_context(|| format!("cannot bind udp {addr}"))?;
        let tcp = TcpListener::bind(addr).with_context(|| format!("cannot bind tcp {addr}"))?;
        let z = zone.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(mut r) = answer(&z, &buf[..n]) {
                    if r.len() > 512 {
                        r.truncate(512);
                        r[2] |= 0x02; // TC: ask again over TCP
                    }
                    let _ = udp.send_to(&r, from);
                }
            }
        }));
        let z = zone.clone();
        threads.push(std::thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                let z = z.clone();
                std::thread::spawn(move || {
                    let mut c = conn;
                    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    loop {
                        let mut len = [0u8; 2];
                        if c.read_exact(&mut len).is_err() {
                            return;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if c.read_exact(&mut q).is_err() {
                            return;
                        }
                        let Some(r) = answer(&z, &q) else { return };
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        if c.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }
    // Ready: the driver waits for this line before it goes on.
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn aaaa_for_known_names_nothing_else() {
        let zone = zone_from_records(&["Matrix.Example.org=2001:db8:10::20".into()]).unwrap();
        let r = answer(&zone, &query("matrix.example.ORG", TYPE_AAAA)).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34], "the query's id");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        let addr: [u8; 16] = r[r.len() - 16..].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(addr),
            "2001:db8:10::20".parse::<Ipv6Addr>().unwrap()
        );

        let r = answer(&zone, &query("matrix.example.org", 1)).unwrap();
        assert_eq!(
            (r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])),
            (0, 0),
            "A: empty"
        );
        let r = answer(&zone, &query("other.example.org", TYPE_AAAA)).unwrap();
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");
        assert!(answer(&zone, &[0u8; 5]).is_none());
        let mut resp = query("matrix.example.org", TYPE_AAAA);
        resp[2] |= 0x80;
        assert!(answer(&zone, &resp).is_none(), "responses are not answered");
    }
}
