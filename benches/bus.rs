//! Bus benchmark: events through the durable bus with the deterministic commands.
//!
//! The main part drives real `ecdysis serve` processes over HTTP (see [`serve`]): `/remember`
//! events across 100 conversations on SQLite, on Postgres, and on Postgres with two instances;
//! events/s end to end, accept and accept→reply latency, RSS. Then the bus in-process (no HTTP):
//! events/s at full speed, accept→reply-stored latency at a fixed rate, one store round trip,
//! and start-up time to `/readyz`. Last, the store alone (see [`store`]): the writes of those
//! events straight through the store's API, nothing else in the process.
//! Run: `cargo bench --bench bus` (SQLite; set ECDYSIS_TEST_POSTGRES_URL to add Postgres);
//! `cargo bench --bench bus -- serve` for the HTTP part alone, `-- quick` for the SQLite part
//! alone, `-- in-process` for the in-process part, `-- store` for the store alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

#[path = "bus/serve.rs"]
mod serve;
#[path = "bus/store.rs"]
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply, UserRef,
};
use tokio::sync::Notify;

/// Records when each event's reply was delivered (the reply is stored before delivery).
#[derive(Default)]
struct Recorder {
    delivered: Mutex<HashMap<u64, Instant>>,
    notify: Notify,
}

#[async_trait]
impl ChatAdapter for Recorder {
    fn platform(&self) -> &str {
        "bench"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        let n = reply.route["n"].as_u64().unwrap_or(u64::MAX);
        self.delivered.lock().unwrap().insert(n, Instant::now());
        self.notify.notify_waiters();
        Ok(Delivered::default())
    }
}

impl Recorder {
    async fn wait_for(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if self.delivered.lock().unwrap().len() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "only {} of {count} replies after {limit:?}",
                    self.delivered.lock().unwrap().len()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

fn event(n: u64, conversations: u64) -> Event {
    let conversation = ConversationRef::new("bench", "w", format!("c{}", n % conversations), None);
    let text = if n % 4 == 3 {
        format!("/recall note {}", n / 4)
    } else {
        format!("/remember note {n} for the benchmark")
    };
    let mut event = Event::from_text(
        format!("e{n}"),
        conversation,
        UserRef {
            id: "u".into(),
            name: None,
        },
        text,
    );
    event.route = serde_json::json!({ "n": n });
    event
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The load averages over 1, 5 and 15 minutes, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rss_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn open(database_url: Option<&str>) -> (App, Arc<Recorder>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    if let Some(url) = database_url {
        config.database_url = url.to_string();
    }
    config.bus.max_queued = 1_000_000;
    let app = App::open(config).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    app.bus.register_adapter(recorder.clone());
    (app, recorder, dir)
}

/// Full speed: N events across M conversations, submitted by 8 concurrent producers.
async fn throughput(label: &str, database_url: Option<&str>, n: u64, conversations: u64) {
    let (app, recorder, _dir) = open(database_url).await;
    let workers = app.bus.start().await.unwrap();
    let started = Instant::now();
    let producers = 8;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let bus = app.bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut i = p;
            while i < n {
                let t = Instant::now();
                bus.submit(event(i, conversations)).await.unwrap();
                accepted.push((i, t));
                i += producers;
            }
            accepted
        }));
    }
    let mut accepted = HashMap::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    let accept_done = started.elapsed();
    recorder
        .wait_for(n as usize, Duration::from_secs(600))
        .await;
    let elapsed = started.elapsed();
    let delivered = recorder.delivered.lock().unwrap().clone();
    let mut latencies: Vec<f64> = delivered
        .iter()
        .map(|(i, done)| done.duration_since(accepted[i]).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label}: throughput {n} events / {conversations} conversations: {:.0} events/s \
         (accepted in {:.2}s, all replies stored in {:.2}s); accept→reply under full load p50 {:.1} ms, p99 {:.1} ms",
        n as f64 / elapsed.as_secs_f64(),
        accept_done.as_secs_f64(),
        elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

