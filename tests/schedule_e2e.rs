//! Scheduled work end to end, through real `ecdysis serve` processes and the web chat: a
//! reminder posts into the conversation it was asked in on time; a recurring job fires on its
//! schedule until `unschedule`; bad input stores nothing; SIGKILL before or during a due window
//! loses and repeats nothing; a job due while the server was down fires once within the grace
//! period and is skipped with a note past it; two instances on one Postgres fire each due time
//! once; heartbeats post only news; the model schedules through its tools; admins list and
//! cancel jobs. Both backends where the issue asks for it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use serde_json::{Value, json};

/// The number after `job #` in a confirmation.
fn job_id(confirmation: &str) -> i64 {
    let rest = confirmation
        .split("job #")
        .nth(1)
        .unwrap_or_else(|| panic!("no job id in {confirmation:?}"));
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no job id in {confirmation:?}"))
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// How many assistant messages say exactly `text`.
fn count(messages: &[Value], text: &str) -> usize {
    texts(messages).iter().filter(|t| *t == text).count()
}

/// Wait (bounded) until the conversation has `n` assistant messages saying exactly `text`;
/// returns all messages and when the `n`th was first seen.
async fn wait_posts(
    server: &Server,
    conversation: &str,
    text: &str,
    n: usize,
    limit: Duration,
) -> (Vec<Value>, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        let messages = server.messages(conversation).await;
        if count(&messages, text) >= n {
            return (messages, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{conversation}: fewer than {n} posts of {text:?}:\n{:#?}\n{}",
            texts(&messages),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_TIMEZONE", "Europe/Berlin".into()),
    ]
}

async fn start(dir: &std::path::Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &env).await
}

/// `DATABASE_URL` for a backend: SQLite under the data dir, or a fresh Postgres schema.
async fn database(postgres: bool) -> Option<Vec<(&'static str, String)>> {
    let mut env = base_env();
    if postgres {
        let url = common::postgres_url()?;
        env.push(("DATABASE_URL", common::fresh_postgres(&url).await));
    }
    Some(env)
}

async fn remind_posts_on_time(postgres: bool) {
    let Some(env) = database(postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &env).await;
    let conversation = "standup";
    let sent = Instant::now();
    let confirmation = server
        .ask(conversation, "/remind in 2 seconds stand-up")
        .await;
    assert!(
        confirmation.contains("“stand-up”") && confirmation.contains("(Europe/Berlin)"),
        "{confirmation}"
    );
    // The instant is named in the time zone: a CET/CEST clock time with seconds.
    assert!(
        confirmation.contains(" CET") || confirmation.contains(" CEST"),
        "{confirmation}"
    );
    let (messages, seen) = wait_posts(
        &server,
        conversation,
        "⏰ stand-up",
        1,
        Duration::from_secs(10),
    )
    .await;
    let after = seen.duration_since(sent);
    assert!(
        after >= Duration::from_secs(2) && after <= Duration::from_millis(3_500),
        "posted {after:?} after the command"
    );
    // In the same conversation, after the confirmation, once.
    assert_eq!(count(&messages, "⏰ stand-up"), 1);
    let order = texts(&messages);
    assert!(
        order.iter().position(|t| t == "⏰ stand-up")
            > order.iter().position(|t| *t == confirmation)
    );
    // A one-off job is done once it ran.
    let listed = server.ask(conversation, "/schedules").await;
    assert!(listed.starts_with("No scheduled jobs"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remind_posts_on_time_sqlite() {
    remind_posts_on_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remind_posts_on_time_postgres() {
    remind_posts_on_time(true).await;
}

async fn every_two_seconds_until_unscheduled(postgres: bool) {
    let Some(mut env) = database(postgres).await else {
        return;
    };
    env.push(("ECDYSIS_SCHEDULE_MIN_INTERVAL", "1s".into()));
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &env).await;
    let conversation = "ticks";
    let confirmation = server
        .ask(conversation, "/remind every 2 seconds tick")
        .await;
    let id = job_id(&confirmation);
    let (_, first) = wait_posts(&server, conversation, "⏰ tick", 1, Duration::from_secs(10)).await;
    let (_, third) = wait_posts(&server, conversation, "⏰ tick", 3, Duration::from_secs(10)).await;
    // Two intervals between the first and the third tick, give or take polling.
    let span = third.duration_since(first);
    assert!(
        span >= Duration::from_millis(3_500) && span <= Duration::from_millis(4_800),
        "three ticks took {span:?}"
    );
    let listed = server.ask(conversation, "/schedules").await;
    assert!(
        listed.contains(&format!("#{id} every 2 seconds")),
        "{listed}"
    );
    let stopped = server.ask(conversation, &format!("/unschedule {id}")).await;
    assert_eq!(
        stopped,
        format!("Cancelled job #{id}; it will not run again.")
    );
    // A later job is the clock: once it has posted, two more intervals have passed.
    server
        .ask(conversation, "/remind in 5 seconds marker")
        .await;
    let (messages, _) = wait_posts(
        &server,
        conversation,
        "⏰ marker",
        1,
        Duration::from_secs(15),
    )
    .await;
    let order = texts(&messages);
    let cancelled_at = order.iter().position(|t| *t == stopped).unwrap();
    assert!(
        !order[cancelled_at..].iter().any(|t| t == "⏰ tick"),
        "a tick after the job was cancelled: {order:#?}"
    );
    let again = server.ask(conversation, &format!("/unschedule {id}")).await;
    assert!(again.contains("no active job"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_two_seconds_until_unscheduled_sqlite() {
    every_two_seconds_until_unscheduled(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_two_seconds_until_unscheduled_postgres() {
    every_two_seconds_until_unscheduled(true).await;
}

async fn bad_input_stores_nothing(postgres: bool) {
    let Some(mut env) = database(postgres).await else {
        return;
    };
    env.push(("ECDYSIS_SCHEDULE_MAX_JOBS", "2".into()));
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &env).await;
    let conversation = "bad";
    for (command, expected) in [
        ("/remind in banana", "I cannot read `banana` as a time span"),
        (
            "/remind cron \"0 9 * * 1-5 * 2026\" report",
            "a cron expression has 5 fields",
        ),
        ("/remind on 2020-01-01 10:00 party", "is in the past"),
        (
            "/remind every 10 seconds spam",
            "more often than the minimum interval of 1 minute",
        ),
        ("/remind in 5 minutes", "say what to post"),
        ("/remind at 25:00 x", "as a clock time"),
    ] {
        let reply = server.ask(conversation, command).await;
        assert!(
            reply.contains(expected) && reply.ends_with("Nothing was saved."),
            "{command}: {reply}"
        );
    }
    let usage = server.ask(conversation, "/remind").await;
    assert!(
        usage.starts_with("Usage: `/remind <when> <what>`"),
        "{usage}"
    );
    // The cap: two jobs fit, the third is refused.
    for n in 1..=2 {
        let ok = server
            .ask(conversation, &format!("/remind tomorrow at 9:00 job {n}"))
            .await;
        assert!(ok.starts_with("OK, job #"), "{ok}");
    }
    let over = server
        .ask(conversation, "/remind tomorrow at 9:00 job 3")
        .await;
    assert!(
        over.contains("this channel has 2 scheduled jobs, the limit")
            && over.ends_with("Nothing was saved."),
        "{over}"
    );
    // Another channel has its own cap.
    let other = server
        .ask("elsewhere", "/remind tomorrow at 9:00 job 4")
        .await;
    assert!(other.starts_with("OK, job #"), "{other}");
    let listed = server.ask(conversation, "/schedules").await;
    assert!(
        listed.starts_with("2 scheduled jobs in this channel:"),
        "{listed}"
    );
    assert!(
        listed.contains("“job 1”") && listed.contains("“job 2”"),
        "{listed}"
    );
    assert!(
        !listed.contains("job 3") && !listed.contains("job 4"),
        "{listed}"
    );
    let unknown = server.ask(conversation, "/unschedule banana").await;
    assert!(
        unknown.starts_with("Usage: `/unschedule <id>`"),
        "{unknown}"
    );
    // A job of another channel cannot be cancelled from here.
    let foreign = job_id(&other);
    let refused = server
        .ask(conversation, &format!("/unschedule {foreign}"))
        .await;
    assert!(refused.contains("no active job"), "{refused}");
    let status = server.ask(conversation, "/status").await;
    assert!(
        status.contains("Scheduled jobs in this channel: 2"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stores_nothing_sqlite() {
    bad_input_stores_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stores_nothing_postgres() {
    bad_input_stores_nothing(true).await;
}

/// SIGKILL before the due time, and again in the middle of a window where many jobs are due:
/// after each restart every job posts exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_and_during_a_due_window() {
    let env = base_env();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &env).await;
    server
        .ask("crash", "/remind in 3 seconds after the crash")
        .await;
    server.kill();
    let server = server.restart().await;
    wait_posts(
        &server,
        "crash",
        "⏰ after the crash",
        1,
        Duration::from_secs(15),
    )
    .await;

    // 40 jobs in 8 conversations, due over about a second; killed while they fire.
    let conversations: Vec<String> = (0..8).map(|c| format!("window{c}")).collect();
    for i in 0..40 {
        let conversation = &conversations[i % 8];
        let reply = server
            .ask(conversation, &format!("/remind in 4 seconds job {i}"))
            .await;
        assert!(reply.starts_with("OK, job #"), "{reply}");
    }
    // Kill as soon as the first post of the window shows.
    let deadline = Instant::now() + Duration::from_secs(15);
    'first: loop {
        for conversation in &conversations {
            let messages = server.messages(conversation).await;
            if texts(&messages).iter().any(|t| t.starts_with("⏰ job ")) {
                break 'first;
            }
        }
        assert!(Instant::now() < deadline, "no job of the window fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut server = server;
    server.kill();
    let server = server.restart().await;
    for i in 0..40 {
        let conversation = &conversations[i % 8];
        let text = format!("⏰ job {i}");
        let (messages, _) =
            wait_posts(&server, conversation, &text, 1, Duration::from_secs(20)).await;
        assert_eq!(count(&messages, &text), 1, "{text} in {conversation}");
    }
    // Nothing is still due, and a later job still runs (the scanner is alive and idle).
    server
        .ask("crash", "/remind in 2 seconds still alive")
        .await;
    wait_posts(
        &server,
        "crash",
        "⏰ still alive",
        1,
        Duration::from_secs(10),
    )
    .await;
    for (i, conversation) in conversations.iter().enumerate() {
        let messages = server.messages(conversation).await;
        for j in (i..40).step_by(8) {
            assert_eq!(count(&messages, &format!("⏰ job {j}")), 1);
        }
    }
}

/// Down across due times: within the grace period a job fires once on start (a recurring job
/// once for all its missed runs); past it, it is skipped with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_runs_within_and_past_the_grace_period() {
    let mut env = base_env();
    env.push(("ECDYSIS_SCHEDULE_GRACE", "5s".into()));
    env.push(("ECDYSIS_SCHEDULE_MIN_INTERVAL", "1s".into()));
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &env).await;
    let late = server.ask("late", "/remind in 2 seconds too late").await;
    let late_id = job_id(&late);
    server
        .ask("ontime", "/remind in 9 seconds within grace")
        .await;
    server.ask("ontime", "/remind every 1 seconds beat").await;
    let stopped = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    // Down until the first job is 8 s late (past the 5 s grace), the second 1 s late, and the
    // recurring one has missed about ten beats.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    let server = server.restart().await;
    let (messages, _) = wait_posts(
        &server,
        "ontime",
        "⏰ within grace",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(count(&messages, "⏰ within grace"), 1);
    // The skipped job's note, in its conversation; the job itself never posts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let note = loop {
        let messages = server.messages("late").await;
        if let Some(note) = texts(&messages)
            .into_iter()
            .find(|t| t.starts_with(&format!("⏰ Skipped job #{late_id}")))
        {
            assert_eq!(count(&messages, "⏰ too late"), 0);
            break note;
        }
        assert!(Instant::now() < deadline, "no note:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        note.contains("5 seconds grace period") && note.contains("It will not run again."),
        "{note}"
    );
    // The recurring job: one beat for the whole missed window, then one a second.
    let (_, first) = wait_posts(&server, "ontime", "⏰ beat", 1, Duration::from_secs(10)).await;
    let (_, second) = wait_posts(&server, "ontime", "⏰ beat", 2, Duration::from_secs(10)).await;
    assert!(
        second.duration_since(first) >= Duration::from_millis(600),
        "missed beats came in a burst: {:?}",
        second.duration_since(first)
    );
    let listed = server.ask("late", "/schedules").await;
    assert!(listed.starts_with("No scheduled jobs"), "{listed}");
}

/// Two `serve` processes on one Postgres: jobs created through either instance fire once per
/// due time, also when the scanning instance is killed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_fire_each_due_time_once() {
    let Some(mut env) = database(true).await else {
        return;
    };
    env.push(("ECDYSIS_SCHEDULE_MIN_INTERVAL", "1s".into()));
    env.push(("ECDYSIS_LEADER_LEASE_SECONDS", "2".into()));
    env.push(("ECDYSIS_BUS_LEASE_SECONDS", "3".into()));
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = start(dir_a.path(), &env).await;
    let b = start(dir_b.path(), &env).await;
    let servers = [&a, &b];
    for i in 0..20 {
        let server = servers[i % 2];
        let reply = server
            .ask(
                &format!("pg{}", i % 4),
                &format!("/remind in 3 seconds pg job {i}"),
            )
            .await;
        assert!(reply.starts_with("OK, job #"), "{reply}");
    }
    b.ask("pgbeat", "/remind every 2 seconds pg beat").await;
    for i in 0..20 {
        let text = format!("⏰ pg job {i}");
        let (messages, _) = wait_posts(
            &a,
            &format!("pg{}", i % 4),
            &text,
            1,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(count(&messages, &text), 1, "{text}");
    }
    wait_posts(&a, "pgbeat", "⏰ pg beat", 3, Duration::from_secs(15)).await;
    // Kill whichever instance scans; the other takes the lease over and goes on.
    let (mut killed, survivor) = if a.log().contains("the scheduler is scanning") {
        (a, b)
    } else {
        (b, a)
    };
    killed.kill();
    let beats = count(&survivor.messages("pgbeat").await, "⏰ pg beat");
    wait_posts(
        &survivor,
        "pgbeat",
        "⏰ pg beat",
        beats + 2,
        Duration::from_secs(20),
    )
    .await;
    // Each due time once: the inbox has one event per (job, due time), and every beat event
    // posted exactly one message.
    let url = env
        .iter()
        .find(|(k, _)| *k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    use sqlx::{Connection, Row};
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT i.platform_event_id, COUNT(m.id) AS posts FROM inbox i
         LEFT JOIN messages m ON m.event_id = i.id AND m.role = 'assistant'
         WHERE i.platform_event_id LIKE 'schedule:%' AND i.status = 'done'
         GROUP BY i.platform_event_id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(rows.len() >= 20 + beats + 2, "{} fired events", rows.len());
    for row in rows {
        let id: String = row.get("platform_event_id");
        let posts: i64 = row.get("posts");
        assert_eq!(posts, 1, "{id} posted {posts} times");
    }
    let beat_messages = survivor.messages("pgbeat").await;
    let beat_events: std::collections::HashSet<String> = beat_messages
        .iter()
        .filter(|m| m["text"] == "⏰ pg beat")
        .map(|m| m["event_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(beat_events.len(), count(&beat_messages, "⏰ pg beat"));
}

/// An `ask:` job runs its prompt through the model when due: a heartbeat answering
/// NOTHING_TO_REPORT posts nothing, one with news posts it, and both count as model usage. The
/// model schedules a reminder with `schedule_create`. Admins see the jobs and cancel one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_model_tools_and_admin() {
    let llm = FakeLlm::start().await.unwrap();
    // Rules match in order: the news check's request also carries the earlier, unanswered
    // quiet check (consecutive user turns are merged), so it is matched first.
    llm.when("news check", Reply::Text("The build is red.".into()));
    llm.when("quiet check", Reply::Text("NOTHING_TO_REPORT".into()));
    llm.when(
        "remind me in 2 seconds to stretch",
        Reply::tool(
            "schedule_create",
            json!({ "when": "in 2 seconds", "text": "stretch" }),
        ),
    );
    llm.when("OK, job #", Reply::Text("I will remind you.".into()));
    let mut env = base_env();
    let base_url = llm.anthropic_base_url();
    env.extend([
        ("ECDYSIS_MODEL", "anthropic/claude-test".to_string()),
        ("ANTHROPIC_API_KEY", "test-anthropic-key".to_string()),
        ("ANTHROPIC_BASE_URL", base_url),
        (
            "ECDYSIS_ADMIN_TOKEN",
            "admin-token-for-schedules".to_string(),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &env).await;

    let quiet = server
        .ask("hb", "/remind in 2 seconds ask: quiet check")
        .await;
    assert!(quiet.contains("I will run “quiet check”"), "{quiet}");
    server
        .ask("hb", "/remind in 3 seconds ask: news check")
        .await;
    let (messages, _) = wait_posts(
        &server,
        "hb",
        "The build is red.",
        1,
        Duration::from_secs(15),
    )
    .await;
    // The quiet heartbeat ran first (it was due first) and posted nothing.
    let prompts: Vec<String> = llm
        .requests()
        .iter()
        .map(|r| r.last_message_text())
        .collect();
    let quiet_prompt = prompts
        .iter()
        .find(|p| p.contains("quiet check"))
        .expect("the quiet heartbeat reached the model");
    assert!(quiet_prompt.contains("NOTHING_TO_REPORT"), "{quiet_prompt}");
    assert!(
        !texts(&messages)
            .iter()
            .any(|t| t.contains("NOTHING_TO_REPORT")),
        "{:#?}",
        texts(&messages)
    );
    let status = server.ask("hb", "/status").await;
    assert!(status.contains("claude-test: 2 calls"), "{status}");

    // The model's tool: a reminder in the conversation it was asked in.
    let answer = server
        .ask("tooling", "remind me in 2 seconds to stretch")
        .await;
    assert_eq!(answer, "I will remind you.");
    wait_posts(&server, "tooling", "⏰ stretch", 1, Duration::from_secs(10)).await;

    // Admin: the jobs page lists every job; cancelling one stops it.
    let later = server
        .ask("hb", "/remind tomorrow at 9:00 admin target")
        .await;
    let id = job_id(&later);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{}/admin/schedules", server.base))
        .bearer_auth("admin-token-for-schedules")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("admin target") && html.contains("quiet check"),
        "{html}"
    );
    let cancelled = http
        .post(format!("{}/admin/schedules/{id}/cancel", server.base))
        .bearer_auth("admin-token-for-schedules")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 303);
    let listed = server.ask("hb", "/schedules").await;
    assert!(listed.starts_with("No scheduled jobs"), "{listed}");
    let again = http
        .post(format!("{}/admin/schedules/{id}/cancel", server.base))
        .bearer_auth("admin-token-for-schedules")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}
