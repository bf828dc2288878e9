//! `mimg test`: boot an image with a customer's seed and a blank data disk
//! and talk to it as a Matrix client would, through nginx, over the
//! forwarded port. Every check is timed; none sleeps a fixed time: each
//! waits on its condition with a bound.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};

use crate::overlay::{Overlay, Registration};

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

/// How long one request may take: a first createRoom on a VM that shares
/// two TCG cores with other VMs took over 30 s.
const REQUEST_SECONDS: u64 = 120;

/// HTTP to the VM through 127.0.0.1:`port`, naming the virtual host; or,
/// where TLS ends on the VM, HTTPS through 127.0.0.1:`tls.port` with each
/// name resolved there (so SNI and the certificate are the name's) and
/// only the test network's CAs trusted.
pub struct Client {
    port: u16,
    http: reqwest::blocking::Client,
    tls: Option<(u16, reqwest::blocking::Client)>,
}

/// What a [`Client`] needs to speak HTTPS to a VM.
pub struct TlsTarget<'a> {
    /// The forwarded host port of the VM's 443.
    pub port: u16,
    /// The names to resolve to it.
    pub names: Vec<String>,
    /// The CAs to trust (PEM bundle), and no others.
    pub ca_pem: &'a str,
}

impl Client {
    /// HTTPS where `tls` is given, else plain HTTP on `port`.
    pub fn with_tls(port: u16, tls: Option<TlsTarget>) -> Result<Client> {
        let mut c = Client::new(port);
        if let Some(t) = tls {
            let certs = reqwest::Certificate::from_pem_bundle(t.ca_pem.as_bytes())
                .context("the test CA bundle does not parse")?;
            let mut b = reqwest::blocking::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(REQUEST_SECONDS))
                .redirect(reqwest::redirect::Policy::none())
                .tls_certs_only(certs);
            for n in &t.names {
                b = b.resolve(n, std::net::SocketAddr::from(([127, 0, 0, 1], t.port)));
            }
            c.tls = Some((t.port, b.build()?));
        }
        Ok(c)
    }

    /// Plain HTTP on the VM's port 80, whatever the TLS mode.
    pub fn get_plain(
        &self,
        host: &str,
        path: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .header(reqwest::header::HOST, host)
            .send()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.text()?))
    }

    /// Whether requests go over HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn new(port: u16) -> Client {
        // A new connection for every request: nginx closes idle kept-alive
        // connections (on reload, at its limits) whenever it likes, and a
        // request sent on one just as it closes fails with "connection
        // closed before message completed" (seen once in CI: a GET of the
        // room's messages). Checks make a few dozen requests; reuse buys
        // nothing here.
        let http = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(REQUEST_SECONDS))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Client {
            port,
            http,
            tls: None,
        }
    }

    fn req(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.tls {
            Some((port, c)) => c.request(method, format!("https://{host}:{port}{path}")),
            None => self
                .http
                .request(method, format!("http://127.0.0.1:{}{path}", self.port))
                .header(reqwest::header::HOST, host),
        }
    }

    /// GET, returning status, headers and body.
    pub fn get(
        &self,
        host: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let mut r = self.req(reqwest::Method::GET, host, path);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.text()?))
    }

    /// POST/PUT JSON, returning status and the JSON body.
    pub fn send(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let mut r = self
            .req(method, host, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send()?;
        let status = resp.status().as_u16();
        let v = serde_json::from_str(&resp.text()?).unwrap_or(Value::Null);
        Ok((status, v))
    }
}

/// What nginx answered for the homeserver's name before Synapse first
/// answered through it ([`wait_healthy`]).
pub struct Healthy {
    /// Answers with the image's "not configured yet" page (503).
    pub not_ready: u32,
    /// The first other answer before ready (a 502 of a proxy to a Synapse
    /// still starting, say): the VM served the customer's names too early.
    pub early: Option<String>,
}