/// Fixed rate: accept→reply-stored latency percentiles.
async fn latency_at_rate(label: &str, database_url: Option<&str>, rate: u64, seconds: u64) {
    let (app, recorder, _dir) = open(database_url).await;
    let workers = app.bus.start().await.unwrap();
    let n = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let accepted = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for i in 0..n {
        ticker.tick().await;
        let bus = app.bus.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            bus.submit(event(i, 50)).await.unwrap();
            accepted.lock().unwrap().insert(i, t);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    recorder
        .wait_for(n as usize, Duration::from_secs(120))
        .await;
    let accepted = accepted.lock().unwrap().clone();
    let delivered = recorder.delivered.lock().unwrap().clone();
    let mut latencies: Vec<f64> = delivered
        .iter()
        .map(|(i, done)| done.duration_since(accepted[i]).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label}: at {rate} events/s for {seconds}s: accept→reply stored p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

/// The cost of one small SQLite write (a note), sequentially: the bus's unit of work.
async fn store_round_trip() {
    let (app, _recorder, _dir) = open(None).await;
    let channel = ecdysis_chat::ChannelRef {
        platform: "bench".into(),
        workspace: "w".into(),
        channel: "c".into(),
    };
    let n = 5_000;
    let started = Instant::now();
    for i in 0..n {
        app.store
            .remember(&ecdysis::storage::store::NewNote {
                channel: channel.clone(),
                text: format!("note {i}"),
                created_by: "u".into(),
                source: None,
            })
            .await
            .unwrap();
    }
    let write = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let started = Instant::now();
    for _ in 0..n {
        app.store.note_count(&channel).await.unwrap();
    }
    let read = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("sqlite: one write {write:.0} µs, one read {read:.0} µs (sequential)");
}

/// Start-up to `/readyz` and idle RSS of a real `serve` process on embedded defaults.
async fn serve_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut runs = Vec::new();
    let mut idle_rss = 0;
    for round in 0..5 {
        let started = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
            .arg("serve")
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
            .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                && r.status() == 200
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "serve did not start"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
        if round == 4 {
            // Use it a little, then let it idle.
            for i in 0..50 {
                client
                    .post(format!("http://127.0.0.1:{port}/api/chat/bench"))
                    .json(&serde_json::json!({ "text": format!("/remember idle note {i}") }))
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            idle_rss = rss_kb(&child.id().to_string(), "VmRSS:");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "serve: start-up to /readyz 200: median {:.0} ms, worst {:.0} ms (5 starts, first one creates the database); idle RSS after 50 events {:.1} MB",
        percentile(&runs, 0.5),
        runs.last().copied().unwrap_or(f64::NAN),
        idle_rss as f64 / 1024.0
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    let only = |part: &str| args.iter().any(|a| a == part);
    let everything = !only("quick") && !only("serve") && !only("in-process") && !only("store");
    let postgres = std::env::var("ECDYSIS_TEST_POSTGRES_URL").ok();
    runtime.block_on(async {
        if everything || only("serve") {
            serve::bench("sqlite", None, 1, 30_000).await;
            if let Some(base) = &postgres {
                let url = fresh_schema(base).await;
                serve::bench("postgres", Some(&url), 1, 20_000).await;
                let url = fresh_schema(base).await;
                serve::bench("postgres, 2 instances", Some(&url), 2, 20_000).await;
            }
        }
        if only("quick") {
            store_round_trip().await;
            throughput("sqlite", None, 5_000, 100).await;
        }
        if everything || only("in-process") {
            serve_process().await;
            store_round_trip().await;
            throughput("sqlite in-process", None, 20_000, 100).await;
            latency_at_rate("sqlite in-process", None, 500, 10).await;
            if let Some(base) = &postgres {
                let url = fresh_schema(base).await;
                throughput("postgres in-process", Some(&url), 10_000, 100).await;
                let url = fresh_schema(base).await;
                latency_at_rate("postgres in-process", Some(&url), 500, 10).await;
            }
            println!(
                "bench process peak RSS: {:.1} MB",
                rss_kb("self", "VmHWM:") as f64 / 1024.0
            );
        }
        if everything || only("store") {
            store::bench(40_000).await;
        }
    });
}

async fn fresh_schema(url: &str) -> String {
    use sqlx::Connection;
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}
