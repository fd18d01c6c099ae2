//! Catch-up after downtime end to end: a real `ecdysis serve` process, stopped with SIGKILL;
//! users write in the fake Slack and the fake Discord while it is down; after the restart each
//! message for the bot is answered exactly once (what had arrived live is not answered again,
//! chatter not for the bot is left alone), and a second restart answers nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::discord::{
    APPLICATION_ID, CHANNEL_ID, DM_CHANNEL_ID, FakeDiscord, Posted, TOKEN,
};
use ecdysis_testkit::llm::{FakeLlm, Reply};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const SECRET: &str = "test-signing-secret";
const TEAM: &str = "T1";
const WAIT: Duration = Duration::from_secs(30);

/// A fake model that says which message it answers.
async fn echoing_llm() -> FakeLlm {
    let llm = FakeLlm::start().await.unwrap();
    llm.set_default(Reply::computed(|r| {
        Reply::text(format!("answer to: {}", r.last_message_text()))
    }));
    llm
}

/// Wait until `count()` is at least `n`.
async fn wait_for(what: &str, n: usize, count: impl Fn() -> usize, log: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while count() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n}\n{}",
            count(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until this start of the server logged that a catch-up run finished.
async fn wait_catch_up(server: &Server, platform: &str, runs: usize) {
    let line = format!("{platform} catch-up done");
    wait_for(
        &line,
        runs,
        || server.log().matches(&line).count(),
        || server.log(),
    )
    .await;
}

// --------------------------------------------------------------------------------- Slack

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Deliver one Events API event for a message already in the fake's history.
async fn slack_event(server: &Server, event: serde_json::Value) {
    let body = json!({
        "token": "verification-token", "team_id": TEAM, "api_app_id": "AFAKE",
        "type": "event_callback", "event_id": format!("Ev{}", event["ts"]), "event_time": now(),
        "authorizations": [{"team_id": TEAM, "user_id": "UBOT", "is_bot": true,
                            "is_enterprise_install": false}],
        "event": event,
    })
    .to_string();
    let ts = now();
    let r = reqwest::Client::new()
        .post(format!("{}/slack/events", server.base))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", server.log());
}

/// The texts the bot posted into `channel` (in `thread`, when given).
fn slack_posts(slack: &FakeSlack, channel: &str, thread: Option<&str>) -> Vec<String> {
    slack
        .calls_to("chat.postMessage")
        .into_iter()
        .filter(|c| c.arg("channel") == Some(channel))
        .filter(|c| thread.is_none() || c.arg("thread_ts") == thread)
        .map(|c| c.arg("text").unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn slack_messages_sent_while_down_are_answered_once_after_start() {
    let slack = FakeSlack::start().await.unwrap();
    let llm = echoing_llm().await;
    let dir = tempfile::tempdir().unwrap();
    let (api, llm_url) = (slack.api_url(), llm.anthropic_base_url());
    let server = Server::start(
        dir.path(),
        &[
            ("SLACK_SIGNING_SECRET", SECRET),
            ("SLACK_BOT_TOKEN", "xoxb-catch-up"),
            ("SLACK_API_URL", &api),
            ("ECDYSIS_MODEL", "anthropic/claude-sonnet-4-5"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            // Whole replies, one `chat.postMessage` each.
            ("ECDYSIS_SLACK_STREAMING", "off"),
        ],
    )
    .await;
    wait_catch_up(&server, "Slack", 1).await;

    // Live: a mention in a channel (answered in its thread) and a DM.
    let root = slack.post_user_message("C1", None, "U1", "<@UBOT> first question");
    slack_event(
        &server,
        json!({"type": "app_mention", "user": "U1", "text": "<@UBOT> first question",
               "ts": root, "channel": "C1", "event_ts": root}),
    )
    .await;
    let dm = slack.post_user_message("D1", None, "U1", "hello in a DM");
    slack_event(
        &server,
        json!({"type": "message", "channel_type": "im", "user": "U1", "text": "hello in a DM",
               "ts": dm, "channel": "D1"}),
    )
    .await;
    let log = || server.log();
    wait_for(
        "live answers",
        2,
        || slack.calls_to("chat.postMessage").len(),
        log,
    )
    .await;

    // Down: four messages, three of them for the bot.
    let mut server = server;
    server.kill();
    slack.post_user_message("C1", Some(&root), "U1", "a follow-up in the thread");
    let mention = slack.post_user_message("C1", None, "U2", "<@UBOT> a new question");
    slack.post_user_message("C1", None, "U2", "lunch, anyone?");
    slack.post_user_message("D1", None, "U1", "a DM while you were away");

    let server = server.restart().await;
    wait_catch_up(&server, "Slack", 2).await;
    let log = || server.log();
    wait_for(
        "answers after the restart",
        5,
        || slack.calls_to("chat.postMessage").len(),
        log,
    )
    .await;
    // Nothing more comes: give a wrong second answer time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        slack_posts(&slack, "C1", Some(&root)),
        vec![
            "answer to: first question",
            "answer to: a follow-up in the thread"
        ],
        "{}",
        server.log()
    );
    assert_eq!(
        slack_posts(&slack, "C1", Some(&mention)),
        vec!["answer to: a new question"]
    );
    assert_eq!(
        slack_posts(&slack, "D1", None),
        vec![
            "answer to: hello in a DM",
            "answer to: a DM while you were away"
        ]
    );
    assert_eq!(slack.calls_to("chat.postMessage").len(), 5);
    assert_eq!(llm.request_count(), 5, "the model ran once per message");
    let history_reads = slack.calls_to("conversations.history").len()
        + slack.calls_to("conversations.replies").len();
    assert!(history_reads >= 3, "C1, its thread and D1 were read");

    // A second restart finds nothing new.
    let server = server.restart().await;
    wait_catch_up(&server, "Slack", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        slack.calls_to("chat.postMessage").len(),
        5,
        "{}",
        server.log()
    );
    assert_eq!(llm.request_count(), 5);
}

#[tokio::test]
async fn slack_catch_up_is_off_with_a_zero_window() {
    let slack = FakeSlack::start().await.unwrap();
    let llm = echoing_llm().await;
    let dir = tempfile::tempdir().unwrap();
    let (api, llm_url) = (slack.api_url(), llm.anthropic_base_url());
    let server = Server::start(
        dir.path(),
        &[
            ("SLACK_SIGNING_SECRET", SECRET),
            ("SLACK_BOT_TOKEN", "xoxb-catch-up"),
            ("SLACK_API_URL", &api),
            ("ECDYSIS_MODEL", "anthropic/claude-sonnet-4-5"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_SLACK_STREAMING", "off"),
            ("ECDYSIS_CATCH_UP_WINDOW", "0"),
        ],
    )
    .await;
    let dm = slack.post_user_message("D1", None, "U1", "hello");
    slack_event(
        &server,
        json!({"type": "message", "channel_type": "im", "user": "U1", "text": "hello",
               "ts": dm, "channel": "D1"}),
    )
    .await;
    let log = || server.log();
    wait_for(
        "the live answer",
        1,
        || slack.calls_to("chat.postMessage").len(),
        log,
    )
    .await;
    let mut server = server;
    server.kill();
    slack.post_user_message("D1", None, "U1", "while away");
    let server = server.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(slack.calls_to("chat.postMessage").len(), 1);
    // History may be read only by the duplicate check of a reply whose delivery the kill
    // interrupted (it asks for message metadata); catch-up never asks.
    for call in slack.calls_to("conversations.history") {
        assert_eq!(call.arg("include_all_metadata"), Some("true"), "{call:?}");
    }
    assert!(!server.log().contains("catch-up done"));
}

// ------------------------------------------------------------------------------- Discord

fn discord_env(fake: &FakeDiscord, llm: &FakeLlm) -> Vec<(String, String)> {
    [
        ("DISCORD_TOKEN", TOKEN.to_string()),
        ("DISCORD_API_URL", fake.url()),
        ("DISCORD_APPLICATION_ID", APPLICATION_ID.to_string()),
        ("ECDYSIS_DM_POLICY", "open".to_string()),
        ("ECDYSIS_MODEL", "anthropic/claude-test".to_string()),
        ("ANTHROPIC_API_KEY", "test-key".to_string()),
        ("ANTHROPIC_BASE_URL", llm.anthropic_base_url()),
        ("ECDYSIS_SANDBOX", "off".to_string()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The bot's messages with this content, wherever they were posted.
fn discord_answers(fake: &FakeDiscord) -> Vec<Posted> {
    fake.posted()
        .into_iter()
        .filter(|p| p.content.starts_with("answer to: "))
        .collect()
}

#[tokio::test]
async fn discord_messages_sent_while_down_are_answered_once_after_start() {
    let fake = FakeDiscord::start().await.unwrap();
    let llm = echoing_llm().await;
    let dir = tempfile::tempdir().unwrap();
    let env = discord_env(&fake, &llm);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start(dir.path(), &env).await;
    assert!(fake.wait_identified(1).await, "the bot identified");
    wait_catch_up(&server, "Discord", 1).await;

    // Live: a mention in a channel (answered in a thread on it) and a DM.
    let mention = fake.say_in_guild(CHANNEL_ID, "first question", true);
    fake.say_in_dm("hello in a DM");
    let log = || server.log();
    wait_for("live answers", 2, || discord_answers(&fake).len(), log).await;
    assert!(
        fake.threads().iter().any(|(thread, _)| *thread == mention),
        "the mention got a thread"
    );

    // Down: four messages, three of them for the bot.
    let mut server = server;
    server.kill();
    fake.say_in_guild_while_away(&mention, "a follow-up in the thread", false);
    fake.say_in_guild_while_away(CHANNEL_ID, "a new question", true);
    fake.say_in_guild_while_away(CHANNEL_ID, "lunch, anyone?", false);
    fake.say_in_dm_while_away("a DM while you were away");

    let server = server.restart().await;
    assert!(fake.wait_identified(2).await, "the bot identified again");
    wait_catch_up(&server, "Discord", 2).await;
    let log = || server.log();
    wait_for(
        "answers after the restart",
        5,
        || discord_answers(&fake).len(),
        log,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = discord_answers(&fake);
    let in_channel = |channel: &str| -> Vec<String> {
        answers
            .iter()
            .filter(|p| p.channel == channel)
            .map(|p| p.content.clone())
            .collect()
    };
    assert_eq!(
        in_channel(&mention),
        vec![
            "answer to: first question",
            "answer to: a follow-up in the thread"
        ],
        "{}",
        server.log()
    );
    assert_eq!(
        in_channel(DM_CHANNEL_ID),
        vec![
            "answer to: hello in a DM",
            "answer to: a DM while you were away"
        ]
    );
    assert_eq!(answers.len(), 5, "{answers:#?}");
    assert!(
        answers
            .iter()
            .any(|p| p.content == "answer to: a new question"),
        "{answers:#?}"
    );
    assert_eq!(llm.request_count(), 5, "the model ran once per message");

    // A second restart finds nothing new.
    let server = server.restart().await;
    assert!(fake.wait_identified(3).await);
    wait_catch_up(&server, "Discord", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(discord_answers(&fake).len(), 5, "{}", server.log());
    assert_eq!(llm.request_count(), 5);
}
