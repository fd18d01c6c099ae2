//! Catch-up after downtime: how long it takes to read 10 Slack channels and 10 Discord
//! channels with 200 messages each said while ecdysis was away, and to put every one of them
//! into the inbox (SQLite, durable). The fakes answer over loopback HTTP; the core is the real
//! one (`App`, bus intake, guard rails), with its workers off so only catch-up is measured.
//!
//! `cargo bench --bench catch_up` (`-- --channels 10 --messages 200 --runs 3` to change it)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::discord::{APPLICATION_ID, FakeDiscord, TOKEN};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const SECRET: &str = "bench-signing-secret";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(env: &[(String, String)]) -> Config {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    Config::load_with(None, &|name| vars.get(name).cloned()).unwrap()
}

fn base_env(dir: &std::path::Path, messages: usize) -> Vec<(String, String)> {
    [
        ("ECDYSIS_DATA_DIR", dir.join("data").display().to_string()),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("ECDYSIS_DM_POLICY", "open".into()),
        ("ECDYSIS_BUS_MAX_QUEUED", "1000000".into()),
        ("ECDYSIS_CATCH_UP_MESSAGES", messages.to_string()),
        // No rate limit in the way of 2,000 messages from one user.
        ("ECDYSIS_RATE_USER_PER_MINUTE", "0".into()),
        ("ECDYSIS_RATE_CHANNEL_PER_MINUTE", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Serve the app's routes on a loopback port; its base URL.
async fn serve(app: &App) -> String {
    let router = app.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

struct Run {
    elapsed: Duration,
    fetched: usize,
    submitted: usize,
    stored: i64,
}

async fn slack_run(channels: usize, messages: usize) -> Run {
    let slack = FakeSlack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(dir.path(), messages);
    env.extend([
        ("SLACK_SIGNING_SECRET".to_string(), SECRET.to_string()),
        ("SLACK_BOT_TOKEN".to_string(), "xoxb-bench".to_string()),
        ("SLACK_API_URL".to_string(), slack.api_url()),
    ]);
    let app = App::open(config(&env)).await.unwrap();
    let base = serve(&app).await;
    let client = reqwest::Client::new();
    // Each DM was heard from once, live.
    for c in 0..channels {
        let channel = format!("D{c}");
        let ts = slack.post_user_message(&channel, None, "U1", "hello");
        let body = json!({
            "type": "event_callback", "team_id": "T1", "event_id": format!("Ev{c}"),
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
            "event": {"type": "message", "channel_type": "im", "user": "U1", "text": "hello",
                      "ts": ts, "channel": channel},
        })
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let r = client
            .post(format!("{base}/slack/events"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", sign(SECRET, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Then the bot was away.
    for c in 0..channels {
        for m in 0..messages {
            slack.post_user_message(&format!("D{c}"), None, "U1", &format!("missed {m}"));
        }
    }
    let slack_adapter = app.slack.clone().unwrap();
    let started = Instant::now();
    let report = slack_adapter.catch_up_run().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.places, channels);
    Run {
        elapsed,
        fetched: report.fetched,
        submitted: report.submitted,
        stored: app.store.open_event_count().await.unwrap(),
    }
}

async fn discord_run(channels: usize, messages: usize) -> Run {
    let fake = FakeDiscord::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = base_env(dir.path(), messages);
    env.extend([
        ("DISCORD_TOKEN".to_string(), TOKEN.to_string()),
        ("DISCORD_API_URL".to_string(), fake.url()),
        (
            "DISCORD_APPLICATION_ID".to_string(),
            APPLICATION_ID.to_string(),
        ),
    ]);
    let app = App::open(config(&env)).await.unwrap();
    let gateway = ecdysis::platforms::discord::start(&app.config, app.discord.as_ref())
        .await
        .unwrap();
    assert!(fake.wait_identified(1).await);
    // Each guild channel was heard from once, live (ambient chatter is not stored, so a
    // mention: the bot answers it in a thread, whose replies are what catch-up reads).
    let mut threads = Vec::new();
    for c in 0..channels {
        let channel = format!("{}", 1_300_000_000_000_000_000u64 + c as u64);
        threads.push(fake.say_in_guild(&channel, "hello", true));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.store.open_event_count().await.unwrap() < channels as i64 {
        assert!(Instant::now() < deadline, "live mentions not stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The threads exist (as if the bot had answered in them), then the bot was away.
    for (c, thread) in threads.iter().enumerate() {
        let parent = format!("{}", 1_300_000_000_000_000_000u64 + c as u64);
        fake.add_thread(thread, &parent);
        for m in 0..messages {
            fake.say_in_guild_while_away(thread, &format!("missed {m}"), true);
        }
    }
    let discord = app.discord.clone().unwrap();
    let started = Instant::now();
    let report = discord.catch_up_run().await.unwrap();
    let elapsed = started.elapsed();
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    Run {
        elapsed,
        fetched: report.fetched,
        submitted: report.submitted,
        stored: app.store.open_event_count().await.unwrap(),
    }
}

fn print(platform: &str, channels: usize, messages: usize, runs: &mut [Run]) {
    runs.sort_by_key(|r| r.elapsed);
    for r in runs.iter() {
        assert_eq!(
            r.fetched,
            channels * messages,
            "{platform}: every message read"
        );
        assert_eq!(
            r.submitted,
            channels * messages,
            "{platform}: every message taken"
        );
    }
    let median = &runs[runs.len() / 2];
    println!(
        "{platform:<8} {channels} channels × {messages} missed: median {:>7.1} ms ({:>6.0} messages/s), best {:>7.1} ms, worst {:>7.1} ms; inbox {} events",
        median.elapsed.as_secs_f64() * 1e3,
        (channels * messages) as f64 / median.elapsed.as_secs_f64(),
        runs[0].elapsed.as_secs_f64() * 1e3,
        runs[runs.len() - 1].elapsed.as_secs_f64() * 1e3,
        median.stored,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let channels = arg("--channels", 10);
    let messages = arg("--messages", 200);
    let runs = arg("--runs", 3).max(1);
    let mut slack = Vec::new();
    for _ in 0..runs {
        slack.push(slack_run(channels, messages).await);
    }
    print("Slack", channels, messages, &mut slack);
    let mut discord = Vec::new();
    for _ in 0..runs {
        discord.push(discord_run(channels, messages).await);
    }
    print("Discord", channels, messages, &mut discord);
}
