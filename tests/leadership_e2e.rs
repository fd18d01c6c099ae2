//! Leader leases on one Postgres: exactly one instance holds a singleton connection, and when
//! it dies another takes over within the lease time.
//!
//! - Two real `serve` processes with Slack Socket Mode against the fake Slack: one socket only;
//!   SIGKILL the leader → the other opens the socket within the lease time and answers on it.
//! - The `Leadership` helper in-process, each contender on its own runtime (dropping a runtime
//!   is a crash: no release runs): never two leaders, fail-over after a crash within one time to
//!   live plus one retry interval, hand-over after a clean stop at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis::platforms::leader::{Leadership, Term};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const LEASE_SECONDS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_has_one_holder_and_fails_over() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    let slack = FakeSlack::start().await.unwrap();
    let api = slack.api_url();
    let lease = LEASE_SECONDS.to_string();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("SLACK_APP_TOKEN", "xapp-1-test"),
        ("SLACK_BOT_TOKEN", "xoxb-test-bot"),
        ("SLACK_API_URL", api.as_str()),
        ("ECDYSIS_LEADER_LEASE_SECONDS", lease.as_str()),
        ("ECDYSIS_SANDBOX", "off"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
    ];
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = Server::start(dir_a.path(), &env).await;
    assert!(
        slack
            .wait_socket_connections(1, Duration::from_secs(15))
            .await,
        "{}",
        a.log()
    );
    let mut b = Server::start(dir_b.path(), &env).await;
    // Several lease periods later, still one socket: the second instance follows.
    tokio::time::sleep(Duration::from_secs(3 * LEASE_SECONDS)).await;
    assert_eq!(slack.socket_connections(), 1, "{}\n{}", a.log(), b.log());
    let overview: String = reqwest::get(format!("{}/readyz", b.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(overview.contains("\"database\":\"ok\""), "{overview}");

    // Kill whichever holds it (A connected first, so A).
    a.kill();
    let killed = Instant::now();
    assert!(
        slack
            .wait_socket_connections(2, Duration::from_secs(4 * LEASE_SECONDS + 5))
            .await,
        "B did not take over:\n{}",
        b.log()
    );
    let takeover = killed.elapsed();
    eprintln!(
        "Socket Mode taken over {:.2}s after the kill",
        takeover.as_secs_f64()
    );
    // Within the lease time plus one retry interval (and connection set-up).
    assert!(
        takeover < Duration::from_secs(LEASE_SECONDS) + Duration::from_millis(2_500),
        "{takeover:?}"
    );
    // The new holder answers on the socket.
    let envelope = slack
        .send_envelope(
            "events_api",
            json!({
                "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                "event_id": "EvLeader1", "event_time": 1_700_000_000,
                "event": {"type": "app_mention", "user": "U1", "channel": "C1",
                          "text": "<@UBOT> /remember failover works", "ts": "1700000000.000100"}
            }),
        )
        .unwrap();
    assert!(
        slack
            .wait_ack(&envelope, Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        b.log()
    );
    // Still one connection at a time: no second socket from B.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    assert_eq!(slack.socket_connections(), 2);
    assert!(b.terminate().success());
}

/// What the contenders report.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<(String, &'static str, Instant)>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Log {
    fn push(&self, owner: &str, what: &'static str) {
        self.events
            .lock()
            .unwrap()
            .push((owner.to_string(), what, Instant::now()));
    }

    fn starts_of(&self, owner: &str) -> Vec<Instant> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, w, _)| o == owner && *w == "start")
            .map(|(_, _, at)| *at)
            .collect()
    }

    async fn wait_start(&self, owner: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.starts_of(owner).first() {
                return *at;
            }
            assert!(Instant::now() < deadline, "{owner} never led");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

enum Order {
    /// Drop the runtime: every task stops where it is, nothing is released.
    Crash,
    /// Shut the leadership down cleanly (stop the task, release the lease).
    Stop,
}

/// A contender on its own runtime and thread, like a separate process.
fn contender(url: String, owner: &str, log: Arc<Log>) -> mpsc::Sender<Order> {
    let (orders, receive) = mpsc::channel();
    let owner = owner.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.block_on(async {
            let store = ecdysis::storage::store::open(&url).await.unwrap();
            let me = owner.clone();
            Leadership::new(
                store,
                "test-gateway",
                owner.clone(),
                Duration::from_secs(LEASE_SECONDS),
            )
            .spawn(move |mut term: Term| {
                let (log, me) = (log.clone(), me.clone());
                async move {
                    let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
                    log.most.fetch_max(now, Ordering::SeqCst);
                    log.push(&me, "start");
                    term.lost().await;
                    log.push(&me, "stop");
                    log.running.fetch_sub(1, Ordering::SeqCst);
                }
            })
        });
        match receive.recv() {
            Ok(Order::Stop) => runtime.block_on(handle.shutdown()),
            Ok(Order::Crash) | Err(_) => {
                // The task dies with the runtime; it cannot say so itself.
                runtime.shutdown_background();
            }
        }
    });
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_hands_over_on_crash_and_on_stop() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    let ttl = Duration::from_secs(LEASE_SECONDS);
    let log = Arc::new(Log::default());
    let a = contender(url.clone(), "a", log.clone());
    log.wait_start("a", Duration::from_secs(10)).await;
    let b = contender(url.clone(), "b", log.clone());
    let c = contender(url.clone(), "c", log.clone());
    tokio::time::sleep(ttl * 3).await;
    assert!(log.starts_of("b").is_empty() && log.starts_of("c").is_empty());

    // A crashes: one of B and C takes over once A's lease has run out.
    a.send(Order::Crash).unwrap();
    let crashed = Instant::now();
    log.running.fetch_sub(1, Ordering::SeqCst);
    let deadline = Instant::now() + ttl * 3;
    let (next, other, took) = loop {
        if let Some(at) = log.starts_of("b").first() {
            break ("b", "c", *at - crashed);
        }
        if let Some(at) = log.starts_of("c").first() {
            break ("c", "b", *at - crashed);
        }
        assert!(Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("took over {:.2}s after the crash", took.as_secs_f64());
    assert!(
        took <= ttl + ttl / 3 + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(
        took >= ttl / 3,
        "not before the lease could expire: {took:?}"
    );

    // The new leader stops cleanly: the last one takes over at its next try.
    let orders = if next == "b" { &b } else { &c };
    orders.send(Order::Stop).unwrap();
    let stopped = Instant::now();
    let at = log.wait_start(other, ttl * 2).await;
    let handover = at - stopped;
    eprintln!(
        "handed over {:.2}s after a clean stop",
        handover.as_secs_f64()
    );
    assert!(handover < ttl, "{handover:?}");
    assert_eq!(log.most.load(Ordering::SeqCst), 1, "never two leaders");
    let others = if other == "b" { &b } else { &c };
    others.send(Order::Stop).unwrap();
}
