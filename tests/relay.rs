//! The port forward of `mimg run` / `mimg test`: the helper that runs in
//! the VM's network namespace (`mimg __relay HOST:PORT`) must pass a close
//! by the guest on to the client at once, or the client's next request on
//! that kept-alive connection goes nowhere and hangs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn a_close_by_the_guest_reaches_the_client_while_it_still_holds_its_side() {
    // The "guest": answers one request, then closes (as nginx does on reload).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        s.write_all(b"pong").unwrap();
        // dropped: the guest closes
    });

    let mut child = mimg()
        .args(["__relay", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The client's side stays open the whole time (a pooled connection).
    let mut to_guest = child.stdin.take().unwrap();
    to_guest.write_all(b"ping").unwrap();
    to_guest.flush().unwrap();
    let mut from_guest = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let r = from_guest.read_to_end(&mut got);
        let _ = tx.send((r.is_ok(), got));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    server.join().unwrap();
    let (ok, got) = got.expect("the guest closed, but the relay kept the client's side open");
    assert!(ok);
    assert_eq!(got, b"pong");
    drop(to_guest);
}
