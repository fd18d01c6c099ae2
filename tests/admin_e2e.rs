//! The admin UI against a real `serve` process: in a real headless Chromium (log in with the
//! token, open a conversation, see its stored screenshot), and over plain HTTP (no token → 401
//! or a redirect to the login form; admin off → 404; session cookie flags; CSRF; note edit and
//! delete; retry of a failed event).
//!
//! Chromium is needed for the browser part: in CI (env `CI`) its absence fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use common::server::Server;
use ecdysis::browser::cdp::{Browser, Page, protocol};
use ecdysis_testkit::llm::{FakeLlm, Reply};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "admin-token-for-tests-7f3a";

fn chromium() -> Option<PathBuf> {
    let path = ecdysis::browser::find_chromium(&ecdysis::config::BrowserSettings {
        chromium: std::env::var_os("ECDYSIS_CHROMIUM").map(PathBuf::from),
        ..Default::default()
    });
    let found = ecdysis_testkit::prerequisite::prerequisite(
        path.is_some(),
        "Chromium",
        "apt-get install chromium, or set ECDYSIS_CHROMIUM",
    );
    path.filter(|_| found)
}

/// A page to take a screenshot of.
async fn serve_site() -> SocketAddr {
    let app = Router::new().route(
        "/",
        get(|| async {
            Html(
                "<html><body style=\"margin:0;background:#1e90ff\"><h1 style=\"color:#fff\">admin e2e</h1></body></html>",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The id of a conversation, from the admin list (as a bearer client).
async fn conversation_id(server: &Server, name: &str) -> i64 {
    let page = client()
        .get(format!("{}/admin/conversations", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = format!("\">web:local:{name}</a>");
    let end = page
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} not listed:\n{page}"));
    let start = page[..end].rfind("/admin/conversations/").unwrap() + "/admin/conversations/".len();
    page[start..end].parse().unwrap()
}

/// A headless Chromium of our own, driven over CDP.
struct Chromium {
    child: tokio::process::Child,
    browser: Browser,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start(path: &PathBuf) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(path)
            .args(ecdysis::browser::CHROMIUM_FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, url)) = line.split_once("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("Chromium exited before listening");
        })
        .await
        .expect("Chromium starts");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let browser = Browser::connect(&ws, Duration::from_secs(30))
            .await
            .unwrap();
        Chromium {
            child,
            browser,
            _profile: profile,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_in_a_real_browser_shows_a_stored_screenshot() {
    let Some(chromium) = chromium() else {
        return;
    };
    let site = serve_site().await;
    let dir = tempfile::tempdir().unwrap();
    let chromium_path = chromium.display().to_string();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_ADMIN_TOKEN", TOKEN),
            ("ECDYSIS_CHROMIUM", chromium_path.as_str()),
            ("ECDYSIS_BROWSER_ALLOW", "127.0.0.1"),
            ("ECDYSIS_SANDBOX", "off"),
        ],
    )
    .await;
    // A conversation with a stored screenshot, made through the web chat.
    let reply = server
        .ask(
            "shots",
            &format!("/screenshot http://{site}/ width=640 height=400"),
        )
        .await;
    let messages = server.messages("shots").await;
    let attachment = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .and_then(|m| m["attachments"].get(0).cloned())
        .unwrap_or_else(|| panic!("no screenshot in the reply {reply:?}\n{}", server.log()));
    let artifact_id = attachment["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("/api/artifacts/")
        .to_string();
    let id = conversation_id(&server, "shots").await;
    // Stored files are served so that none can run a script in this origin.
    // Both routes need the token (the web chat too once a token is set, also on loopback).
    for url in [
        format!("{}/api/artifacts/{artifact_id}", server.base),
        format!("{}/admin/artifacts/{artifact_id}", server.base),
    ] {
        let request = client().get(&url).bearer_auth(TOKEN);
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.headers()["content-type"], "image/png", "{url}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{url}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("sandbox"), "{url}: {csp}");
    }

    let browser = Chromium::start(&chromium).await;
    let page = browser.browser.new_page(None).await.unwrap();
    // Without a session: the conversation page sends the browser to the login form.
    goto(&page, &format!("{}/admin/conversations/{id}", server.base)).await;
    let url = page.url().await.unwrap();
    assert!(url.ends_with("/admin/login"), "{url}");
    assert!(content(&page).await.unwrap().contains("Admin token"));
    // A wrong token is refused.
    let _: bool = page.evaluate(
        "document.querySelector('input[name=token]').value = 'wrong'; document.querySelector('form').submit(); true",
    )
    .await
    .unwrap();
    wait_for(&page, "Wrong token").await;
    // Log in with the token.
    let _: bool = page.evaluate(&format!(
        "document.querySelector('input[name=token]').value = '{TOKEN}'; document.querySelector('form').submit(); true"
    ))
    .await
    .unwrap();
    wait_for(&page, "Leader leases").await;
    // Open the conversation: the screenshot is in the page and loaded.
    goto(&page, &format!("{}/admin/conversations/{id}", server.base)).await;
    let html = content(&page).await.unwrap();
    assert!(
        html.contains(&format!("/admin/artifacts/{artifact_id}")),
        "{html}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let size: Vec<u32> = loop {
        let size: Option<Vec<u32>> = page
            .evaluate(
                "(() => { const i = document.querySelector('img.artifact'); return i && i.complete ? [i.naturalWidth, i.naturalHeight] : null; })()",
            )
            .await
            .unwrap();
        if let Some(size) = size.filter(|s| s[0] > 0) {
            break size;
        }
        assert!(Instant::now() < deadline, "the screenshot did not load");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(size, [640, 400], "the stored screenshot, shown inline");
    // For a person to look at.
    let shot = page
        .execute(&protocol::CaptureScreenshot {
            format: "png",
            clip: None,
            capture_beyond_viewport: false,
            from_surface: true,
            optimize_for_speed: true,
        })
        .await
        .unwrap();
    let _ = std::fs::write(
        std::env::temp_dir().join("ecdysis-admin-conversation.png"),
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, shot.data).unwrap(),
    );
    // The session cookie is HttpOnly: page scripts cannot read it.
    let cookies: String = page.evaluate("document.cookie").await.unwrap();
    assert!(!cookies.contains("ecdysis_admin"), "{cookies}");
    drop(page);
    let mut browser = browser;
    let _ = browser.browser.close().await;
    let _ = browser.child.kill().await;
}

/// Load `url` in the tab, waiting for its `load` event.
async fn goto(page: &Page, url: &str) {
    tokio::time::timeout(Duration::from_secs(30), page.navigate(url))
        .await
        .expect("the page loads in time")
        .unwrap();
}

/// The tab's HTML.
async fn content(page: &Page) -> Result<String, ecdysis::browser::cdp::CdpError> {
    page.evaluate("document.documentElement.outerHTML").await
}

async fn wait_for(page: &Page, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(html) = content(page).await
            && html.contains(text)
        {
            return;
        }
        assert!(Instant::now() < deadline, "page never showed {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Set-Cookie` of a login, and the cookie to send back.
async fn login(server: &Server, https: bool) -> (String, String) {
    let mut request = client()
        .post(format!("{}/admin/login", server.base))
        .form(&[("token", TOKEN)]);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    (set_cookie, cookie)
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn admin_access_sessions_csrf_notes_and_retry() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base_url = fake.anthropic_base_url();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_ADMIN_TOKEN", TOKEN),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-anthropic-key"),
            ("ANTHROPIC_BASE_URL", base_url.as_str()),
            ("ECDYSIS_BUS_MAX_ATTEMPTS", "1"),
            ("ECDYSIS_AGENT_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let http = client();
    let get = |path: &str| http.get(format!("{}{path}", server.base));

    // Anonymous: pages redirect to the login form; everything else is 401.
    let r = get("/admin").send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/login");
    assert_eq!(get("/admin/login").send().await.unwrap().status(), 200);
    for path in [
        "/admin/artifacts/x",
        "/admin/notes/1/delete",
        "/admin/inbox/1/retry",
    ] {
        let r = http
            .post(format!("{}{path}", server.base))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 401 || r.status() == 405,
            "{path}: {}",
            r.status()
        );
    }
    assert_eq!(
        get("/admin/artifacts/x").send().await.unwrap().status(),
        401
    );
    let r = get("/admin")
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // The token as a bearer header.
    let r = get("/admin").bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Sessions: the cookie holds no token, is locked down, and Secure behind https.
    let (set_cookie, cookie) = login(&server, false).await;
    assert!(!set_cookie.contains(TOKEN), "{set_cookie}");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let (secure_cookie, _) = login(&server, true).await;
    assert!(secure_cookie.contains("; Secure"), "{secure_cookie}");
    let r = get("/admin")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wrong = http
        .post(format!("{}/admin/login", server.base))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    // Notes: edit and delete through the forms, with the session's CSRF token.
    server
        .ask("ops", "/remember the backup runs at 03:00")
        .await;
    server.ask("ops", "/remember the pager is on call").await;
    let notes_url = "/admin/memory/notes?channel=web%3Alocal%3Aops";
    let notes = get(notes_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notes.contains("the backup runs at 03:00"), "{notes}");
    let csrf = csrf_of(&notes);
    let note_id = {
        let at = notes.find("the backup runs at 03:00").unwrap();
        let start =
            notes[..at].rfind("action=\"/admin/notes/").unwrap() + "action=\"/admin/notes/".len();
        notes[start..].split('"').next().unwrap().to_string()
    };
    let edit = |csrf: &str, text: &str| {
        http.post(format!("{}/admin/notes/{note_id}", server.base))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf), ("text", text)])
            .send()
    };
    assert_eq!(
        edit("forged", "hacked").await.unwrap().status(),
        403,
        "a POST without the session's CSRF token changes nothing"
    );
    assert_eq!(
        edit(&csrf, "the backup runs at 04:30")
            .await
            .unwrap()
            .status(),
        303
    );
    let found = server.ask("ops", "/recall backup").await;
    assert!(
        found.contains("04:30") && !found.contains("03:00"),
        "{found}"
    );
    let r = http
        .post(format!("{}/admin/notes/{note_id}/delete", server.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let listed = server.ask("ops", "/memory").await;
    assert!(
        listed.contains("1 note") && listed.contains("pager"),
        "{listed}"
    );

    // A failed event shows in the inbox and runs again on "retry". (The agent answers model
    // failures itself, so the failure is written into the inbox directly.)
    fake.set_default(Reply::text("the first try"));
    let first = server.ask("flaky", "hello there").await;
    assert_eq!(first, "the first try");
    let db = format!("sqlite://{}/data/ecdysis.db", dir.path().display());
    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query(
        "UPDATE inbox SET status = 'failed', error = 'the model was down'
         WHERE id = (SELECT MAX(id) FROM inbox)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    fake.set_default(Reply::text("the second try worked"));
    let inbox = get("/admin/inbox?status=failed")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(inbox.contains("hello there"), "{inbox}");
    let event = {
        let start = inbox.find("action=\"/admin/inbox/").unwrap() + "action=\"/admin/inbox/".len();
        inbox[start..].split('/').next().unwrap().to_string()
    };
    let r = http
        .post(format!("{}/admin/inbox/{event}/retry", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let messages = server.wait_replies("flaky", 2).await;
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(last["text"], "the second try worked");
    let r = http
        .post(format!("{}/admin/inbox/{event}/retry", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a retried event is no longer failed");

    // Every page renders.
    for path in [
        "/admin",
        "/admin/conversations",
        "/admin/memory",
        "/admin/usage",
        "/admin/inbox?status=done",
        "/admin/workspaces",
        "/admin/installations",
    ] {
        let r = get(path).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let usage = get("/admin/usage")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(usage.contains("claude-test"), "{usage}");

    // Logging out ends the session in the browser.
    let r = http
        .post(format!("{}/admin/logout", server.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
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
}

#[tokio::test]
async fn admin_is_off_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("ECDYSIS_CHROMIUM", "/nonexistent/chromium")]).await;
    for path in ["/admin", "/admin/login", "/admin/conversations"] {
        let r = client()
            .get(format!("{}{path}", server.base))
            .bearer_auth("anything")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

/// `/api/admin/*`: what the pages show, as JSON, for the admin token only.
#[tokio::test]
async fn admin_json_api_answers_what_the_pages_show() {
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(Reply::text("noted"));
    let dir = tempfile::tempdir().unwrap();
    let base_url = fake.anthropic_base_url();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_ADMIN_TOKEN", TOKEN),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-anthropic-key"),
            ("ANTHROPIC_BASE_URL", base_url.as_str()),
        ],
    )
    .await;
    server.ask("api-room", "hello there").await;
    server.ask("api-room", "/remember the api works").await;
    let http = client();
    let api = |path: &str| {
        http.get(format!("{}/api/admin/{path}", server.base))
            .bearer_auth(TOKEN)
    };
    let json = |path: &'static str| {
        let request = api(path);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            r.json::<serde_json::Value>().await.unwrap()
        }
    };

    // Strangers get 401, for every route.
    for path in [
        "overview",
        "conversations",
        "conversations/1",
        "memory",
        "memory/notes?channel=web:local:api-room",
        "usage",
        "access",
        "inbox",
        "schedules",
        "installations",
    ] {
        let url = format!("{}/api/admin/{path}", server.base);
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "{path}");
    }

    let overview = json("overview").await;
    assert_eq!(overview["storage"], "sqlite");
    assert_eq!(overview["inbox"]["done"], 2, "{overview}");
    assert!(
        overview["last_events"][0]["platform"] == "web",
        "{overview}"
    );

    let list = json("conversations").await;
    let room = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"]["channel"] == "api-room")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert_eq!(room["messages"], 4, "{room}");
    let id = room["id"].as_i64().unwrap();
    let transcript = api(&format!("conversations/{id}"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let texts: Vec<&str> = transcript["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "hello there", "{transcript}");
    assert_eq!(texts[1], "noted");
    assert!(transcript["next_after"].is_null());
    let missing = api("conversations/999999").send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let memory = json("memory").await;
    assert_eq!(memory["channels"][0]["notes"], 1, "{memory}");
    let notes = json("memory/notes?channel=web:local:api-room").await;
    assert_eq!(notes["notes"][0]["text"], "the api works", "{notes}");
    let bad = api("memory/notes").send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let usage = json("usage").await;
    assert!(!usage["usage"].as_array().unwrap().is_empty(), "{usage}");
    let inbox = json("inbox?status=done").await;
    assert_eq!(inbox["events"].as_array().unwrap().len(), 2, "{inbox}");
    assert_eq!(
        api("inbox?status=bogus").send().await.unwrap().status(),
        400
    );
    for (path, key) in [
        ("access", "pending"),
        ("schedules", "schedules"),
        ("installations", "installations"),
    ] {
        let body = json(path).await;
        assert!(body[key].is_array(), "{path}: {body}");
    }

    // A wrong token is refused too (and counts as a failed login).
    let wrong = http
        .get(format!("{}/api/admin/overview", server.base))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

/// Signs Access JWTs the way Cloudflare does (RS256, a key id) and serves the team's certs.
struct FakeAccess {
    team_url: String,
    certs_fetched: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    team_key: ring::signature::RsaKeyPair,
    forger_key: ring::signature::RsaKeyPair,
}

const AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";

impl FakeAccess {
    async fn start() -> Self {
        use base64::Engine;
        let load = |name: &str| {
            let der = std::fs::read(format!("tests/fixtures/{name}.pk8")).unwrap();
            ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap()
        };
        let team_key = load("cf_access_team");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = team_key.public().into();
        let certs = serde_json::json!({
            "keys": [{
                "kid": "team-key-1", "kty": "RSA", "alg": "RS256", "use": "sig",
                "n": b64(&public.n),
                "e": b64(&public.e),
            }],
        });
        let certs_fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = certs_fetched.clone();
        let app = Router::new().route(
            "/cdn-cgi/access/certs",
            get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let certs = certs.clone();
                async move { axum::Json(certs) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAccess {
            team_url: format!("http://{address}"),
            certs_fetched,
            team_key,
            forger_key: load("cf_access_forger"),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// A JWT with these claims, signed by `key` under key id `kid`.
    fn sign(
        key: &ring::signature::RsaKeyPair,
        kid: &str,
        alg: &str,
        claims: serde_json::Value,
    ) -> String {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = serde_json::json!({ "alg": alg, "kid": kid, "typ": "JWT" });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .unwrap();
        format!("{input}.{}", b64(&signature))
    }

    fn claims(&self, exp_in: i64) -> serde_json::Value {
        let now = Self::now();
        serde_json::json!({
            "aud": [AUD], "iss": self.team_url, "sub": "7335d417-61da-459d-899c-0a01c76a2f94",
            "email": "admin@example.com", "iat": now - 10, "nbf": now - 10, "exp": now + exp_in,
            "type": "app", "identity_nonce": "6ei69kawdKzMIAPF",
        })
    }

    fn valid(&self) -> String {
        Self::sign(&self.team_key, "team-key-1", "RS256", self.claims(600))
    }
}

/// Cloudflare Access as the admin login: a valid Access JWT (header or cookie) opens the pages
/// and the JSON API without the admin token; a forged, expired or misaddressed one is 401.
#[tokio::test]
async fn cloudflare_access_jwts_open_admin_and_bad_ones_get_401() {
    let access = FakeAccess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_CF_ACCESS_TEAM", access.team_url.as_str()),
            ("ECDYSIS_CF_ACCESS_AUD", AUD),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_SANDBOX", "off"),
        ],
    )
    .await;
    let http = client();
    let with_jwt = |path: &str, jwt: &str| {
        http.get(format!("{}{path}", server.base))
            .header("Cf-Access-Jwt-Assertion", jwt)
    };

    // A valid token: the overview page and the JSON API, and the cookie Access sets works too.
    let valid = access.valid();
    let page = with_jwt("/admin", &valid).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", server.log());
    assert!(page.text().await.unwrap().contains("Overview"));
    let api = with_jwt("/api/admin/overview", &valid)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    let by_cookie = http
        .get(format!("{}/api/admin/overview", server.base))
        .header("cookie", format!("CF_Authorization={valid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    assert_eq!(
        access
            .certs_fetched
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the team's certs are cached"
    );

    // Bad tokens: 401 on pages and the API alike.
    let mut wrong_aud = access.claims(600);
    wrong_aud["aud"] = serde_json::json!(["another-application"]);
    let mut wrong_iss = access.claims(600);
    wrong_iss["iss"] = serde_json::json!("https://evil.cloudflareaccess.com");
    let mut no_exp = access.claims(600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let unsigned = {
        let parts: Vec<&str> = valid.split('.').collect();
        format!("{}.{}.", parts[0], parts[1])
    };
    let tampered = {
        use base64::Engine;
        let mut claims = access.claims(600);
        claims["email"] = serde_json::json!("mallory@example.com");
        let parts: Vec<&str> = valid.split('.').collect();
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{body}.{}", parts[0], parts[2])
    };
    let bad = [
        (
            "expired",
            FakeAccess::sign(&access.team_key, "team-key-1", "RS256", access.claims(-120)),
        ),
        (
            "forged",
            FakeAccess::sign(
                &access.forger_key,
                "team-key-1",
                "RS256",
                access.claims(600),
            ),
        ),
        (
            "unknown key",
            FakeAccess::sign(&access.forger_key, "forger", "RS256", access.claims(600)),
        ),
        (
            "wrong audience",
            FakeAccess::sign(&access.team_key, "team-key-1", "RS256", wrong_aud),
        ),
        (
            "wrong issuer",
            FakeAccess::sign(&access.team_key, "team-key-1", "RS256", wrong_iss),
        ),
        (
            "no expiry",
            FakeAccess::sign(&access.team_key, "team-key-1", "RS256", no_exp),
        ),
        ("no signature", unsigned),
        ("tampered claims", tampered),
        ("not a JWT", "garbage".to_string()),
    ];
    for (what, jwt) in &bad {
        for path in ["/admin", "/api/admin/overview", "/admin/conversations"] {
            let r = with_jwt(path, jwt).send().await.unwrap();
            assert_eq!(r.status(), 401, "{what} on {path}");
        }
    }
    // Tokens with an unknown key id (27 requests) did not make a request to Cloudflare each:
    // the certs were fetched moments ago, so they are not fetched again.
    let fetched = access
        .certs_fetched
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched, 1, "an unknown key id refetches at most every 10 s");

    // No token: pages go to the login form, the API is 401, and a form post needs its CSRF
    // token even from an Access login.
    let r = http
        .get(format!("{}/admin", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{}/api/admin/overview", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/admin/inbox/1/retry", server.base))
        .header("Cf-Access-Jwt-Assertion", &valid)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
