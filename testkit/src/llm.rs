//! A fake LLM server: the Anthropic Messages API (`POST /v1/messages`) and OpenAI chat
//! completions (`POST /v1/chat/completions`) on 127.0.0.1, playing scripted replies (text, tool
//! calls, error statuses with `retry-after`, malformed bodies, delays) and recording every
//! request for assertions.
//!
//! A reply comes from, in order: the first rule whose needle is in the request's last message,
//! the queue of one-shot replies, or the default (a short text).
//!
//! A request with `"stream": true` is answered with server-sent events in each API's format:
//! the text in deltas of a few characters and tool-call inputs in pieces, usage in the final
//! events (optionally paced, cut short, or answered as plain JSON like a gateway that does not
//! stream).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Which wire format a request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A plain text answer.
    Text(String),
    /// Tool calls (name, input), with optional text before them.
    Tools {
        text: String,
        calls: Vec<(String, Value)>,
    },
    /// An error status with an API-shaped error body and an optional `retry-after`.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Any status and body, as is.
    Raw { status: u16, body: String },
    /// An error status whose body quotes the request's `header` (lower-case name), as a
    /// gateway that echoes the credentials it was sent would.
    Echo { status: u16, header: String },
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
    /// Decided when the request arrives, from what it carries (e.g. a scripted model that
    /// reads a tool result before choosing its next call).
    Computed(Responder),
    /// When streamed: wait this long before each event after the first.
    Paced(Duration, Box<Reply>),
    /// When streamed: stop after this many events, without the closing ones (an early EOF).
    Cut(usize, Box<Reply>),
    /// Answer with one JSON document even when streaming was asked (a gateway that does not
    /// stream).
    Unstreamed(Box<Reply>),
    /// A 200 `text/event-stream` with this body, as is (e.g. a malformed line).
    Sse(String),
}

