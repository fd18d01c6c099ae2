//! No secret in logs or error pages: a full `serve` session at `RUST_LOG=debug` with every kind
//! of secret configured (admin token, model key, Slack tokens and signing secret, the secret
//! key, a Postgres password) goes through the web chat, the model (answers and failures),
//! Slack (signed and forged requests, Socket Mode, a slash command), the admin pages (good and
//! bad logins), the operational routes and error paths; then neither the process's log nor
//! any response body, nor `ecdysis doctor`'s output, contains any secret value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::Duration;

use common::server::Server;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{Api, FakeLlm, Reply};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const ADMIN_TOKEN: &str = "adm-5ecret-3f9c1d7e2b";
const MODEL_KEY: &str = "sk-ant-5ecret-a81c44f0";
const BOT_TOKEN: &str = "xoxb-5ecret-77d0e1b2c3";
const APP_TOKEN: &str = "xapp-5ecret-4b2d9e0a11";
const SIGNING_SECRET: &str = "sig-5ecret-9a8b7c6d5e";
const CLIENT_SECRET: &str = "cls-5ecret-0f1e2d3c4b";
const SECRET_KEY: &str = "key-5ecret-5566778899aabbccddeeff";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The test Postgres in a fresh schema; its URL carries the role's password.
async fn postgres_with_password() -> Option<String> {
    let base = common::postgres_url()?;
    Some(common::fresh_postgres(&base).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_error_pages() {
    // Without Postgres (a laptop): SQLite, and the URL password is not exercised.
    let database_url = postgres_with_password().await.unwrap_or_default();
    let llm = FakeLlm::start().await.unwrap();
    let slack = FakeSlack::start().await.unwrap();
    let (llm_url, api) = (llm.anthropic_base_url(), slack.api_url());
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("RUST_LOG", "debug"),
        ("ECDYSIS_ADMIN_TOKEN", ADMIN_TOKEN),
        ("ECDYSIS_SECRET_KEY", SECRET_KEY),
        ("ECDYSIS_MODEL", "anthropic/claude-test"),
        ("ANTHROPIC_API_KEY", MODEL_KEY),
        ("ANTHROPIC_BASE_URL", &llm_url),
        ("SLACK_BOT_TOKEN", BOT_TOKEN),
        ("SLACK_APP_TOKEN", APP_TOKEN),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ("SLACK_CLIENT_ID", "1234.5678"),
        ("SLACK_CLIENT_SECRET", CLIENT_SECRET),
        ("SLACK_API_URL", &api),
        ("ECDYSIS_SANDBOX", "off"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ("ECDYSIS_AGENT_MAX_RETRIES", "0"),
    ];
    if !database_url.is_empty() {
        env.push(("DATABASE_URL", &database_url));
    }
    let server = Server::start(dir.path(), &env).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut bodies = Vec::new();
    let base = server.base.clone();

    // The web chat and the model: an answer, then failures of several kinds.
    llm.set_default(Reply::text("all good"));
    assert_eq!(server.ask("sec", "hello").await, "all good");
    llm.push(Reply::status(401));
    bodies.push(server.ask("sec", "again").await);
    llm.push(Reply::status(500));
    bodies.push(server.ask("sec", "and again").await);
    llm.push(Reply::raw("{not json"));
    bodies.push(server.ask("sec", "once more").await);
    bodies.push(
        server
            .ask("sec", "/remember the vault is in the basement")
            .await,
    );
    bodies.push(server.ask("sec", "/status").await);

    // Slack: Socket Mode connects with the app token; signed, forged and stale requests.
    assert!(
        slack
            .wait_socket_connections(1, Duration::from_secs(15))
            .await
    );
    let event = json!({
        "token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": "EvSec1", "event_time": now(),
        "event": {"type": "app_mention", "user": "U1", "channel": "C1",
                  "text": "<@UBOT> /recall vault", "ts": "1700000000.000100"}
    })
    .to_string();
    for (secret, ts, expect) in [
        (SIGNING_SECRET, now(), 200),
        ("wrong-secret", now(), 401),
        (SIGNING_SECRET, now() - 3600, 401),
    ] {
        let r = http
            .post(format!("{base}/slack/events"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(secret, ts, event.as_bytes()))
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expect);
        bodies.push(r.text().await.unwrap());
    }
    slack
        .wait_calls("chat.postMessage", 1, Duration::from_secs(20))
        .await;
    let command = "command=%2Fecdysis&text=status&team_id=T1&channel_id=C1&user_id=U1&response_url=http%3A%2F%2F127.0.0.1%3A1%2Fnone&trigger_id=1";
    let ts = now();
    let r = http
        .post(format!("{base}/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header(
            "x-slack-signature",
            sign(SIGNING_SECRET, ts, command.as_bytes()),
        )
        .body(command)
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());
    let r = http
        .get(format!("{base}/slack/install"))
        .send()
        .await
        .unwrap();
    bodies.push(format!("{:?}", r.headers()));
    bodies.push(r.text().await.unwrap());
    let r = http
        .get(format!("{base}/slack/oauth/callback?code=bad&state=forged"))
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());

    // Admin: wrong and right logins, bearer, pages, a forged form.
    for token in ["guess", ADMIN_TOKEN] {
        let r = http
            .post(format!("{base}/admin/login"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        bodies.push(format!("{:?}", r.headers()));
        bodies.push(r.text().await.unwrap());
    }
    for path in [
        "/admin",
        "/admin/conversations",
        "/admin/memory",
        "/admin/usage",
        "/admin/inbox?status=done",
        "/admin/workspaces",
        "/admin/installations",
        "/admin/conversations/999999",
        "/admin/artifacts/none",
        "/admin/inbox?status=bogus",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    let r = http
        .post(format!("{base}/admin/notes/1/delete"))
        .header("cookie", "ecdysis_admin=1.2.3")
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());

    // Operations and error paths.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/no/such/route",
        "/api/artifacts/none",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        bodies.push(r.text().await.unwrap());
    }
    for body in ["{\"text\": ", "{\"txt\": 1}"] {
        let r = http
            .post(format!("{base}/api/chat/sec"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        bodies.push(r.text().await.unwrap());
    }
    let r = http
        .post(format!("{base}/api/chat/sec"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"text": "x".repeat(200_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    bodies.push(r.text().await.unwrap());

    // `ecdysis doctor` with the same configuration.
    let mut doctor = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"));
    doctor
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"));
    for (k, v) in &env {
        doctor.env(k, v);
    }
    let output = doctor.output().unwrap();
    bodies.push(String::from_utf8_lossy(&output.stdout).into_owned());
    bodies.push(String::from_utf8_lossy(&output.stderr).into_owned());

    let mut server = server;
    assert!(server.terminate().success());
    let log = server.log();
    assert!(
        log.contains("DEBUG"),
        "the log is at debug level: {}",
        &log[..log.len().min(500)]
    );
    let mut secrets = vec![
        ("admin token", ADMIN_TOKEN),
        ("model key", MODEL_KEY),
        ("bot token", BOT_TOKEN),
        ("app token", APP_TOKEN),
        ("signing secret", SIGNING_SECRET),
        ("client secret", CLIENT_SECRET),
        ("secret key", SECRET_KEY),
    ];
    // The database password as it would show in a leaked URL (`:password@host`).
    let db_secret = url::Url::parse(&database_url)
        .ok()
        .and_then(|u| u.password().map(|p| format!(":{p}@")));
    if let Some(db_secret) = &db_secret {
        secrets.push(("database password", db_secret.as_str()));
    }
    for (what, secret) in &secrets {
        // The distinctive middle part too, in case a value is cut or re-encoded.
        let core = secret
            .find("5ecret")
            .map(|at| &secret[at..])
            .unwrap_or(secret);
        for (place, text) in [("the log", &log)]
            .into_iter()
            .chain(bodies.iter().map(|b| ("a response", b)))
        {
            assert!(
                !text.contains(secret) && !text.contains(core),
                "the {what} appears in {place}:\n{}",
                text.lines()
                    .filter(|l| l.contains(core))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    eprintln!(
        "{} log lines and {} responses checked for {} secrets",
        log.lines().count(),
        bodies.len(),
        secrets.len()
    );
}

const ECHOED_KEY: &str = "sk-ant-5ecret-echoed-31d7c9a2";
const ECHOED_FALLBACK_KEY: &str = "sk-oai-5ecret-echoed-8e44b0f1";

/// Every file of the data directory (the SQLite database and its WAL included), as text.
fn stored_bytes(dir: &std::path::Path) -> String {
    let mut all = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    all
}

/// A model gateway that quotes the API key in its error bodies (401, 500, and a 502 whose
/// key sits where a short snippet would be cut): the user gets a short, clear message, and
/// neither the chat replies, nor anything stored, nor the debug log (JSON) holds either key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_echoing_the_api_key_leaks_it_nowhere() {
    let llm = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (anthropic_url, openai_url) = (llm.anthropic_base_url(), llm.openai_base_url());
    let env = [
        ("RUST_LOG", "debug"),
        // JSON lines, where a secret would show JSON-escaped (the other test reads text).
        ("ECDYSIS_LOG_FORMAT", "json"),
        ("ECDYSIS_MODEL", "anthropic/claude-test"),
        ("ANTHROPIC_API_KEY", ECHOED_KEY),
        ("ANTHROPIC_BASE_URL", anthropic_url.as_str()),
        ("ECDYSIS_FALLBACK_MODELS", "openai/gpt-test"),
        ("OPENAI_API_KEY", ECHOED_FALLBACK_KEY),
        ("OPENAI_BASE_URL", openai_url.as_str()),
        ("ECDYSIS_SANDBOX", "off"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ("ECDYSIS_AGENT_MAX_RETRIES", "0"),
    ];
    let server = Server::start(dir.path(), &env).await;

    // A refused key: not retried, not handed to the fallback.
    llm.push(Reply::echo_header(401, "x-api-key"));
    let refused = server.ask("echo", "hello").await;
    assert!(
        refused.contains("HTTP 401") && refused.contains("ANTHROPIC_API_KEY"),
        "a clear message: {refused}"
    );
    assert!(refused.contains(ecdysis::redact::MASK), "{refused}");
    // A failing primary, then a failing fallback, both echoing their keys.
    llm.set_default_for(Api::Anthropic, Reply::echo_header(500, "x-api-key"));
    llm.set_default_for(Api::OpenAi, Reply::echo_header(500, "authorization"));
    let failed = server.ask("echo", "again").await;
    assert!(failed.contains("HTTP 500"), "{failed}");
    assert!(
        llm.requests().iter().any(|r| r.api == Api::OpenAi),
        "the fallback was tried"
    );
    // The key right where the reply's snippet is cut.
    // (Cut first and masked second, 12 characters of the key would remain.)
    let cut = format!(
        r#"{{"error":{{"message":"{}{ECHOED_KEY}"}}}}"#,
        "x".repeat(148)
    );
    for api in [Api::Anthropic, Api::OpenAi] {
        llm.set_default_for(
            api,
            Reply::Raw {
                status: 502,
                body: cut.clone(),
            },
        );
    }
    let snipped = server.ask("echo", "once more").await;
    assert!(snipped.contains("HTTP 502"), "{snipped}");
    for reply in [&refused, &failed, &snipped] {
        assert!(reply.chars().count() < 700, "short: {reply}");
    }

    let messages = server.messages("echo").await;
    let mut server = server;
    assert!(server.terminate().success());
    let log = server.log();
    assert!(
        log.contains(r#""level":"DEBUG""#),
        "the log is JSON at debug level"
    );
    assert!(
        log.contains("the model API answered with an error"),
        "the log keeps the (masked) body"
    );
    let stored = stored_bytes(&dir.path().join("data"));
    assert!(
        stored.contains("once more"),
        "the transcript is in the data files"
    );
    let messages = serde_json::to_string(&messages).unwrap();
    for key in [ECHOED_KEY, ECHOED_FALLBACK_KEY] {
        let core = &key[key.find("5ecret").unwrap()..];
        for (place, text) in [
            ("a chat reply", refused.as_str()),
            ("a chat reply", failed.as_str()),
            ("a chat reply", snipped.as_str()),
            ("the stored messages", messages.as_str()),
            ("the data directory", stored.as_str()),
            ("the debug log", log.as_str()),
        ] {
            assert!(
                !text.contains(core) && !text.contains(&key[..12]),
                "{key} appears in {place}:\n{}",
                text.lines()
                    .filter(|l| l.contains(core) || l.contains(&key[..12]))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// `ecdysis` with a database URL that carries passwords (user info, `password=`,
/// `sslpassword=`), in forms that fail to open: neither the start-up error nor `doctor`
/// prints them. With the test Postgres, a running server's debug log does not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_url_passwords_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sqlite = format!("sqlite://{}/e.db?password=pw2-query-5ecret", data.display());
    let cases: Vec<(String, Vec<&str>)> = vec![
        (sqlite, vec!["pw2-query-5ecret"]),
        (
            "postgres://u:pw-userinfo-5ecret@127.0.0.1:1/db?sslpassword=ssl-5ecret-key&password=pw2-query-5ecret"
                .into(),
            vec!["pw-userinfo-5ecret", "ssl-5ecret-key", "pw2-query-5ecret"],
        ),
        // Too short to mask as free text: hidden where they stand in the URL.
        (
            "postgres://u:pw@127.0.0.1:1/db?password=pw2".into(),
            vec![":pw@", "password=pw2"],
        ),
    ];
    let run = |args: &[&str], url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .env("ECDYSIS_DATA_DIR", &data)
            .env("ECDYSIS_LISTEN", "127.0.0.1:0")
            .env("ECDYSIS_SANDBOX", "off")
            .env("ECDYSIS_CHROMIUM", "/nonexistent/chromium")
            .env("DATABASE_URL", url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // `serve` and `doctor` for every case at once (an unreachable Postgres takes seconds).
    let children: Vec<_> = cases
        .iter()
        .flat_map(|(url, secrets)| {
            [
                ("serve", run(&["serve"], url), url, secrets),
                ("doctor", run(&["doctor"], url), url, secrets),
            ]
        })
        .collect();
    for (command, child, url, secrets) in children {
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success(), "{command} with {url} fails");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.contains("password=***"),
            "{command} names the URL, masked:\n{text}"
        );
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{command} with {url} printed {secret}:\n{text}"
            );
        }
    }

    // A working Postgres reached with the password in the query string.
    let Some(base) = common::postgres_url() else {
        return;
    };
    let url = url::Url::parse(&common::fresh_postgres(&base).await).unwrap();
    let Some(password) = url.password().map(str::to_string) else {
        return;
    };
    let mut query_form = url.clone();
    query_form.set_password(None).unwrap();
    query_form
        .query_pairs_mut()
        .append_pair("password", &password);
    let server_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        server_dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("DATABASE_URL", query_form.as_str()),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ],
    )
    .await;
    assert!(!server.ask("pg", "/remember it works").await.is_empty());
    assert!(server.terminate().success());
    let log = server.log();
    assert!(log.contains("DEBUG"));
    let leaked = format!("password={password}");
    assert!(
        !log.contains(&leaked),
        "{}",
        log.lines()
            .filter(|l| l.contains(&leaked))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
