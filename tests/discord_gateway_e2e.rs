//! The Discord gateway connects only where the configured API (`DISCORD_API_URL`) says: while
//! its `GET /api/v10/gateway/bot` fails, the bot stays offline and retries with backoff (never
//! falling back to Discord's own `wss://gateway.discord.gg`); `/readyz` shows the
//! gateway down; once the API recovers, the bot connects to the gateway the API names.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis_testkit::discord::{APPLICATION_ID, FakeDiscord, TOKEN};
use serde_json::Value;

struct Running {
    app: App,
    base: String,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve(fake: &FakeDiscord) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let vars: HashMap<&str, String> = [
        (
            "ECDYSIS_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("DISCORD_TOKEN", TOKEN.into()),
        ("DISCORD_API_URL", fake.url()),
        ("DISCORD_APPLICATION_ID", APPLICATION_ID.into()),
    ]
    .into_iter()
    .collect();
    let config = Config::load_with(None, &|name| vars.get(name).cloned()).unwrap();
    let app = App::open(config).await.unwrap();
    let router = app.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Running {
        app,
        base,
        server,
        _dir: dir,
    }
}

/// Start the gateway of `running` and wait for its first session.
async fn connected(running: &Running, fake: &FakeDiscord) -> ecdysis_discord::GatewayHandle {
    let gateway =
        ecdysis::platforms::discord::start(&running.app.config, running.app.discord.as_ref())
            .await
            .unwrap()
            .expect("a token starts the gateway");
    assert!(fake.wait_identified(1).await, "the bot never identified");
    gateway
}

/// The Discord part of `/readyz`.
async fn discord_health(base: &str) -> Value {
    let body: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["adapters"]["discord"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gateway_call_keeps_the_bot_offline_until_the_configured_api_answers() {
    let fake = FakeDiscord::start().await.unwrap();
    fake.start_outage("gateway", 500);
    let running = serve(&fake).await;
    let gateway =
        ecdysis::platforms::discord::start(&running.app.config, running.app.discord.as_ref())
            .await
            .unwrap()
            .expect("a token starts the gateway");

    // Retried with backoff against the configured API: three calls take about 1.5 s.
    let asked = fake
        .wait_until(Duration::from_secs(20), |f| {
            (f.requests_to("/gateway/bot") >= 3).then_some(())
        })
        .await;
    assert!(
        asked.is_some(),
        "the gateway URL was asked for again and again"
    );
    let health = discord_health(&running.base).await;
    let stage = health["gateway"].as_str().unwrap_or_default().to_string();
    assert!(
        stage.starts_with("down: no gateway URL from http://127.0.0.1:"),
        "/readyz shows the gateway down: {health}"
    );
    assert!(stage.contains("500"), "{health}");
    assert!(health["gateway_url"].is_null(), "{health}");
    assert_eq!(fake.connections(), 0, "nothing connected meanwhile");

    // The API recovers: the bot connects to the gateway it names, on loopback.
    fake.end_outage("gateway");
    assert!(fake.wait_identified(1).await, "the bot identified");
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = discord_health(&running.base).await;
        if health["gateway"] == "connected" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["gateway"], "connected", "{health}");
    let expected = format!("ws://{}/gateway", fake.url().trim_start_matches("http://"));
    assert_eq!(health["gateway_url"], expected.as_str(), "{health}");
    assert_eq!(fake.connections(), 1);

    gateway.shutdown().await;
    running.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_waiting_for_its_url_shuts_down_at_once() {
    let fake = FakeDiscord::start().await.unwrap();
    fake.start_outage("gateway", 503);
    let running = serve(&fake).await;
    let gateway =
        ecdysis::platforms::discord::start(&running.app.config, running.app.discord.as_ref())
            .await
            .unwrap()
            .expect("a token starts the gateway");
    let asked = fake
        .wait_until(Duration::from_secs(20), |f| {
            (f.requests_to("/gateway/bot") >= 2).then_some(())
        })
        .await;
    assert!(asked.is_some());
    let started = Instant::now();
    gateway.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?}",
        started.elapsed()
    );
    let calls = fake.requests_to("/gateway/bot");
    fake.end_outage("gateway");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        fake.requests_to("/gateway/bot"),
        calls,
        "no call after shutdown"
    );
    assert_eq!(fake.connections(), 0);
    running.server.abort();
}

