//! One conformance suite for every `ChatAdapter`: Slack and Discord against their fakes (the
//! real SDK code paths over loopback HTTP), the terminal chat against a buffer, and the web
//! chat against an open page's live updates. Each platform says where a reply must appear and
//! what it shows there; the same checks run against all four:
//!
//! - a reply appears in the conversation it belongs to (thread, channel, page);
//! - delivering the same idempotency key twice shows one message;
//! - a text as long as the adapter's declared limit arrives whole, and the core's pieces of a
//!   longer text arrive in order;
//! - files and buttons show where the platform can show them;
//! - platform failures map to `Retryable` (rate limits, server errors) or `Permanent`.
//!
//! The web chat's messages, files and buttons live in the core's transcript (the adapter only
//! tells open pages to read it), so for web the suite checks the notification and that the
//! adapter never fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{
    Accepted, Attachment, Button, ButtonStyle, ChatAdapter, ConversationRef, DeliveryError, Event,
    EventSink, Reply, SubmitError,
};
use ecdysis_testkit::discord::FakeDiscord;
use ecdysis_testkit::slack::FakeSlack;
use serde_json::{Value, json};

/// What a platform shows of a delivered reply.
#[derive(Clone, Debug, Default, PartialEq)]
struct Shown {
    /// Where it appeared (thread, channel, page), in the platform's own words.
    place: String,
    text: String,
    files: Vec<String>,
    buttons: Vec<String>,
}

/// A platform under test: its adapter, a reply addressed to its test conversation, and what
/// it shows.
#[async_trait]
trait Platform: Send + Sync {
    fn adapter(&self) -> Arc<dyn ChatAdapter>;
    /// Where replies to the test conversation must appear.
    fn place(&self) -> String;
    /// A reply to the test conversation.
    fn reply(&self, key: &str, text: &str) -> Reply;
    /// Everything shown so far, in order.
    async fn shown(&self) -> Vec<Shown>;
    /// Whether files and buttons are the adapter's to show (the web chat's are the core's).
    fn shows_files_and_buttons(&self) -> bool {
        true
    }
    /// Make the next post fail, temporarily or for good; `false` when the platform has no such
    /// failure (the adapter cannot fail).
    fn fail_next_post(&self, permanent: bool) -> bool;
}

