//! Slack files and buttons end to end, in process: an app whose agent answers with a PNG, with
//! buttons, or with what it received, behind the real Slack routes and the fake Slack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ecdysis::bus::{EventContext, Outgoing, Workers};
use ecdysis::config::Config;
use ecdysis::engine::commands::Agent;
use ecdysis::server::app::App;
use ecdysis_chat::{Attachment, Button, ButtonStyle};
use ecdysis_slack::signature::sign;
use ecdysis_testkit::slack::FakeSlack;
use serde_json::{Value, json};

const SECRET: &str = "files-signing-secret";
const BOT_TOKEN: &str = "xoxb-files";
const WAIT: Duration = Duration::from_secs(20);

/// Answers by keyword: a picture, buttons, or a description of what arrived.
struct ScriptedAgent {
    png: Vec<u8>,
    blobs: Arc<dyn ecdysis::storage::blob::BlobStore>,
}

#[async_trait]
impl Agent for ScriptedAgent {
    async fn answer(&self, event: &EventContext, prompt: &str) -> anyhow::Result<Vec<Outgoing>> {
        if prompt.contains("picture") {
            return Ok(vec![Outgoing {
                text: "Here is the plot.".into(),
                attachments: vec![Attachment::new("plot.png", "image/png", self.png.clone())],
                buttons: Vec::new(),
            }]);
        }
        if prompt.contains("long") {
            let text: String = (0..300)
                .map(|i| format!("Line {i:03}: **bold** and some words to fill it.\n"))
                .collect();
            return Ok(vec![Outgoing::text(text)]);
        }
        if prompt.contains("buttons") {
            return Ok(vec![Outgoing {
                text: "Run `ls -la`?".into(),
                attachments: Vec::new(),
                buttons: vec![
                    Button {
                        action_id: "approve".into(),
                        label: "Approve".into(),
                        value: "run:1".into(),
                        style: ButtonStyle::Primary,
                    },
                    Button {
                        action_id: "deny".into(),
                        label: "Deny".into(),
                        value: "run:1".into(),
                        style: ButtonStyle::Danger,
                    },
                ],
            }]);
        }
        let mut files = Vec::new();
        for file in &event.payload.attachments {
            let bytes = ecdysis::bus::read_file(self.blobs.as_ref(), file).await?;
            files.push(format!(
                "{} {} {}",
                file.name,
                file.mime,
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(vec![Outgoing::text(format!(
            "prompt=[{prompt}] files=[{}]",
            files.join("; ")
        ))])
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}

fn png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(2, 2, image::Rgb([200, 30, 30]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

struct Harness {
    slack: FakeSlack,
    base: String,
    workers: Option<Workers>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let slack = FakeSlack::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &slack.api_url());
        let png = png();
        // The agent reads what users attached from the same blob store as the app.
        let blobs = ecdysis::storage::blob::open(&config).await.unwrap();
        let app = App::open_with(config, move |commands| {
            commands.with_agent(Arc::new(ScriptedAgent { png, blobs }))
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
        Self {
            slack,
            base,
            workers: Some(workers),
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        self.server.abort();
    }

    async fn post(&self, path: &str, body: &str, content_type: &str) -> reqwest::Response {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn event(&self, event_id: &str, event: Value) {
        let body = json!({
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "AFAKE",
            "event_id": event_id,
            "event_time": 1,
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
            "event": event,
        });
        let r = self
            .post("/slack/events", &body.to_string(), "application/json")
            .await;
        assert_eq!(r.status(), 200);
    }
}

fn config(dir: &Path, api_url: &str) -> Config {
    let vars: HashMap<String, String> = [
        ("ECDYSIS_DATA_DIR", dir.join("data").display().to_string()),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("SLACK_SIGNING_SECRET", SECRET.into()),
        ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
        ("SLACK_API_URL", api_url.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Config::load_with(None, &|name| vars.get(name).cloned()).unwrap()
}

fn mention(ts: &str, text: &str) -> Value {
    json!({"type": "app_mention", "user": "U1", "channel": "C1", "ts": ts,
           "text": format!("<@UBOT> {text}")})
}

#[tokio::test]
async fn reply_with_a_png_goes_through_files_v2_into_the_thread() {
    let h = Harness::start().await;
    h.event("EvPic", mention("1700000100.000100", "draw me a picture"))
        .await;
    let complete = h
        .slack
        .wait_calls("files.completeUploadExternal", 1, WAIT)
        .await;
    assert_eq!(complete.len(), 1, "{:#?}", h.slack.calls());
    let get_url = h.slack.calls_to("files.getUploadURLExternal");
    let uploads = h.slack.calls_to("upload");
    assert_eq!(get_url.len(), 1);
    assert_eq!(uploads.len(), 1);
    let png = png();
    // Step 1: the upload URL for the file's name and size.
    assert_eq!(get_url[0].arg("filename"), Some("plot.png"));
    assert_eq!(
        get_url[0].arg("length"),
        Some(png.len().to_string().as_str())
    );
    assert_eq!(get_url[0].bearer(), Some(BOT_TOKEN));
    // Step 2: the bytes to that URL.
    assert_eq!(uploads[0].body.as_ref(), png.as_slice());
    assert_eq!(uploads[0].content_type.as_deref(), Some("image/png"));
    // Step 3: completed into the channel and the mention's thread.
    let args = &complete[0].args;
    assert_eq!(args["channel_id"], "C1");
    assert_eq!(args["thread_ts"], "1700000100.000100");
    assert_eq!(args["files"][0]["id"], uploads[0].args["file_id"]);
    assert_eq!(args["files"][0]["title"], "plot.png");
    assert!(get_url[0].at <= uploads[0].at && uploads[0].at <= complete[0].at);
    // The text went into the same thread.
    let posts = h.slack.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].arg("thread_ts"), Some("1700000100.000100"));
    assert_eq!(posts[0].arg("text"), Some("Here is the plot."));
    h.stop().await;
}

#[tokio::test]
async fn files_users_attach_are_downloaded_for_the_agent() {
    let h = Harness::start().await;
    let url = h.slack.add_file("notes.txt", "hello file");
    let event = json!({
        "type": "message", "subtype": "file_share", "channel_type": "im", "channel": "D1",
        "user": "U1", "ts": "1700000200.000100", "text": "what is in it?",
        "files": [
            {"id": "F1", "name": "notes.txt", "mimetype": "text/plain", "size": 10,
             "url_private_download": url},
            {"id": "F2", "name": "huge.bin", "mimetype": "application/octet-stream",
             "size": 500_000_000u64, "url_private_download": h.slack.add_file("huge.bin", "x")},
            {"id": "F3", "name": "elsewhere.txt", "mimetype": "text/plain", "size": 3,
             "url_private_download": "https://evil.example/steal"},
        ],
    });
    h.event("EvFile", event).await;
    let posts = h.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1, "{:#?}", h.slack.calls());
    let text = posts[0].arg("text").unwrap().to_string();
    assert!(
        text.contains("notes.txt text/plain hello file"),
        "the agent got the file: {text}"
    );
    assert!(
        text.contains("huge.bin") && text.contains("larger than"),
        "{text}"
    );
    assert!(
        text.contains("elsewhere.txt") && text.contains("not on Slack"),
        "{text}"
    );
    let downloads = h.slack.calls_to("download");
    assert_eq!(downloads.len(), 1, "only the small Slack file was fetched");
    assert_eq!(downloads[0].bearer(), Some(BOT_TOKEN));
    h.stop().await;
}

#[tokio::test]
async fn buttons_are_blocks_and_presses_come_back_into_the_thread() {
    let h = Harness::start().await;
    h.event("EvButtons", mention("1700000300.000100", "show me buttons"))
        .await;
    let posts = h.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1);
    let blocks = &posts[0].args["blocks"];
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["text"], "Run `ls -la`?");
    assert_eq!(blocks[1]["type"], "actions");
    assert_eq!(blocks[1]["elements"][0]["action_id"], "approve");
    assert_eq!(blocks[1]["elements"][1]["style"], "danger");
    let button_ts = h.slack.calls_to("chat.postMessage")[0]
        .args
        .get("thread_ts")
        .cloned()
        .unwrap();

    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T1", "domain": "fake"},
        "user": {"id": "U1", "username": "ann", "team_id": "T1"},
        "api_app_id": "AFAKE",
        "channel": {"id": "C1", "name": "general"},
        "container": {"type": "message", "message_ts": "1700000300.000200", "channel_id": "C1",
                      "thread_ts": button_ts, "is_ephemeral": false},
        "message": {"ts": "1700000300.000200", "thread_ts": button_ts, "type": "message"},
        "trigger_id": "trig-1",
        "response_url": h.slack.response_url("btn"),
        "actions": [{"action_id": "approve", "block_id": "b1", "value": "run:1",
                     "type": "button", "action_ts": "1700000301.000100"}],
    });
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let r = h
        .post(
            "/slack/interactivity",
            &body,
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_eq!(r.status(), 200);
    let posts = h.slack.wait_calls("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts.len(), 2, "{:#?}", h.slack.calls());
    assert_eq!(
        posts[1].args["thread_ts"], button_ts,
        "the answer to a press goes into the button's thread"
    );
    // Signed the same way: an unsigned press is refused.
    let r = reqwest::Client::new()
        .post(format!("{}/slack/interactivity", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    h.stop().await;
}

#[tokio::test]
async fn long_answers_are_split_into_the_same_thread() {
    let h = Harness::start().await;
    h.event(
        "EvLong",
        mention("1700000400.000100", "a long answer please"),
    )
    .await;
    // 300 lines of ~47 characters: more than three pieces of 3,900.
    let deadline = std::time::Instant::now() + WAIT;
    let posts = loop {
        let posts = h.slack.calls_to("chat.postMessage");
        if posts
            .last()
            .is_some_and(|p| p.arg("text").unwrap_or("").contains("Line 299"))
        {
            break posts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            h.slack.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(posts.len() >= 4, "{} pieces", posts.len());
    let mut joined = String::new();
    for post in &posts {
        assert_eq!(post.arg("thread_ts"), Some("1700000400.000100"));
        let text = post.arg("text").unwrap();
        assert!(
            text.chars().count() <= 4_000,
            "{} chars",
            text.chars().count()
        );
        joined.push_str(text);
    }
    assert!(
        joined.starts_with("Line 000: *bold*"),
        "mrkdwn in every piece"
    );
    let lines: Vec<&str> = joined.lines().collect();
    assert_eq!(lines.len(), 300);
    assert!(lines.last().unwrap().starts_with("Line 299"), "in order");
    h.stop().await;
}
