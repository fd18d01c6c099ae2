//! Slack benchmark: signed Events API requests (channel mentions) at a fixed rate into a real
//! `ecdysis serve`, with the fake Slack behind `SLACK_API_URL` and an instant fake model.
//!
//! Prints the acknowledgement latency (request → 200) and the event → reply latency (request
//! sent → the fake Slack receives the reply's first call: `chat.startStream` for an answer
//! shown while written, `chat.postMessage` for a whole one), p50/p99/max, and the server's
//! RSS. Requests are sent open-loop (each at its scheduled time, not after the previous one
//! returned), so a slow server cannot hide its queueing.
//! Run: `cargo bench --bench slack` (`-- --rate 200 --seconds 10` to change the load).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const SECRET: &str = "bench-signing-secret";

/// The call that makes a reply visible: a streamed answer starts with `chat.startStream`, a
/// whole one is one `chat.postMessage`.
const REPLY_STARTS: [&str; 2] = ["chat.startStream", "chat.postMessage"];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
        .unwrap_or(18_080)
}

fn body(n: u64) -> (String, String) {
    let ts = format!("1700001000.{n:06}");
    let event = json!({
        "token": "t",
        "team_id": "T1",
        "api_app_id": "AFAKE",
        "type": "event_callback",
        "event_id": format!("EvBench{n}"),
        "event_time": 1_700_001_000,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
        "event": {
            "type": "app_mention",
            "user": format!("U{}", n % 50),
            "channel": format!("C{}", n % 20),
            "ts": ts,
            "event_ts": ts,
            "text": format!("<@UBOT> question number {n}"),
        },
    });
    (event.to_string(), ts)
}

struct Sent {
    ts: String,
    started: Instant,
    ack: Option<Duration>,
}

async fn send(client: &reqwest::Client, url: &str, n: u64) -> Sent {
    let (body, ts) = body(n);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let signature = sign(SECRET, now, body.as_bytes());
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await;
    let ack = match response {
        Ok(r) if r.status().is_success() => Some(started.elapsed()),
        _ => None,
    };
    Sent { ts, started, ack }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = arg("--rate", 200).max(1);
    let seconds = arg("--seconds", 10).clamp(1, 120);
    let slack = FakeSlack::start().await.expect("fake Slack");
    let llm = FakeLlm::start().await.expect("fake LLM");
    llm.set_default(Reply::text("Here you go."));
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("SLACK_BOT_TOKEN", "xoxb-bench")
        .env("SLACK_API_URL", slack.api_url())
        .env("ECDYSIS_MODEL", "anthropic/claude-bench")
        .env("ANTHROPIC_API_KEY", "bench")
        .env("ANTHROPIC_BASE_URL", llm.anthropic_base_url())
        .env("ECDYSIS_SANDBOX", "off")
        .env("ECDYSIS_CHROMIUM", "/nonexistent/chromium")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start ecdysis serve");
    let pid = child.id();
    let client = reqwest::Client::new();
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < ready_deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = Arc::new(format!("{base}/slack/events"));
    let rss_idle = proc_kib(pid, "VmRSS:");

    // Warm-up (not measured): connections, caches, the first SQLite pages.
    let warm = 100u64;
    for n in 0..warm {
        send(&client, &url, 1_000_000 + n).await;
    }
    let before = slack
        .wait_calls_any(&REPLY_STARTS, warm as usize, Duration::from_secs(30))
        .await
        .len();

    // The measured run: `rate` requests per second for `seconds`, each at its own time.
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut rss_peak_during = 0;
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { send(&client, &url, n).await }));
        if n % rate == 0 {
            rss_peak_during = rss_peak_during.max(proc_kib(pid, "VmRSS:"));
        }
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(s) = task.await {
            sent.push(s);
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let posts = slack
        .wait_calls_any(
            &REPLY_STARTS,
            before + total as usize,
            Duration::from_secs(60),
        )
        .await;
    let rss_end = proc_kib(pid, "VmRSS:");
    let rss_hwm = proc_kib(pid, "VmHWM:");

    let posted_at: HashMap<String, Instant> = posts
        .iter()
        .filter_map(|c| Some((c.arg("thread_ts")?.to_string(), c.at)))
        .collect();
    let mut acks: Vec<Duration> = sent.iter().filter_map(|s| s.ack).collect();
    let mut replies: Vec<Duration> = sent
        .iter()
        .filter_map(|s| Some(posted_at.get(&s.ts)?.saturating_duration_since(s.started)))
        .collect();
    acks.sort();
    replies.sort();
    let failed = sent.len() - acks.len();
    let missing = sent.len() - replies.len();

    println!(
        "slack: {} signed app_mention events at {rate}/s over {send_seconds:.1} s into `ecdysis serve` (SQLite, fake Slack, instant fake model)",
        sent.len()
    );
    println!(
        "  ack (request → 200)             p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms · {failed} not acknowledged",
        ms(percentile(&acks, 0.50)),
        ms(percentile(&acks, 0.99)),
        ms(acks.last().copied().unwrap_or_default()),
    );
    println!(
        "  event → first reply call        p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms · {missing} without a reply",
        ms(percentile(&replies, 0.50)),
        ms(percentile(&replies, 0.99)),
        ms(replies.last().copied().unwrap_or_default()),
    );
    println!(
        "  serve RSS                       idle {:.1} MiB · during {:.1} MiB · after {:.1} MiB · peak (VmHWM) {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_peak_during as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_hwm as f64 / 1024.0,
    );
    println!(
        "  targets: ack p99 ≤ 10 ms at 200/s — {}; event→reply p99 ≤ 50 ms — {}",
        if ms(percentile(&acks, 0.99)) <= 10.0 && failed == 0 {
            "met"
        } else {
            "NOT met"
        },
        if ms(percentile(&replies, 0.99)) <= 50.0 && missing == 0 {
            "met"
        } else {
            "NOT met"
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}