/// The image's page for names that first boot has not configured yet.
const NOT_READY: &str = "not configured yet";

/// Wait until Synapse answers /health through nginx, at most `limit`.
pub fn wait_healthy(
    c: &Client,
    o: &Overlay,
    limit: Duration,
    alive: &mut dyn FnMut() -> bool,
) -> Result<Healthy> {
    let t0 = Instant::now();
    let mut not_ready = 0;
    let mut early = None;
    while t0.elapsed() < limit {
        if !alive() {
            bail!("the VM stopped before Synapse answered");
        }
        match c.get(o.homeserver.as_str(), "/health", None) {
            Ok((200, _, body)) if body.trim() == "OK" => {
                return Ok(Healthy { not_ready, early });
            }
            Ok((503, _, body)) if body.contains(NOT_READY) => not_ready += 1,
            Ok((st, _, body)) => {
                early.get_or_insert_with(|| {
                    format!(
                        "HTTP {st} after {:.0}s: {}",
                        t0.elapsed().as_secs_f64(),
                        body.trim().chars().take(120).collect::<String>()
                    )
                });
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    bail!(
        "Synapse did not answer /health through nginx within {}s",
        limit.as_secs()
    )
}

/// The check that nginx kept the customer's names back until first boot
/// was done: before, only the "not configured yet" page (or no answer).
pub fn ready_check(h: &Healthy) -> Check {
    Check {
        name: "nothing of the customer's is served before first boot is done".into(),
        ok: h.early.is_none(),
        seconds: 0.0,
        detail: match &h.early {
            Some(e) => format!("served before first boot was done: {e}"),
            None => format!(
                "{} answers of 503 \"{NOT_READY}\" before, then /health",
                h.not_ready
            ),
        },
    }
}

pub fn timed(name: &str, f: impl FnOnce() -> Result<String>) -> Check {
    let t0 = Instant::now();
    let r = f();
    let seconds = t0.elapsed().as_secs_f64();
    match r {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            seconds,
            detail,
        },
        Err(e) => Check {
            name: name.into(),
            ok: false,
            seconds,
            detail: format!("{e:#}"),
        },
    }
}

/// Wait until `@user:server_name` exists (its public profile answers).
pub fn wait_user(c: &Client, o: &Overlay, user: &str, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    let path = format!(
        "/_matrix/client/v3/profile/{}",
        urlenc(&format!("@{user}:{}", o.server_name))
    );
    loop {
        if let Ok((200, _, _)) = c.get(o.homeserver.as_str(), &path, None) {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!(
                "@{user} was not registered within {}s (see the first-boot script in the serial log)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Log in as `user` with `password`; returns the access token. Waits out
/// a rate limit once.
pub fn login(c: &Client, o: &Overlay, user: &str, password: &str) -> Result<String> {
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password });
    for _ in 0..2 {
        let (st, v) = c.send(
            reqwest::Method::POST,
            o.homeserver.as_str(),
            "/_matrix/client/v3/login",
            None,
            &body,
        )?;
        if st == 429 {
            let ms = v["retry_after_ms"].as_u64().unwrap_or(5000).min(300_000);
            std::thread::sleep(Duration::from_millis(ms + 500));
            continue;
        }
        if st != 200 {
            bail!("login as {user}: HTTP {st}: {v}");
        }
        return Ok(v["access_token"]
            .as_str()
            .context("no access_token")?
            .to_string());
    }
    bail!("login as {user}: rate limited twice")
}

/// A user name and an awkward password (spaces, quotes, `$`, `/`, `&`,
/// `+`, `=`) for a registration check.
/// A user name no other call of this run gives, and an awkward password.
fn newcomer() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = std::process::id();
    let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        format!("mimg-newcomer-{n}-{i}"),
        format!("new \"comer\" $pw/&+= {n}"),
    )
}

/// Register `user` as a client would: the user-interactive flow Synapse
/// offers, stage by stage (`m.login.registration_token` with `reg_token`,
/// `m.login.dummy`); waits out rate limits. Returns the final status: 200
/// when registered, 401/403 when a stage could not be completed.
fn register(
    c: &Client,
    o: &Overlay,
    user: &str,
    password: &str,
    reg_token: Option<&str>,
) -> Result<u16> {
    let mut auth: Option<Value> = None;
    let mut session: Option<String> = None;
    for _ in 0..8 {
        let mut body = json!({ "username": user, "password": password, "inhibit_login": true });
        if let Some(a) = &auth {
            body["auth"] = a.clone();
        }
        let (st, v) = c.send(
            reqwest::Method::POST,
            o.homeserver.as_str(),
            "/_matrix/client/v3/register",
            None,
            &body,
        )?;
        match st {
            200 => return Ok(200),
            429 => {
                let ms = v["retry_after_ms"].as_u64().unwrap_or(5000).min(120_000);
                std::thread::sleep(Duration::from_millis(ms + 500));
                continue;
            }
            401 => {}
            _ => return Ok(st),
        }
        if let Some(s) = v["session"].as_str() {
            session = Some(s.to_string());
        }
        let done: Vec<&str> = v["completed"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // The first flow this client can complete, and its next stage.
        let can = |stage: &str| {
            stage == "m.login.dummy"
                || (stage == "m.login.registration_token" && reg_token.is_some())
        };
        let next = v["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["stages"].as_array())
            .find(|stages| stages.iter().filter_map(Value::as_str).all(can))
            .and_then(|stages| {
                stages
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|s| !done.contains(s))
            });
        let Some(stage) = next.or_else(|| {
            // No flow this client can complete (a token is asked and it has
            // none): it tries the dummy stage once all the same, which
            // the server must refuse.
            (reg_token.is_none() && auth.is_none()).then_some("m.login.dummy")
        }) else {
            return Ok(st);
        };
        if auth.is_some() && done.is_empty() && v["errcode"].is_string() {
            // The stage just sent was refused.
            return Ok(st);
        }
        let mut a = json!({ "type": stage });
        if let Some(s) = &session {
            a["session"] = json!(s);
        }
        if stage == "m.login.registration_token" {
            a["token"] = json!(reg_token);
        }
        auth = Some(a);
    }
    bail!("registration of @{user} did not finish in 8 requests")
}

/// Every check of `mimg test`, in order.
pub fn run_checks(c: &Client, o: &Overlay, guest: Option<std::net::Ipv6Addr>) -> Vec<Check> {
    let hs = o.homeserver.as_str();
    let sn = o.server_name.as_str();
    let wc = o.web_client.as_str();
    let mut out = Vec::new();
    out.push(timed(
        "synapse /_matrix/client/versions through nginx",
        || {
            let (st, _, body) = c.get(hs, "/_matrix/client/versions", None)?;
            let v: Value = serde_json::from_str(&body)?;
            if st != 200 || !v["versions"].is_array() {
                bail!("HTTP {st}: {body}");
            }
            Ok(format!(
                "{} versions",
                v["versions"].as_array().map(|a| a.len()).unwrap_or(0)
            ))
        },
    ));
    if c.is_tls() {
        out.push(timed(
            "https with a certificate the test network trusts; http redirects to it",
            || {
                let (st, h, _) = c.get_plain(hs, "/_matrix/client/versions")?;
                let loc = h
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if st != 301 || !loc.starts_with(&format!("https://{hs}/")) {
                    bail!("http://{hs}/: HTTP {st}, Location {loc:?}");
                }
                Ok(format!("{hs}, {sn}, {wc} over https; http: 301 to {loc}"))
            },
        ));
    }
    out.push(timed("synapse /health", || {
        let (st, _, body) = c.get(hs, "/health", None)?;
        if st != 200 || body.trim() != "OK" {
            bail!("HTTP {st}: {body}");
        }
        Ok("OK".into())
    }));
    out.push(timed("the server publishes its signing key", || {
        let (st, _, body) = c.get(hs, "/_matrix/key/v2/server", None)?;
        let v: Value = serde_json::from_str(&body)?;
        let ids: Vec<String> = v["verify_keys"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if st != 200 || v["server_name"] != json!(sn) || ids.is_empty() {
            bail!("HTTP {st}: {body}");
        }
        Ok(ids.join(", "))
    }));
    out.push(timed(
        ".well-known/matrix/server on the server name",
        || {
            let (st, h, body) = c.get(sn, "/.well-known/matrix/server", None)?;
            let v: Value = serde_json::from_str(&body)?;
            let want = format!("{hs}:443");
            if st != 200
                || v["m.server"] != json!(want)
                || !h
                    .get("content-type")
                    .is_some_and(|t| t.to_str().unwrap_or("").contains("json"))
            {
                bail!("HTTP {st} {h:?}: {body}");
            }
            Ok(body)
        },
    ));
    out.push(timed(".well-known/matrix/client with CORS", || {
        let (st, h, body) = c.get(sn, "/.well-known/matrix/client", None)?;
        let v: Value = serde_json::from_str(&body)?;
        if st != 200 || v["m.homeserver"]["base_url"] != json!(format!("https://{hs}")) {
            bail!("HTTP {st}: {body}");
        }
        if h.get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            != Some("*")
        {
            bail!("no Access-Control-Allow-Origin: *");
        }
        Ok(body)
    }));
    out.push(timed("web client and its config.json", || {
        let (st, h, _) = c.get(wc, "/", None)?;
        if st != 200 || h.get("x-frame-options").is_none() {
            bail!("index: HTTP {st}, headers {h:?}");
        }
        let (st, _, body) = c.get(wc, "/config.json", None)?;
        let v: Value = serde_json::from_str(&body)?;
        let hsc = &v["default_server_config"]["m.homeserver"];
        if st != 200
            || hsc["base_url"] != json!(format!("https://{hs}"))
            || hsc["server_name"] != json!(sn)
        {
            bail!("config.json: HTTP {st}: {body}");
        }
        Ok("base_url and server_name are the customer's".into())
    }));
    if o.mattermost.is_some() {
        out.push(timed(
            "the bridge's Matrix user is registered by first boot",
            || {
                let user = format!("@matterbridge:{sn}");
                let path = format!("/_matrix/client/v3/profile/{}", urlenc(&user));
                let (st, _, body) = c.get(hs, &path, None)?;
                if st != 200 {
                    bail!("{user}: HTTP {st}: {body}");
                }
                Ok(user)
            },
        ));
    }
    let admin = o.admins.first().cloned();
    let mut token = None;
    out.push(timed(
        "admin logs in, creates a room, sends and reads a message",
        || {
            let a = admin.as_ref().context("the overlay has no [[admin]]")?;
            // Ready means ready: nginx serves the names only once the
            // first-boot script is done, admins registered included.
            let path = format!(
                "/_matrix/client/v3/profile/{}",
                urlenc(&format!("@{}:{sn}", a.user))
            );
            let (st, _, _) = c.get(hs, &path, None)?;
            if st != 200 {
                bail!(
                    "@{} is not registered although Synapse answered through nginx (HTTP {st} for its profile): the VM said ready too early",
                    a.user
                );
            }
            let t = login(c, o, a.user.as_str(), a.password.expose())?;
            let (st, v) = c.send(
                reqwest::Method::POST,
                hs,
                "/_matrix/client/v3/createRoom",
                Some(&t),
                &json!({ "name": "mimg test" }),
            )?;
            let room = v["room_id"]
                .as_str()
                .with_context(|| format!("createRoom: HTTP {st}: {v}"))?
                .to_string();
            let text = format!("hello from mimg test {}", std::process::id());
            let path = format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/mimg{}",
                urlenc(&room),
                std::process::id()
            );
            let (st, v) = c.send(
                reqwest::Method::PUT,
                hs,
                &path,
                Some(&t),
                &json!({ "msgtype": "m.text", "body": text }),
            )?;
            if st != 200 {
                bail!("send: HTTP {st}: {v}");
            }
            let (st, _, body) = c.get(
                hs,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
                    urlenc(&room)
                ),
                Some(&t),
            )?;
            if st != 200 || !body.contains(&text) {
                bail!("messages: HTTP {st}: message not found");
            }
            token = Some(t);
            Ok(format!("room {room}"))
        },
    ));
    if let Some(ui) = &o.admin_ui {
        let ui = ui.as_str();
        out.push(timed(
            "the admin UI and its config.json on its own name",
            || {
                let (st, h, _) = c.get(ui, "/", None)?;
                if st != 200 || h.get("x-frame-options").is_none() {
                    bail!("index: HTTP {st}, headers {h:?}");
                }
                let (st, _, body) = c.get(ui, "/config.json", None)?;
                let v: Value = serde_json::from_str(&body)?;
                if st != 200 || v["restrictBaseUrl"] != json!(format!("https://{ui}")) {
                    bail!("config.json: HTTP {st}: {body}");
                }
                Ok(format!("restricted to https://{ui}"))
            },
        ));
    }
    if let Some(ui) = o.admin_ui.as_ref().filter(|_| o.admin_api_on_ui()) {
        let ui = ui.as_str();
        out.push(timed(
            "the admin API answers an admin on the admin UI's name only, never a non-admin",
            || {
                let t = token.as_deref().context("no admin login")?;
                let a = admin.as_ref().context("no admin")?;
                let list = "/_synapse/admin/v2/users?limit=100";
                let (st, _, body) = c.get(ui, list, Some(t))?;
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let me = format!("@{}:{sn}", a.user);
                let listed = v["users"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u["name"] == json!(me)));
                if st != 200 || !listed {
                    bail!("{ui}{list}: HTTP {st}: {body}");
                }
                let (public, _, _) = c.get(hs, list, Some(t))?;
                if public == 200 {
                    bail!(
                        "{hs}{list} answered an admin's token (HTTP 200): the admin API is public"
                    );
                }
                // A user who is no admin, made through the admin API.
                let (user, password) = newcomer();
                let (st, v) = c.send(
                    reqwest::Method::PUT,
                    ui,
                    &format!(
                        "/_synapse/admin/v2/users/{}",
                        urlenc(&format!("@{user}:{sn}"))
                    ),
                    Some(t),
                    &json!({ "password": password, "admin": false }),
                )?;
                if st != 200 && st != 201 {
                    bail!("creating @{user}: HTTP {st}: {v}");
                }
                let plain = login(c, o, &user, &password)?;
                let (st, _, _) = c.get(ui, list, Some(&plain))?;
                if st != 403 {
                    bail!("a non-admin's token: HTTP {st}, not 403");
                }
                Ok(format!(
                    "{me} listed on {ui}; HTTP {public} on {hs}; HTTP 403 for @{user}"
                ))
            },
        ));
    }
    out.push(timed(
        "TURN credentials are the HMAC of the overlay's secret",
        || {
            let t = token.as_deref().context("no login")?;
            let turn = o.turn.as_ref().context("the overlay has no [turn]")?;
            let (st, _, body) = c.get(hs, "/_matrix/client/v3/voip/turnServer", Some(t))?;
            let v: Value = serde_json::from_str(&body)?;
            let user = v["username"]
                .as_str()
                .with_context(|| format!("HTTP {st}: {body}"))?;
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(turn.secret.expose().as_bytes())
                .expect("any key length");
            mac.update(user.as_bytes());
            let want =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            if v["password"] != json!(want) {
                bail!("password is not HMAC-SHA1(secret, username)");
            }
            let uris: Vec<String> = turn.uris.iter().map(|u| u.to_string()).collect();
            if v["uris"] != json!(uris) {
                bail!("uris {} differ from the overlay's", v["uris"]);
            }
            Ok(format!("username {user}"))
        },
    ));
    match o.registration {
        Registration::Open => out.push(timed(
            "registration is open: a new user registers and logs in",
            || {
                let (user, password) = newcomer();
                let st = register(c, o, &user, &password, None)?;
                if st != 200 {
                    bail!("registration: HTTP {st}");
                }
                login(c, o, &user, &password)?;
                Ok(format!("@{user} registered and logged in"))
            },
        )),
        Registration::Token => out.push(timed(
            "registration needs a token: refused without one and with a wrong one",
            || {
                let (user, password) = newcomer();
                // Synapse offers a flow with the token stage, and only such.
                let (st, v) = c.send(
                    reqwest::Method::POST,
                    hs,
                    "/_matrix/client/v3/register",
                    None,
                    &json!({ "username": user, "password": password }),
                )?;
                let flows = v["flows"].as_array().cloned().unwrap_or_default();
                let token_in_every_flow = !flows.is_empty()
                    && flows.iter().all(|f| {
                        f["stages"]
                            .as_array()
                            .is_some_and(|s| s.contains(&json!("m.login.registration_token")))
                    });
                if st != 401 || !token_in_every_flow {
                    bail!("registration flows: HTTP {st}: {v}");
                }
                let st = register(c, o, &user, &password, None)?;
                if st == 200 {
                    bail!("registered without a token");
                }
                let wrong = register(c, o, &user, &password, Some("mimg-not-a-token"))?;
                if wrong == 200 {
                    bail!("registered with a token nobody made");
                }
                // A token an admin makes through Synapse's admin API
                // (served on the admin UI's name only) lets a newcomer in.
                let Some(ui) = o.admin_ui.as_ref().filter(|_| o.admin_api_on_ui()) else {
                    return Ok(format!(
                        "HTTP {st} without a token, HTTP {wrong} with a wrong one"
                    ));
                };
                let t = token.as_deref().context("no admin login")?;
                let (tst, v) = c.send(
                    reqwest::Method::POST,
                    ui.as_str(),
                    "/_synapse/admin/v1/registration_tokens/new",
                    Some(t),
                    &json!({ "uses_allowed": 1 }),
                )?;
                let made = v["token"]
                    .as_str()
                    .with_context(|| format!("making a token: HTTP {tst}: {v}"))?
                    .to_string();
                let ok = register(c, o, &user, &password, Some(&made))?;
                if ok != 200 {
                    bail!("registration with the admin's token {made}: HTTP {ok}");
                }
                login(c, o, &user, &password)?;
                Ok(format!(
                    "HTTP {st} without a token, HTTP {wrong} with a wrong one; @{user} registered with a token an admin made on {ui}"
                ))
            },
        )),
        Registration::Closed => {}
    }
    if o.registration == Registration::Closed {
        out.push(timed("registration is refused (closed)", || {
            let (st, v) = c.send(
                reqwest::Method::POST,
                hs,
                "/_matrix/client/v3/register",
                None,
                &json!({ "username": "mimg-intruder", "password": "x-long-password-1234" }),
            )?;
            if st != 403 {
                bail!("HTTP {st}: {v}");
            }
            Ok(format!("HTTP {st} {}", v["errcode"]))
        }));
    }
    out.push(timed(
        "the VM has the overlay's IPv6 address",
        || match guest {
            Some(g) if g == o.network.address.addr => Ok(format!("reached at {g}")),
            Some(g) => bail!("reached at {g}, not {}", o.network.address.addr),
            None => bail!("not checked: no network namespace (needs root)"),
        },
    ));
    out
}

pub fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