/// The suite.
async fn conformance(platform: &dyn Platform) {
    let adapter = platform.adapter();
    let limits = adapter.limits();

    // The right place.
    adapter
        .deliver(&platform.reply("c:1", "hello from the conformance suite"))
        .await
        .expect("a plain reply is delivered");
    let shown = platform.shown().await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!(shown[0].place, platform.place());
    assert!(shown[0].text.contains("hello from the conformance suite") || shown[0].text.is_empty());

    // Idempotent: the same key again shows nothing new.
    adapter
        .deliver(&platform.reply("c:1", "hello from the conformance suite"))
        .await
        .expect("a repeated reply is not an error");
    assert_eq!(
        platform.shown().await.len(),
        1,
        "the same key twice is one message"
    );

    // Long text: the declared limit arrives whole; the core's pieces of more arrive in order.
    let limit = limits.max_text_chars.min(50_000);
    let long: String = "x".repeat(limit);
    adapter
        .deliver(&platform.reply("c:2", &long))
        .await
        .expect("a text at the limit is delivered");
    let shown = platform.shown().await;
    assert_eq!(shown.len(), 2);
    if !shown[1].text.is_empty() {
        assert_eq!(shown[1].text.matches('x').count(), limit, "nothing cut");
    }
    let longer = format!("{} {}", "a".repeat(limit), "b".repeat(limit / 2));
    let pieces = ecdysis_chat::split_text(&longer, limit);
    assert!(pieces.len() >= 2);
    for (i, piece) in pieces.iter().enumerate() {
        adapter
            .deliver(&platform.reply(&format!("c:3#{i}"), piece))
            .await
            .expect("each piece is delivered");
    }
    let shown = platform.shown().await;
    assert_eq!(shown.len(), 2 + pieces.len());
    if !shown[2].text.is_empty() {
        assert!(shown[2].text.starts_with('a') && shown.last().unwrap().text.ends_with('b'));
    }

    if platform.shows_files_and_buttons() {
        // Files, in the same place.
        let mut reply = platform.reply("c:4", "the report");
        reply.attachments.push(Attachment {
            name: "report.txt".into(),
            mime: "text/plain".into(),
            bytes: Bytes::from_static(b"quarterly numbers"),
        });
        adapter.deliver(&reply).await.expect("a file is delivered");
        let shown = platform.shown().await;
        let with_file = shown
            .iter()
            .find(|s| s.files.iter().any(|f| f == "report.txt"));
        let with_file = with_file.unwrap_or_else(|| panic!("the file shows: {shown:#?}"));
        assert_eq!(with_file.place, platform.place());

        // Buttons.
        let mut reply = platform.reply("c:5", "Run `ls`?");
        reply.buttons = vec![
            Button {
                action_id: "approve".into(),
                label: "Approve".into(),
                value: "a1".into(),
                style: ButtonStyle::Primary,
            },
            Button {
                action_id: "deny".into(),
                label: "Deny".into(),
                value: "a1".into(),
                style: ButtonStyle::Danger,
            },
        ];
        adapter
            .deliver(&reply)
            .await
            .expect("buttons are delivered");
        let last = platform.shown().await.pop().unwrap();
        assert_eq!(last.buttons, ["Approve", "Deny"], "{last:#?}");
        assert_eq!(last.place, platform.place());
    }

    // Error mapping.
    if platform.fail_next_post(false) {
        let error = adapter
            .deliver(&platform.reply("c:6", "during an outage"))
            .await
            .expect_err("the platform failed");
        assert!(matches!(error, DeliveryError::Retryable(_)), "{error}");
    }
    if platform.fail_next_post(true) {
        let error = adapter
            .deliver(&platform.reply("c:7", "into a channel that is gone"))
            .await
            .expect_err("the platform refused");
        assert!(matches!(error, DeliveryError::Permanent(_)), "{error}");
    }
}

/// Accepts every event (the suite only delivers).
struct Sink;

#[async_trait]
impl EventSink for Sink {
    async fn submit(&self, _: Event) -> Result<Accepted, SubmitError> {
        Ok(Accepted {
            event_id: "1".into(),
            duplicate: false,
            ignored: false,
        })
    }
}

// --- Slack ------------------------------------------------------------------------------------

struct NoInstallations;

#[async_trait]
impl ecdysis_slack::Installations for NoInstallations {
    async fn save(
        &self,
        _: &ecdysis_slack::Installation,
    ) -> Result<(), ecdysis_chat::BackendError> {
        Ok(())
    }
    async fn get(
        &self,
        _: &str,
    ) -> Result<Option<ecdysis_slack::Installation>, ecdysis_chat::BackendError> {
        Ok(None)
    }
    async fn remove(&self, _: &str) -> Result<bool, ecdysis_chat::BackendError> {
        Ok(false)
    }
    async fn put_state(&self, _: &str, _: i64) -> Result<(), ecdysis_chat::BackendError> {
        Ok(())
    }
    async fn take_state(&self, _: &str, _: i64) -> Result<bool, ecdysis_chat::BackendError> {
        Ok(false)
    }
}

struct SlackPlatform {
    fake: FakeSlack,
    adapter: Arc<dyn ChatAdapter>,
}

const SLACK_THREAD: &str = "100.000100";

#[async_trait]
impl Platform for SlackPlatform {
    fn adapter(&self) -> Arc<dyn ChatAdapter> {
        self.adapter.clone()
    }

    fn place(&self) -> String {
        format!("C1 thread {SLACK_THREAD}")
    }

