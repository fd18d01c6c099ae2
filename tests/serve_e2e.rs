//! End to end against a real `ecdysis serve` process: memory scoping and persistence on SQLite
//! and Postgres, crash safety under SIGKILL, duplicates, bad input, configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::json;

async fn memory_scoped_and_durable(server: Server) {
    let reply = server
        .ask("team-a", "/remember the deploy key lives in vault")
        .await;
    assert!(reply.starts_with("Remembered as #"), "{reply}");
    let found = server.ask("team-a", "/recall deploy").await;
    assert!(found.contains("the deploy key lives in vault"), "{found}");
    let elsewhere = server.ask("team-b", "/recall deploy").await;
    assert!(elsewhere.contains("No note"), "{elsewhere}");
    assert!(!elsewhere.contains("vault"), "{elsewhere}");

    let server = server.restart().await;
    let after = server.ask("team-a", "/recall vault").await;
    assert!(after.contains("the deploy key lives in vault"), "{after}");
    let listed = server.ask("team-a", "/memory").await;
    assert!(listed.contains("1 note"), "{listed}");
    // The transcript survived too.
    assert_eq!(server.messages("team-a").await.len(), 8);
}

#[tokio::test]
async fn memory_is_per_channel_and_survives_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    memory_scoped_and_durable(Server::start(dir.path(), &[]).await).await;
}

#[tokio::test]
async fn memory_is_per_channel_and_survives_restart_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    let dir = tempfile::tempdir().unwrap();
    memory_scoped_and_durable(Server::start(dir.path(), &[("DATABASE_URL", &url)]).await).await;
}

/// Queue many events behind one worker, SIGKILL the server, start it again: every accepted
/// event gets exactly one reply, and each conversation's events ran in order.
async fn sigkill_loses_nothing(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut all_env = vec![("ECDYSIS_BUS_WORKERS", "1")];
    all_env.extend_from_slice(env);
    let mut server = Server::start(dir.path(), &all_env).await;
    // Ten concurrent producers against one worker: the queue is always deep when the kill comes.
    let conversations = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"];
    let per_conversation = 60;
    // Post in concurrent batches so intake outpaces the single worker.
    let mut accepted = 0;
    for i in 0..per_conversation {
        let texts: Vec<(&str, String)> = conversations
            .iter()
            .map(|c| (*c, format!("/remember {c} item {i}")))
            .collect();
        let batch = texts.iter().map(|(c, text)| server.say(c, text));
        futures_util::future::join_all(batch).await;
        accepted += conversations.len();
    }
    server.kill();
    let server = server.restart().await;
    for c in conversations {
        server.wait_replies(c, per_conversation).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ecdysis_events_processed_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    eprintln!("{resumed} of {accepted} events were processed after the restart");
    assert!(
        resumed > 0,
        "the kill came after all work was done; the test proves nothing"
    );
    let mut replies = 0;
    for c in conversations {
        let messages = server.wait_replies(c, per_conversation).await;
        let users = messages.iter().filter(|m| m["role"] == "user").count();
        let answers: Vec<&str> = messages
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(users, per_conversation, "{c}");
        assert_eq!(answers.len(), per_conversation, "{c}: {answers:?}");
        // Note ids grow with processing order: in order per conversation.
        let ids: Vec<i64> = answers
            .iter()
            .map(|a| {
                a.trim_start_matches("Remembered as #")
                    .trim_end_matches('.')
                    .parse()
                    .unwrap_or_else(|_| panic!("unexpected reply {a}"))
            })
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{c}: out of order {ids:?}"
        );
        let listed = server.ask(c, "/memory").await;
        assert!(
            listed.contains(&format!("{per_conversation} notes")),
            "{c}: {listed}"
        );
        replies += answers.len();
    }
    assert_eq!(replies, accepted);
    // Nothing more arrives later.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for c in conversations {
        let n = server
            .messages(c)
            .await
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count();
        assert_eq!(n, per_conversation + 1, "{c}");
    }
}

