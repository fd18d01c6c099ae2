//! The web chat and the HTTP server against the attacks of an outside review (issue 19), each
//! against a real `ecdysis serve`:
//!
//! - CSRF: a `no-cors` `text/plain` POST gets 415, another site's `Origin` 403, and nothing is
//!   stored; the page's own requests still work.
//! - DNS rebinding: `Host: evil.example:8080` gets 421 on every browser route (not on the
//!   operational ones), and nothing is stored.
//! - A set admin token is needed on loopback too; session cookies are signed and expire, and a
//!   forged, expired or rotated-token cookie gets 401.
//! - Platform identities cannot be claimed from the web chat (`"user":"slack:U012ADMIN"`,
//!   conversation `slack:T012AB:C345CD`).
//! - Failed logins are limited per client: 11 bad logins lock that client, not another one.
//! - Slow request heads: hundreds of connections that never finish their headers are closed
//!   after the time limit, no more than the connection cap are held at once, and the server
//!   answers normally afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis_web::session::SessionKey;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "web-sec-token-4f1e9a7c2b";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client whose connections come from `source` (another loopback address is another client).
fn client_from(source: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::V4(source))
        .build()
        .unwrap()
}

/// Send `request` as written (a browser's exact headers, a foreign `Host`) and return the
/// status code and the whole response.
async fn raw(server: &Server, request: String) -> (u16, String) {
    let mut stream = TcpStream::connect(addr(server)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

/// A POST to the chat API as a browser sends it, with `extra` header lines.
fn chat_post(
    host: &str,
    conversation: &str,
    content_type: &str,
    extra: &str,
    text: &str,
) -> String {
    let body = json!({ "text": text, "user": "web" }).to_string();
    format!(
        "POST /api/chat/{conversation} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_and_rebinding_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ECDYSIS_SANDBOX", "off")]).await;
    let host = addr(&server);
    let port = host.rsplit(':').next().unwrap().to_string();
    let own_origin = format!("Origin: http://{host}\r\n");

    // The review's request: fetch(url, {mode: "no-cors", headers: {"content-type": "text/plain"}})
    // from another site. Browsers may omit `Origin` on it in some modes; the type alone refuses it.
    for extra in ["", "Origin: http://evil.example\r\n"] {
        let (status, body) = raw(
            &server,
            chat_post(&host, "victim", "text/plain", extra, "/remember pwned"),
        )
        .await;
        assert!(matches!(status, 415 | 403), "{status}: {body}");
    }
    let (status, body) = raw(
        &server,
        chat_post(
            &host,
            "victim",
            "text/plain;charset=UTF-8",
            "",
            "/remember pwned",
        ),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    // Form encodings a page can send without asking are refused too.
    let (status, _) = raw(
        &server,
        chat_post(
            &host,
            "victim",
            "application/x-www-form-urlencoded",
            "",
            "/remember pwned",
        ),
    )
    .await;
    assert_eq!(status, 415);
    // JSON from another origin (a CORS request the browser names): 403.
    for origin in ["http://evil.example", "null", "http://localhost:1"] {
        let (status, body) = raw(
            &server,
            chat_post(
                &host,
                "victim",
                "application/json",
                &format!("Origin: {origin}\r\n"),
                "/remember pwned",
            ),
        )
        .await;
        assert_eq!(status, 403, "{origin}: {body}");
    }
    // DNS rebinding: evil.example now resolves to 127.0.0.1, so the browser sends that Host
    // (and, the page being on evil.example, that Origin, or none for a simple GET).
    let rebound = format!("evil.example:{port}");
    for (extra, what) in [
        ("", "no origin"),
        ("Origin: http://evil.example:8080\r\n", "origin"),
    ] {
        let (status, body) = raw(
            &server,
            chat_post(
                &rebound,
                "victim",
                "application/json",
                extra,
                "/remember pwned",
            ),
        )
        .await;
        assert_eq!(status, 421, "{what}: {body}");
    }
    let (status, _) = raw(
        &server,
        chat_post(
            "evil.example:8080",
            "victim",
            "application/json",
            "",
            "/remember pwned",
        ),
    )
    .await;
    assert_eq!(status, 421);
    for path in [
        "/",
        "/login",
        "/api/chat/victim/messages",
        "/api/chat/victim/events",
        "/api/artifacts/x",
    ] {
        let (status, body) = raw(&server, get(&rebound, path, "")).await;
        assert_eq!(status, 421, "{path}: {body}");
    }
    // The operational routes are called by machines with their own Host.
    let (status, _) = raw(&server, get("monitor.internal", "/healthz", "")).await;
    assert_eq!(status, 200);
    // Live updates from another origin.
    let (status, _) = raw(
        &server,
        get(
            &host,
            "/api/chat/victim/events",
            "Origin: http://evil.example\r\n",
        ),
    )
    .await;
    assert_eq!(status, 403);

    // Nothing of it was stored, and the page's own requests still work: JSON with its own
    // origin, under every loopback name.
    assert!(server.messages("victim").await.is_empty());
    let (status, body) = raw(
        &server,
        chat_post(
            &host,
            "victim",
            "application/json; charset=utf-8",
            &own_origin,
            "/help",
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let localhost = format!("localhost:{port}");
    let (status, body) = raw(
        &server,
        chat_post(
            &localhost,
            "victim",
            "application/json",
            &format!("Origin: http://{localhost}\r\n"),
            "/status",
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let messages = server.wait_replies("victim", 2).await;
    let texts: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(!texts.iter().any(|t| t.contains("pwned")), "{texts:?}");
    assert_eq!(texts.len(), 2, "{texts:?}");
    // The page sends JSON (the browser adds its own Origin).
    let (status, page) = raw(&server, get(&host, "/", "")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("'content-type': 'application/json'"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_token_is_needed_on_loopback_and_sessions_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ECDYSIS_ADMIN_TOKEN", TOKEN), ("ECDYSIS_SANDBOX", "off")],
    )
    .await;
    let base = server.base.clone();
    let http = no_redirects();
    let body = json!({ "text": "/help" });

    // Loopback, no token: refused; the page sends the browser to the login form.
    let r = http
        .post(format!("{base}/api/chat/x"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    for path in [
        "/api/chat/x/messages",
        "/api/chat/x/events",
        "/api/artifacts/x",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = http
        .post(format!("{base}/api/chat/x"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Rebinding the admin pages.
    let port = base.rsplit(':').next().unwrap();
    for path in ["/admin", "/admin/login"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("host", format!("evil.example:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{path}");
    }

    // A login gives a signed session cookie: HttpOnly, SameSite=Strict, Secure over https.
    let login = |https: bool| {
        let mut request = http
            .post(format!("{base}/login"))
            .header("origin", &base)
            .form(&[("token", TOKEN)]);
        if https {
            request = request.header("x-forwarded-proto", "https");
        }
        request.send()
    };
    let r = login(false).await.unwrap();
    assert_eq!(r.status(), 303);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(!set_cookie.contains(TOKEN), "{set_cookie}");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let r = login(true).await.unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let value = cookie.split_once('=').unwrap().1.to_string();
    let read = |cookie: String| {
        http.get(format!("{base}/api/chat/x/messages"))
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(read(cookie.clone()).await.unwrap().status(), 200);
    // The chat session is not an admin session.
    let r = http
        .get(format!("{base}/admin"))
        .header("cookie", format!("ecdysis_admin={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // Forged: another signature, another id, the raw token, nothing.
    let (head, signature) = value.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let forged = [
        format!("{head}.{flipped}{}", &signature[1..]),
        format!("{}.{}.{signature}", now(), "00".repeat(16)),
        TOKEN.to_string(),
        String::new(),
    ];
    for value in forged {
        let r = read(format!("ecdysis_session={value}")).await.unwrap();
        assert_eq!(r.status(), 401, "{value}");
    }
    // Signed with the right key (as the server derives it) but expired: refused; the same key
    // with a fresh time is accepted, so the refusal is the expiry.
    let key = SessionKey::new("chat", TOKEN, 7 * 24 * 3600);
    let expired = key.issue(now() - 8 * 24 * 3600).unwrap();
    let r = read(format!("ecdysis_session={expired}")).await.unwrap();
    assert_eq!(r.status(), 401);
    let fresh = key.issue(now()).unwrap();
    let r = read(format!("ecdysis_session={fresh}")).await.unwrap();
    assert_eq!(r.status(), 200);
    // A session of another token (before a rotation).
    let old = SessionKey::new("chat", "the-previous-token", 7 * 24 * 3600)
        .issue(now())
        .unwrap();
    let r = read(format!("ecdysis_session={old}")).await.unwrap();
    assert_eq!(r.status(), 401);

    // Logout clears the cookie.
    let r = http
        .post(format!("{base}/logout"))
        .header("origin", &base)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Rotating the token ends every session: the same data, a new token.
    drop(server);
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_ADMIN_TOKEN", "rotated-token-8d7c6b5a4f"),
            ("ECDYSIS_SANDBOX", "off"),
        ],
    )
    .await;
    let r = http
        .get(format!("{}/api/chat/x/messages", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a session of the old token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_one_client_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("ECDYSIS_ADMIN_TOKEN", TOKEN), ("ECDYSIS_SANDBOX", "off")],
    )
    .await;
    let base = server.base.clone();
    let attacker = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let admin = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let login = |client: &reqwest::Client, path: &str, token: &str| {
        client
            .post(format!("{base}{path}"))
            .form(&[("token", token)])
            .send()
    };
    for i in 0..10 {
        let r = login(&attacker, "/login", &format!("guess-{i}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    // The 11th attempt is refused before the token is looked at: the right one too.
    let r = login(&attacker, "/login", "guess-10").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let r = login(&attacker, "/login", TOKEN).await.unwrap();
    assert_eq!(r.status(), 429);
    // One limit for every way of trying the token: the admin form and bearer headers.
    let r = login(&attacker, "/admin/login", TOKEN).await.unwrap();
    assert_eq!(r.status(), 429);
    let r = attacker
        .get(format!("{base}/api/chat/x/messages"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // Another client is not locked out.
    let r = login(&admin, "/login", TOKEN).await.unwrap();
    assert_eq!(r.status(), 303);
    let r = login(&admin, "/admin/login", TOKEN).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("ecdysis_admin=")
    );

    // Wrong bearer tokens count as failed logins too.
    let prober = client_from(Ipv4Addr::new(127, 0, 0, 3));
    for i in 0..10 {
        let r = prober
            .get(format!("{base}/api/chat/x/messages"))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = login(&prober, "/login", TOKEN).await.unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_cannot_claim_platform_identities() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX_ALLOW_USERS", "slack:U012ADMIN,web:alice"),
            (
                "ECDYSIS_SANDBOX_ALLOW_CHANNELS",
                "slack:T012AB:C345CD,web:ops",
            ),
        ],
    )
    .await;
    let run = |conversation: &'static str, user: &'static str, text: &'static str| {
        let server = &server;
        async move {
            let r = server
                .post(conversation, json!({ "text": text, "user": user }))
                .await;
            assert_eq!(r.status(), 202);
            let event_id = r.json::<serde_json::Value>().await.unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string();
            server
                .wait_replies_to(conversation, &event_id, 1)
                .await
                .remove(0)["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    // The review's strings: a Slack user id as the web user, a Slack channel as the name.
    let reply = run("ops", "slack:U012ADMIN", "/run echo claimed-user").await;
    assert!(reply.contains("sandbox.allow_users"), "{reply}");
    let reply = run("slack:T012AB:C345CD", "alice", "/run echo claimed-channel").await;
    assert!(reply.contains("sandbox.allow_channels"), "{reply}");
    let reply = run("slack:T012AB:C345CD", "slack:U012ADMIN", "/run echo both").await;
    assert!(reply.contains("Not run"), "{reply}");
    // The web identities on the lists pass the lists (the sandbox may or may not be usable
    // on this machine; either way the allow lists did not refuse).
    let reply = run("ops", "alice", "/run echo allowed").await;
    assert!(!reply.contains("Not run"), "{reply}");
}

/// Sockets the process holds open (its listener, its client connections, …).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_connections_are_capped() {
    const CAP: usize = 64;
    const SLOW: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_WEB_HEADER_TIMEOUT_SECONDS", "2"),
            ("ECDYSIS_WEB_MAX_CONNECTIONS", &CAP.to_string()),
        ],
    )
    .await;
    let host = addr(&server);
    let pid = server.pid();
    // The listener and the runtime's own sockets; the readiness checks' connections are gone
    // (their client closed them), and a leftover one only makes this count higher.
    let baseline = open_sockets(pid);

    // Hundreds of clients that start a request and never finish its head.
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut stream = TcpStream::connect(&host).await.unwrap();
        let partial = format!("GET /?{i} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
        stream.write_all(partial.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Every connection is closed by the server (EOF or reset), however long it waits in line;
    // meanwhile the server's sockets are counted.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(open_sockets(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    let mut closed_after = Vec::new();
    for mut stream in slow {
        let mut buf = [0u8; 1024];
        let outcome = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(outcome.is_ok(), "a slow connection was left open");
        closed_after.push(started.elapsed());
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    // The attack reached the server, up to the cap and no further.
    assert!(
        most >= baseline + CAP / 2,
        "the slow connections were taken: {most} sockets (baseline {baseline})"
    );
    assert!(
        most <= baseline + CAP + 1,
        "at most {CAP} connections at once: {most} sockets (baseline {baseline})"
    );
    // None was cut before the limit.
    assert!(
        closed_after[0] >= Duration::from_millis(1900),
        "{closed_after:?}"
    );
    let total = started.elapsed();
    // Afterwards the server answers as usual.
    let r = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(server.ask("after", "/help").await.contains("/remember"));
    let at = |q: usize| closed_after[(closed_after.len() - 1) * q / 100].as_secs_f64();
    eprintln!(
        "{SLOW} slow connections (cap {CAP}, 2 s head limit): at most {} held at once; closed after {:.1} / {:.1} / {:.1} / {:.1} s (first, p50, p90, last); all gone after {:.1} s",
        most - baseline,
        at(0),
        at(50),
        at(90),
        at(100),
        total.as_secs_f64()
    );
}
