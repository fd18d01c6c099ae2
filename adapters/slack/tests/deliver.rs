//! Delivery against the fake Slack: a reply that may have been posted before a crash is looked
//! up by its idempotency key instead of posted again; a gone `response_url` falls back to the
//! channel; failures are sorted into retryable and permanent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::Arc;

use common::{Sink, slack};
use ecdysis_chat::{ChatAdapter, ConversationRef, DeliveryError, Reply};
use ecdysis_slack::{Route, SocketSettings, Via};
use ecdysis_testkit::slack::FakeSlack;

fn reply(key: &str, route: &Route) -> Reply {
    Reply {
        idempotency_key: key.into(),
        conversation: ConversationRef::new(
            "slack",
            &route.team,
            &route.channel,
            route.thread_ts.clone(),
        ),
        text: format!("answer {key}"),
        attachments: Vec::new(),
        buttons: Vec::new(),
        route: route.to_value(),
        live: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn thread_route(received_ms: i64) -> Route {
    Route {
        team: "T1".into(),
        channel: "C1".into(),
        thread_ts: Some("100.000100".into()),
        message_ts: Some("100.000100".into()),
        response_url: None,
        via: Via::Message,
        received_ms,
        user: Some("U1".into()),
    }
}

#[tokio::test]
async fn replies_posted_before_a_crash_are_not_posted_again() {
    let fake = FakeSlack::start().await.unwrap();
    let adapter = slack(&fake, Arc::new(Sink::default()), SocketSettings::default());

    // A fresh event: posted directly, no lookup.
    let fresh = thread_route(now_ms() + 1_000);
    let first = adapter.deliver(&reply("7:0", &fresh)).await.unwrap();
    assert_eq!(fake.calls_to("chat.postMessage").len(), 1);
    assert!(fake.calls_to("conversations.replies").is_empty());

    // The same reply again, for an event from before this process started (the outbox did
    // not record the first post because the process died): found in the thread, not reposted.
    let old = thread_route(1);
    let again = adapter.deliver(&reply("7:0", &old)).await.unwrap();
    assert_eq!(again.platform_message_id, first.platform_message_id);
    assert_eq!(
        fake.calls_to("chat.postMessage").len(),
        1,
        "not posted twice"
    );
    let lookups = fake.calls_to("conversations.replies");
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].arg("ts"), Some("100.000100"));
    assert_eq!(lookups[0].arg("include_all_metadata"), Some("true"));

    // An old event whose reply was never posted: looked up, then posted.
    adapter.deliver(&reply("8:0", &old)).await.unwrap();
    assert_eq!(fake.calls_to("chat.postMessage").len(), 2);

    // A DM root reply is looked up in the channel's history since the triggering message.
    let dm = Route {
        channel: "D1".into(),
        thread_ts: None,
        message_ts: Some("200.000100".into()),
        ..thread_route(1)
    };
    adapter.deliver(&reply("9:0", &dm)).await.unwrap();
    let history = fake.calls_to("conversations.history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].arg("oldest"), Some("200.000100"));
    let posts = fake.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 3);
    assert_eq!(posts[2].arg("thread_ts"), None);
}

#[tokio::test]
async fn a_failed_attempt_is_checked_before_the_next() {
    let fake = FakeSlack::start().await.unwrap();
    let adapter = slack(&fake, Arc::new(Sink::default()), SocketSettings::default());
    let route = thread_route(now_ms() + 1_000);
    fake.fail_next("chat.postMessage", 1, "ratelimited");
    let e = adapter.deliver(&reply("5:0", &route)).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable(_)), "{e}");
    adapter.deliver(&reply("5:0", &route)).await.unwrap();
    assert_eq!(
        fake.calls_to("conversations.replies").len(),
        1,
        "the retry looked first"
    );
    assert_eq!(fake.calls_to("chat.postMessage").len(), 2);

    fake.fail_next("chat.postMessage", 1, "channel_not_found");
    let e = adapter.deliver(&reply("6:0", &route)).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent(_)), "{e}");
}

#[tokio::test]
async fn command_replies_use_the_response_url_and_fall_back_to_the_channel() {
    let fake = FakeSlack::start().await.unwrap();
    let adapter = slack(&fake, Arc::new(Sink::default()), SocketSettings::default());
    let route = Route {
        team: "T1".into(),
        channel: "C5".into(),
        thread_ts: None,
        message_ts: None,
        response_url: Some(fake.response_url("cmd1")),
        via: Via::ResponseUrl,
        received_ms: now_ms(),
        user: Some("U1".into()),
    };
    adapter.deliver(&reply("1:0", &route)).await.unwrap();
    let responses = fake.calls_to("response_url");
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].args["text"], "answer 1:0");
    assert!(fake.calls_to("chat.postMessage").is_empty());

    // An expired response_url (404): the answer goes into the channel instead.
    let gone = Route {
        response_url: Some(format!("{}/no-such-hook", fake.base_url())),
        ..route
    };
    adapter.deliver(&reply("2:0", &gone)).await.unwrap();
    let posts = fake.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].arg("channel"), Some("C5"));
}

#[tokio::test]
async fn limits_and_working_reaction() {
    let fake = FakeSlack::start().await.unwrap();
    let adapter = slack(&fake, Arc::new(Sink::default()), SocketSettings::default());
    assert_eq!(adapter.platform(), "slack");
    assert!(adapter.limits().max_text_chars <= 4_000);
    let route = thread_route(now_ms());
    let conversation = ConversationRef::new("slack", "T1", "C1", route.thread_ts.clone());
    adapter.working(&conversation, &route.to_value()).await;
    let reactions = fake.calls_to("reactions.add");
    assert_eq!(reactions.len(), 1);
    assert_eq!(reactions[0].arg("name"), Some("eyes"));
    assert_eq!(reactions[0].arg("channel"), Some("C1"));
    assert_eq!(reactions[0].arg("timestamp"), Some("100.000100"));
    // Already reacted (a retry of the same event) is not an error.
    fake.fail_next("reactions.add", 1, "already_reacted");
    adapter.working(&conversation, &route.to_value()).await;
}