#[tokio::test]
async fn sigkill_while_queued_loses_nothing_sqlite() {
    sigkill_loses_nothing(&[]).await;
}

#[tokio::test]
async fn sigkill_while_queued_loses_nothing_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    // A short lease: the killed instance's claim expires quickly.
    sigkill_loses_nothing(&[("DATABASE_URL", &url), ("ECDYSIS_BUS_LEASE_SECONDS", "2")]).await;
}

#[tokio::test]
async fn duplicate_events_are_processed_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let body = json!({ "text": "/remember once only", "user": "u", "id": "msg-1" });
    let first = server.post("dups", body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let second = server.post("dups", body).await;
    assert_eq!(second.status(), 202);
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["event_id"], second["event_id"]);
    assert_eq!(second["duplicate"], true);
    let listed = server.ask("dups", "/memory").await;
    assert!(listed.contains("1 note"), "{listed}");
    let messages = server.messages("dups").await;
    assert_eq!(messages.len(), 4, "{messages:#?}");
}

/// Issue 19, finding 7: a client id is scoped to its conversation. `colA` with id `colB:1` and
/// `colA:colB` with id `1` once shared the dedupe key `colA:colB:1`, so the second was dropped.
#[tokio::test]
async fn event_ids_of_different_conversations_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let first = json!({ "text": "/remember alpha is first", "user": "u", "id": "colB:1" });
    let first = server.post("colA", first).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    let second = json!({ "text": "/remember beta is second", "user": "u", "id": "1" });
    let accepted = server.post("colA:colB", second.clone()).await;
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(accepted["duplicate"], false, "{accepted}");
    assert_ne!(accepted["event_id"], first["event_id"]);

    // A true retry (same conversation, same id) is still stored once.
    let retry = server.post("colA:colB", second).await;
    assert_eq!(retry.status(), 202);
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["event_id"], accepted["event_id"]);

    let event_a = first["event_id"].as_str().unwrap();
    let event_b = accepted["event_id"].as_str().unwrap();
    let reply_a = server.wait_replies_to("colA", event_a, 1).await;
    let reply_b = server.wait_replies_to("colA:colB", event_b, 1).await;
    assert!(
        reply_a[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Remembered")
    );
    assert!(
        reply_b[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Remembered")
    );
    let found = server.ask("colA:colB", "/recall beta").await;
    assert!(found.contains("beta is second"), "{found}");
    let users = server
        .messages("colA:colB")
        .await
        .iter()
        .filter(|m| m["role"] == "user" && m["event_id"] == event_b)
        .count();
    assert_eq!(users, 1, "the retry wrote nothing");
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // No Chromium, so `/screenshot` answers that it is off (and nothing is looked up).
    let server = Server::start(dir.path(), &[("ECDYSIS_CHROMIUM", "/nonexistent/chromium")]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/chat/bad", server.base);

    let malformed = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"text\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await.unwrap().contains("expected JSON"));

    let wrong_shape = client
        .post(&url)
        .json(&json!({ "txt": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_shape.status(), 400);

    let oversized = client
        .post(&url)
        .json(&json!({ "text": "x".repeat(70 * 1024) }))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);

    let empty = client
        .post(&url)
        .json(&json!({ "text": "   " }))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    assert!(empty.text().await.unwrap().contains("empty"));

    let bad_name = client
        .post(format!("{}/api/chat/a%2Fb", server.base))
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_name.status(), 400);

    assert!(
        server.messages("bad").await.is_empty(),
        "bad input was stored"
    );

    let help = server.ask("bad", "/frobnicate now").await;
    assert!(help.contains("Unknown command `/frobnicate`"), "{help}");
    assert!(help.contains("/remember"), "{help}");
    let usage = server.ask("bad", "/forget banana").await;
    assert!(usage.starts_with("Usage"), "{usage}");
    let missing = server.ask("bad", "/forget 999").await;
    assert!(missing.contains("no note #999"), "{missing}");
    let not_yet = server.ask("bad", "/screenshot https://example.com").await;
    assert!(not_yet.contains("not enabled"), "{not_yet}");
    let no_model = server.ask("bad", "hello, who are you?").await;
    assert!(no_model.contains("ANTHROPIC_API_KEY"), "{no_model}");
}

#[tokio::test]
async fn operations_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    server.ask("ops", "/status").await;
    let health = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"], "ok");
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ecdysis_events_received_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ecdysis_event_processing_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("ecdysis_queue_depth"), "{metrics}");
    let page = reqwest::get(format!("{}/", server.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("EventSource"));
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    server.ask("term", "/help").await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[tokio::test]
async fn non_loopback_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    // Without a token, serving to the network is refused with a clear message.
    let refused = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("serve")
        .current_dir(dir.path())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_LISTEN", "0.0.0.0:0")
        .env_remove("ECDYSIS_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ECDYSIS_ADMIN_TOKEN"));

    // On every interface, on a port the kernel picks (the server logs which).
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_LISTEN", "0.0.0.0:0"),
            ("ECDYSIS_ADMIN_TOKEN", "t0ken"),
        ],
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let body = json!({ "text": "/help" });
    let anonymous = client
        .post(format!("{base}/api/chat/x"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous_read = client
        .get(format!("{base}/api/chat/x/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_read.status(), 401);
    let with_token = client
        .post(format!("{base}/api/chat/x"))
        .bearer_auth("t0ken")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 202);
    // The login cookie works, and never carries the token itself.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/login"))
        .form(&[("token", "t0ken")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(!set_cookie.contains("t0ken"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let with_cookie = client
        .get(format!("{base}/api/chat/x/messages"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
    let raw_token_cookie = client
        .get(format!("{base}/api/chat/x/messages"))
        .header("cookie", "ecdysis_session=t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(raw_token_cookie.status(), 401);
    drop(server);
}

#[test]
fn bad_configuration_stops_startup_with_a_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecdysis"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"));
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let out = run(&[("ECDYSIS_MODEL", "gemini/pro")], &["serve"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`model`") && stderr.contains("gemini"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = run(&[("ECDYSIS_BLOB_URL", "not a url")], &["serve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("blob_url"));

    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"127.0.0.1:1\"\nmodle = \"x\"\n",
    )
    .unwrap();
    let out = run(&[], &["--config", "bad.toml", "serve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("modle"));

    let out = run(&[], &["--config", "missing.toml", "serve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn doctor_reports_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("doctor")
        .current_dir(dir.path())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("DATABASE_URL")
        .env_remove("ECDYSIS_BLOB_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok    database"), "{stdout}");
    assert!(stdout.contains("ok    blobs"), "{stdout}");

    let out = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("doctor")
        .current_dir(dir.path())
        .env("DATABASE_URL", "postgres://nobody:secret@127.0.0.1:1/none")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  database"), "{stdout}");
    assert!(!stdout.contains("secret"), "password leaked: {stdout}");
}

#[test]
fn terminal_chat_uses_the_same_commands_and_storage() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let chat = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
            .arg("chat")
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = chat("/remember tea at five\n");
    assert!(first.contains("Remembered as #1."), "{first}");
    let second = chat("/recall tea\n/help\n");
    assert!(second.contains("#1 tea at five"), "{second}");
    assert!(second.contains("/remember <text>"), "{second}");
}

/// Many clients post at once; `serve` is killed with SIGKILL while they do. Every event that
/// got its 202 is in the database afterwards, with the user's message: the answer was sent only
/// after the commit was on disk (SQLite `synchronous = FULL`; the Postgres commit).
async fn sigkill_under_load_keeps_every_accepted_event(env: &[(&str, &str)]) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), env).await;
    let accepted: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let failed_after_kill = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for c in 0..16 {
        let (client, base) = (client.clone(), server.base.clone());
        let (accepted, count) = (accepted.clone(), count.clone());
        let (killed, failed_after_kill) = (killed.clone(), failed_after_kill.clone());
        clients.push(tokio::spawn(async move {
            for n in 0.. {
                let conversation = format!("load{}", (c * 7 + n) % 20);
                let text = format!("/remember client {c} item {n}");
                let sent = client
                    .post(format!("{base}/api/chat/{conversation}"))
                    .json(&json!({ "text": text, "user": "loader" }))
                    .send()
                    .await;
                let body: Option<serde_json::Value> = match sent {
                    Ok(r) if r.status() == 202 => r.json().await.ok(),
                    Ok(r) => panic!("unexpected answer {}", r.status()),
                    Err(_) => None,
                };
                match body {
                    Some(body) => {
                        let id = body["event_id"].as_str().unwrap().to_string();
                        accepted.lock().unwrap().push((id, text));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    None => {
                        // The server is gone: this client is done.
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "a request failed before the kill"
                        );
                        failed_after_kill.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }
    // Kill once a good number of events is in, while all sixteen clients keep posting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few events accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    server.kill();
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed_after_kill.load(Ordering::SeqCst),
        16,
        "every client was still posting when the server died"
    );
    let accepted = accepted.lock().unwrap().clone();
    eprintln!("{} events accepted before the kill", accepted.len());

    // Every accepted event is stored, with the user's message.
    let url = env
        .iter()
        .find(|(k, _)| *k == "DATABASE_URL")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| format!("sqlite://{}/data/ecdysis.db", dir.path().display()));
    let store = ecdysis::storage::store::open(&url).await.unwrap();
    let mut by_conversation: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    for (id, text) in &accepted {
        let conversation = text_conversation(text);
        by_conversation
            .entry(conversation)
            .or_default()
            .push(id.clone());
    }
    let mut found = 0;
    for (conversation, ids) in &by_conversation {
        let conversation = ecdysis_chat::ConversationRef::new("web", "local", conversation, None);
        let messages = store
            .messages(
                &conversation,
                ecdysis::storage::store::MessageId(0),
                100_000,
            )
            .await
            .unwrap();
        for id in ids {
            let user = messages.iter().find(|m| {
                m.role == ecdysis::storage::store::Role::User
                    && m.event_id.map(|e| e.to_string()).as_deref() == Some(id.as_str())
            });
            assert!(
                user.is_some(),
                "accepted event {id} in {conversation} is lost"
            );
            found += 1;
        }
    }
    assert_eq!(found, accepted.len());
}

/// The conversation a load message went to (`/remember client C item N` → `load{(C*7+N)%20}`).
fn text_conversation(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let c: usize = words[2].parse().unwrap();
    let n: usize = words[4].parse().unwrap();
    format!("load{}", (c * 7 + n) % 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_keeps_every_accepted_event_sqlite() {
    sigkill_under_load_keeps_every_accepted_event(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_keeps_every_accepted_event_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    sigkill_under_load_keeps_every_accepted_event(&[("DATABASE_URL", &url)]).await;
}

/// Back-pressure: once `ECDYSIS_BUS_MAX_QUEUED` events are open, a new one gets 503 with
/// `Retry-After` and a clear reason at once, and nothing of it is stored; the open events are
/// kept.
#[tokio::test]
async fn a_full_queue_answers_503_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The model is unreachable: each `/ask` fails and waits for its retry, so it stays open.
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_BUS_MAX_QUEUED", "3"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    for n in 0..3 {
        server.say("full", &format!("/ask question {n}")).await;
    }
    let refused = server
        .post(
            "full",
            json!({ "text": "/remember one too many", "user": "u" }),
        )
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let why = refused.text().await.unwrap();
    assert!(why.contains("events are waiting"), "{why}");
    let messages = server.messages("full").await;
    let users: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 3, "{users:?}");
    assert!(
        users.iter().all(|t| t.starts_with("/ask question")),
        "{users:?}"
    );
}
