//! The Discord adapter end to end, against the fake Discord of testkit (REST + gateway
//! websocket on 127.0.0.1): the real gateway connection and REST client, the real bus, commands,
//! storage and HTTP routes. Free text is answered by the fake LLM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ecdysis::bus::{EventContext, Outgoing, Workers};
use ecdysis::config::Config;
use ecdysis::engine::commands::{Commands, Feature};
use ecdysis::server::app::App;
use ecdysis_chat::{Attachment, Button, ButtonStyle, ChannelRef, ConversationRef};
use ecdysis_discord::GatewayHandle;
use ecdysis_testkit::discord::{
    self as fake, APPLICATION_ID, BOT_USER_ID, CHANNEL_ID, DM_CHANNEL_ID, FakeDiscord, GUILD_ID,
    InteractionKey, OTHER_BOT_ID, Posted, TOKEN, USER_ID,
};
use ecdysis_testkit::llm::FakeLlm;
use serde_json::{Value, json};

// --- harness ---------------------------------------------------------------------------------

/// A PNG's first bytes.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

/// `/screenshot` stand-in: answers with a PNG and remembers the arguments it got.
#[derive(Default)]
struct Shot {
    args: Mutex<Vec<String>>,
}

#[async_trait]
impl Feature for Shot {
    async fn run(&self, _: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>> {
        self.args.lock().unwrap().push(args.to_string());
        Ok(vec![Outgoing {
            text: "Here it is.".into(),
            attachments: vec![Attachment::new("shot.png", "image/png", PNG.to_vec())],
            buttons: Vec::new(),
        }])
    }
}

/// `/run` stand-in whose handler always fails.
struct Broken;

#[async_trait]
impl Feature for Broken {
    async fn run(&self, _: &EventContext, _: &str) -> anyhow::Result<Vec<Outgoing>> {
        anyhow::bail!("the sandbox exploded")
    }
}

/// `/record` stand-in: a question with approval buttons.
struct Ask;

#[async_trait]
impl Feature for Ask {
    async fn run(&self, _: &EventContext, _: &str) -> anyhow::Result<Vec<Outgoing>> {
        Ok(vec![Outgoing {
            text: "Run it?".into(),
            attachments: Vec::new(),
            buttons: vec![Button {
                action_id: "approval:approve".into(),
                label: "Approve".into(),
                value: "nope".into(),
                style: ButtonStyle::Primary,
            }],
        }])
    }
}

struct Harness {
    app: App,
    fake: FakeDiscord,
    llm: FakeLlm,
    key: InteractionKey,
    shot: Arc<Shot>,
    workers: Option<Workers>,
    gateway: Option<GatewayHandle>,
    base: String,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn config(env: &[(String, String)]) -> Config {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    Config::load_with(None, &|name| vars.get(name).cloned()).unwrap()
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeDiscord::start().await.unwrap();
        let llm = FakeLlm::start().await.unwrap();
        let key = InteractionKey::from_seed(9);
        let mut env: Vec<(String, String)> = [
            (
                "ECDYSIS_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("ECDYSIS_SANDBOX", "off".into()),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
            ("ECDYSIS_BUS_MAX_ATTEMPTS", "1".into()),
            // These tests are about Discord itself; DM pairing (Discord's default) has its own
            // tests in guards_e2e.
            ("ECDYSIS_DM_POLICY", "open".into()),
            ("ECDYSIS_MODEL", "anthropic/claude-test".into()),
            ("ANTHROPIC_API_KEY", "test-key".into()),
            ("ANTHROPIC_BASE_URL", llm.anthropic_base_url()),
            ("DISCORD_TOKEN", TOKEN.into()),
            ("DISCORD_API_URL", fake.url()),
            ("DISCORD_APPLICATION_ID", APPLICATION_ID.into()),
            ("DISCORD_PUBLIC_KEY", key.public_hex()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let shot = Arc::new(Shot::default());
        let feature = shot.clone();
        let app = App::open_with(config(&env), move |c: Commands| {
            c.with_screenshot(feature)
                .with_run(Arc::new(Broken))
                .with_record(Arc::new(Ask))
        })
        .await
        .unwrap();
        let router = app.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let workers = app.bus.start().await.unwrap();
        let gateway = ecdysis::platforms::discord::start(&app.config, app.discord.as_ref())
            .await
            .unwrap();
        assert!(gateway.is_some(), "a token starts the gateway");
        assert!(fake.wait_identified(1).await, "the bot identified");
        Self {
            app,
            fake,
            llm,
            key,
            shot,
            workers: Some(workers),
            gateway,
            base,
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            self.app.metrics.reply_failures.get(),
            0,
            "every reply was delivered on the first try"
        );
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        self.server.abort();
    }

    /// Wait for a posted message matching `pred`.
    async fn posted_where(&self, what: &str, pred: impl Fn(&Posted) -> bool) -> Posted {
        self.fake
            .wait_until(Duration::from_secs(20), |f| {
                f.posted().into_iter().find(|p| pred(p))
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no posted message {what}; posted: {:#?}",
                    self.fake.posted()
                )
            })
    }

    /// The edited original response of the interaction with `token`.
    /// The finished response of an interaction (while a command runs, its live tool line
    /// shows there first).
    async fn original(&self, token: &str) -> Posted {
        self.posted_where(&format!("editing {token}"), |p| {
            p.via == "original" && p.token.as_deref() == Some(token) && !p.content.contains("_⏳ ")
        })
        .await
    }

    /// Let in-flight work settle, so "exactly one" assertions mean something.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    async fn post_signed(
        &self,
        body: &str,
        timestamp: &str,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}/discord/interactions", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(signature) = signature {
            request = request
                .header("x-signature-ed25519", signature)
                .header("x-signature-timestamp", timestamp);
        }
        request.send().await.unwrap()
    }