/// The function behind [`Reply::Computed`].
#[derive(Clone)]
pub struct Responder(Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder(..)")
    }
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Text(text.into())
    }

    /// One tool call.
    pub fn tool(name: &str, input: Value) -> Self {
        Reply::Tools {
            text: String::new(),
            calls: vec![(name.to_string(), input)],
        }
    }

    /// Several tool calls in one answer.
    pub fn tools(calls: &[(&str, Value)]) -> Self {
        Reply::Tools {
            text: String::new(),
            calls: calls
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    pub fn status_retry_after(status: u16, retry_after: &str) -> Self {
        Reply::Status {
            status,
            retry_after: Some(retry_after.to_string()),
        }
    }

    /// An error status whose body quotes the request's `header` (e.g. `x-api-key`).
    pub fn echo_header(status: u16, header: &str) -> Self {
        Reply::Echo {
            status,
            header: header.to_ascii_lowercase(),
        }
    }

    /// A 200 with this body (e.g. malformed JSON).
    pub fn raw(body: impl Into<String>) -> Self {
        Reply::Raw {
            status: 200,
            body: body.into(),
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Reply::Delayed(delay, Box::new(self))
    }

    /// Streamed with `every` between events.
    pub fn paced(self, every: Duration) -> Self {
        Reply::Paced(every, Box::new(self))
    }

    /// Streamed, but the stream ends after `events` events.
    pub fn cut_after(self, events: usize) -> Self {
        Reply::Cut(events, Box::new(self))
    }

    /// Never streamed: plain JSON even for `"stream": true`.
    pub fn unstreamed(self) -> Self {
        Reply::Unstreamed(Box::new(self))
    }

    /// A raw event-stream body.
    pub fn sse(body: impl Into<String>) -> Self {
        Reply::Sse(body.into())
    }

    /// A reply chosen by `f` from the request it answers.
    pub fn computed(f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Reply::Computed(Responder(Arc::new(f)))
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub api: Api,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body as sent.
    pub raw: String,
    /// The body parsed (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl Recorded {
    /// The text of the request's last message.
    pub fn last_message_text(&self) -> String {
        last_message_text(&self.body)
    }

    /// The estimated prompt tokens of this request (body characters / 4).
    pub fn estimated_tokens(&self) -> usize {
        self.raw.chars().count().div_ceil(4)
    }
}

struct Rule {
    needle: String,
    reply: Reply,
}

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    queue: VecDeque<Reply>,
    default: Option<Reply>,
    api_defaults: Vec<(Api, Reply)>,
    requests: Vec<Recorded>,
    counter: u64,
    /// Stable prefixes seen, for the simulated prompt cache.
    cached: Vec<String>,
    /// When each streamed answer sent its first text.
    first_text_at: Vec<std::time::Instant>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running fake; stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl FakeLlm {
    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let shared: Shared = Arc::default();
        let router = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1/chat/completions", post(openai))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:P`: the value for `ANTHROPIC_BASE_URL`.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:P/v1`: the value for `OPENAI_BASE_URL`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answer the next request (after earlier queued replies) with `reply`.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared).queue.push_back(reply);
    }

    /// Answer every request whose last message contains `needle` with `reply` (before the queue).
    pub fn when(&self, needle: &str, reply: Reply) {
        lock(&self.shared).rules.push(Rule {
            needle: needle.to_string(),
            reply,
        });
    }

    /// The answer when no rule matches and the queue is empty (initially the text "ok").
    pub fn set_default(&self, reply: Reply) {
        lock(&self.shared).default = Some(reply);
    }

    /// The answer for one wire format when no rule matches and the queue is empty (before the
    /// general default): e.g. an overloaded primary model and a working fallback.
    pub fn set_default_for(&self, api: Api, reply: Reply) {
        let mut inner = lock(&self.shared);
        inner.api_defaults.retain(|(a, _)| *a != api);
        inner.api_defaults.push((api, reply));
    }

    /// Queued replies not yet played.
    pub fn queued(&self) -> usize {
        lock(&self.shared).queue.len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared).requests.clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared).requests.len()
    }

    /// When each streamed answer sent its first text event, in order.
    pub fn first_text_times(&self) -> Vec<std::time::Instant> {
        lock(&self.shared).first_text_at.clone()
    }

    /// The last request, if any.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.shared).requests.last().cloned()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The text of a request's last message (both wire formats).
pub fn last_message_text(body: &Value) -> String {
    let Some(last) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
    else {
        return String::new();
    };
    content_text(last.get("content").unwrap_or(&Value::Null))
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b.get("content") {
                Some(inner) => content_text(inner),
                None => b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Record the request and pick its reply.
fn take(shared: &Shared, api: Api, headers: &HeaderMap, raw: &Bytes) -> (Reply, Value, u64) {
    let raw = String::from_utf8_lossy(raw).to_string();
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let last = last_message_text(&body);
    let mut inner = lock(shared);
    inner.counter += 1;
    let n = inner.counter;
    let recorded = Recorded {
        api,
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        raw,
        body: body.clone(),
    };
    inner.requests.push(recorded.clone());
    let reply = inner
        .rules
        .iter()
        .find(|r| last.contains(&r.needle))
        .map(|r| r.reply.clone())
        .or_else(|| inner.queue.pop_front())
        .or_else(|| {
            inner
                .api_defaults
                .iter()
                .find(|(a, _)| *a == api)
                .map(|(_, r)| r.clone())
        })
        .or_else(|| inner.default.clone())
        .unwrap_or_else(|| Reply::text("ok"));
    drop(inner);
    let reply = match reply {
        Reply::Computed(Responder(f)) => f(&recorded),
        other => other,
    };
    (reply, body, n)
}

/// Simulated usage: (uncached input, cache read, cache write) from the body size and whether
/// its stable prefix was seen before.
fn usage(shared: &Shared, body: &Value, prefix: Option<String>) -> (i64, i64, i64) {
    let total = (body.to_string().chars().count() / 4) as i64;
    let Some(prefix) = prefix else {
        return (total, 0, 0);
    };
    let tokens = (prefix.chars().count() / 4) as i64;
    let mut inner = lock(shared);
    if inner.cached.contains(&prefix) {
        (total - tokens, tokens, 0)
    } else {
        inner.cached.push(prefix);
        (total - tokens, 0, tokens)
    }
}

/// How a streamed answer is sent.
#[derive(Clone, Copy, Debug, Default)]
struct Streaming {
    /// The request asked for a stream (and the reply does not refuse one).
    on: bool,
    every: Duration,
    cut: Option<usize>,
}

/// Wait out delays and take the stream settings off a reply.
async fn resolve(reply: Reply, asked_stream: bool) -> (Reply, Streaming) {
    let mut reply = reply;
    let mut streaming = Streaming {
        on: asked_stream,
        ..Streaming::default()
    };
    loop {
        reply = match reply {
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                *inner
            }
            Reply::Paced(every, inner) => {
                streaming.every = every;
                *inner
            }
            Reply::Cut(events, inner) => {
                streaming.cut = Some(events);
                *inner
            }
            Reply::Unstreamed(inner) => {
                streaming.on = false;
                *inner
            }
            other => return (other, streaming),
        };
    }
}

/// Pieces of about a token (four characters), on character boundaries.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

/// A `text/event-stream` response sending `events` (already framed) with the pacing asked;
/// the time event number `first_text` goes out is recorded.
fn event_stream(
    events: Vec<String>,
    streaming: Streaming,
    first_text: Option<(usize, Shared)>,
) -> Response {
    let mut events = events;
    if let Some(cut) = streaming.cut {
        events.truncate(cut);
    }
    let every = streaming.every;
    let stream = futures_util::stream::unfold(
        (events.into_iter().enumerate(), true),
        move |(mut events, first)| {
            let first_text = first_text.clone();
            async move {
                let (n, event) = events.next()?;
                if !first && !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
                if let Some((at, shared)) = first_text
                    && at == n
                {
                    lock(&shared).first_text_at.push(std::time::Instant::now());
                }
                Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(event)),
                    (events, false),
                ))
            }
        },
    );
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