/// A gateway that keeps the socket open but stops acknowledging heartbeats (a "zombie"
/// connection) is given up within two heartbeat intervals, and a new connection follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_dropped_within_two_heartbeats_and_replaced() {
    let interval = Duration::from_millis(1_000);
    let fake = FakeDiscord::start_with_heartbeat(interval).await.unwrap();
    let running = serve(&fake).await;
    let gateway = connected(&running, &fake).await;
    // Let a heartbeat be acknowledged, then fall silent with the socket left open.
    let acked = fake
        .wait_until(Duration::from_secs(10), |f| {
            (f.heartbeats() >= 1).then_some(())
        })
        .await;
    assert!(acked.is_some(), "no heartbeat");
    let (connections, closes) = (fake.connections(), fake.client_closes());
    fake.silence_gateway();
    let silenced = Instant::now();
    // Detected: the bot gives up on the silent socket. Either sign counts: the fake ends an old
    // connection itself when a new one arrives, so whether the client's close is seen first
    // depends on timing.
    let dropped = fake
        .wait_until(Duration::from_secs(15), |f| {
            (f.client_closes() > closes || f.connections() > connections).then_some(())
        })
        .await;
    let took = silenced.elapsed();
    assert!(dropped.is_some(), "the bot kept the zombie connection");
    // The missing ACK is noticed at the next heartbeat: within two intervals, with room for a
    // loaded machine.
    assert!(
        took <= 2 * interval + Duration::from_millis(4_000),
        "the zombie was noticed after {took:?}"
    );
    // Replaced: a new connection resumes at once.
    let back = fake
        .wait_until(Duration::from_secs(20), |f| {
            (f.connections() > connections).then_some(())
        })
        .await;
    assert!(back.is_some(), "no new connection after the zombie");
    gateway.shutdown().await;
    running.server.abort();
}

/// A close code that connecting again cannot fix (here 4004, a bad token) ends the gateway:
/// `/readyz` says why, and the bot does not hammer Discord with new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_gateway_and_readyz_says_why() {
    let fake = FakeDiscord::start().await.unwrap();
    let running = serve(&fake).await;
    let gateway = connected(&running, &fake).await;
    fake.close_gateway(4004, "Authentication failed.");
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let health = discord_health(&running.base).await;
        if health["gateway"]
            .as_str()
            .unwrap_or_default()
            .starts_with("failed")
        {
            break health;
        }
        assert!(Instant::now() < deadline, "still {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stage = health["gateway"].as_str().unwrap();
    assert!(stage.contains("DISCORD_TOKEN"), "{stage}");
    // A connection that was live is otherwise resumed at once: none comes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(fake.connections(), 1);
    assert_eq!(fake.identifies(), 1);
    gateway.shutdown().await;
    running.server.abort();
}

/// Discord's requests are followed: op 1 gets a heartbeat at once, op 7 (reconnect) and a
/// resumable op 9 get a new connection that resumes the session (no new IDENTIFY), and a
/// close with an ordinary code is resumed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_requests_reconnects_and_resumable_closes_keep_the_session() {
    // Heartbeats of its own only every 30 s, so one within seconds answers the request.
    let fake = FakeDiscord::start_with_heartbeat(Duration::from_secs(30))
        .await
        .unwrap();
    let running = serve(&fake).await;
    let gateway = connected(&running, &fake).await;
    let wait = Duration::from_secs(15);

    let beats = fake.heartbeats();
    fake.send_op(1, Value::Null);
    let beat = fake
        .wait_until(wait, |f| (f.heartbeats() > beats).then_some(()))
        .await;
    assert!(beat.is_some(), "no heartbeat after op 1");

    // The `n`th RESUME (n from 1) arrives.
    let resumes = async |n: u32| {
        fake.wait_until(wait, |f| (f.resumes() >= n).then_some(()))
            .await
            .is_some()
    };
    fake.send_op(7, Value::Null);
    assert!(resumes(1).await, "op 7 was not followed by a RESUME");
    fake.send_op(9, Value::Bool(true));
    assert!(
        resumes(2).await,
        "a resumable op 9 was not followed by a RESUME"
    );
    fake.close_gateway(4000, "Unknown error");
    assert!(
        resumes(3).await,
        "a 4000 close was not followed by a RESUME"
    );

    assert_eq!(fake.identifies(), 1, "the session was kept");
    assert_eq!(fake.connections(), 4);
    // RESUMED follows the fake's count of RESUMEs: wait for the bot to have read it.
    let deadline = Instant::now() + wait;
    loop {
        let health = discord_health(&running.base).await;
        if health["gateway"] == "connected" && health["resumes"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await;
    running.server.abort();
}
