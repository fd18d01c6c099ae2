//! Scheduler benchmark.
//!
//! 1. A burst: 10,000 jobs due at the same instant across 1,000 conversations, fired by the
//!    scanner through the inbox and the bus to a recording adapter: time from the due time to
//!    the post (p50/p99/max).
//! 2. Idle: 100,000 jobs due tomorrow; the scanner's CPU use over 10 s (it should sleep on one
//!    timer for the next due time, not poll), and how long reading the next due time takes.
//!
//! Run: `cargo bench --bench schedule` (SQLite; set ECDYSIS_TEST_POSTGRES_URL to add Postgres);
//! `cargo bench --bench schedule -- quick` for 2,000 jobs and 10,000 idle ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis::config::Config;
use ecdysis::schedule::spec::Spec;
use ecdysis::server::app::App;
use ecdysis::storage::store::{JobKind, NewSchedule, UnixMs};
use ecdysis_chat::{ChatAdapter, ConversationRef, Delivered, DeliveryError, Reply};
use futures_util::StreamExt;
use tokio::sync::Notify;

/// Records when each job's post was delivered.
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
                    "only {} of {count} posts after {limit:?}",
                    self.delivered.lock().unwrap().len()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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

/// Store `n` one-off jobs due at `due`, spread over `conversations`.
async fn create(app: &App, n: usize, conversations: usize, due: UnixMs) -> Duration {
    let started = Instant::now();
    let store = app.store.clone();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let job = NewSchedule {
                    conversation: ConversationRef::new(
                        "bench",
                        "w",
                        format!("c{}", i % conversations),
                        None,
                    ),
                    created_by: "u".into(),
                    kind: JobKind::Post,
                    text: format!("job {i}"),
                    spec: Spec::Once { at: due }.to_json(),
                    description: "bench".into(),
                    timezone: "UTC".into(),
                    route: serde_json::json!({ "n": i }).to_string(),
                    next_due_at: due,
                    max_runs: None,
                    import_key: None,
                };
                store.create_schedule(&job, i64::MAX).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

/// Jobs all due at one instant: due → posted latency.
async fn burst(label: &str, database_url: Option<&str>, jobs: usize, conversations: usize) {
    let (app, recorder, _dir) = open(database_url).await;
    // Far enough ahead that every job is stored before it is due.
    let lead = Duration::from_secs(5 + (jobs as u64) / 400);
    let due = UnixMs::now().plus(lead.as_millis() as i64);
    let due_at = Instant::now() + lead;
    let took = create(&app, jobs, conversations, due).await;
    assert!(
        Instant::now() < due_at,
        "storing the jobs took {took:?}, past their due time"
    );
    let workers = app.bus.start().await.unwrap();
    let scanner = app.start_scheduler();
    // When the scanner has put every job into the inbox (none is due any more).
    let store = app.store.clone();
    let fired = tokio::spawn(async move {
        loop {
            if Instant::now() >= due_at && store.next_schedule_due().await.unwrap().is_none() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    recorder
        .wait_for(jobs, lead + Duration::from_secs(300))
        .await;
    let fired = fired.await.unwrap().saturating_duration_since(due_at);
    let mut latencies: Vec<f64> = recorder
        .delivered
        .lock()
        .unwrap()
        .values()
        .map(|at| at.saturating_duration_since(due_at).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{label}: {jobs} jobs due at one instant in {conversations} conversations (stored in {:.1} s): all in the inbox {:.0} ms after the due time; due → posted p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        took.as_secs_f64(),
        fired.as_secs_f64() * 1000.0,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    scanner.stop().await;
    workers.shutdown(Duration::from_secs(5)).await;
}

/// Many future jobs: the idle scanner's CPU.
async fn idle(label: &str, database_url: Option<&str>, jobs: usize) {
    let (app, _recorder, _dir) = open(database_url).await;
    let due = UnixMs::now().plus(86_400_000);
    let took = create(&app, jobs, 1_000, due).await;
    let started = Instant::now();
    let next = app.store.next_schedule_due().await.unwrap();
    let next_query = started.elapsed();
    assert_eq!(next, Some(due));
    let scanner = app.start_scheduler();
    // Let it start and settle on its timer, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let used = cpu_time().saturating_sub(before);
    println!(
        "{label}: {jobs} future jobs (stored in {:.1} s): next due time read in {:.2} ms; idle scanner used {:.1} ms CPU in {} s ({:.3} % of a core)",
        took.as_secs_f64(),
        next_query.as_secs_f64() * 1000.0,
        used.as_secs_f64() * 1000.0,
        window.as_secs(),
        used.as_secs_f64() / window.as_secs_f64() * 100.0,
    );
    scanner.stop().await;
}

async fn fresh_postgres(url: &str) -> String {
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (jobs, idle_jobs) = if quick {
        (2_000, 10_000)
    } else {
        (10_000, 100_000)
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    burst("sqlite", None, jobs, 1_000).await;
    idle("sqlite", None, idle_jobs).await;
    if let Ok(url) = std::env::var("ECDYSIS_TEST_POSTGRES_URL") {
        burst("postgres", Some(&fresh_postgres(&url).await), jobs, 1_000).await;
        idle("postgres", Some(&fresh_postgres(&url).await), idle_jobs).await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
}