fn anthropic_event(data: Value) -> String {
    let kind = data["type"].as_str().unwrap_or("message").to_string();
    format!("event: {kind}\ndata: {data}\n\n")
}

fn openai_event(data: Value) -> String {
    format!("data: {data}\n\n")
}

fn error_response(api: Api, status: u16, retry_after: Option<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::Anthropic => json!({
            "type": "error",
            "error": { "type": "api_error", "message": format!("scripted status {status}") },
        }),
        Api::OpenAi => json!({
            "error": { "message": format!("scripted status {status}"), "type": "server_error" },
        }),
    };
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(after) = retry_after
        && let Ok(value) = after.parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn echo_response(status: u16, headers: &HeaderMap, header: &str) -> Response {
    let value = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body = json!({
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": format!("the gateway refused {header}: {value}"),
        },
        "request": { "headers": { header: value } },
    });
    raw_response(status, body.to_string())
}

fn raw_response(status: u16, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (code, [("content-type", "application/json")], body).into_response()
}

fn asks_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

async fn anthropic(State(shared): State<Shared>, headers: HeaderMap, raw: Bytes) -> Response {
    let (reply, body, n) = take(&shared, Api::Anthropic, &headers, &raw);
    let (reply, streaming) = resolve(reply, asks_stream(&body)).await;
    let (text, calls) = match reply {
        Reply::Text(text) => (text, Vec::new()),
        Reply::Tools { text, calls } => (text, calls),
        Reply::Status {
            status,
            retry_after,
        } => return error_response(Api::Anthropic, status, retry_after),
        Reply::Raw { status, body } => return raw_response(status, body),
        Reply::Echo { status, header } => return echo_response(status, &headers, &header),
        Reply::Sse(body) => return event_stream(vec![body], Streaming::default(), None),
        Reply::Delayed(..)
        | Reply::Computed(_)
        | Reply::Paced(..)
        | Reply::Cut(..)
        | Reply::Unstreamed(_) => {
            return raw_response(500, "unresolved reply".into());
        }
    };
    let prefix = body
        .get("system")
        .and_then(Value::as_array)
        .and_then(|blocks| blocks.iter().find(|b| b.get("cache_control").is_some()))
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (input, read, write) = usage(&shared, &body, prefix);
    let output_tokens = (text.chars().count() / 4 + 1) as i64;
    let stop_reason = if calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    if streaming.on {
        let mut events = vec![anthropic_event(json!({
            "type": "message_start",
            "message": {
                "id": format!("msg_{n}"), "type": "message", "role": "assistant",
                "model": body.get("model").cloned().unwrap_or(Value::Null),
                "content": [], "stop_reason": null,
                "usage": {
                    "input_tokens": input, "output_tokens": 1,
                    "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
                },
            },
        }))];
        let mut index = 0;
        if !text.is_empty() {
            events.push(anthropic_event(json!({
                "type": "content_block_start", "index": 0,
                "content_block": { "type": "text", "text": "" },
            })));
            events.push(anthropic_event(json!({ "type": "ping" })));
            for piece in pieces(&text, 4) {
                events.push(anthropic_event(json!({
                    "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": piece },
                })));
            }
            events.push(anthropic_event(
                json!({ "type": "content_block_stop", "index": 0 }),
            ));
            index = 1;
        }
        for (i, (name, call_input)) in calls.iter().enumerate() {
            events.push(anthropic_event(json!({
                "type": "content_block_start", "index": index,
                "content_block": {
                    "type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name, "input": {},
                },
            })));
            for piece in pieces(&call_input.to_string(), 5) {
                events.push(anthropic_event(json!({
                    "type": "content_block_delta", "index": index,
                    "delta": { "type": "input_json_delta", "partial_json": piece },
                })));
            }
            events.push(anthropic_event(
                json!({ "type": "content_block_stop", "index": index }),
            ));
            index += 1;
        }
        events.push(anthropic_event(json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason, "stop_sequence": null },
            "usage": { "output_tokens": output_tokens },
        })));
        events.push(anthropic_event(json!({ "type": "message_stop" })));
        // message_start, content_block_start, ping, then the first text.
        let first_text = (!text.is_empty()).then(|| (3, shared.clone()));
        return event_stream(events, streaming, first_text);
    }
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    for (i, (name, input)) in calls.iter().enumerate() {
        content.push(json!({
            "type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name, "input": input,
        }));
    }
    axum::Json(json!({
        "id": format!("msg_{n}"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason,
        "usage": {
            "input_tokens": input,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write,
        },
    }))
    .into_response()
}

