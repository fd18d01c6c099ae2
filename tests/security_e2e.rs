//! No secret in logs or error pages: a full `serve` session at `RUST_LOG=debug` with every kind
//! of secret configured (admin token, model key, Slack tokens and signing secret, the secret
//! key, a Postgres password) goes through the web chat, the model (answers and failures),
//! Slack (signed and forged requests, Socket Mode, a slash command), the admin pages (good and
//! bad logins), the operational routes and error paths; then neither the process's log nor
//! any response body, nor `ecdysis doctor`'s output, contains any secret value.

mod common;

use std::time::Duration;

use common::server::Server;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{FakeLlm, Reply};
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
