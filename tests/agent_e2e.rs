//! The agent end to end, against the fake LLM server (testkit) on 127.0.0.1: events go through
//! the real bus, commands, agent, provider clients, storage and (for the web chat) HTTP routes.
//! Both wire formats; tool use; context assembly; retries and failures; compaction; restarts
//! of a real `ecdysis serve` process on SQLite and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis::agent::compaction::{SUMMARY_PROMPT, read_archive};
use ecdysis::bus::Workers;
use ecdysis::config::Config;
use ecdysis::engine::commands::Commands;
use ecdysis::engine::tools::{Tool, ToolContext, ToolError, ToolOutput};
use ecdysis::server::app::App;
use ecdysis::storage::store::{EventId, MessageId, Role};
use ecdysis_chat::{
    Attachment, ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply,
    UserRef,
};
use ecdysis_testkit::llm::{Api, FakeLlm, Recorded, Reply as Llm};
use serde_json::{Value, json};

// --- harness ---------------------------------------------------------------------------------

/// Replies the bus delivered to the `test` platform.
#[derive(Default)]
struct Capture {
    replies: Mutex<Vec<Reply>>,
}

#[async_trait]
impl ChatAdapter for Capture {
    fn platform(&self) -> &str {
        "test"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        self.replies.lock().unwrap().push(reply.clone());
        Ok(Delivered::default())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    Anthropic,
    OpenAi,
}

/// The environment of a model served by the fake.
fn model_env(fake: &FakeLlm, wire: Wire) -> Vec<(String, String)> {
    let pairs = match wire {
        Wire::Anthropic => [
            ("ECDYSIS_MODEL", "anthropic/claude-test".to_string()),
            ("ANTHROPIC_API_KEY", "test-anthropic-key".to_string()),
            ("ANTHROPIC_BASE_URL", fake.anthropic_base_url()),
        ],
        Wire::OpenAi => [
            ("ECDYSIS_MODEL", "openai/gpt-test".to_string()),
            ("OPENAI_API_KEY", "test-openai-key".to_string()),
            ("OPENAI_BASE_URL", fake.openai_base_url()),
        ],
    };
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A configuration from an environment: data under `dir`, no sandbox, no browser (the tests
/// must not depend on what the machine has).
fn config(dir: &Path, env: &[(String, String)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::from([
        (
            "ECDYSIS_DATA_DIR".to_string(),
            dir.join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX".to_string(), "off".to_string()),
        (
            "ECDYSIS_CHROMIUM".to_string(),
            "/nonexistent/chromium".to_string(),
        ),
        ("ECDYSIS_BUS_WORKERS".to_string(), "4".to_string()),
    ]);
    vars.extend(env.iter().cloned());
    Config::load_with(None, &|name| vars.get(name).cloned()).unwrap()
}

/// An in-process app: bus workers, the `test` adapter, and the HTTP routes on a free port.
struct Harness {
    app: App,
    workers: Option<Workers>,
    capture: Arc<Capture>,
    base: String,
    server: tokio::task::JoinHandle<()>,
    next: std::sync::atomic::AtomicU64,
}

impl Harness {
    async fn start(dir: &Path, env: &[(String, String)]) -> Self {
        Self::start_with(dir, env, |c| c).await
    }

    async fn start_with(
        dir: &Path,
        env: &[(String, String)],
        customize: impl FnOnce(Commands) -> Commands,
    ) -> Self {
        let app = App::open_with(config(dir, env), customize).await.unwrap();
        let capture = Arc::new(Capture::default());
        app.bus.register_adapter(capture.clone());
        let router = app.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let workers = app.bus.start().await.unwrap();
        Self {
            app,
            workers: Some(workers),
            capture,
            base,
            server,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        self.server.abort();
    }

    /// Send `text` as user U1 and return the reply text (waits for the stored answer).
    async fn ask(&self, conversation: &ConversationRef, text: &str) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = Event::from_text(
            format!("ev-{}-{n}", uuid::Uuid::new_v4().simple()),
            conversation.clone(),
            UserRef {
                id: "U1".into(),
                name: None,
            },
            text,
        );
        let accepted = self.app.bus.submit(event).await.unwrap();
        let id: i64 = accepted.event_id.parse().unwrap();
        self.wait_answer(conversation, id).await
    }

    async fn wait_answer(&self, conversation: &ConversationRef, event_id: i64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self
                .app
                .store
                .messages(conversation, MessageId(0), 100_000)
                .await
                .unwrap();
            if let Some(answer) = messages
                .iter()
                .find(|m| m.role == Role::Assistant && m.event_id == Some(EventId(event_id)))
            {
                return answer.text.clone();
            }
            assert!(Instant::now() < deadline, "no answer to event {event_id}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The web chat's view of a conversation (what people see).
    async fn web_messages(&self, name: &str) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/api/chat/{name}/messages", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["messages"].as_array().unwrap().clone()
    }

    /// Send through the web chat's HTTP API and wait for the reply.
    async fn ask_web(&self, name: &str, text: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/api/chat/{name}", self.base))
            .json(&json!({ "text": text, "user": "tester" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        let id: i64 = body["event_id"].as_str().unwrap().parse().unwrap();
        let conversation = ConversationRef::new("web", "local", name, None);
        self.wait_answer(&conversation, id).await
    }

    /// Wait up to `limit` for the conversation's first compaction; true when it is there.
    async fn wait_compaction(&self, conversation: &ConversationRef, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self
                .app
                .store
                .compactions(conversation)
                .await
                .unwrap()
                .is_empty()
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn delivered(&self, n: usize) -> Vec<Reply> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replies = self.capture.replies.lock().unwrap().clone();
            if replies.len() >= n {
                return replies;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} replies",
                replies.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn conv(channel: &str, thread: Option<&str>) -> ConversationRef {
    ConversationRef::new("test", "W1", channel, thread.map(str::to_string))
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The request's text in the order the model reads it: system blocks, then each message.
fn reading_order(request: &Recorded) -> String {
    fn text(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
            Value::Object(map) => ["text", "content"]
                .iter()
                .filter_map(|k| map.get(*k))
                .map(text)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
    let mut out = text(&request.body["system"]);
    for message in request.body["messages"].as_array().unwrap() {
        out.push('\n');
        out.push_str(&text(&message["content"]));
    }
    out
}

/// Where `needle` is in the reading order (panics with the request when missing).
fn position(request: &Recorded, needle: &str) -> usize {
    reading_order(request)
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in the request:\n{}", request.raw))
}

// --- plain answers ---------------------------------------------------------------------------

async fn plain_answer(wire: Wire) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &model_env(&fake, wire)).await;
    fake.push(Llm::text("Hello from the model."));
    let c = conv("plain", None);
    assert_eq!(h.ask(&c, "hi there").await, "Hello from the model.");
    // `/ask` is the same as free text.
    fake.push(Llm::text("Answer to the slash command."));
    assert_eq!(
        h.ask(&c, "/ask what is ecdysis?").await,
        "Answer to the slash command."
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    match wire {
        Wire::Anthropic => {
            assert_eq!(first.api, Api::Anthropic);
            assert_eq!(first.headers["x-api-key"], "test-anthropic-key");
            assert_eq!(first.headers["anthropic-version"], "2023-06-01");
            assert_eq!(first.body["model"], "claude-test");
            assert_eq!(
                first.body["system"][0]["cache_control"]["type"],
                "ephemeral"
            );
            assert!(
                first.body["system"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("You are ecdysis")
            );
        }
        Wire::OpenAi => {
            assert_eq!(first.api, Api::OpenAi);
            assert_eq!(first.headers["authorization"], "Bearer test-openai-key");
            assert_eq!(first.body["model"], "gpt-test");
            assert_eq!(first.body["messages"][0]["role"], "system");
        }
    }
    assert_eq!(first.last_message_text(), "hi there");
    // The second turn sees the first, and `/ask` reaches the model without the command word.
    assert_eq!(requests[1].last_message_text(), "what is ecdysis?");
    assert!(requests[1].raw.contains("Hello from the model."));

    // Usage is recorded per conversation and model; /status shows the channel's totals.
    let status = h.ask(&c, "/status").await;
    let model = match wire {
        Wire::Anthropic => "anthropic/claude-test: 2 calls",
        Wire::OpenAi => "openai/gpt-test: 2 calls",
    };
    assert!(status.contains(model), "{status}");
    if wire == Wire::Anthropic {
        // The fake reports the cached system prompt as read on the second call.
        assert!(!status.contains("(cache: 0 read"), "{status}");
    }
    h.stop().await;
}

#[tokio::test]
async fn plain_answer_anthropic() {
    plain_answer(Wire::Anthropic).await;
}

#[tokio::test]
async fn plain_answer_openai() {
    plain_answer(Wire::OpenAi).await;
}

// --- tool use --------------------------------------------------------------------------------

async fn two_tool_calls(wire: Wire) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &model_env(&fake, wire)).await;
    fake.push(Llm::tool(
        "memory_save",
        json!({ "text": "The deploy key lives in the team vault." }),
    ));
    fake.push(Llm::tool("memory_search", json!({ "query": "deploy key" })));
    fake.push(Llm::text("Saved. The deploy key lives in the team vault."));

    let answer = h
        .ask_web("ops", "remember where the deploy key lives: the team vault")
        .await;
    assert_eq!(answer, "Saved. The deploy key lives in the team vault.");

    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "two tool steps, then the answer");
    // Every request offers the tools.
    for r in &requests {
        let tools = r.body["tools"].to_string();
        assert!(tools.contains("memory_save") && tools.contains("memory_search"));
    }
    // The second request carries the save's result, the third the search's (the note).
    let saved = &requests[1];
    let searched = &requests[2];
    match wire {
        Wire::Anthropic => {
            let last = &saved.body["messages"].as_array().unwrap().last().unwrap()["content"][0];
            assert_eq!(last["type"], "tool_result");
            let prev = saved.body["messages"].as_array().unwrap();
            let call = &prev[prev.len() - 2]["content"][0];
            assert_eq!(call["type"], "tool_use");
            assert_eq!(call["id"], last["tool_use_id"]);
        }
        Wire::OpenAi => {
            let messages = saved.body["messages"].as_array().unwrap();
            let last = messages.last().unwrap();
            assert_eq!(last["role"], "tool");
            let call = &messages[messages.len() - 2]["tool_calls"][0];
            assert_eq!(call["id"], last["tool_call_id"]);
            assert_eq!(call["function"]["name"], "memory_save");
        }
    }
    assert!(saved.last_message_text().contains("Saved as #"));
    assert!(
        searched
            .last_message_text()
            .contains("The deploy key lives in the team vault.")
    );

    // The note is the channel's, visible to /memory.
    let listed = h.ask_web("ops", "/memory").await;
    assert!(
        listed.contains("The deploy key lives in the team vault."),
        "{listed}"
    );

    // Tool steps are in the transcript as `tool` rows; the web chat shows only the exchange.
    let c = ConversationRef::new("web", "local", "ops", None);
    let roles: Vec<Role> = h
        .app
        .store
        .messages(&c, MessageId(0), 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.role)
        .collect();
    assert_eq!(
        &roles[..6],
        &[
            Role::User,
            Role::Tool,
            Role::Tool,
            Role::Tool,
            Role::Tool,
            Role::Assistant
        ]
    );
    let shown: Vec<String> = h
        .web_messages("ops")
        .await
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, ["user", "assistant", "user", "assistant"]);

    // The next turn replays the tool steps in the provider's format.
    fake.push(Llm::text("Still in the vault."));
    h.ask_web("ops", "and where was it again?").await;
    let replay = fake.last_request().unwrap();
    assert!(replay.raw.contains("memory_search"), "{}", replay.raw);
    assert!(replay.raw.contains("Saved as #"), "{}", replay.raw);
    h.stop().await;
}

#[tokio::test]
async fn two_tool_calls_then_the_answer_anthropic() {
    two_tool_calls(Wire::Anthropic).await;
}

#[tokio::test]
async fn two_tool_calls_then_the_answer_openai() {
    two_tool_calls(Wire::OpenAi).await;
}

/// A tool for tests: returns a file for the thread.
struct ReportTool;

#[async_trait]
impl Tool for ReportTool {
    fn name(&self) -> &'static str {
        "make_report"
    }

    fn description(&self) -> &'static str {
        "Write a report file."
    }

    fn input_schema(&self) -> Value {
        json!({ "type": "object", "properties": {} })
    }

    async fn call(&self, _: &ToolContext, _: Value) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput {
            text: "report.txt written".into(),
            attachments: vec![Attachment::new("report.txt", "text/plain", "all good\n")],
            ..ToolOutput::default()
        })
    }
}

#[tokio::test]
async fn tool_files_travel_with_the_reply() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(dir.path(), &model_env(&fake, Wire::Anthropic), |c| {
        c.with_tool(Arc::new(ReportTool))
    })
    .await;
    fake.push(Llm::tool("make_report", json!({})));
    fake.push(Llm::text("Here is the report."));
    let c = conv("files", Some("1700.1"));
    assert_eq!(h.ask(&c, "make me a report").await, "Here is the report.");
    let replies = h.delivered(1).await;
    assert_eq!(replies[0].text, "Here is the report.");
    assert_eq!(replies[0].conversation, c);
    assert_eq!(replies[0].attachments.len(), 1);
    assert_eq!(replies[0].attachments[0].name, "report.txt");
    assert_eq!(&replies[0].attachments[0].bytes[..], b"all good\n");
    // The memory tools come first, features' tools after, in a stable order.
    let tools: Vec<String> = fake.requests()[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        tools,
        [
            "memory_search",
            "memory_save",
            "memory_forget",
            "schedule_create",
            "schedule_list",
            "schedule_cancel",
            "make_report"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn the_step_limit_ends_the_loop() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        model_env(&fake, Wire::OpenAi),
        &[("ECDYSIS_AGENT_MAX_STEPS", "3")],
    );
    let h = Harness::start(dir.path(), &env).await;
    fake.set_default(Llm::tool("memory_search", json!({ "query": "anything" })));
    let answer = h.ask(&conv("loop", None), "search forever").await;
    assert!(answer.contains("I stopped after 3 steps"), "{answer}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1].body.get("tool_choice").is_none());
    assert_eq!(requests[2].body["tool_choice"], "none");
    h.stop().await;
}

// --- context ---------------------------------------------------------------------------------

#[tokio::test]
async fn context_has_system_prompt_notes_and_this_thread_only() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &model_env(&fake, Wire::Anthropic)).await;
    let here = conv("CA", Some("1700.1"));
    let other_thread = conv("CA", Some("1700.2"));
    let other_channel = conv("CB", None);

    let saved = h
        .ask(&here, "/remember the staging database is called heron")
        .await;
    assert!(saved.starts_with("Remembered as #"), "{saved}");
    h.ask(
        &other_channel,
        "/remember the staging database of the other team is called falcon",
    )
    .await;
    fake.push(Llm::text("Enjoy lunch."));
    h.ask(&other_thread, "unrelated chatter about lunch").await;
    fake.push(Llm::text("Noted, teal it is."));
    h.ask(&here, "my favourite colour is teal").await;
    fake.push(Llm::text("Use heron."));
    assert_eq!(
        h.ask(&here, "which staging database should I use?").await,
        "Use heron."
    );

    let request = fake.last_request().unwrap();
    let system = request.body["system"].as_array().unwrap();
    // The stable prompt first (cached), then the channel's relevant notes.
    let stable = system[0]["text"].as_str().unwrap();
    assert!(stable.contains("You are ecdysis"), "{stable}");
    assert!(stable.contains("test") && stable.contains("channel CA (thread 1700.1)"));
    assert!(stable.contains("memory_search"));
    assert!(system[1]["text"].as_str().unwrap().contains("heron"));
    // Not another channel's notes, not another thread's messages.
    assert!(!request.raw.contains("falcon"), "{}", request.raw);
    assert!(!request.raw.contains("lunch"), "{}", request.raw);
    // Order: system prompt → notes → this thread's transcript → the new message.
    let order = [
        position(&request, "You are ecdysis"),
        position(&request, "called heron"),
        position(&request, "my favourite colour is teal"),
        position(&request, "Noted, teal it is."),
        position(&request, "which staging database should I use?"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert_eq!(
        request.last_message_text(),
        "which staging database should I use?"
    );
    // The stable prompt did not change between turns of the conversation.
    let earlier = &fake.requests()[1];
    assert_eq!(earlier.body["system"][0], request.body["system"][0]);
    h.stop().await;
}

// --- failures --------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_then_success_gives_one_answer() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &model_env(&fake, Wire::Anthropic)).await;
    fake.push(Llm::status_retry_after(429, "1"));
    fake.push(Llm::text("After the pause."));
    let c = conv("busy", None);
    let started = Instant::now();
    assert_eq!(h.ask(&c, "hello?").await, "After the pause.");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retry-after: 1 was honoured ({:?})",
        started.elapsed()
    );
    assert_eq!(fake.request_count(), 2);
    let answers = h
        .app
        .store
        .messages(&c, MessageId(0), 100)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    assert_eq!(answers, 1);
    h.stop().await;
}

#[tokio::test]
async fn server_errors_forever_give_a_clear_reply_within_the_time_limit() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        model_env(&fake, Wire::OpenAi),
        &[("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "4")],
    );
    let h = Harness::start(dir.path(), &env).await;
    fake.set_default(Llm::status(500));
    let c = conv("down", None);
    let started = Instant::now();
    let answer = h.ask(&c, "are you there?").await;
    let took = started.elapsed();
    assert!(
        answer.contains("could not get an answer from the model"),
        "{answer}"
    );
    assert!(answer.contains("500"), "{answer}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(fake.request_count() >= 2, "it retried");
    // Handled: the event is done, not failed, and commands still work.
    let counts = h.app.store.inbox_counts().await.unwrap();
    assert_eq!((counts.failed, counts.pending, counts.leased), (0, 0, 0));
    assert!(h.ask(&c, "/help").await.contains("/remember"));
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_model_gives_a_clear_reply() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback address.
    let env = vec![
        (
            "ECDYSIS_MODEL".to_string(),
            "anthropic/claude-test".to_string(),
        ),
        (
            "ANTHROPIC_API_KEY".to_string(),
            "test-anthropic-key".to_string(),
        ),
        (
            "ANTHROPIC_BASE_URL".to_string(),
            "http://127.0.0.1:1".to_string(),
        ),
        (
            "ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS".to_string(),
            "3".to_string(),
        ),
    ];
    let h = Harness::start(dir.path(), &env).await;
    let started = Instant::now();
    let answer = h.ask(&conv("unreachable", None), "hello?").await;
    assert!(
        answer.contains("could not get an answer from the model"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!answer.contains("test-anthropic-key"), "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn a_slow_model_meets_the_turn_limit() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        model_env(&fake, Wire::Anthropic),
        &[("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "2")],
    );
    let h = Harness::start(dir.path(), &env).await;
    fake.push(Llm::text("too late").after(Duration::from_secs(20)));
    let started = Instant::now();
    let answer = h.ask(&conv("slow", None), "take your time").await;
    assert!(answer.contains("time limit"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    h.stop().await;
}

#[tokio::test]
async fn malformed_model_json_gives_a_failure_reply_and_no_crash() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for wire in [Wire::Anthropic, Wire::OpenAi] {
        let sub = dir.path().join(format!("{wire:?}"));
        std::fs::create_dir_all(&sub).unwrap();
        let h = Harness::start(&sub, &model_env(&fake, wire)).await;
        let c = conv("garbled", None);
        fake.push(Llm::raw("{\"content\": [ this is not json"));
        let answer = h.ask(&c, "hello").await;
        assert!(answer.contains("could not be read"), "{wire:?}: {answer}");
        fake.push(Llm::raw("{\"unexpected\": true}"));
        let answer = h.ask(&c, "hello again").await;
        assert!(answer.contains("could not be read"), "{wire:?}: {answer}");
        fake.push(Llm::text("Fine again."));
        assert_eq!(h.ask(&c, "and now?").await, "Fine again.");
        h.stop().await;
    }
}

#[tokio::test]
async fn a_fallback_model_answers_when_the_first_is_overloaded() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = model_env(&fake, Wire::Anthropic);
    env.extend(model_env(&fake, Wire::OpenAi).into_iter().skip(1));
    let env = with(
        env,
        &[
            ("ECDYSIS_FALLBACK_MODELS", "openai/gpt-test"),
            ("ECDYSIS_AGENT_MAX_RETRIES", "1"),
        ],
    );
    let h = Harness::start(dir.path(), &env).await;
    fake.set_default_for(Api::Anthropic, Llm::status(529));
    fake.set_default_for(Api::OpenAi, Llm::text("The fallback answers."));
    let c = conv("fallback", None);
    assert_eq!(h.ask(&c, "hello").await, "The fallback answers.");
    let apis: Vec<Api> = fake.requests().iter().map(|r| r.api).collect();
    assert_eq!(apis, [Api::Anthropic, Api::Anthropic, Api::OpenAi]);
    let status = h.ask(&c, "/status").await;
    assert!(status.contains("openai/gpt-test: 1 call"), "{status}");
    h.stop().await;
}

#[tokio::test]
async fn without_a_key_free_text_says_what_to_set_and_commands_work() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &[]).await;
    let c = conv("nokey", None);
    let answer = h.ask(&c, "hello?").await;
    assert!(
        answer.contains("ANTHROPIC_API_KEY") && answer.contains("OPENAI_API_KEY"),
        "{answer}"
    );
    assert!(
        h.ask(&c, "/remember it works")
            .await
            .starts_with("Remembered as #")
    );
    h.stop().await;

    // A model named without its provider's key: the reply names the missing variable.
    let sub = dir.path().join("named");
    std::fs::create_dir_all(&sub).unwrap();
    let env = vec![
        (
            "ECDYSIS_MODEL".to_string(),
            "anthropic/claude-test".to_string(),
        ),
        ("ANTHROPIC_BASE_URL".to_string(), fake.anthropic_base_url()),
    ];
    let h = Harness::start(&sub, &env).await;
    let answer = h.ask(&c, "hello?").await;
    assert!(answer.contains("ANTHROPIC_API_KEY is not set"), "{answer}");
    assert!(h.ask(&c, "/status").await.contains("not usable"));
    assert_eq!(fake.request_count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn memory_save_is_idempotent_per_event_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = ecdysis::storage::store::open(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    let mut tools = ecdysis::engine::tools::ToolRegistry::new();
    ecdysis::agent::memory_tools::register(
        &mut tools,
        store.clone(),
        ecdysis::engine::profile::Profiles::default(),
    );
    let save = tools.get("memory_save").unwrap();
    let context = |step| ToolContext {
        event_id: 7,
        step,
        conversation: conv("idem", None),
        user_id: "U1".into(),
        route: serde_json::Value::Null,
        poster: ecdysis::bus::Poster::detached(),
    };
    let input = json!({ "text": "the build runs on Fridays" });
    let first = save.call(&context(1), input.clone()).await.unwrap();
    // The same event re-run after a crash: the same step stores nothing new.
    let again = save.call(&context(1), input.clone()).await.unwrap();
    assert_eq!(first, again);
    let other = save
        .call(
            &context(1),
            json!({ "text": "a second note in the same step" }),
        )
        .await
        .unwrap();
    assert_ne!(first, other);
    let channel = conv("idem", None).channel_ref();
    assert_eq!(store.note_count(&channel).await.unwrap(), 2);
    // Scoped to the channel: another channel's search finds nothing.
    let search = tools.get("memory_search").unwrap();
    let mut elsewhere = context(2);
    elsewhere.conversation = conv("elsewhere", None);
    let found = search
        .call(&elsewhere, json!({ "query": "build Fridays" }))
        .await
        .unwrap();
    assert!(found.text.starts_with("No note"), "{}", found.text);
    let forget = tools.get("memory_forget").unwrap();
    let id: i64 = first
        .text
        .trim_start_matches("Saved as #")
        .trim_end_matches('.')
        .parse()
        .unwrap();
    let refused = forget.call(&elsewhere, json!({ "id": id })).await.unwrap();
    assert!(refused.text.contains("nothing was deleted"));
    assert!(
        save.call(&context(3), json!({ "text": " " }))
            .await
            .is_err()
    );
}

// --- compaction ------------------------------------------------------------------------------

#[tokio::test]
async fn a_long_conversation_is_compacted_and_stays_under_budget() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let budget = 3_000;
    let env = with(
        model_env(&fake, Wire::Anthropic),
        &[("ECDYSIS_AGENT_COMPACTION_BUDGET_TOKENS", "3000")],
    );
    let h = Harness::start(dir.path(), &env).await;
    fake.when(
        "[Compaction] The conversation above",
        Llm::tool(
            "memory_save",
            json!({ "text": "The project codename is kestrel." }),
        ),
    );
    fake.when(
        "[Compaction] Summarise",
        Llm::text("SUMMARY-7Q: the user described their project in many long messages."),
    );
    let long_answer = format!("Understood. {}", "Here is a detailed answer. ".repeat(30));
    fake.set_default(Llm::text(long_answer));
    let c = conv("long", Some("1700.9"));

    // Compaction starts after the answer of the turn that crossed the budget.
    let mut turns = 0;
    loop {
        turns += 1;
        assert!(turns <= 20, "no compaction after 20 turns");
        let text = format!(
            "Turn {turns}: the project codename is kestrel and {}",
            "here are more details about it. ".repeat(18)
        );
        h.ask(&c, &text).await;
        if h.wait_compaction(&c, Duration::from_millis(500)).await {
            break;
        }
    }
    assert!(turns >= 3, "compaction came too early ({turns} turns)");

    // The flush saved a durable fact before the summary.
    let notes = h.app.store.notes(&c.channel_ref(), 10).await.unwrap();
    assert!(
        notes.iter().any(|n| n.text.contains("kestrel")),
        "{notes:?}"
    );

    // A summary row exists and points to the archive, which holds the compacted rows verbatim.
    let compactions = h.app.store.compactions(&c).await.unwrap();
    assert_eq!(compactions.len(), 1);
    let compaction = &compactions[0];
    let window = h.app.store.context_messages(&c, 1000).await.unwrap();
    let (summary, latest) = window.summary.clone().unwrap();
    assert_eq!(&latest, compaction);
    assert_eq!(summary.role, Role::Summary);
    assert!(summary.text.starts_with("SUMMARY-7Q"));
    assert!(summary.meta.unwrap().contains(&compaction.archive_key));
    let archived = read_archive(h.app.blobs.as_ref(), &compaction.archive_key)
        .await
        .unwrap();
    assert_eq!(archived.len() as i64, compaction.message_count);
    assert!(archived[0].text.starts_with("Turn 1: the project codename"));
    assert!(
        archived
            .iter()
            .all(|m| m.id <= compaction.last_message_id.0)
    );
    // Nothing was deleted: every row is still in the transcript.
    let all = h
        .app
        .store
        .messages(&c, MessageId(0), 10_000)
        .await
        .unwrap();
    assert!(all.iter().any(|m| m.text.starts_with("Turn 1:")));
    assert!(all.iter().any(|m| m.role == Role::Summary));

    // The turn that crossed the budget was answered with the newest turns that fit; the next
    // turn carries the summary; both stay under budget.
    let crossing = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.last_message_text().starts_with("Turn "))
        .unwrap();
    assert!(!crossing.raw.contains("SUMMARY-7Q"));
    assert!(
        crossing.estimated_tokens() < budget,
        "{} tokens",
        crossing.estimated_tokens()
    );
    h.ask(&c, "Turn after: what was the codename?").await;
    let next = fake.last_request().unwrap();
    assert!(next.raw.contains("SUMMARY-7Q"));
    assert!(
        !next.raw.contains("Turn 1: the project"),
        "compacted turns are gone from the prompt"
    );
    assert!(
        next.estimated_tokens() < budget,
        "{} tokens",
        next.estimated_tokens()
    );
    // The summary request asked for a summary and offered no tool use.
    let summary_request = fake
        .requests()
        .into_iter()
        .find(|r| r.last_message_text().contains(SUMMARY_PROMPT))
        .unwrap();
    assert_eq!(summary_request.body["tool_choice"]["type"], "none");

    // Visible in /status.
    let status = h.ask(&c, "/status").await;
    assert!(status.contains("Compaction: 1 time"), "{status}");
    h.stop().await;
}

// --- restarts (a real `ecdysis serve` process) -------------------------------------------------

async fn restart_keeps_the_conversation(database_url: Option<String>) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = model_env(&fake, Wire::Anthropic);
    env.push(("ECDYSIS_SANDBOX".into(), "off".into()));
    env.push(("ECDYSIS_CHROMIUM".into(), "/nonexistent/chromium".into()));
    if let Some(url) = database_url {
        env.push(("DATABASE_URL".into(), url));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = common::server::Server::start(dir.path(), &env_refs).await;
    fake.push(Llm::text("Nice to meet you, Ada."));
    assert_eq!(
        server.ask("intro", "my name is Ada Lovelace").await,
        "Nice to meet you, Ada."
    );

    let server = server.restart().await;
    fake.push(Llm::text("You are Ada Lovelace."));
    assert_eq!(
        server.ask("intro", "what is my name?").await,
        "You are Ada Lovelace."
    );
    let request = fake.last_request().unwrap();
    let order = [
        position(&request, "my name is Ada Lovelace"),
        position(&request, "Nice to meet you, Ada."),
        position(&request, "what is my name?"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

#[tokio::test]
async fn a_restart_between_turns_keeps_the_history_sqlite() {
    restart_keeps_the_conversation(None).await;
}

#[tokio::test]
async fn a_restart_between_turns_keeps_the_history_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    restart_keeps_the_conversation(Some(url)).await;
}