async fn openai(State(shared): State<Shared>, headers: HeaderMap, raw: Bytes) -> Response {
    let (reply, body, n) = take(&shared, Api::OpenAi, &headers, &raw);
    let (reply, streaming) = resolve(reply, asks_stream(&body)).await;
    let (text, calls) = match reply {
        Reply::Text(text) => (text, Vec::new()),
        Reply::Tools { text, calls } => (text, calls),
        Reply::Status {
            status,
            retry_after,
        } => return error_response(Api::OpenAi, status, retry_after),
        Reply::Raw { status, body } => return raw_response(status, body),
        Reply::Echo { status, header } => return echo_response(status, &headers, &header),
        Reply::Sse(body) => return event_stream(vec![body], Streaming::default(), None),
        Reply::Delayed(..)
        | Reply::Computed(_)
        | Reply::Paced(..)
        | Reply::Cut(..)
        | Reply::Unstreamed(_) => {
            return raw_response(500, "unresolved reply".into());
        }
    };
    let prefix = body
        .pointer("/messages/0")
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (input, read, _) = usage(&shared, &body, prefix);
    let completion_tokens = (text.chars().count() / 4 + 1) as i64;
    let finish_reason = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let usage_json = json!({
        "prompt_tokens": input + read,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": { "cached_tokens": read },
    });
    if streaming.on {
        let id = format!("chatcmpl-{n}");
        let chunk = |delta: Value, finish: Value| {
            openai_event(json!({
                "id": id, "object": "chat.completion.chunk",
                "model": body.get("model").cloned().unwrap_or(Value::Null),
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            }))
        };
        let mut events = vec![chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
        )];
        for piece in pieces(&text, 4) {
            events.push(chunk(json!({ "content": piece }), Value::Null));
        }
        for (i, (name, call_input)) in calls.iter().enumerate() {
            events.push(chunk(
                json!({ "tool_calls": [{
                    "index": i, "id": format!("call_{n}_{i}"), "type": "function",
                    "function": { "name": name, "arguments": "" },
                }] }),
                Value::Null,
            ));
            for piece in pieces(&call_input.to_string(), 5) {
                events.push(chunk(
                    json!({ "tool_calls": [{ "index": i, "function": { "arguments": piece } }] }),
                    Value::Null,
                ));
            }
        }
        events.push(chunk(json!({}), json!(finish_reason)));
        let wants_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        if wants_usage {
            events.push(openai_event(json!({
                "id": id, "object": "chat.completion.chunk", "choices": [], "usage": usage_json,
            })));
        }
        events.push("data: [DONE]\n\n".to_string());
        let first_text = (!text.is_empty()).then(|| (1, shared.clone()));
        return event_stream(events, streaming, first_text);
    }
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, input))| {
            json!({
                "id": format!("call_{n}_{i}"),
                "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            })
        })
        .collect();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() { Value::Null } else { Value::String(text.clone()) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
        }],
        "usage": usage_json,
    }))
    .into_response()
}
