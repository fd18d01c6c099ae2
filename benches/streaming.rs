//! Live replies benchmark: a real `ecdysis serve` with the web chat, Slack (native streams, and
//! a second server in `edit` mode) and Discord, the fakes in-process, and the fake model
//! streaming its answers token by token (4 characters an event).
//!
//! Prints, per platform: the time from the model's first text token leaving the fake to the
//! first text visible on the platform (the web chat's first `delta` event read by a client,
//! the fake Slack's or Discord's receipt of the first call carrying text), p50/p99/max over
//! `--runs` answers; and the platform API calls made for one 1,000-token answer streamed at
//! `--token-ms` per token.
//! Run: `cargo bench --bench streaming` (`-- --runs 30 --token-ms 10`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::time::{Duration, Instant};

use ecdysis_slack::signature::sign;
use ecdysis_testkit::discord::{self as fake_discord, FakeDiscord};
use ecdysis_testkit::llm::{FakeLlm, Reply};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const SECRET: &str = "bench-signing-secret";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_090)
}

/// An answer of `tokens` tokens (4 characters each).
fn answer(tokens: usize) -> String {
    let mut text = String::new();
    while text.chars().count() < tokens * 4 {
        text.push_str("sky ");
    }
    let text: String = text.chars().take(tokens * 4).collect();
    // The agent trims its answers.
    text.trim_end().to_string()
}

