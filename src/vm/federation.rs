//! Federation checks between the homeservers of a test network, as their
//! users would see it: each server's keys through its delegated name, and
//! for every pair a room made on one, the other's admin invited and
//! joined over federation, and a message sent each way and read back.
//! Every wait is bounded; nothing sleeps a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::acceptance::{Check, Client, login, timed, urlenc, wait_user};
use crate::overlay::Overlay;

/// One homeserver of the network and the client that reaches it.
pub struct Server<'a> {
    pub overlay: &'a Overlay,
    pub client: &'a Client,
}

/// How long one federation step (an invite arriving, a message crossing)
/// may take: a first contact fetches keys and, under TCG, is slow.
const STEP: Duration = Duration::from_secs(300);

/// Every federation check: keys of each server, then each pair both ways.
pub fn checks(servers: &[Server]) -> Vec<Check> {
    let mut out = Vec::new();
    for s in servers {
        let o = s.overlay;
        out.push(timed(
            &format!("{}: server keys through its delegated name", o.server_name),
            || keys(s),
        ));
    }
    for (i, a) in servers.iter().enumerate() {
        for b in &servers[i + 1..] {
            out.push(timed(
                &format!(
                    "{} and {} federate: a room, an invite, a message each way",
                    a.overlay.server_name, b.overlay.server_name
                ),
                || pair(a, b),
            ));
        }
    }
    out
}

fn keys(s: &Server) -> Result<String> {
    let o = s.overlay;
    let (st, _, body) = s
        .client
        .get(o.server_name.as_str(), "/.well-known/matrix/server", None)?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("HTTP {st}: {body}"))?;
    let delegated = v["m.server"].as_str().context("no m.server")?;
    let (host, port) = delegated.rsplit_once(':').unwrap_or((delegated, "8448"));
    if host != o.homeserver.as_str() || port != "443" {
        bail!(
            "{} delegates to {delegated}, not {}:443",
            o.server_name,
            o.homeserver
        );
    }
    let (st, _, body) = s.client.get(host, "/_matrix/key/v2/server", None)?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("HTTP {st}: {body}"))?;
    if v["server_name"] != json!(o.server_name.as_str()) {
        bail!("the keys at {host} are for {}", v["server_name"]);
    }
    let n = v["verify_keys"].as_object().map(|m| m.len()).unwrap_or(0);
    if n == 0 {
        bail!("no verify_keys at {host}");
    }
    Ok(format!("{} -> {delegated}: {n} key(s)", o.server_name))
}

fn admin(s: &Server) -> Result<(String, String)> {
    let o = s.overlay;
    let a = o
        .admins
        .first()
        .with_context(|| format!("{} has no [[admin]] to test federation with", o.customer))?;
    wait_user(s.client, o, a.user.as_str(), STEP)?;
    let token = login(s.client, o, a.user.as_str(), a.password.expose())?;
    Ok((format!("@{}:{}", a.user, o.server_name), token))
}

/// Poll `f` until it returns `Some`, at most `limit`.
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!(" (last: {e:#})"),
        }
        if t0.elapsed() > limit {
            bail!("{what}: not within {}s{last}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn send(s: &Server, token: &str, room: &str, text: &str) -> Result<()> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        urlenc(room),
        urlenc(text)
    );
    let (st, v) = s.client.send(
        reqwest::Method::PUT,
        s.overlay.homeserver.as_str(),
        &path,
        Some(token),
        &json!({ "msgtype": "m.text", "body": text }),
    )?;
    if st != 200 {
        bail!("send on {}: HTTP {st}: {v}", s.overlay.homeserver);
    }
    Ok(())
}

fn read(s: &Server, token: &str, room: &str, text: &str) -> Result<()> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30",
        urlenc(room)
    );
    until(
        &format!("{text:?} read on {}", s.overlay.homeserver),
        STEP,
        || {
            let (st, _, body) = s
                .client
                .get(s.overlay.homeserver.as_str(), &path, Some(token))?;
            if st != 200 {
                bail!("HTTP {st}: {body}");
            }
            Ok(body.contains(text).then_some(()))
        },
    )
}

fn pair(a: &Server, b: &Server) -> Result<String> {
    let t0 = Instant::now();
    let (ua, ta) = admin(a)?;
    let (ub, tb) = admin(b)?;
    let (st, v) = a.client.send(
        reqwest::Method::POST,
        a.overlay.homeserver.as_str(),
        "/_matrix/client/v3/createRoom",
        Some(&ta),
        &json!({ "name": "mimg federation", "preset": "private_chat", "invite": [ub] }),
    )?;
    let room = v["room_id"]
        .as_str()
        .with_context(|| format!("createRoom on {}: HTTP {st}: {v}", a.overlay.homeserver))?
        .to_string();
    let join = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        urlenc(&room),
        urlenc(a.overlay.server_name.as_str())
    );
    until(&format!("{ub} joins {room}"), STEP, || {
        let (st, v) = b.client.send(
            reqwest::Method::POST,
            b.overlay.homeserver.as_str(),
            &join,
            Some(&tb),
            &json!({}),
        )?;
        match st {
            200 => Ok(Some(())),
            // The invite has not crossed yet, or the first contact's keys
            // are still being fetched.
            403 | 404 | 502 => Err(anyhow::anyhow!("HTTP {st}: {v}")),
            _ => bail!("join: HTTP {st}: {v}"),
        }
    })?;
    let joined = t0.elapsed().as_secs_f64();
    let n = std::process::id();
    let to_b = format!("from {ua} to {ub} ({n})");
    send(a, &ta, &room, &to_b)?;
    read(b, &tb, &room, &to_b)?;
    let to_a = format!("from {ub} to {ua} ({n})");
    send(b, &tb, &room, &to_a)?;
    read(a, &ta, &room, &to_a)?;
    Ok(format!(
        "{room}: {ub} joined after {joined:.0}s, messages both ways after {:.0}s",
        t0.elapsed().as_secs_f64()
    ))
}