    fn reply(&self, key: &str, text: &str) -> Reply {
        let route = ecdysis_slack::Route {
            team: "T1".into(),
            channel: "C1".into(),
            thread_ts: Some(SLACK_THREAD.into()),
            message_ts: Some(SLACK_THREAD.into()),
            response_url: None,
            via: ecdysis_slack::Via::Message,
            received_ms: ecdysis_chat::time::now_ms(),
            user: Some("U1".into()),
        };
        Reply {
            idempotency_key: key.into(),
            conversation: ConversationRef::new("slack", "T1", "C1", Some(SLACK_THREAD.into())),
            text: text.into(),
            attachments: Vec::new(),
            buttons: Vec::new(),
            route: route.to_value(),
            live: None,
        }
    }

    async fn shown(&self) -> Vec<Shown> {
        let place = |c: &ecdysis_testkit::slack::Call, channel: &str, thread: &str| {
            format!(
                "{} thread {}",
                c.arg(channel).unwrap_or("?"),
                c.arg(thread).unwrap_or("none")
            )
        };
        let mut shown: Vec<(std::time::Instant, Shown)> = Vec::new();
        for call in self.fake.calls_to("chat.postMessage") {
            let buttons = call.args["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["type"] == "actions")
                .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e["text"]["text"].as_str().map(str::to_string))
                .collect();
            shown.push((
                call.at,
                Shown {
                    place: place(&call, "channel", "thread_ts"),
                    text: call.arg("text").unwrap_or_default().to_string(),
                    files: Vec::new(),
                    buttons,
                },
            ));
        }
        let names: Vec<String> = self
            .fake
            .calls_to("files.getUploadURLExternal")
            .iter()
            .filter_map(|c| c.arg("filename").map(str::to_string))
            .collect();
        for call in self.fake.calls_to("files.completeUploadExternal") {
            shown.push((
                call.at,
                Shown {
                    place: place(&call, "channel_id", "thread_ts"),
                    text: call.arg("initial_comment").unwrap_or_default().to_string(),
                    files: names.clone(),
                    buttons: Vec::new(),
                },
            ));
        }
        shown.sort_by_key(|(at, _)| *at);
        shown.into_iter().map(|(_, s)| s).collect()
    }

    fn fail_next_post(&self, permanent: bool) -> bool {
        let error = if permanent {
            "channel_not_found"
        } else {
            "ratelimited"
        };
        self.fake.fail_next("chat.postMessage", 1, error);
        true
    }
}

#[tokio::test]
async fn slack_conforms() {
    let fake = FakeSlack::start().await.unwrap();
    let settings = ecdysis_slack::SlackSettings {
        bot_token: Some("xoxb-test".into()),
        api_url: fake.api_url(),
        ..ecdysis_slack::SlackSettings::default()
    };
    let slack =
        ecdysis_slack::Slack::new(settings, Arc::new(Sink), Arc::new(NoInstallations)).unwrap();
    let adapter: Arc<dyn ChatAdapter> = Arc::new(slack);
    conformance(&SlackPlatform { fake, adapter }).await;
}

// --- Discord ----------------------------------------------------------------------------------

struct DiscordPlatform {
    fake: FakeDiscord,
    adapter: Arc<dyn ChatAdapter>,
}

const DISCORD_CHANNEL: &str = "555000000000000001";

#[async_trait]
impl Platform for DiscordPlatform {
    fn adapter(&self) -> Arc<dyn ChatAdapter> {
        self.adapter.clone()
    }

    fn place(&self) -> String {
        DISCORD_CHANNEL.into()
    }

    fn reply(&self, key: &str, text: &str) -> Reply {
        Reply {
            idempotency_key: key.into(),
            conversation: ConversationRef::new("discord", "@me", DISCORD_CHANNEL, None),
            text: text.into(),
            attachments: Vec::new(),
            buttons: Vec::new(),
            route: json!({ "channel_id": DISCORD_CHANNEL }),
            live: None,
        }
    }