struct Serve {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(env: &[(&str, String)]) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"));
    command
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("ECDYSIS_SANDBOX", "off")
        .env("ECDYSIS_CHROMIUM", "/nonexistent/chromium")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    // Killed and reaped when dropped, also when it never gets ready.
    let serve = Serve {
        child: command.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{}/readyz", serve.base)).await
            && r.status() == 200
        {
            return serve;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("serve did not get ready");
}

async fn mention(base: &str, n: u64) -> String {
    let ts = format!("1700002000.{n:06}");
    let body = json!({
        "token": "t", "team_id": "T1", "api_app_id": "AFAKE", "type": "event_callback",
        "event_id": format!("EvStream{n}"), "event_time": 1,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
        "event": {
            "type": "app_mention", "user": "U1", "channel": "C1", "ts": ts, "event_ts": ts,
            "text": format!("<@UBOT> question {n}"),
        },
    })
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let r = reqwest::Client::new()
        .post(format!("{base}/slack/events"))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", sign(SECRET, now, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ts
}

/// Text a Slack call shows (start/append Markdown, or a posted message's text).
fn slack_text(call: &ecdysis_testkit::slack::Call) -> String {
    let mut text = call.arg("markdown_text").unwrap_or_default().to_string();
    for chunk in call.args["chunks"].as_array().into_iter().flatten() {
        if chunk["type"] == "markdown_text" {
            text.push_str(chunk["text"].as_str().unwrap_or_default());
        }
    }
    if call.method == "chat.postMessage" {
        text.push_str(call.arg("text").unwrap_or_default());
    }
    text
}

/// Wait until `f` gives a value (polling the fakes' records).
async fn until<T>(timeout: Duration, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The first `delta` of the web chat's live events for the next answer, with its arrival time.
async fn web_first_delta(base: &str, conversation: &str, text: &str) -> Instant {
    let mut events = reqwest::Client::new()
        .get(format!("{base}/api/chat/{conversation}/events"))
        .send()
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/chat/{conversation}"))
        .json(&json!({ "text": text, "user": "bench" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("live events")
            .unwrap()
            .expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        if buffer.contains("event: delta") {
            return Instant::now();
        }
    }
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "  {name:<14} first token → first visible text: p50 {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms  (n={})",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
        samples.len()
    );
}

#[tokio::main]
async fn main() {
    let runs = arg("--runs", 20);
    let skip_latency = std::env::args().any(|a| a == "--calls-only");
    let token_ms = arg("--token-ms", 10);
    let llm = FakeLlm::start().await.unwrap();
    let slack = FakeSlack::start().await.unwrap();
    let slack_edit = FakeSlack::start().await.unwrap();
    let discord = FakeDiscord::start().await.unwrap();
    let model = vec![
        ("ECDYSIS_MODEL", "anthropic/claude-bench".to_string()),
        ("ANTHROPIC_API_KEY", "bench".to_string()),
        ("ANTHROPIC_BASE_URL", llm.anthropic_base_url()),
        ("SLACK_SIGNING_SECRET", SECRET.to_string()),
        ("SLACK_BOT_TOKEN", "xoxb-bench".to_string()),
        // Discord's default DM policy (`pairing`) would answer the bench's DMs with a code.
        ("ECDYSIS_DM_POLICY", "open".to_string()),
    ];
    let mut env = model.clone();
    env.extend([
        ("SLACK_API_URL", slack.api_url()),
        ("DISCORD_TOKEN", fake_discord::TOKEN.to_string()),
        ("DISCORD_API_URL", discord.url()),
        (
            "DISCORD_APPLICATION_ID",
            fake_discord::APPLICATION_ID.to_string(),
        ),
    ]);
    let main = serve(&env).await;
    let mut edit_env = model.clone();
    edit_env.extend([
        ("SLACK_API_URL", slack_edit.api_url()),
        ("ECDYSIS_SLACK_STREAMING", "edit".to_string()),
    ]);
    let edit = serve(&edit_env).await;
    assert!(
        discord.wait_identified(1).await,
        "the gateway did not connect"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "live replies: {runs} answers per platform, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // First token → first visible text: short answers, 5 ms a token.
    let short = || Reply::text(answer(40)).paced(Duration::from_millis(5));
    let mut web = Vec::new();
    let mut native = Vec::new();
    let mut edited = Vec::new();
    let mut dc = Vec::new();
    for n in 0..if skip_latency { 0 } else { runs } {
        llm.set_default(short());
        let seen = web_first_delta(&main.base, &format!("bench{n}"), "hello").await;
        let first = *llm.first_text_times().last().unwrap();
        web.push(seen.saturating_duration_since(first));

        for (server, fake, samples) in [
            (&main, &slack, &mut native),
            (&edit, &slack_edit, &mut edited),
        ] {
            let before = fake.calls().len();
            let tokens_before = llm.first_text_times().len();
            mention(&server.base, n).await;
            let seen = until(Duration::from_secs(30), || {
                fake.calls()[before..]
                    .iter()
                    .find(|c| c.method.starts_with("chat.") && !slack_text(c).trim().is_empty())
                    .map(|c| c.at)
            })
            .await;
            let first = until(Duration::from_secs(30), || {
                llm.first_text_times().get(tokens_before).copied()
            })
            .await;
            samples.push(seen.saturating_duration_since(first));
            // Let the answer finish before the next run.
            until(Duration::from_secs(30), || {
                fake.calls()[before..]
                    .iter()
                    .any(|c| c.method == "chat.stopStream" || c.method == "chat.update")
                    .then_some(())
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        let before = discord.requests().len();
        let tokens_before = llm.first_text_times().len();
        discord.say_in_dm(&format!("question {n}"));
        let seen = until(Duration::from_secs(30), || {
            discord.requests()[before..]
                .iter()
                .find(|r| {
                    r.method == "POST"
                        && r.path.ends_with("/messages")
                        && !r.json["content"]
                            .as_str()
                            .unwrap_or_default()
                            .trim()
                            .is_empty()
                })
                .map(|r| r.at)
        })
        .await;
        let first = until(Duration::from_secs(30), || {
            llm.first_text_times().get(tokens_before).copied()
        })
        .await;
        dc.push(seen.saturating_duration_since(first));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    report("web", web);
    report("slack native", native);
    report("slack edit", edited);
    report("discord", dc);

    // Platform calls for one 1,000-token answer.
    let long = answer(1_000);
    let pace = Duration::from_millis(token_ms);
    println!(
        "calls for one 1,000-token answer at {token_ms} ms a token ({:.1} s of streaming):",
        1_000.0 * token_ms as f64 / 1000.0
    );
    for (name, server, fake) in [
        ("slack native", &main, &slack),
        ("slack edit", &edit, &slack_edit),
    ] {
        llm.set_default(Reply::text(long.clone()).paced(pace));
        let before = fake.calls().len();
        let ts = mention(&server.base, 10_000 + runs).await;
        // Past Slack's message size the answer continues in a second message.
        let pieces = ecdysis_chat::split_text(&long, ecdysis_slack::MAX_TEXT_CHARS);
        until(Duration::from_secs(60), || {
            let messages = fake.thread_messages("C1", &ts);
            let texts: Vec<&str> = messages
                .iter()
                .filter(|m| m["streaming"] != true)
                .filter_map(|m| m["text"].as_str())
                .collect();
            (texts == pieces).then_some(())
        })
        .await;
        let calls: Vec<String> = fake.calls()[before..]
            .iter()
            .filter(|c| c.method.starts_with("chat."))
            .map(|c| c.method.clone())
            .collect();
        println!(
            "  {name:<14} {} calls in {} messages ({})",
            calls.len(),
            pieces.len(),
            summary(&calls)
        );
    }
    llm.set_default(Reply::text(long.clone()).paced(pace));
    let before = discord.requests().len();
    let posted_before = discord.posted().len();
    discord.say_in_dm("the long one");
    let pieces = ecdysis_chat::split_text(&long, ecdysis_discord::MAX_MESSAGE_CHARS);
    until(Duration::from_secs(60), || {
        let texts: Vec<String> = discord.posted()[posted_before..]
            .iter()
            .map(|p| p.content.clone())
            .collect();
        (texts == pieces).then_some(())
    })
    .await;
    let calls: Vec<String> = discord.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("/messages"))
        .map(|r| format!("{} messages", r.method))
        .collect();
    println!(
        "  {:<14} {} calls in {} messages ({})",
        "discord",
        calls.len(),
        pieces.len(),
        summary(&calls)
    );
}

fn summary(calls: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for call in calls {
        match counts.iter_mut().find(|(c, _)| c == call) {
            Some((_, n)) => *n += 1,
            None => counts.push((call.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(c, n)| format!("{n}× {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