    async fn events_stored(&self) -> i64 {
        let c = self.app.store.inbox_counts().await.unwrap();
        c.pending + c.leased + c.done + c.failed
    }
}

fn now_secs() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

fn text_option(name: &str, value: &str) -> Value {
    json!({ "name": name, "type": 3, "value": value })
}

// --- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mention_starts_a_thread_and_the_thread_continues_the_conversation() {
    let h = Harness::start().await;
    let identify = h.fake.identify();
    assert_eq!(identify["token"], format!("Bot {TOKEN}"));
    // GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT
    assert_eq!(identify["intents"], 1 | (1 << 9) | (1 << 12) | (1 << 15));

    let m = h
        .fake
        .say_in_guild(CHANNEL_ID, "/remember the sky is blue", true);
    let reply = h
        .posted_where("in the new thread", |p| p.channel == m)
        .await;
    assert!(reply.content.starts_with("Remembered as #"), "{reply:?}");
    assert_eq!(h.fake.threads(), vec![(m.clone(), CHANNEL_ID.to_string())]);
    let requests = h.fake.requests();
    let create = requests
        .iter()
        .find(|r| r.path == format!("/channels/{CHANNEL_ID}/messages/{m}/threads"))
        .expect("the thread was created on the message");
    assert_eq!(create.json["name"], "/remember the sky is blue");
    assert!(
        requests
            .iter()
            .any(|r| r.path == format!("/channels/{m}/typing")),
        "typing shown in the thread"
    );

    // A reply in the thread, without a mention: the same conversation (its memory is the
    // channel's, and the bot takes part in it).
    let in_thread = h.fake.next_id();
    h.fake.dispatch(
        "MESSAGE_CREATE",
        fake::message(
            &in_thread,
            &m,
            Some(GUILD_ID),
            fake::user(USER_ID, "ann", false),
            "/recall sky",
        ),
    );
    let recalled = h
        .posted_where("recalling in the thread", |p| {
            p.channel == m && p.content.contains("Notes matching")
        })
        .await;
    assert!(recalled.content.contains("the sky is blue"), "{recalled:?}");

    // Free text goes to the model; its answer lands in a thread on that message.
    let question = h.fake.say_in_guild(CHANNEL_ID, "hello there", true);
    let answer = h
        .posted_where("answering free text", |p| p.channel == question)
        .await;
    assert_eq!(answer.content, "ok");

