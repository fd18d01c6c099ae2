//! Socket Mode against the fake Slack, with a recording sink: acknowledgements follow the
//! core's answer, and the watchdog replaces a socket that went silent while looking open.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Sink, slack};
use ecdysis_slack::SocketSettings;
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn mention(event_id: &str, ts: &str) -> serde_json::Value {
    json!({
        "type": "event_callback",
        "team_id": "T1",
        "event_id": event_id,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
        "event": {"type": "app_mention", "user": "U1", "channel": "C1", "ts": ts, "text": "<@UBOT> hi"},
    })
}

#[tokio::test]
async fn acknowledges_after_the_core_accepted_and_not_before() {
    let fake = FakeSlack::start().await.unwrap();
    let sink = Arc::new(Sink::default());
    let slack = slack(&fake, sink.clone(), SocketSettings::default());
    let socket = slack.start_socket_mode().unwrap();
    assert!(fake.wait_socket_connections(1, WAIT).await);

    *sink.busy.lock().unwrap() = true;
    let refused = fake
        .send_envelope("events_api", mention("Ev1", "1.0"))
        .unwrap();
    assert!(
        fake.wait_ack(&refused, Duration::from_millis(500))
            .await
            .is_none(),
        "a refused event is left for Slack to resend"
    );
    *sink.busy.lock().unwrap() = false;
    let accepted = fake
        .send_envelope("events_api", mention("Ev1", "1.0"))
        .unwrap();
    assert!(fake.wait_ack(&accepted, WAIT).await.is_some());
    assert_eq!(sink.events.lock().unwrap().len(), 1);

    // Envelopes the adapter has no use for are acknowledged all the same.
    let other = fake
        .send_envelope(
            "events_api",
            json!({"type": "app_rate_limited", "team_id": "T1"}),
        )
        .unwrap();
    assert!(fake.wait_ack(&other, WAIT).await.is_some());
    let unknown = fake.send_envelope("something_new", json!({})).unwrap();
    assert!(fake.wait_ack(&unknown, WAIT).await.is_some());
    let health = ecdysis_chat::ChatAdapter::health(&slack).unwrap();
    assert_eq!(health["socket"], "connected");
    assert!(health["last_envelope_at"].is_string());
    socket.stop().await;
}

#[tokio::test]
async fn watchdog_replaces_a_silent_socket() {
    let fake = FakeSlack::start().await.unwrap();
    let sink = Arc::new(Sink::default());
    let slack = slack(
        &fake,
        sink.clone(),
        SocketSettings {
            ping_interval: Duration::from_millis(100),
            silence_timeout: Duration::from_millis(400),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
    );
    let socket = slack.start_socket_mode().unwrap();
    assert!(fake.wait_socket_connections(1, WAIT).await);
    // Healthy: pings are answered, so the connection stays.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(fake.socket_connections(), 1, "a healthy socket is kept");

    // The socket stays open but nothing comes through any more.
    fake.silence_socket();
    assert!(
        fake.wait_socket_connections(2, Duration::from_secs(3))
            .await,
        "the watchdog reconnects a silent socket"
    );
    let id = fake
        .send_envelope("events_api", mention("Ev2", "2.0"))
        .unwrap();
    assert!(fake.wait_ack(&id, WAIT).await.is_some());
    assert_eq!(sink.events.lock().unwrap().len(), 1);
    socket.stop().await;
}

#[tokio::test]
async fn asked_to_disconnect_it_reconnects() {
    let fake = FakeSlack::start().await.unwrap();
    let sink = Arc::new(Sink::default());
    let slack = slack(&fake, sink, SocketSettings::default());
    let socket = slack.start_socket_mode().unwrap();
    assert!(fake.wait_socket_connections(1, WAIT).await);
    assert!(fake.send_frame(json!({"type": "disconnect", "reason": "refresh_requested"})));
    assert!(fake.wait_socket_connections(2, WAIT).await);
    socket.stop().await;
}
