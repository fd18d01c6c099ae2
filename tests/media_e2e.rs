//! What users send, end to end and in process: files attached on Slack (served by the fake
//! Slack, bot token required) and uploaded to the web chat (multipart) reach the fake model in
//! both wire formats — images scaled within limits, a real PDF's text or document block, a text
//! file's content, a real voice message's transcript from the fake transcription endpoint — and
//! what cannot be read gets a clear note while the turn still answers. Downloads happen after
//! the acknowledgement: a slow file server does not slow the Slack ack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use ecdysis::bus::Workers;
use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis_chat::ConversationRef;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{Api, FakeLlm, Recorded};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::{Value, json};

const SECRET: &str = "media-signing-secret";
const BOT_TOKEN: &str = "xoxb-media";
const WAIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/media")
            .join(name),
    )
    .unwrap()
}

/// A photo-like JPEG (a gradient with some texture).
fn photo(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
    });
    ecdysis::media::image::jpeg::encode(&image::DynamicImage::ImageRgb8(img), 75).unwrap()
}

/// A PNG cut short: the header says PNG, the pixels are gone.
fn corrupt_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([10, 200, 30]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    let mut bytes = out.into_inner();
    bytes.truncate(70);
    bytes
}

struct Harness {
    app: App,
    slack: FakeSlack,
    llm: FakeLlm,
    base: String,
    workers: Option<Workers>,
    server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Harness {
    /// An app answering with `api`'s wire format; `toml` is an optional `ecdysis.toml`.
    async fn start(api: Api, extra: &[(&str, &str)], toml: Option<&str>) -> Self {
        let slack = FakeSlack::start().await.unwrap();
        slack.accept_tokens(&[BOT_TOKEN]);
        let llm = FakeLlm::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut vars: HashMap<String, String> = [
            (
                "ECDYSIS_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("ECDYSIS_SANDBOX", "off".into()),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
            ("SLACK_SIGNING_SECRET", SECRET.into()),
            ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
            ("SLACK_API_URL", slack.api_url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        match api {
            Api::Anthropic => {
                vars.insert("ECDYSIS_MODEL".into(), "anthropic/claude-test".into());
                vars.insert("ANTHROPIC_API_KEY".into(), "sk-ant-media-test".into());
                vars.insert("ANTHROPIC_BASE_URL".into(), llm.anthropic_base_url());
            }
            Api::OpenAi => {
                vars.insert("ECDYSIS_MODEL".into(), "openai/gpt-test".into());
                vars.insert("OPENAI_API_KEY".into(), "sk-openai-media-test".into());
                vars.insert("OPENAI_BASE_URL".into(), llm.openai_base_url());
            }
        }
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        let path = toml.map(|text| {
            let path = dir.path().join("ecdysis.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let config = Config::load_with(path.as_deref(), &|name| vars.get(name).cloned()).unwrap();
        let app = App::open(config).await.unwrap();
        let router = app.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let workers = app.bus.start().await.unwrap();
        Self {
            app,
            slack,
            llm,
            base,
            workers: Some(workers),
            server,
            dir,
        }
    }

    async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        self.server.abort();
    }

    /// Post a signed Slack event; returns how long the acknowledgement took.
    async fn slack_event(&self, event_id: &str, event: Value) -> Duration {
        let body = json!({
            "type": "event_callback", "team_id": "T1", "api_app_id": "AFAKE",
            "event_id": event_id, "event_time": 1,
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
            "event": event,
        })
        .to_string();
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(format!("{}/slack/events", self.base))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 200);
        took
    }

    /// A DM with files (each: name, mime, bytes), served by the fake Slack.
    fn dm_with_files(&self, ts: &str, text: &str, files: &[(&str, &str, &[u8])]) -> Value {
        let files: Vec<Value> = files
            .iter()
            .enumerate()
            .map(|(i, (name, mime, bytes))| {
                let url = self.slack.add_file(name, bytes.to_vec());
                json!({"id": format!("F{i}"), "name": name, "mimetype": mime,
                       "size": bytes.len(), "url_private_download": url})
            })
            .collect();
        json!({"type": "message", "subtype": "file_share", "channel_type": "im",
               "channel": "D1", "user": "U1", "ts": ts, "text": text, "files": files})
    }

    /// The model request whose last message contains `needle`.
    async fn request_with(&self, needle: &str) -> Recorded {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .llm
                .requests()
                .into_iter()
                .find(|r| last_user_message(r).to_string().contains(needle))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no model request with {needle:?}; requests: {:#?}",
                self.llm
                    .requests()
                    .iter()
                    .map(|r| &r.raw)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `n`-th Slack post (1-based), waiting for it.
    async fn slack_post(&self, n: usize) -> Value {
        let posts = self.slack.wait_calls("chat.postMessage", n, WAIT).await;
        assert!(posts.len() >= n, "{:#?}", self.slack.calls());
        posts[n - 1].args.clone()
    }

    /// Upload to the web chat as multipart.
    async fn upload(
        &self,
        conversation: &str,
        text: &str,
        files: &[(&str, &str, Vec<u8>)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new()
            .text("text", text.to_string())
            .text("user", "ann");
        for (name, mime, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.clone())
                    .file_name(name.to_string())
                    .mime_str(mime)
                    .unwrap(),
            );
        }
        reqwest::Client::new()
            .post(format!("{}/api/chat/{conversation}", self.base))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    async fn web_messages(&self, conversation: &str) -> Vec<Value> {
        let r: Value = reqwest::get(format!("{}/api/chat/{conversation}/messages", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Wait for the web conversation to hold `n` assistant messages.
    async fn web_answers(&self, conversation: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let answers: Vec<Value> = self
                .web_messages(conversation)
                .await
                .into_iter()
                .filter(|m| m["role"] == "assistant")
                .collect();
            if answers.len() >= n {
                return answers;
            }
            assert!(Instant::now() < deadline, "{answers:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn blob_files(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.dir.path().join("data/blobs"))
    }
}

/// The last user message of a request, in either wire format.
fn last_user_message(r: &Recorded) -> Value {
    r.body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user").cloned())
        .unwrap_or(Value::Null)
}

/// Every user message of a request.
fn user_messages(r: &Recorded) -> Vec<Value> {
    r.body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "user").cloned().collect())
        .unwrap_or_default()
}

/// The images of a message: (media type, decoded bytes), in either wire format.
fn images(message: &Value) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(parts) = message["content"].as_array() else {
        return Vec::new();
    };
    parts
        .iter()
        .filter_map(|p| match p["type"].as_str() {
            Some("image") => Some((
                p["source"]["media_type"].as_str()?.to_string(),
                b64.decode(p["source"]["data"].as_str()?).ok()?,
            )),
            Some("image_url") => {
                let url = p["image_url"]["url"].as_str()?;
                let (head, data) = url.strip_prefix("data:")?.split_once(";base64,")?;
                Some((head.to_string(), b64.decode(data).ok()?))
            }
            _ => None,
        })
        .collect()
}

/// All the text of a message, in either wire format.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn image_within_limits_and_corrupt_note(api: Api) {
    let h = Harness::start(api, &[], None).await;
    let photo = photo(4000, 3000);
    let corrupt = corrupt_png();
    let event = h.dm_with_files(
        "1700000500.000100",
        "what is in the photo?",
        &[
            ("photo.jpg", "image/jpeg", &photo),
            ("broken.png", "image/png", &corrupt),
        ],
    );
    h.slack_event("EvPhoto", event).await;
    let request = h.request_with("what is in the photo?").await;
    let message = last_user_message(&request);
    let found = images(&message);
    assert_eq!(
        found.len(),
        1,
        "one image (the corrupt one is a note): {message}"
    );
    let (mime, bytes) = &found[0];
    assert_eq!(mime, "image/jpeg");
    let decoded = ecdysis::media::image::decode(bytes).unwrap();
    let (w, h_) = (decoded.width(), decoded.height());
    assert!(w.max(h_) <= 1568, "{w}×{h_}");
    assert!(u64::from(w) * u64::from(h_) <= 1_150_000, "{w}×{h_}");
    assert!(bytes.len() <= 5 * 1024 * 1024);
    assert!(w > 1000, "scaled, not shrunk to nothing: {w}×{h_}");
    let text = text_of(&message);
    assert!(
        text.contains(&format!(
            "[image `photo.jpg`, 4000×3000 scaled to {w}×{h_}]"
        )),
        "{text}"
    );
    assert!(
        text.contains("[image `broken.png` could not be shown: it could not be decoded"),
        "{text}"
    );
    // The turn still answered, into the DM.
    let post = h.slack_post(1).await;
    assert_eq!(post["channel"], "D1");
    // Both files are kept as artifacts of the user's message.
    let conversation = ConversationRef::new("slack", "T1", "D1", None);
    let messages = h
        .app
        .store
        .messages(&conversation, ecdysis::storage::store::MessageId(0), 10)
        .await
        .unwrap();
    let question = messages
        .iter()
        .find(|m| m.role == ecdysis::storage::store::Role::User)
        .unwrap();
    let mut names: Vec<&str> = question
        .attachments
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["broken.png", "photo.jpg"]);
    assert_eq!(
        question
            .attachments
            .iter()
            .find(|a| a.name == "photo.jpg")
            .unwrap()
            .size,
        photo.len() as i64
    );
    // Downloaded with the bot token.
    let downloads = h.slack.calls_to("download");
    assert_eq!(downloads.len(), 2);
    assert!(downloads.iter().all(|d| d.bearer() == Some(BOT_TOKEN)));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_images_reach_anthropic_scaled_and_a_corrupt_png_is_a_note() {
    image_within_limits_and_corrupt_note(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_images_reach_openai_as_data_urls_and_a_corrupt_png_is_a_note() {
    image_within_limits_and_corrupt_note(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pdfs_and_text_files_reach_both_wire_formats() {
    let pdf = fixture("report.pdf");
    let notes = "# Plan\n- ship the importer\n- fix the login bug\n";
    let big: String = (0..3000)
        .map(|i| format!("row {i:05}: some,comma,separated,values\n"))
        .collect();
    for api in [Api::Anthropic, Api::OpenAi] {
        let h = Harness::start(api, &[], None).await;
        let event = h.dm_with_files(
            "1700000600.000100",
            "summarise these",
            &[
                ("report.pdf", "application/pdf", &pdf),
                ("plan.md", "text/markdown", notes.as_bytes()),
                ("data.csv", "text/csv", big.as_bytes()),
            ],
        );
        h.slack_event("EvDocs", event).await;
        let request = h.request_with("summarise these").await;
        let message = last_user_message(&request);
        let text = text_of(&message);
        match api {
            Api::Anthropic => {
                // The PDF itself, as a document block.
                let doc = message["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["type"] == "document")
                    .unwrap_or_else(|| panic!("no document block: {message}"))
                    .clone();
                assert_eq!(doc["source"]["media_type"], "application/pdf");
                assert_eq!(doc["title"], "report.pdf");
                let data = base64::engine::general_purpose::STANDARD
                    .decode(doc["source"]["data"].as_str().unwrap())
                    .unwrap();
                assert_eq!(data, pdf);
            }
            Api::OpenAi => {
                // Its text, page by page.
                assert!(text.contains("[PDF `report.pdf`, 2 page(s)"), "{text}");
                assert!(text.contains("Revenue grew 42 percent"), "{text}");
                assert!(text.contains("[page 2]"), "{text}");
                assert!(text.contains("supplier in Rotterdam"), "{text}");
            }
        }
        assert!(
            text.contains("[file `plan.md` (text/markdown, ") && text.contains(notes.trim()),
            "{text}"
        );
        assert!(text.contains("row 00000:"), "{text}");
        assert!(!text.contains("row 02999:"), "the big file is cut: {text}");
        assert!(
            text.contains("[the rest of `data.csv` (")
                && text.contains("was left out: over the 32 KB limit for inline text]"),
            "{text}"
        );
        h.slack_post(1).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voice_messages_are_transcribed_quoted_and_read_by_the_model() {
    let voice = fixture("voice-message.ogg");
    for api in [Api::Anthropic, Api::OpenAi] {
        let llm_for_transcripts = FakeLlm::start().await.unwrap();
        llm_for_transcripts.set_transcript("Please book the meeting room for Thursday at three.");
        let base = llm_for_transcripts.openai_base_url();
        let h = Harness::start(
            api,
            &[
                ("ECDYSIS_TRANSCRIBE", "openai/whisper-test"),
                ("ECDYSIS_TRANSCRIBE_BASE_URL", &base),
                ("ECDYSIS_TRANSCRIBE_API_KEY", "sk-transcribe-test"),
                // Whole messages only: with a live answer, its first text may be posted before
                // the turn ends and then be edited into the quote (reply n finishes live message
                // n), so the posts' order would depend on timing. Streaming has its own tests.
                ("ECDYSIS_SLACK_STREAMING", "off"),
            ],
            None,
        )
        .await;
        let event = h.dm_with_files(
            "1700000700.000100",
            "",
            &[("voice-message.ogg", "audio/ogg", &voice)],
        );
        h.slack_event("EvVoice", event).await;
        let request = h.request_with("Thursday at three").await;
        let text = text_of(&last_user_message(&request));
        assert!(
            text.contains("[audio `voice-message.ogg`, transcript]\nPlease book the meeting room for Thursday at three."),
            "{text}"
        );
        // The endpoint got the real Ogg/Opus file, the model and the key.
        let calls = llm_for_transcripts.transcriptions();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].file.as_ref(), voice.as_slice());
        assert!(calls[0].file.starts_with(b"OggS"));
        assert_eq!(calls[0].model.as_deref(), Some("whisper-test"));
        assert_eq!(calls[0].file_name.as_deref(), Some("voice-message.ogg"));
        assert_eq!(
            calls[0].headers.get("authorization").map(String::as_str),
            Some("Bearer sk-transcribe-test")
        );
        // Users see what was heard, quoted, before the answer.
        let quote = h.slack_post(1).await;
        let quote_text = quote["text"].as_str().unwrap();
        assert!(quote_text.contains("voice-message.ogg"), "{quote_text}");
        assert!(
            quote_text.contains("> Please book the meeting room for Thursday at three."),
            "{quote_text}"
        );
        h.slack_post(2).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_transcription_audio_gets_a_clear_note() {
    let h = Harness::start(Api::OpenAi, &[], None).await;
    let event = h.dm_with_files(
        "1700000800.000100",
        "listen",
        &[("clip.ogg", "audio/ogg", &fixture("voice-message.ogg"))],
    );
    h.slack_event("EvNoTranscribe", event).await;
    let request = h.request_with("listen").await;
    let text = text_of(&last_user_message(&request));
    assert!(
        text.contains("[audio `clip.ogg` (")
            && text.contains("transcription is off (ECDYSIS_TRANSCRIBE is not set)"),
        "{text}"
    );
    h.slack_post(1).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_slack_ack_does_not_wait_for_a_slow_file_server() {
    let h = Harness::start(Api::Anthropic, &[], None).await;
    // A normal ack first (no files), for the comparison.
    let plain = h
        .slack_event(
            "EvPlain",
            json!({"type": "message", "channel_type": "im", "channel": "D2", "user": "U1",
                   "ts": "1700000900.000050", "text": "hello"}),
        )
        .await;
    h.slack.set_download_delay(Duration::from_secs(5));
    let event = h.dm_with_files(
        "1700000900.000100",
        "slow file",
        &[("slow.txt", "text/plain", b"served slowly")],
    );
    let started = Instant::now();
    let took = h.slack_event("EvSlow", event).await;
    assert!(
        took < Duration::from_millis(1500),
        "the ack took {took:?} (a plain one {plain:?}); it must not wait for the 5 s download"
    );
    // The file still reaches the model, after the download.
    let request = h.request_with("slow file").await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(text_of(&last_user_message(&request)).contains("served slowly"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_uploads_reach_the_model_and_oversized_ones_store_nothing() {
    let h = Harness::start(Api::OpenAi, &[("ECDYSIS_UPLOAD_MAX_MB", "20")], None).await;
    let photo = photo(800, 600);
    let r = h
        .upload(
            "uploads",
            "what do you see?",
            &[
                ("cat.jpg", "image/jpeg", photo.clone()),
                ("todo.txt", "text/plain", b"buy milk".to_vec()),
            ],
        )
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let request = h.request_with("what do you see?").await;
    let message = last_user_message(&request);
    let found = images(&message);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].1, photo,
        "an image within the limits goes as it came"
    );
    assert!(text_of(&message).contains("buy milk"));
    h.web_answers("uploads", 1).await;
    let messages = h.web_messages("uploads").await;
    let question = messages.iter().find(|m| m["role"] == "user").unwrap();
    let attachments = question["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2);
    assert_eq!(attachments[0]["name"], "cat.jpg");
    assert_eq!(attachments[0]["mime"], "image/jpeg");
    let served = reqwest::get(format!(
        "{}{}",
        h.base,
        attachments[0]["url"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert_eq!(served.as_ref(), photo.as_slice());

    // 50 MB: refused before anything is stored.
    let blobs_before = h.blob_files();
    let requests_before = h.llm.request_count();
    assert_eq!(
        post_oversized(&h.base, "too-big", 50 * 1024 * 1024).await,
        413
    );
    assert!(h.web_messages("too-big").await.is_empty());
    assert_eq!(h.blob_files(), blobs_before);
    // JSON bodies keep their 64 KiB limit.
    let r = reqwest::Client::new()
        .post(format!("{}/api/chat/too-big", h.base))
        .json(&json!({"text": "x".repeat(70 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A malformed multipart body is a 400.
    let r = reqwest::Client::new()
        .post(format!("{}/api/chat/too-big", h.base))
        .header("content-type", "multipart/form-data; boundary=zz")
        .body("--zz\r\nnot a part")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(h.web_messages("too-big").await.is_empty());
    assert_eq!(h.llm.request_count(), requests_before);
    h.stop().await;
}

/// Upload a file of `size` bytes to the web chat over a plain connection and return the status
/// the server answered with. The server answers (and closes) as soon as the body is over its
/// limit, before the client has sent it all; an HTTP client then reports the broken pipe of
/// its unfinished write instead of the answer, so this one reads while it writes.
async fn post_oversized(base: &str, conversation: &str, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let boundary = "ecdysis-oversized";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhuge\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nann\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let request = format!(
        "POST /api/chat/{conversation} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{head}",
        head.len() + size + tail.len()
    );
    let writer = tokio::spawn(async move {
        write.write_all(request.as_bytes()).await?;
        let chunk = vec![7u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            write.write_all(&chunk[..n]).await?;
            left -= n;
        }
        write.write_all(tail.as_bytes()).await
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to the oversized upload: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_stay_for_a_bounded_number_of_turns_then_become_a_reference() {
    let h = Harness::start(Api::Anthropic, &[("ECDYSIS_MEDIA_IMAGE_TURNS", "1")], None).await;
    let r = h
        .upload(
            "turns",
            "first: look",
            &[("chart.png", "image/png", photo_png())],
        )
        .await;
    assert_eq!(r.status(), 202);
    h.web_answers("turns", 1).await;
    h.app_say("turns", "second question").await;
    h.web_answers("turns", 2).await;
    h.app_say("turns", "third question").await;
    h.web_answers("turns", 3).await;

    let second = h.request_with("second question").await;
    let users = user_messages(&second);
    let with_image: Vec<&Value> = users.iter().filter(|m| !images(m).is_empty()).collect();
    assert_eq!(with_image.len(), 1, "shown again one turn later");
    assert!(text_of(with_image[0]).contains("first: look"));

    let third = h.request_with("third question").await;
    assert!(
        user_messages(&third).iter().all(|m| images(m).is_empty()),
        "not resent two turns later"
    );
    let all: String = user_messages(&third).iter().map(text_of).collect();
    assert!(
        all.contains("[file `chart.png` (") && all.contains("is no longer shown"),
        "{all}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_without_vision_gets_a_note_instead_of_the_image() {
    let h = Harness::start(
        Api::OpenAi,
        &[],
        Some("[models.\"openai/gpt-test\"]\nvision = false\n"),
    )
    .await;
    let r = h
        .upload(
            "blind",
            "describe it",
            &[("cat.jpg", "image/jpeg", photo(100, 80))],
        )
        .await;
    assert_eq!(r.status(), 202);
    let request = h.request_with("describe it").await;
    let message = last_user_message(&request);
    assert!(images(&message).is_empty(), "{message}");
    assert!(
        text_of(&message)
            .contains("[image `cat.jpg` is attached, but this model cannot see images"),
        "{message}"
    );
    h.stop().await;
}

fn photo_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

impl Harness {
    /// A plain web chat message.
    async fn app_say(&self, conversation: &str, text: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/chat/{conversation}", self.base))
            .json(&json!({"text": text, "user": "ann"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}