    h.settle().await;
    assert_eq!(
        h.fake.posted().len(),
        3,
        "one reply each: {:#?}",
        h.fake.posted()
    );
    let conversation = ConversationRef::new("discord", GUILD_ID, CHANNEL_ID, Some(m.clone()));
    let messages = h
        .app
        .store
        .messages(&conversation, ecdysis::storage::store::MessageId(0), 50)
        .await
        .unwrap();
    assert_eq!(
        messages.len(),
        4,
        "two turns in the thread's conversation: {messages:#?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dms_are_answered_inline_and_chatter_and_bots_are_ignored() {
    let h = Harness::start().await;
    h.fake.say_in_dm("/remember dm note");
    let reply = h
        .posted_where("in the DM", |p| p.channel == DM_CHANNEL_ID)
        .await;
    assert!(reply.content.starts_with("Remembered as #"), "{reply:?}");

    h.fake
        .say_in_guild(CHANNEL_ID, "just chatting, no mention", false);
    for author in [
        fake::user(BOT_USER_ID, "ecdysis", true),
        fake::user(OTHER_BOT_ID, "otherbot", true),
    ] {
        let id = h.fake.next_id();
        let m = fake::mentioning_bot(fake::message(
            &id,
            CHANNEL_ID,
            Some(GUILD_ID),
            author,
            "/remember from a bot",
        ));
        h.fake.dispatch("MESSAGE_CREATE", m);
    }
    h.fake.say_in_dm("/help");
    h.fake.wait_posted(2).await;
    h.settle().await;
    let posted = h.fake.posted();
    assert_eq!(
        posted.len(),
        2,
        "only the two DMs are answered: {posted:#?}"
    );
    assert!(posted.iter().all(|p| p.channel == DM_CHANNEL_ID));
    assert!(
        h.fake.threads().is_empty(),
        "a DM is answered inline, no thread"
    );
    assert_eq!(
        h.events_stored().await,
        2,
        "ignored messages are not stored"
    );
    let dm = ChannelRef {
        platform: "discord".into(),
        workspace: "dm".into(),
        channel: DM_CHANNEL_ID.into(),
    };
    assert_eq!(h.app.store.note_count(&dm).await.unwrap(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slash_commands_are_deferred_then_completed_and_failures_are_shown() {
    let h = Harness::start().await;
    let (id, token) = h.fake.slash(
        CHANNEL_ID,
        "remember",
        json!([text_option("text", "the sky is blue")]),
    );
    let original = h.original(&token).await;
    assert!(
        original.content.starts_with("Remembered as #"),
        "{original:?}"
    );
    let callback = h
        .fake
        .callbacks()
        .into_iter()
        .find(|c| c.interaction_id == id)
        .expect("deferred");
    assert_eq!(callback.kind, 5, "deferred: thinking…");
    assert!(callback.at <= original.at, "deferred before the edit");

    let (_, token) = h
        .fake
        .slash(CHANNEL_ID, "recall", json!([text_option("query", "sky")]));
    let original = h.original(&token).await;
    assert!(original.content.contains("the sky is blue"), "{original:?}");

    // The handler fails: the apology replaces "thinking…".
    let (id, token) = h.fake.slash(
        CHANNEL_ID,
        "run",
        json!([text_option("command", "echo hi")]),
    );
    let original = h.original(&token).await;
    assert!(original.content.starts_with("Sorry"), "{original:?}");
    assert!(
        original.content.contains("the sandbox exploded"),
        "{original:?}"
    );
    assert!(
        h.fake
            .callbacks()
            .iter()
            .any(|c| c.interaction_id == id && c.kind == 5)
    );

    // The same interaction delivered twice: one deferral, one answer.
    let id = h.fake.next_id();
    let token = format!("token-{id}");
    let payload =
        fake::command_interaction(&id, &token, CHANNEL_ID, Some(GUILD_ID), "memory", json!([]));
    h.fake.dispatch("INTERACTION_CREATE", payload.clone());
    h.fake.dispatch("INTERACTION_CREATE", payload);
    let original = h.original(&token).await;
    assert!(original.content.contains("the sky is blue"), "{original:?}");
    h.settle().await;
    assert_eq!(
        h.fake
            .callbacks()
            .iter()
            .filter(|c| c.interaction_id == id)
            .count(),
        1
    );
    let edits = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains(&token))
        .count();
    assert_eq!(edits, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_are_uploaded_as_multipart_attachments() {
    let h = Harness::start().await;
    let m = h.fake.say_in_guild(
        CHANNEL_ID,
        "/screenshot https://example.com full_page",
        true,
    );
    let posted = h
        .posted_where("with the screenshot", |p| p.channel == m)
        .await;
    assert_eq!(posted.content, "Here it is.");
    assert_eq!(posted.files.len(), 1, "{posted:?}");
    assert_eq!(posted.files[0].filename, "shot.png");
    assert_eq!(&posted.files[0].bytes[..], PNG);

    // Discord refuses the upload (this server's limit is lower than known): the text is posted
    // with a note instead of losing the reply.
    let id = h.fake.next_id();
    h.fake
        .fail_next_with(&format!("/channels/{id}/messages"), 413, 40_005);
    h.fake.dispatch(
        "MESSAGE_CREATE",
        fake::mentioning_bot(fake::message(
            &id,
            CHANNEL_ID,
            Some(GUILD_ID),
            fake::user(USER_ID, "ann", false),
            "/screenshot https://example.com full_page",
        )),
    );
    let posted = h
        .posted_where("without the file", |p| p.channel == id)
        .await;
    assert!(posted.files.is_empty());
    assert!(
        posted.content.contains("shot.png could not be attached"),
        "{posted:?}"
    );

    // The slash command's typed options reach the feature as the usual argument text, and the
    // file travels with the edit of the deferred response.
    let (_, token) = h.fake.slash(
        CHANNEL_ID,
        "screenshot",
        json!([{ "name": "full_page", "type": 5, "value": true }, text_option("url", "https://example.com")]),
    );
    let original = h.original(&token).await;
    assert_eq!(original.files.len(), 1);
    assert_eq!(&original.files[0].bytes[..], PNG);
    assert_eq!(
        *h.shot.args.lock().unwrap(),
        vec!["https://example.com full_page".to_string(); 3]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_attachments_are_downloaded_for_the_agent() {
    let h = Harness::start().await;
    let url = h.fake.add_attachment("notes.txt", b"hello file".to_vec());
    let id = h.fake.next_id();
    let m = fake::with_attachment(
        fake::mentioning_bot(fake::message(
            &id,
            CHANNEL_ID,
            Some(GUILD_ID),
            fake::user(USER_ID, "ann", false),
            "what is in here?",
        )),
        "1",
        "notes.txt",
        &url,
        10,
        "text/plain",
    );
    let m = fake::with_attachment(
        m,
        "2",
        "huge.bin",
        &url,
        30 * 1024 * 1024,
        "application/octet-stream",
    );
    h.fake.dispatch("MESSAGE_CREATE", m);
    h.posted_where("answering the file", |p| p.channel == id)
        .await;
    let conversation = ConversationRef::new("discord", GUILD_ID, CHANNEL_ID, Some(id.clone()));
    let messages = h
        .app
        .store
        .messages(&conversation, ecdysis::storage::store::MessageId(0), 10)
        .await
        .unwrap();
    let question = &messages[0];
    assert_eq!(question.attachments.len(), 1, "{question:#?}");
    assert_eq!(question.attachments[0].name, "notes.txt");
    assert_eq!(question.attachments[0].size, 10);
    // The model read the text file and a note about the one left out.
    let request = h
        .llm
        .requests()
        .into_iter()
        .find(|r| r.raw.contains("what is in here?"))
        .expect("the model was asked");
    let asked = request.last_message_text();
    assert!(asked.contains("hello file"), "{asked}");
    assert!(
        asked.contains("[file `huge.bin` was not attached: it is larger than 25 MB]"),
        "the oversized file is named: {asked}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voice_messages_are_transcribed_and_quoted_in_the_thread() {
    let transcriber = FakeLlm::start().await.unwrap();
    transcriber.set_transcript("Remind the team about the demo on Friday.");
    let base = transcriber.openai_base_url();
    let h = Harness::start_with(&[
        ("ECDYSIS_TRANSCRIBE", "openai/whisper-1"),
        ("ECDYSIS_TRANSCRIBE_BASE_URL", &base),
    ])
    .await;
    let voice = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/media/voice-message.ogg"),
    )
    .unwrap();
    let url = h.fake.add_attachment("voice-message.ogg", voice.clone());
    let id = h.fake.next_id();
    // A voice message: no text, one Ogg/Opus attachment (flag 8192).
    let mut m = fake::with_attachment(
        fake::message(
            &id,
            DM_CHANNEL_ID,
            None,
            fake::user(USER_ID, "ann", false),
            "",
        ),
        "7",
        "voice-message.ogg",
        &url,
        voice.len() as u64,
        "audio/ogg",
    );
    m["flags"] = serde_json::json!(8192);
    m["attachments"][0]["duration_secs"] = serde_json::json!(3.2);
    m["attachments"][0]["waveform"] = serde_json::json!("AAAA");
    h.fake.dispatch("MESSAGE_CREATE", m);
    let quote = h
        .posted_where("quoting the transcript", |p| {
            p.content
                .contains("> Remind the team about the demo on Friday.")
        })
        .await;
    assert!(
        quote.content.contains("voice-message.ogg"),
        "{}",
        quote.content
    );
    let calls = transcriber.transcriptions();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].file.as_ref(), voice.as_slice());
    assert_eq!(calls[0].model.as_deref(), Some("whisper-1"));
    let request = h
        .llm
        .requests()
        .into_iter()
        .find(|r| r.raw.contains("Remind the team"))
        .expect("the model read the transcript");
    assert!(
        request
            .last_message_text()
            .contains("[audio `voice-message.ogg`, transcript]"),
        "{}",
        request.raw
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_interactions_are_verified_then_deferred_and_completed() {
    let h = Harness::start().await;
    let ping = fake::ping_interaction("1").to_string();
    let ts = now_secs();
    let r = h
        .post_signed(&ping, &ts, Some(&h.key.sign(&ts, ping.as_bytes())))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "type": 1 }));

    let id = h.fake.next_id();
    let token = format!("http-{id}");
    let command = fake::command_interaction(
        &id,
        &token,
        CHANNEL_ID,
        Some(GUILD_ID),
        "remember",
        json!([text_option("text", "over http")]),
    )
    .to_string();
    let other = InteractionKey::from_seed(3);
    let stale = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600)
        .to_string();
    for (timestamp, signature) in [
        (ts.clone(), Some(other.sign(&ts, command.as_bytes()))),
        (stale.clone(), Some(h.key.sign(&stale, command.as_bytes()))),
        (ts.clone(), Some(h.key.sign(&ts, b"another body"))),
        (ts.clone(), None),
    ] {
        let r = h
            .post_signed(&command, &timestamp, signature.as_deref())
            .await;
        assert_eq!(r.status(), 401);
    }
    h.settle().await;
    assert_eq!(h.events_stored().await, 0, "refused requests store nothing");
    assert!(h.fake.posted().is_empty());

    let r = h
        .post_signed(&command, &ts, Some(&h.key.sign(&ts, command.as_bytes())))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "type": 5 }));
    let original = h.original(&token).await;
    assert!(
        original.content.starts_with("Remembered as #"),
        "{original:?}"
    );
    assert_eq!(h.events_stored().await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_resumes_after_a_disconnect_and_duplicates_are_answered_once() {
    let h = Harness::start().await;
    h.fake.say_in_dm("/remember before");
    h.fake.wait_posted(1).await;

    h.fake.disconnect();
    // Sent while the connection is down: Discord replays it on RESUME.
    let m = h
        .fake
        .say_in_guild(CHANNEL_ID, "/remember after the disconnect", true);
    let reply = h.posted_where("after resuming", |p| p.channel == m).await;
    assert!(reply.content.starts_with("Remembered as #"), "{reply:?}");
    assert!(h.fake.resumes() >= 1, "the session was resumed");
    assert_eq!(h.fake.identifies(), 1, "resumed, not identified again");

    let id = h.fake.next_id();
    let again = fake::message(
        &id,
        DM_CHANNEL_ID,
        None,
        fake::user(USER_ID, "ann", false),
        "/remember twice",
    );
    h.fake.dispatch("MESSAGE_CREATE", again.clone());
    h.fake.dispatch("MESSAGE_CREATE", again);
    h.fake.wait_posted(3).await;
    h.settle().await;
    assert_eq!(h.fake.posted().len(), 3, "{:#?}", h.fake.posted());

    let health: Value = reqwest::get(format!("{}/readyz", h.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let discord = &health["adapters"]["discord"];
    assert_eq!(discord["gateway"], "connected", "{health}");
    assert!(
        discord["last_event_at_ms"].as_i64().unwrap() > 0,
        "{health}"
    );
    assert_eq!(discord["resumes"], 1, "{health}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_resume_identifies_again_and_the_bot_keeps_answering() {
    let h = Harness::start().await;
    h.fake.invalidate_session();
    h.fake.disconnect();
    let again = h
        .fake
        .wait_until(Duration::from_secs(30), |f| {
            (f.identifies() >= 2).then_some(())
        })
        .await;
    assert!(again.is_some(), "identified again after the refused resume");
    let m = h
        .fake
        .say_in_guild(CHANNEL_ID, "/remember on a new session", true);
    let reply = h
        .posted_where("on the new session", |p| p.channel == m)
        .await;
    assert!(reply.content.starts_with("Remembered as #"), "{reply:?}");
    let (_, token) = h.fake.slash(CHANNEL_ID, "memory", json!([]));
    let original = h.original(&token).await;
    assert!(
        original.content.contains("on a new session"),
        "{original:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_of_a_channel_are_taken_in_order() {
    let h = Harness::start().await;
    for i in 0..25 {
        h.fake.say_in_dm(&format!("/remember note {i:02}"));
    }
    h.fake.wait_posted(25).await;
    let dm = ChannelRef {
        platform: "discord".into(),
        workspace: "dm".into(),
        channel: DM_CHANNEL_ID.into(),
    };
    let mut notes = h.app.store.notes(&dm, 100).await.unwrap();
    notes.sort_by_key(|n| n.id);
    let texts: Vec<_> = notes.iter().map(|n| n.text.clone()).collect();
    let expected: Vec<_> = (0..25).map(|i| format!("note {i:02}")).collect();
    assert_eq!(texts, expected);
    h.stop().await;
}

/// Threads the gateway announces (THREAD_CREATE, and the active threads of GUILD_CREATE) are
/// known without asking Discord: a message in one is answered in it and remembered in the
/// parent channel's memory. An event the bot cannot read is skipped; the ones after it are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn announced_threads_are_known_and_unreadable_events_are_skipped() {
    let h = Harness::start().await;
    let (created, listed) = (h.fake.next_id(), h.fake.next_id());
    h.fake.dispatch(
        "THREAD_CREATE",
        json!({ "id": created, "type": 11, "guild_id": GUILD_ID, "parent_id": CHANNEL_ID, "name": "a" }),
    );
    h.fake.dispatch(
        "GUILD_CREATE",
        json!({
            "id": GUILD_ID, "name": "g", "premium_tier": 3, "roles": [], "members": [],
            "channels": [{ "id": CHANNEL_ID, "type": 0, "name": "general" }],
            "threads": [{ "id": listed, "type": 11, "parent_id": CHANNEL_ID, "name": "b" }],
        }),
    );
    // A message without an author or a channel: not one the adapter can read.
    h.fake.dispatch(
        "MESSAGE_CREATE",
        json!({ "id": h.fake.next_id(), "content": "?" }),
    );
    for (thread, text) in [
        (&created, "from the created thread"),
        (&listed, "from a listed thread"),
    ] {
        h.fake
            .say_in_guild(thread, &format!("/remember {text}"), true);
        let reply = h
            .posted_where("in the thread", |p| &p.channel == thread)
            .await;
        assert!(reply.content.starts_with("Remembered as #"), "{reply:?}");
    }
    let lookups = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && (r.path.ends_with(&created) || r.path.ends_with(&listed)))
        .count();
    assert_eq!(lookups, 0, "a thread was looked up over REST");
    let parent = ChannelRef {
        platform: "discord".into(),
        workspace: GUILD_ID.into(),
        channel: CHANNEL_ID.into(),
    };
    let mut notes: Vec<String> = h
        .app
        .store
        .notes(&parent, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.text)
        .collect();
    notes.sort();
    assert_eq!(notes, ["from a listed thread", "from the created thread"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buttons_are_components_and_presses_come_back_as_actions() {
    let h = Harness::start_with(&[("ECDYSIS_SANDBOX_REQUIRE_APPROVAL", "true")]).await;
    let (_, token) = h.fake.slash(
        CHANNEL_ID,
        "record",
        json!([text_option("url", "https://example.com")]),
    );
    let original = h.original(&token).await;
    assert_eq!(original.content, "Run it?");
    let button = &original.components[0]["components"][0];
    assert_eq!(
        button["custom_id"], "16:approval:approvenope",
        "{original:?}"
    );
    assert_eq!(button["label"], "Approve");

    let id = h.fake.next_id();
    let press_token = format!("token-{id}");
    h.fake.dispatch(
        "INTERACTION_CREATE",
        fake::component_interaction(
            &id,
            &press_token,
            CHANNEL_ID,
            Some(GUILD_ID),
            "16:approval:approvenope",
            &original.id,
        ),
    );
    let answer = h.original(&press_token).await;
    assert!(
        answer.content.contains("already answered or has timed out"),
        "{answer:?}"
    );
    assert!(
        h.fake
            .callbacks()
            .iter()
            .any(|c| c.interaction_id == id && c.kind == 5)
    );
    h.stop().await;
}

// --- the real binary -------------------------------------------------------------------------

fn discord_env(fake: &FakeDiscord) -> Vec<(&'static str, String)> {
    vec![
        ("DISCORD_TOKEN", TOKEN.to_string()),
        ("DISCORD_API_URL", fake.url()),
        ("DISCORD_APPLICATION_ID", APPLICATION_ID.to_string()),
        ("ECDYSIS_SANDBOX", "off".to_string()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".to_string()),
        ("ECDYSIS_DM_POLICY", "open".to_string()),
    ]
}

async fn run_cli(dir: &std::path::Path, fake: &FakeDiscord, args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.join("data"));
    for (k, v) in discord_env(fake) {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_connects_registers_commands_on_start_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await.unwrap();
    let mut env = discord_env(&fake);
    env.push(("ECDYSIS_DISCORD_REGISTER_ON_START", "true".into()));
    env.push(("ECDYSIS_DISCORD_REGISTER_GUILD", GUILD_ID.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = common::server::Server::start(dir.path(), &env).await;
    assert!(fake.wait_identified(1).await, "{}", server.log());
    let registered = fake
        .wait_until(Duration::from_secs(10), |f| {
            f.requests().into_iter().find(|r| {
                r.method == "PUT"
                    && r.path
                        == format!("/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands")
            })
        })
        .await
        .expect("commands registered in the guild on start");
    assert_eq!(registered.json.as_array().unwrap().len(), 14);

    let m = fake.say_in_guild(CHANNEL_ID, "/remember from a real process", true);
    let reply = fake
        .wait_until(Duration::from_secs(20), |f| {
            f.posted().into_iter().find(|p| p.channel == m)
        })
        .await
        .unwrap_or_else(|| panic!("no reply: {:#?}\n{}", fake.posted(), server.log()));
    assert!(reply.content.starts_with("Remembered as #"));
    let health: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["adapters"]["discord"]["gateway"], "connected",
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_register_and_doctor_use_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await.unwrap();
    let (ok, out) = run_cli(dir.path(), &fake, &["discord", "register"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("registered 14 global slash commands"), "{out}");
    let put = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT" && r.path == format!("/applications/{APPLICATION_ID}/commands"))
        .expect("global registration");
    let commands = put.json.as_array().unwrap();
    let screenshot = commands.iter().find(|c| c["name"] == "screenshot").unwrap();
    assert_eq!(screenshot["options"][0]["name"], "url");
    assert_eq!(screenshot["options"][1]["name"], "full_page");
    assert_eq!(screenshot["options"][1]["type"], 5);
    let run = commands.iter().find(|c| c["name"] == "run").unwrap();
    assert_eq!(run["options"][0]["name"], "command");

    let (ok, out) = run_cli(
        dir.path(),
        &fake,
        &["discord", "register", "--guild", GUILD_ID],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("in guild {GUILD_ID}")), "{out}");

    let (_, out) = run_cli(dir.path(), &fake, &["doctor"]).await;
    let line = out
        .lines()
        .find(|l| l.contains("discord"))
        .unwrap_or_default();
    assert!(
        line.starts_with("ok") && line.contains(BOT_USER_ID),
        "{out}"
    );
}

/// A 429 storm on Discord's message route and on its thread route: every reply still arrives
/// exactly once, each retried no sooner than a second after the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_storm_delivers_every_reply_once_after_the_wait() {
    let h = Harness::start().await;
    let dm_route = format!("/channels/{DM_CHANNEL_ID}/messages");
    for _ in 0..3 {
        h.fake.fail_next_with(&dm_route, 429, 0);
    }
    h.fake.fail_next_with("/threads", 429, 0);
    h.fake.fail_next_with("/threads", 429, 0);
    for n in 1..=3 {
        h.fake.say_in_dm(&format!("/remember storm note {n}"));
    }
    let mention = h
        .fake
        .say_in_guild(CHANNEL_ID, "/remember storm in a thread", true);

    let replies = h
        .fake
        .wait_until(Duration::from_secs(30), |f| {
            let posted: Vec<Posted> = f
                .posted()
                .into_iter()
                .filter(|p| p.content.starts_with("Remembered as #"))
                .collect();
            (posted.len() >= 4).then_some(posted)
        })
        .await
        .unwrap_or_else(|| panic!("not every reply arrived: {:#?}", h.fake.posted()));
    // Nothing more comes later: each reply once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posted: Vec<Posted> = h
        .fake
        .posted()
        .into_iter()
        .filter(|p| p.content.starts_with("Remembered as #"))
        .collect();
    assert_eq!(posted.len(), 4, "{posted:#?}");
    assert_eq!(
        posted.iter().filter(|p| p.channel == DM_CHANNEL_ID).count(),
        3
    );
    assert_eq!(posted.iter().filter(|p| p.channel == mention).count(), 1);
    assert_eq!(
        h.fake.threads(),
        vec![(mention.clone(), CHANNEL_ID.to_string())]
    );

    // The refused attempts reached the fake, and the retry waited.
    let requests = h.fake.requests();
    let dm_posts: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == dm_route)
        .collect();
    assert_eq!(dm_posts.len(), 6, "3 refused + 3 delivered");
    let first_refused = dm_posts[0].at;
    let first_delivered = replies
        .iter()
        .filter(|p| p.channel == DM_CHANNEL_ID)
        .map(|p| p.at)
        .min()
        .unwrap();
    assert!(
        first_delivered.duration_since(first_refused) >= Duration::from_secs(1),
        "retried after {:?}",
        first_delivered.duration_since(first_refused)
    );
    let thread_creates = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/threads"))
        .count();
    assert_eq!(thread_creates, 3, "2 refused + 1 created");
    assert!(
        h.app.metrics.reply_failures.get() >= 3,
        "the refused attempts count as failed tries"
    );
    let mut h = h;
    if let Some(gateway) = h.gateway.take() {
        gateway.shutdown().await;
    }
    if let Some(workers) = h.workers.take() {
        workers.shutdown(Duration::from_secs(5)).await;
    }
    h.server.abort();
}
