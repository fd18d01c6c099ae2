//! Several instances on one Postgres: events/s and accept→done latency with one and with two
//! `ecdysis serve` processes (same machine), and the scaling ratio.
//!
//! Two workloads, each driven at full speed through the web chat API (events spread over the
//! instances round-robin, many conversations, bounded concurrency):
//! - `memory`: `/remember` and `/recall` commands — the bus and the database do all the work
//!   (CPU-bound on a small machine, where the instances share the cores with Postgres);
//! - `model`: free text answered by a fake model that takes 100 ms per answer — waiting on an
//!   API, which more instances (more workers) overlap.
//!
//! Latency is the inbox's `finished_at - received_at` of every event (accepted → reply stored),
//! read from Postgres after the run. Needs ECDYSIS_TEST_POSTGRES_URL (`source .ci/services.sh`).
//! Run: `cargo bench --bench instances` (`-- quick` for fewer events).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ecdysis_testkit::llm::{FakeLlm, Reply};
use sqlx::{Connection, Row};
use tokio::sync::Semaphore;

struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start(url: &str, dir: &std::path::Path, extra: &[(&str, String)]) -> Instance {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ecdysis"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("ECDYSIS_DATA_DIR", dir)
        .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("ECDYSIS_SANDBOX", "off")
        .env("ECDYSIS_CHROMIUM", "/nonexistent/chromium")
        .env("ECDYSIS_BUS_MAX_QUEUED", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    let child = command.spawn().expect("start ecdysis serve");
    let instance = Instance {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/readyz", instance.base)).await
            && r.status() == 200
        {
            return instance;
        }
        assert!(Instant::now() < deadline, "serve did not get ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fresh_schema(base: &str) -> String {
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(base).await.expect("Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

async fn drop_schema(base: &str, url: &str) {
    let schema = url.rsplit("search_path%3D").next().unwrap_or_default();
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut conn)
            .await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Memory,
    Model,
}

struct Outcome {
    events_per_second: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

async fn run(
    base_url: &str,
    instances: usize,
    workload: Workload,
    events: usize,
    conversations: usize,
    llm: Option<&FakeLlm>,
) -> Outcome {
    let url = fresh_schema(base_url).await;
    let dirs: Vec<tempfile::TempDir> = (0..instances)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut extra = Vec::new();
    if let Some(llm) = llm {
        extra.push(("ECDYSIS_MODEL", "anthropic/claude-bench".to_string()));
        extra.push(("ANTHROPIC_API_KEY", "bench-key".to_string()));
        extra.push(("ANTHROPIC_BASE_URL", llm.anthropic_base_url()));
    }
    let mut servers = Vec::new();
    for dir in &dirs {
        servers.push(start(&url, dir.path(), &extra).await);
    }
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    let in_flight = Arc::new(Semaphore::new(64));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(events);
    for n in 0..events {
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let (client, bases, sent) = (client.clone(), bases.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let conversation = format!("c{}", n % conversations);
            let text = match workload {
                Workload::Memory if n % 4 == 3 => format!("/recall note {}", n / 4),
                Workload::Memory => format!("/remember note {n} for the benchmark"),
                Workload::Model => format!("question {n}"),
            };
            let base = &bases[n % bases.len()];
            loop {
                let r = client
                    .post(format!("{base}/api/chat/{conversation}"))
                    .json(
                        &serde_json::json!({"text": text, "user": "bench", "id": format!("e{n}")}),
                    )
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => break,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            sent.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    // Wait until every event is done.
    let mut pg = sqlx::PgConnection::connect(&url).await.expect("Postgres");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = sqlx::query("SELECT COUNT(*) FROM inbox WHERE status = 'done'")
            .fetch_one(&mut pg)
            .await
            .expect("count")
            .get(0);
        if done as usize >= events {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {events} done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let rows = sqlx::query("SELECT finished_at - received_at FROM inbox WHERE status = 'done'")
        .fetch_all(&mut pg)
        .await
        .expect("latencies");
    let mut latencies: Vec<f64> = rows.iter().map(|r| r.get::<i64, _>(0) as f64).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    drop(servers);
    drop(pg);
    drop_schema(base_url, &url).await;
    Outcome {
        events_per_second: events as f64 / wall,
        p50: percentile(&latencies, 50.0),
        p90: percentile(&latencies, 90.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn main() {
    let Some(base) = std::env::var("ECDYSIS_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipping: ECDYSIS_TEST_POSTGRES_URL is not set (source .ci/services.sh)");
        return;
    };
    let quick = std::env::args().any(|a| a == "quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let llm = FakeLlm::start().await.expect("fake model");
        llm.set_default(Reply::text("a considered answer").after(Duration::from_millis(100)));
        println!(
            "instances benchmark: ecdysis serve processes on one Postgres, {} cores",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        for (name, workload, events, conversations) in [
            (
                "memory commands (bus + database bound)",
                Workload::Memory,
                if quick { 1000 } else { 4000 },
                100,
            ),
            (
                "model turns, 100 ms fake model (waiting bound)",
                Workload::Model,
                if quick { 300 } else { 1200 },
                200,
            ),
        ] {
            println!("\n{name}: {events} events over {conversations} conversations");
            println!("  instances  events/s   p50 ms   p90 ms   p99 ms");
            let mut rates = Vec::new();
            for instances in [1, 2] {
                let model = (workload == Workload::Model).then_some(&llm);
                let o = run(&base, instances, workload, events, conversations, model).await;
                println!(
                    "  {instances:>9}  {:>8.0}  {:>7.0}  {:>7.0}  {:>7.0}",
                    o.events_per_second, o.p50, o.p90, o.p99
                );
                rates.push(o.events_per_second);
            }
            println!(
                "  scaling ratio (2 instances / 1): {:.2}",
                rates[1] / rates[0]
            );
        }
    });
}
