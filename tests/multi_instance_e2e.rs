//! Several instances: two `serve` processes on one Postgres share the inbox (any instance takes
//! any event, one conversation at a time, in order), and the death of one (SIGKILL) loses
//! nothing — its leases expire and the other finishes its work. SQLite mode is single-instance
//! and says so when a second process starts on the same file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::json;
use sqlx::{Connection, Row};

const CONVERSATIONS: usize = 50;
const PER_CONVERSATION: usize = 40;

/// Post one event with a client id; `None` when the server did not answer (it is dead).
async fn post(client: &reqwest::Client, base: &str, conversation: &str, i: usize) -> Option<u16> {
    let body = json!({
        "text": format!("/remember {conversation} item {i}"),
        "user": "tester",
        "id": format!("{conversation}-{i}"),
    });
    let response = client
        .post(format!("{base}/api/chat/{conversation}"))
        .json(&body)
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

fn note_id(reply: &str) -> i64 {
    reply
        .trim_start_matches("Remembered as #")
        .trim_end_matches('.')
        .parse()
        .unwrap_or_else(|_| panic!("unexpected reply {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_survive_sigkill_of_one() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        // The dead instance's leases expire quickly.
        ("ECDYSIS_BUS_LEASE_SECONDS", "3"),
        ("ECDYSIS_BUS_WORKERS", "4"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ("ECDYSIS_SANDBOX", "off"),
    ];
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = Server::start(dir_a.path(), &env).await;
    let b = Server::start(dir_b.path(), &env).await;
    let a_pid = a.pid();
    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    // One task per conversation sends its events in order (each after the previous one was
    // accepted), alternating between the instances; the instances see all conversations at once.
    let accepted = Arc::new(AtomicUsize::new(0));
    let a_dead = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONVERSATIONS)
        .map(|c| {
            let (client, bases, accepted, a_dead) = (
                client.clone(),
                bases.clone(),
                accepted.clone(),
                a_dead.clone(),
            );
            tokio::spawn(async move {
                let conversation = format!("mi{c}");
                let mut via_a = 0;
                for i in 0..PER_CONVERSATION {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut target = (c + i) % 2;
                    loop {
                        if target == 0 && a_dead.load(Ordering::Relaxed) {
                            target = 1;
                        }
                        match post(&client, &bases[target], &conversation, i).await {
                            Some(202) => break,
                            // A refused connection (killed instance): send it to the other one,
                            // with the same id, so nothing is accepted twice.
                            None if target == 0 => target = 1,
                            Some(503) | None => tokio::time::sleep(Duration::from_millis(50)).await,
                            Some(status) => panic!("{conversation} #{i}: status {status}"),
                        }
                        assert!(
                            Instant::now() < deadline,
                            "{conversation} #{i} not accepted"
                        );
                    }
                    if target == 0 {
                        via_a += 1;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                via_a
            })
        })
        .collect();

    // Halfway, SIGKILL instance A while it holds leases.
    let total = CONVERSATIONS * PER_CONVERSATION;
    while accepted.load(Ordering::Relaxed) < total / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
    a.kill();
    a_dead.store(true, Ordering::Relaxed);
    let killed_at = Instant::now();
    let held: i64 =
        sqlx::query("SELECT COUNT(*) FROM inbox WHERE status = 'leased' AND lease_owner LIKE $1")
            .bind(format!("{a_pid}-%"))
            .fetch_one(&mut pg)
            .await
            .unwrap()
            .get(0);
    let open_at_kill: i64 =
        sqlx::query("SELECT COUNT(*) FROM inbox WHERE status IN ('pending', 'leased')")
            .fetch_one(&mut pg)
            .await
            .unwrap()
            .get(0);
    eprintln!(
        "killed A at {} accepted events: it held {held} leases; {open_at_kill} events were open",
        accepted.load(Ordering::Relaxed)
    );
    let mut via_a = 0;
    for task in tasks {
        via_a += task.await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::Relaxed), total);
    assert!(via_a > 0, "A accepted nothing; the test proves nothing");

    // Every event is answered exactly once, in order per conversation, by the survivor.
    let mut replies = 0;
    for c in 0..CONVERSATIONS {
        let conversation = format!("mi{c}");
        let messages = b.wait_replies(&conversation, PER_CONVERSATION).await;
        let users: Vec<&str> = messages
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..PER_CONVERSATION)
            .map(|i| format!("/remember {conversation} item {i}"))
            .collect();
        assert_eq!(
            users, expected,
            "{conversation}: each event stored once, in order"
        );
        let ids: Vec<i64> = messages
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| note_id(m["text"].as_str().unwrap()))
            .collect();
        assert_eq!(ids.len(), PER_CONVERSATION, "{conversation}: {ids:?}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{conversation}: out of order {ids:?}"
        );
        replies += ids.len();
    }
    assert_eq!(replies, total);
    eprintln!(
        "all {total} events answered {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // The notes match the replies one to one, in order: nothing processed twice.
    let rows = sqlx::query(
        "SELECT channel, text, id FROM memory_notes WHERE platform = 'web' ORDER BY id",
    )
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert_eq!(rows.len(), total, "one note per event");
    let mut next: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let channel: String = row.get(0);
        let text: String = row.get(1);
        let i = next.entry(channel.clone()).or_default();
        assert_eq!(text, format!("{channel} item {i}"), "notes in order");
        *i += 1;
    }
    let counts: Vec<(String, i64)> =
        sqlx::query("SELECT status, COUNT(*) FROM inbox GROUP BY status ORDER BY status")
            .fetch_all(&mut pg)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(counts, [("done".to_string(), total as i64)]);

    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in [0, CONVERSATIONS / 2, CONVERSATIONS - 1] {
        let conversation = format!("mi{c}");
        let n = b
            .messages(&conversation)
            .await
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count();
        assert_eq!(n, PER_CONVERSATION, "{conversation}");
    }
    assert!(
        held > 0 || open_at_kill > 0,
        "A had nothing in flight when it was killed; the test proves nothing"
    );
}

/// Run `ecdysis <args>` on the data dir of `first` and return its exit status and stderr.
fn second_instance(dir: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.join("data"))
        .env("ECDYSIS_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sqlite_is_single_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path(), &[]).await;
    for args in [&["serve"][..], &["chat"][..]] {
        let started = Instant::now();
        let (status, stderr) = second_instance(dir.path(), args);
        assert!(!status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("another ecdysis instance")
                && stderr.contains(&format!("pid {}", first.pid()))
                && stderr.contains("Postgres"),
            "{args:?}: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // `ecdysis doctor` says so (and is not refused: it only looks).
    let doctor = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("doctor")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_LISTEN", "0.0.0.0:8080")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains(&format!(
            "ok    instances  SQLite: one instance at a time; one is running (pid {})",
            first.pid()
        )),
        "{said}"
    );
    assert!(
        said.contains("FAIL  admin") && said.contains("set ECDYSIS_ADMIN_TOKEN"),
        "listening off loopback without a token is a failure with its fix: {said}"
    );
    assert!(!doctor.status.success());
    // The first one is unaffected.
    assert!(
        first
            .ask("still", "/remember still here")
            .await
            .starts_with("Remembered")
    );
    // Once it is gone (even by SIGKILL), a new instance starts.
    first.kill();
    let second = Server::start(dir.path(), &[]).await;
    assert!(
        second
            .ask("still", "/recall here")
            .await
            .contains("still here")
    );
}
