//! `ecdysis serve` (the bench build, i.e. release) driven over HTTP: `/remember` events posted to
//! the web chat API across 100 conversations, the way a busy workspace would drive it.
//!
//! Prints, per backend: events/s end to end (first POST to the last reply delivered), accept
//! latency (the 202, which comes after the durable commit) p50/p99 at full speed and at a fixed
//! 2,000 events/s, accept→reply latency (the server's own clock: the inbox row's `received_at`
//! to the reply's `sent_at`, millisecond resolution), idle and peak RSS of each server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{load_average, percentile, rss_kb};

const CONVERSATIONS: u64 = 100;

/// One running `ecdysis serve`.
pub struct Serve {
    child: std::process::Child,
    pub base: String,
    _dir: tempfile::TempDir,
    pub database_url: String,
}

impl Serve {
    pub async fn start(database_url: Option<&str>, extra: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let database_url = database_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}/data/ecdysis.db", dir.path().display()));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"));
        command
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
            .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &database_url)
            .env("ECDYSIS_SANDBOX", "off")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(dir.path().join("serve.log")).unwrap(),
            ));
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().unwrap();
        let serve = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            database_url,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", serve.base)).await
                && r.status() == 200
            {
                return serve;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "serve did not start: {}",
                std::fs::read_to_string(serve._dir.path().join("serve.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Events processed so far (from `/metrics`).
    async fn processed(&self, client: &reqwest::Client) -> u64 {
        let text = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ecdysis_events_processed_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one load run measured.
struct Run {
    events: u64,
    busy: u64,
    accept_ms: Vec<f64>,
    elapsed: Duration,
}

/// One keep-alive HTTP/1.1 connection that posts JSON and reads the answer's status: a lean
/// client in the manner of wrk, so the load generator, which shares the machine's cores with
/// the server, takes little of them (reqwest with a JSON body built per request took 65-75 µs
/// of CPU per event, a sixth of all the CPU an event cost).
struct Poster {
    address: String,
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Poster {
    async fn connect(base: &str) -> Poster {
        let address = base.trim_start_matches("http://").to_string();
        let stream = BufReader::new(TcpStream::connect(&address).await.unwrap());
        Poster {
            address,
            stream,
            request: Vec::new(),
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// POST `body` (JSON) to `path`; the answer's status. A connection the server closed is
    /// opened again and the request sent once more (nothing was answered on it).
    async fn post(&mut self, path: &str, body: &str) -> u16 {
        use std::io::Write as _;
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        for _ in 0..2 {
            if let Some(status) = self.exchange().await {
                return status;
            }
            let stream = TcpStream::connect(&self.address).await.unwrap();
            self.stream = BufReader::new(stream);
        }
        panic!("{} closed the connection twice", self.address);
    }

    /// Send the request, read the answer: its status, `None` if the connection was closed.
    async fn exchange(&mut self) -> Option<u16> {
        self.stream.get_mut().write_all(&self.request).await.ok()?;
        self.line.clear();
        if self.stream.read_line(&mut self.line).await.ok()? == 0 {
            return None;
        }
        let status: u16 = self.line.split(' ').nth(1).and_then(|s| s.parse().ok())?;
        let mut length = None;
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await.ok()?;
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.expect("the server answers with a content-length");
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await.ok()?;
        Some(status)
    }
}

/// Post `n` events, `concurrency` requests in flight (a connection each), spread over the
/// servers; `rate` paces them (events/s), `None` is full speed. Their platform event ids are
/// `{prefix}{number}`.
async fn load(
    servers: &[Serve],
    prefix: &'static str,
    n: u64,
    concurrency: u64,
    rate: Option<u64>,
) -> Run {
    let next = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, busy, bases) = (next.clone(), busy.clone(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let mut posters = Vec::new();
            for base in bases.iter() {
                posters.push(Poster::connect(base).await);
            }
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return latencies;
                }
                if let Some(rate) = rate {
                    // Open loop: event i is due at i / rate seconds.
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let poster = &mut posters[(i % bases.len() as u64) as usize];
                let body = format!(
                    r#"{{"text":"/remember note {i} for the benchmark","user":"bench","id":"{prefix}{i}"}}"#
                );
                let path = format!("/api/chat/bench-{}", i % CONVERSATIONS);
                loop {
                    let t = Instant::now();
                    let status = poster.post(&path, &body).await;
                    if status == 202 {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    assert_eq!(status, 503, "unexpected answer");
                    busy.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let mut accept_ms = Vec::new();
    for task in tasks {
        accept_ms.extend(task.await.unwrap());
    }
    accept_ms.sort_by(f64::total_cmp);
    Run {
        events: n,
        busy: busy.load(Ordering::Relaxed),
        accept_ms,
        elapsed: started.elapsed(),
    }
}

/// Wait until the servers processed `total` events; the time it took from `since`.
async fn drained(servers: &[Serve], total: u64, since: Instant) -> Duration {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut done = 0;
        for s in servers {
            done += s.processed(&client).await;
        }
        if done >= total {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {total} events processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accept→reply per event by the server's clock (ms): `received_at` to the reply's `sent_at`.
async fn reply_latencies(database_url: &str, prefix: &str) -> Vec<f64> {
    // The web chat's platform event ids read `{conversation}:{client id}`.
    let pattern = format!("%:{prefix}%");
    let sql = "SELECT CAST(o.sent_at - i.received_at AS BIGINT) AS ms
               FROM inbox i JOIN outbox o ON o.event_id = i.id
               WHERE o.status = 'sent' AND i.platform_event_id LIKE $1";
    let mut ms: Vec<f64> = if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url).await.unwrap();
        let rows = sqlx::query(sql)
            .bind(&pattern)
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<i64, _>("ms") as f64).collect()
    } else {
        let pool = sqlx::PgPool::connect(database_url).await.unwrap();
        let rows = sqlx::query(sql)
            .bind(&pattern)
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<i64, _>("ms") as f64).collect()
    };
    ms.sort_by(f64::total_cmp);
    ms
}

/// The whole run for one backend and `instances` servers on the same database.
pub async fn bench(label: &str, database_url: Option<&str>, instances: usize, events: u64) {
    assert!(
        instances == 1 || database_url.is_some(),
        "one process owns a SQLite file"
    );
    let mut servers = Vec::new();
    for _ in 0..instances {
        servers.push(Serve::start(database_url, &[("ECDYSIS_BUS_MAX_QUEUED", "50000")]).await);
    }
    // Warm up (connections, caches, the conversations' rows), then let it idle.
    let warm = load(&servers, "warm-", 1_000, 32, None).await;
    drained(&servers, warm.events, Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = servers
        .iter()
        .map(|s| rss_kb(&s.pid(), "VmRSS:") as f64 / 1024.0)
        .collect();

    // Full speed.
    let load_before = load_average();
    let since = Instant::now();
    let full = load(&servers, "full-", events, 64, None).await;
    let end_to_end = drained(&servers, warm.events + events, since).await;
    let replies = reply_latencies(&servers[0].database_url, "full-").await;
    println!(
        "{label}: full speed, {events} events / {CONVERSATIONS} conversations, 64 connections: \
         {:.0} events/s end to end ({:.0} events/s accepted); accept p50 {:.2} ms, p99 {:.2} ms; \
         accept→reply p50 {:.0} ms, p99 {:.0} ms; {} busy answers (503, retried); \
         load average before {load_before}, after {}",
        events as f64 / end_to_end.as_secs_f64(),
        events as f64 / full.elapsed.as_secs_f64(),
        percentile(&full.accept_ms, 0.5),
        percentile(&full.accept_ms, 0.99),
        percentile(&replies, 0.5),
        percentile(&replies, 0.99),
        full.busy,
        load_average(),
    );

    // A fixed 2,000 events/s for 5 s.
    let rate = 2_000;
    let paced_events = rate * 5;
    let since = Instant::now();
    let paced = load(&servers, "paced-", paced_events, 256, Some(rate)).await;
    drained(&servers, warm.events + events + paced_events, since).await;
    let replies = reply_latencies(&servers[0].database_url, "paced-").await;
    println!(
        "{label}: at {rate} events/s for 5 s: accept p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         accept→reply p50 {:.0} ms, p99 {:.0} ms; {} busy answers; load average {}",
        percentile(&paced.accept_ms, 0.5),
        percentile(&paced.accept_ms, 0.99),
        paced.accept_ms.last().copied().unwrap_or(f64::NAN),
        percentile(&replies, 0.5),
        percentile(&replies, 0.99),
        paced.busy,
        load_average(),
    );
    let peak: Vec<String> = servers
        .iter()
        .map(|s| format!("{:.1}", rss_kb(&s.pid(), "VmHWM:") as f64 / 1024.0))
        .collect();
    let idle: Vec<String> = idle.iter().map(|mb| format!("{mb:.1}")).collect();
    println!(
        "{label}: serve RSS idle after warm-up {} MB, peak {} MB",
        idle.join(" / "),
        peak.join(" / ")
    );
}