    async fn shown(&self) -> Vec<Shown> {
        self.fake
            .posted()
            .into_iter()
            .map(|p| Shown {
                place: p.channel,
                text: p.content,
                files: p.files.into_iter().map(|f| f.filename).collect(),
                buttons: p
                    .components
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
                    .filter_map(|c| c["label"].as_str().map(str::to_string))
                    .collect(),
            })
            .collect()
    }

    fn fail_next_post(&self, permanent: bool) -> bool {
        let path = format!("/channels/{DISCORD_CHANNEL}/messages");
        if permanent {
            self.fake.fail_next_with(&path, 403, 50013);
        } else {
            self.fake.fail_next(&path, 500);
        }
        true
    }
}

#[tokio::test]
async fn discord_conforms() {
    let fake = FakeDiscord::start().await.unwrap();
    let mut settings = ecdysis_discord::Settings::new(fake.url());
    settings.token = Some("discord-test-token".into());
    settings.application_id = Some(42);
    let discord = ecdysis_discord::Discord::new(settings, Arc::new(Sink)).unwrap();
    let adapter: Arc<dyn ChatAdapter> = Arc::new(discord.adapter());
    conformance(&DiscordPlatform { fake, adapter }).await;
}

// --- Terminal ---------------------------------------------------------------------------------

/// A shared buffer the terminal adapter writes into.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct TerminalPlatform {
    output: Buffer,
    adapter: Arc<dyn ChatAdapter>,
}

#[async_trait]
impl Platform for TerminalPlatform {
    fn adapter(&self) -> Arc<dyn ChatAdapter> {
        self.adapter.clone()
    }

    fn place(&self) -> String {
        "the terminal".into()
    }

    fn reply(&self, key: &str, text: &str) -> Reply {
        Reply {
            idempotency_key: key.into(),
            conversation: ecdysis_web::terminal::conversation(),
            // One line per reply keeps the printed replies apart for `shown`.
            text: text.replace('\n', " "),
            attachments: Vec::new(),
            buttons: Vec::new(),
            route: json!({ "seq": 1 }),
            live: None,
        }
    }

    async fn shown(&self) -> Vec<Shown> {
        let text = String::from_utf8(self.output.0.lock().unwrap().clone()).unwrap();
        let mut shown: Vec<Shown> = Vec::new();
        for line in text.lines() {
            if let Some(file) = line.strip_prefix("[file: ") {
                if let Some(last) = shown.last_mut() {
                    last.files
                        .push(file.split(" (").next().unwrap_or("").to_string());
                }
            } else if let Some(buttons) = line.strip_prefix("[buttons: ") {
                if let Some(last) = shown.last_mut() {
                    last.buttons = buttons
                        .trim_end_matches(']')
                        .split(" | ")
                        .map(str::to_string)
                        .collect();
                }
            } else {
                shown.push(Shown {
                    place: "the terminal".into(),
                    text: line.to_string(),
                    ..Shown::default()
                });
            }
        }
        shown
    }

    fn fail_next_post(&self, _: bool) -> bool {
        false
    }
}

#[tokio::test]
async fn terminal_conforms() {
    let output = Buffer::default();
    let adapter: Arc<dyn ChatAdapter> = Arc::new(
        ecdysis_web::terminal::TerminalAdapter::with_output(output.clone()),
    );
    conformance(&TerminalPlatform { output, adapter }).await;
}

// --- Web --------------------------------------------------------------------------------------

/// The web chat's read side: the transcript the core writes (here, the test writes it the way
/// the core's outbox does, before delivering).
#[derive(Default)]
struct Transcript(Mutex<Vec<(String, ecdysis_web::WebMessage)>>);

impl Transcript {
    /// Store an assistant message in a conversation, as the core does before delivery.
    fn store(&self, room: &str, text: &str) {
        let mut rows = self.0.lock().unwrap();
        let id = rows.len() as i64 + 1;
        rows.push((
            room.to_string(),
            ecdysis_web::WebMessage {
                id,
                event_id: None,
                role: "assistant".into(),
                text: text.into(),
                attachments: Vec::new(),
                buttons: Vec::new(),
                created_at: ecdysis_chat::time::rfc3339_utc(ecdysis_chat::time::now_ms()),
            },
        ));
    }
}

