//! Discord adapter benchmark against the fake Discord (REST + gateway websocket on 127.0.0.1)
//! and the instant fake model: the adapter's real gateway and REST code, the real bus and SQLite.
//!
//! Prints, at a fixed rate: MESSAGE_CREATE (a mention in a channel) → reply POST latency
//! (thread start, typing and the model's answer included), INTERACTION_CREATE (`/remember`) →
//! deferral and → edit of the response, each p50/p99/max; and the process's RSS.
//! Run: `cargo bench --bench discord` (`-- quick` for fewer messages).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis_testkit::discord::{APPLICATION_ID, CHANNEL_ID, FakeDiscord, TOKEN};
use ecdysis_testkit::llm::FakeLlm;
use serde_json::json;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>, expected: usize) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<44} n={:<5} p50={:>6.2} ms  p99={:>6.2} ms  max={:>6.2} ms{}",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
        if samples.len() < expected {
            format!("  ({} missing!)", expected - samples.len())
        } else {
            String::new()
        }
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (count, rate) = if quick { (200, 50u64) } else { (1_000, 50u64) };
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = FakeDiscord::start().await.expect("fake Discord");
    let llm = FakeLlm::start().await.expect("fake model");
    let env: HashMap<&str, String> = HashMap::from([
        (
            "ECDYSIS_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("ECDYSIS_MODEL", "anthropic/claude-bench".into()),
        ("ANTHROPIC_API_KEY", "bench".into()),
        ("ANTHROPIC_BASE_URL", llm.anthropic_base_url()),
        ("DISCORD_TOKEN", TOKEN.into()),
        ("DISCORD_API_URL", fake.url()),
        ("DISCORD_APPLICATION_ID", APPLICATION_ID.into()),
    ]);
    let config = Config::load_with(None, &|name| env.get(name).cloned()).expect("config");
    let app = App::open(config).await.expect("app");
    let workers = app.bus.start().await.expect("workers");
    let gateway = ecdysis::platforms::discord::start(&app.config, app.discord.as_ref())
        .await
        .expect("gateway");
    assert!(fake.wait_identified(1).await, "the bot did not identify");
    let rss_start = rss_kib("VmRSS:");
    let channels: Vec<String> = std::iter::once(CHANNEL_ID.to_string())
        .chain((0..9).map(|_| fake.next_id()))
        .collect();

    // Warm-up: first sight of each channel, first model call, SQLite caches.
    for (n, channel) in channels.iter().enumerate() {
        fake.say_in_guild(channel, &format!("warm-up {n}"), true);
    }
    fake.wait_posted(channels.len()).await;

    // Mentions at a fixed rate, spread over ten channels: each starts a thread and is answered
    // by the model in it.
    let before = fake.posted().len();
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for n in 0..count {
        tick.tick().await;
        let channel = &channels[n % channels.len()];
        let started = Instant::now();
        let id = fake.say_in_guild(channel, &format!("question {n}"), true);
        sent.push((id, started));
    }
    fake.wait_until(Duration::from_secs(60), |f| {
        (f.posted().len() >= before + count).then_some(())
    })
    .await;
    let posted: HashMap<String, Instant> = fake
        .posted()
        .into_iter()
        .map(|p| (p.channel.clone(), p.at))
        .collect();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0)| posted.get(id).map(|at| at.saturating_duration_since(*t0)))
        .collect();
    println!(
        "Discord adapter, {count} events at {rate}/s, fake gateway + REST + instant model, SQLite"
    );
    report(
        "MESSAGE_CREATE mention → reply POST in thread",
        latencies,
        count,
    );

    // Slash commands at the same rate.
    let slash_count = count / 2;
    let mut commands: Vec<(String, String, Instant)> = Vec::with_capacity(slash_count);
    for n in 0..slash_count {
        tick.tick().await;
        let channel = &channels[n % channels.len()];
        let started = Instant::now();
        let (id, token) = fake.slash(
            channel,
            "remember",
            json!([{ "name": "text", "type": 3, "value": format!("note {n}") }]),
        );
        commands.push((id, token, started));
    }
    fake.wait_until(Duration::from_secs(60), |f| {
        let edits = f.posted().iter().filter(|p| p.via == "original").count();
        (edits >= slash_count).then_some(())
    })
    .await;
    let callbacks: HashMap<String, Instant> = fake
        .callbacks()
        .into_iter()
        .map(|c| (c.interaction_id, c.at))
        .collect();
    let edits: HashMap<String, Instant> = fake
        .posted()
        .into_iter()
        .filter(|p| p.via == "original")
        .filter_map(|p| Some((p.token?, p.at)))
        .collect();
    let deferred = commands
        .iter()
        .filter_map(|(id, _, t0)| {
            callbacks
                .get(id)
                .map(|at| at.saturating_duration_since(*t0))
        })
        .collect();
    let completed = commands
        .iter()
        .filter_map(|(_, token, t0)| edits.get(token).map(|at| at.saturating_duration_since(*t0)))
        .collect();
    report(
        "INTERACTION_CREATE /remember → deferral (type 5)",
        deferred,
        slash_count,
    );
    report(
        "INTERACTION_CREATE /remember → PATCH @original",
        completed,
        slash_count,
    );
    println!(
        "RSS: {} MiB at start, {} MiB after, peak {} MiB (fakes and test client in the same process)",
        rss_start / 1024,
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024
    );
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    workers.shutdown(Duration::from_secs(5)).await;
}