#[async_trait]
impl ecdysis_web::WebBackend for Transcript {
    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: i64,
    ) -> Result<Vec<ecdysis_web::WebMessage>, ecdysis_chat::BackendError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(room, m)| *room == conversation.channel && m.id > after)
            .map(|(_, m)| m.clone())
            .collect())
    }
    async fn file(
        &self,
        _: &str,
    ) -> Result<Option<ecdysis_web::WebFile>, ecdysis_chat::BackendError> {
        Ok(None)
    }
}

const WEB_ROOM: &str = "conformance-room";

/// What an open page's live-update stream shows until `text` arrives in a `message` event,
/// within a bounded wait.
async fn wait_message(stream: &mut reqwest::Response, text: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen
        .split("event: message")
        .skip(1)
        .any(|event| event.contains(text))
    {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the message within 20 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

/// The web chat's adapter tells the open pages of a conversation to read what the core stored
/// (once per idempotency key: the outbox's job). So for web the suite checks that a reply shows
/// on its own conversation's page only, once even when delivered twice, that text up to the
/// declared limit, files and buttons are accepted, and that delivery never fails.
#[tokio::test]
async fn web_conforms() {
    let transcript = Arc::new(Transcript::default());
    let (chat, adapter) = ecdysis_web::WebChat::new(
        Arc::new(Sink),
        transcript.clone(),
        ecdysis_web::WebSettings {
            token: None,
            max_body_bytes: 64 * 1024,
            max_upload_bytes: 1024 * 1024,
            logins: Arc::new(ecdysis_web::limiter::LoginLimiter::default()),
            https: false,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            chat.router()
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let http = reqwest::Client::new();
    let open = |room: &str| {
        http.get(format!("http://{address}/api/chat/{room}/events"))
            .header("host", address.to_string())
            .send()
    };
    let mut room = open(WEB_ROOM).await.unwrap();
    assert_eq!(room.status(), 200);
    let mut other = open("another-room").await.unwrap();
    assert_eq!(other.status(), 200);

    let limit = adapter.limits().max_text_chars;
    let mut reply = Reply {
        idempotency_key: "c:1".into(),
        conversation: ecdysis_web::conversation_ref(WEB_ROOM),
        text: "x".repeat(limit),
        attachments: vec![Attachment {
            name: "report.txt".into(),
            mime: "text/plain".into(),
            bytes: Bytes::from_static(b"quarterly numbers"),
        }],
        buttons: vec![Button {
            action_id: "approve".into(),
            label: "Approve".into(),
            value: "a1".into(),
            style: ButtonStyle::Primary,
        }],
        route: Value::Null,
        live: None,
    };
    transcript.store(WEB_ROOM, "the answer for this room");
    adapter.deliver(&reply).await.expect("never fails");
    let seen = wait_message(&mut room, "the answer for this room").await;
    assert_eq!(seen.matches("event: message").count(), 1, "{seen}");

    // Another conversation's page shows its own reply, and not the first room's.
    transcript.store("another-room", "the answer for the other room");
    reply.conversation = ecdysis_web::conversation_ref("another-room");
    reply.idempotency_key = "c:2".into();
    adapter.deliver(&reply).await.expect("never fails");
    let seen = wait_message(&mut other, "the answer for the other room").await;
    assert!(!seen.contains("the answer for this room"), "{seen}");

    // The same key again: the page re-reads the transcript, where the message is once.
    reply.conversation = ecdysis_web::conversation_ref(WEB_ROOM);
    reply.idempotency_key = "c:1".into();
    adapter.deliver(&reply).await.expect("never fails");
    transcript.store(WEB_ROOM, "the next answer");
    reply.idempotency_key = "c:3".into();
    adapter.deliver(&reply).await.expect("never fails");
    let seen = wait_message(&mut room, "the next answer").await;
    assert!(
        !seen.contains("the answer for this room"),
        "shown once: {seen}"
    );
}
