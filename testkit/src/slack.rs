//! A fake Slack on 127.0.0.1: the Web API methods ecdysis calls (`auth.test`,
//! `chat.postMessage`, `chat.update`, `chat.delete`, the streaming methods `chat.startStream` /
//! `chat.appendStream` / `chat.stopStream` (a streaming message refuses edits until stopped),
//! `reactions.add`, `users.info`, `conversations.replies`/`history`, the files v2 upload,
//! `oauth.v2.access`, `apps.connections.open`), `response_url`s, user-file downloads, and a
//! Socket Mode websocket the test drives (hello, envelopes, acks, forced disconnects, silence).
//! Every call is recorded with its `Authorization` header for assertions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// One recorded Web API call.
#[derive(Clone, Debug)]
pub struct Call {
    /// `chat.postMessage`, `upload` (the upload URL), `response_url`, `download`, …
    pub method: String,
    /// The `Authorization` header as sent (`Bearer xoxb-…`, `Basic …`).
    pub authorization: Option<String>,
    /// The arguments: the JSON body, or form/query fields as a JSON object.
    pub args: Value,
    /// Raw body bytes (uploads).
    pub body: Bytes,
    pub content_type: Option<String>,
    /// When the fake received it.
    pub at: Instant,
}

impl Call {
    /// A string argument.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args.get(name).and_then(Value::as_str)
    }

    /// The bearer token, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization.as_deref()?.strip_prefix("Bearer ")
    }
}

/// What `oauth.v2.access` grants for a code.
#[derive(Clone, Debug)]
pub struct Grant {
    pub team_id: String,
    pub team_name: String,
    pub bot_user_id: String,
    pub bot_token: String,
}

#[derive(Default)]
struct State_ {
    calls: Vec<Call>,
    /// Messages posted per channel, for `conversations.replies`/`history`.
    posted: Vec<Value>,
    grants: HashMap<String, Grant>,
    /// Tokens the API accepts; empty accepts any.
    tokens: Vec<String>,
    files: HashMap<String, Bytes>,
    /// How long a file download waits before answering (a slow file server).
    download_delay: Duration,
    /// Fail the next N calls of a method with this error.
    failures: HashMap<String, (usize, String)>,
    /// Method → (calls left to answer with HTTP 429, the `Retry-After` seconds).
    rate_limits: HashMap<String, (usize, u64)>,
    /// Methods whose next calls take effect but never answer (a crash while waiting).
    stalls: HashMap<String, usize>,
    /// `users.info`'s `tz` per user.
    timezones: HashMap<String, String>,
    socket: SocketState,
}

#[derive(Default)]
struct SocketState {
    /// Connections accepted so far.
    connections: usize,
    /// Controls of the open connection.
    current: Option<mpsc::UnboundedSender<Control>>,
    acks: Vec<Value>,
}

enum Control {
    Send(String),
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Stop reading and writing (no pongs), keeping the TCP connection open.
    Silence,
}

struct Shared {
    state: Mutex<State_>,
    changed: Notify,
    ts: AtomicU64,
    ids: AtomicU64,
    base: String,
    socket_url: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State_> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn record(&self, call: Call) {
        self.lock().calls.push(call);
        self.changed.notify_waiters();
    }
}

/// The fake. Dropping it stops its servers.
pub struct FakeSlack {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeSlack {
    /// Start the fake (HTTP API and Socket Mode websocket) on loopback ports.
    pub async fn start() -> std::io::Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let http_addr: SocketAddr = http.local_addr()?;
        let ws_addr: SocketAddr = ws.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State_::default()),
            changed: Notify::new(),
            // Message timestamps count from now, as Slack's do: later than any test's own.
            ts: AtomicU64::new(now_micros()),
            ids: AtomicU64::new(1),
            base: format!("http://{http_addr}"),
            socket_url: format!("ws://{ws_addr}/link"),
        });
        let router = Router::new()
            .route("/api/{method}", any(api))
            .route("/upload/{file_id}", post(upload))
            .route("/response/{id}", post(response_url))
            .route("/files/{name}", get(download))
            .route(
                "/oauth/v2/authorize",
                get(|| async { "the authorize page" }),
            )
            .with_state(shared.clone());
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, router).await;
        });
        let ws_shared = shared.clone();
        let ws_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                tokio::spawn(socket_connection(ws_shared.clone(), tcp));
            }
        });
        Ok(Self {
            shared,
            tasks: vec![http_task, ws_task],
        })
    }

    /// `SLACK_API_URL` for this fake (`http://127.0.0.1:P/api/`).
    pub fn api_url(&self) -> String {
        format!("{}/api/", self.shared.base)
    }

    /// `http://127.0.0.1:P`.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// A `response_url` whose posts are recorded as `response_url` calls.
    pub fn response_url(&self, id: &str) -> String {
        format!("{}/response/{id}", self.shared.base)
    }

    /// Serve a user file at `url_private_download` (needs a bearer token to download).
    pub fn add_file(&self, name: &str, bytes: impl Into<Bytes>) -> String {
        self.shared
            .lock()
            .files
            .insert(name.to_string(), bytes.into());
        format!("{}/files/{name}", self.shared.base)
    }

    /// Make file downloads answer only after `delay` (a slow file server).
    pub fn set_download_delay(&self, delay: Duration) {
        self.shared.lock().download_delay = delay;
    }

    /// Accept only these bot tokens (any token is accepted until this is called).
    pub fn accept_tokens(&self, tokens: &[&str]) {
        self.shared.lock().tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Make `oauth.v2.access` grant this for `code`.
    pub fn add_grant(&self, code: &str, grant: Grant) {
        let mut state = self.shared.lock();
        if !state.tokens.is_empty() {
            state.tokens.push(grant.bot_token.clone());
        }
        state.grants.insert(code.to_string(), grant);
    }

    /// Give a user a time zone (`users.info`'s `tz`).
    pub fn set_user_timezone(&self, user: &str, tz: &str) {
        self.shared
            .lock()
            .timezones
            .insert(user.to_string(), tz.to_string());
    }

    /// Answer the next `times` calls of `method` with `{"ok": false, "error": error}`.
    pub fn fail_next(&self, method: &str, times: usize, error: &str) {
        self.shared
            .lock()
            .failures
            .insert(method.to_string(), (times, error.to_string()));
    }

    /// Answer the next `times` calls of `method` with HTTP 429 and `Retry-After: seconds`
    /// (Slack's rate limit answer), as a storm of them would.
    pub fn rate_limit_next(&self, method: &str, times: usize, retry_after_seconds: u64) {
        self.shared
            .lock()
            .rate_limits
            .insert(method.to_string(), (times, retry_after_seconds));
    }

    /// Let the next `times` calls of `method` take effect (a stream starts, a message is
    /// posted) and then never answer: the client sees nothing, as when it dies mid-call.
    pub fn stall_next(&self, method: &str, times: usize) {
        self.shared.lock().stalls.insert(method.to_string(), times);
    }

    /// Every recorded call.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The recorded calls of one method.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.calls_to_any(&[method])
    }

    /// The recorded calls of any of `methods`, in the order received.
    pub fn calls_to_any(&self, methods: &[&str]) -> Vec<Call> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| methods.contains(&c.method.as_str()))
            .cloned()
            .collect()
    }

    /// Wait until `method` was called at least `n` times; the calls, or what there is after
    /// `timeout`.
    pub async fn wait_calls(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        self.wait_calls_any(&[method], n, timeout).await
    }

    /// Wait until the `methods` together were called at least `n` times; their calls in the
    /// order received, or what there is after `timeout`.
    pub async fn wait_calls_any(&self, methods: &[&str], n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let calls = self.calls_to_any(methods);
            if calls.len() >= n || Instant::now() >= deadline {
                return calls;
            }
            let _ =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
                    .await;
        }
    }

    /// A user's message that reaches the channel's history but sends no event (said while
    /// the bot was away); in a thread when `thread_ts` is set. Returns its `ts`.
    pub fn post_user_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        user: &str,
        text: &str,
    ) -> String {
        let ts = next_ts(&self.shared);
        let mut message = json!({
            "type": "message", "ts": ts, "user": user, "text": text, "channel": channel,
        });
        if let Some(thread) = thread_ts {
            message["thread_ts"] = json!(thread);
        }
        self.shared.lock().posted.push(message);
        ts
    }

    /// A fresh `ts`, later than every one the fake gave before (for an event's message).
    pub fn next_ts(&self) -> String {
        next_ts(&self.shared)
    }

    /// The messages the bot has in a thread (the root excluded), in order, as a user sees them
    /// now: `text`, `streaming` (true until the stream stopped), `tasks` (task lines by id).
    pub fn thread_messages(&self, channel: &str, thread_ts: &str) -> Vec<Value> {
        self.shared
            .lock()
            .posted
            .iter()
            .filter(|m| m["channel"] == channel && m["thread_ts"] == thread_ts)
            .cloned()
            .collect()
    }

    // --- Socket Mode ----------------------------------------------------------------------------

    /// Websocket connections accepted so far.
    pub fn socket_connections(&self) -> usize {
        self.shared.lock().socket.connections
    }

    /// Wait until `n` connections were accepted (and greeted with `hello`).
    pub async fn wait_socket_connections(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if self.socket_connections() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let _ =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
                    .await;
        }
    }

    /// Send an envelope (`events_api`, `slash_commands`, `interactive`) on the open
    /// connection; its envelope id, or `None` when no connection is open.
    pub fn send_envelope(&self, kind: &str, payload: Value) -> Option<String> {
        let id = format!("env-{}", self.shared.ids.fetch_add(1, Ordering::Relaxed));
        let frame = json!({
            "envelope_id": id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
        });
        let state = self.shared.lock();
        let sender = state.socket.current.as_ref()?;
        sender.send(Control::Send(frame.to_string())).ok()?;
        Some(id)
    }

    /// Send a raw frame (`{"type":"disconnect",…}`) on the open connection.
    pub fn send_frame(&self, frame: Value) -> bool {
        let state = self.shared.lock();
        state
            .socket
            .current
            .as_ref()
            .is_some_and(|s| s.send(Control::Send(frame.to_string())).is_ok())
    }

    /// Every acknowledgement received.
    pub fn acks(&self) -> Vec<Value> {
        self.shared.lock().socket.acks.clone()
    }

    /// Wait for the acknowledgement of an envelope.
    pub async fn wait_ack(&self, envelope_id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(ack) = self
                .acks()
                .into_iter()
                .find(|a| a["envelope_id"] == envelope_id)
            {
                return Some(ack);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let _ =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
                    .await;
        }
    }

    /// Drop the open connection abruptly (no close frame), like a network failure.
    pub fn drop_socket(&self) {
        if let Some(sender) = self.shared.lock().socket.current.take() {
            let _ = sender.send(Control::Drop);
        }
    }

    /// Keep the open connection but stop answering anything on it (no pongs, no frames):
    /// the half-dead socket a watchdog must notice.
    pub fn silence_socket(&self) {
        if let Some(sender) = self.shared.lock().socket.current.take() {
            let _ = sender.send(Control::Silence);
        }
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A `ts` as (seconds, microseconds), for ordering.
fn ts_order(ts: &str) -> (u64, u64) {
    let (seconds, micros) = ts.split_once('.').unwrap_or((ts, "0"));
    (seconds.parse().unwrap_or(0), micros.parse().unwrap_or(0))
}

fn next_ts(shared: &Shared) -> String {
    let n = shared.ts.fetch_add(100, Ordering::Relaxed);
    format!("{}.{:06}", n / 1_000_000, n % 1_000_000)
}

fn ok(body: Value) -> Response {
    let mut body = body;
    body["ok"] = json!(true);
    axum::Json(body).into_response()
}

fn slack_error(error: &str) -> Response {
    axum::Json(json!({ "ok": false, "error": error })).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The call's arguments: JSON body, form body, or query string.
fn arguments(headers: &HeaderMap, query: &HashMap<String, String>, body: &Bytes) -> Value {
    let content_type = header(headers, "content-type").unwrap_or_default();
    if content_type.starts_with("application/json")
        && let Ok(value) = serde_json::from_slice::<Value>(body)
    {
        return value;
    }
    let mut map = serde_json::Map::new();
    for (k, v) in query {
        map.insert(k.clone(), json!(v));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in url::form_urlencoded::parse(body) {
            map.insert(k.into_owned(), json!(v));
        }
    }
    Value::Object(map)
}

async fn api(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stalled = {
        let mut state = shared.lock();
        match state.stalls.get_mut(&method) {
            Some(times) if *times > 0 => {
                *times -= 1;
                true
            }
            _ => false,
        }
    };
    let response = answer(shared, method, query, headers, body).await;
    if stalled {
        std::future::pending::<()>().await;
    }
    response
}

/// One Web API call: its effect on the fake's state and Slack's answer.
async fn answer(
    shared: Arc<Shared>,
    method: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args = arguments(&headers, &query, &body);
    let call = Call {
        method: method.clone(),
        authorization: header(&headers, "authorization"),
        args: args.clone(),
        body: body.clone(),
        content_type: header(&headers, "content-type"),
        at: Instant::now(),
    };
    let bearer = call.bearer().map(str::to_string);
    shared.record(call);
    {
        let mut state = shared.lock();
        if let Some((times, seconds)) = state.rate_limits.get_mut(&method)
            && *times > 0
        {
            *times -= 1;
            let seconds = *seconds;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", seconds.to_string())],
                axum::Json(json!({ "ok": false, "error": "ratelimited" })),
            )
                .into_response();
        }
        if let Some((times, error)) = state.failures.get_mut(&method)
            && *times > 0
        {
            *times -= 1;
            let error = error.clone();
            return slack_error(&error);
        }
        let token_checked = !matches!(method.as_str(), "oauth.v2.access" | "apps.connections.open");
        if token_checked
            && !state.tokens.is_empty()
            && !bearer.as_ref().is_some_and(|t| state.tokens.contains(t))
        {
            return slack_error("invalid_auth");
        }
    }
    match method.as_str() {
        "auth.test" => ok(json!({
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "ecdysis",
            "team_id": "T0FAKE",
            "user_id": "UBOT",
            "bot_id": "BBOT",
        })),
        "chat.postMessage" => {
            let Some(channel) = args.get("channel").and_then(Value::as_str) else {
                return slack_error("channel_not_found");
            };
            let ts = next_ts(&shared);
            let mut message = json!({
                "type": "message",
                "ts": ts,
                "text": args.get("text").cloned().unwrap_or(json!("")),
                "bot_id": "BBOT",
                "user": "UBOT",
            });
            if let Some(thread) = args.get("thread_ts") {
                message["thread_ts"] = thread.clone();
            }
            if let Some(metadata) = args.get("metadata") {
                message["metadata"] = metadata.clone();
            }
            let mut stored = message.clone();
            stored["channel"] = json!(channel);
            shared.lock().posted.push(stored);
            ok(json!({ "channel": channel, "ts": ts, "message": message }))
        }
        "chat.startStream" => {
            let (Some(channel), Some(thread)) = (
                args.get("channel").and_then(Value::as_str),
                args.get("thread_ts").and_then(Value::as_str),
            ) else {
                return slack_error("invalid_arguments");
            };
            let ts = next_ts(&shared);
            let mut message = json!({
                "type": "message", "ts": ts, "text": "", "bot_id": "BBOT", "user": "UBOT",
                "channel": channel, "thread_ts": thread, "streaming": true, "tasks": {},
                "recipient_team_id": args.get("recipient_team_id").cloned().unwrap_or(Value::Null),
                "recipient_user_id": args.get("recipient_user_id").cloned().unwrap_or(Value::Null),
            });
            stream_content(&mut message, &args);
            shared.lock().posted.push(message);
            ok(json!({ "channel": channel, "ts": ts }))
        }
        "chat.appendStream" | "chat.stopStream" | "chat.update" | "chat.delete" => {
            let channel = args.get("channel").and_then(Value::as_str).unwrap_or("");
            let ts = args.get("ts").and_then(Value::as_str).unwrap_or("");
            let mut state = shared.lock();
            let Some(at) = state
                .posted
                .iter()
                .position(|m| m["channel"] == channel && m["ts"] == ts)
            else {
                return slack_error("message_not_found");
            };
            let streaming = state.posted[at]["streaming"] == true;
            match method.as_str() {
                "chat.appendStream" | "chat.stopStream" if !streaming => {
                    slack_error("message_not_in_streaming_state")
                }
                "chat.update" if streaming => slack_error("message_is_streaming"),
                "chat.delete" => {
                    state.posted.remove(at);
                    ok(json!({ "channel": channel, "ts": ts }))
                }
                "chat.update" => {
                    let message = &mut state.posted[at];
                    message["text"] = args.get("text").cloned().unwrap_or(json!(""));
                    message["edited"] = json!({ "user": "UBOT", "ts": ts });
                    if let Some(metadata) = args.get("metadata") {
                        message["metadata"] = metadata.clone();
                    }
                    let updated =
                        json!({ "text": message["text"], "bot_id": "BBOT", "user": "UBOT" });
                    ok(
                        json!({ "channel": channel, "ts": ts, "text": message["text"], "message": updated }),
                    )
                }
                stop_or_append => {
                    let message = &mut state.posted[at];
                    stream_content(message, &args);
                    if stop_or_append == "chat.stopStream" {
                        message["streaming"] = json!(false);
                        if let Some(metadata) = args.get("metadata") {
                            message["metadata"] = metadata.clone();
                        }
                    }
                    ok(json!({ "channel": channel, "ts": ts }))
                }
            }
        }
        "reactions.add" => ok(json!({})),
        "users.info" => {
            let user = args.get("user").and_then(Value::as_str).unwrap_or("");
            if user.is_empty() {
                return slack_error("user_not_found");
            }
            let mut info = json!({ "id": user, "team_id": "T0FAKE", "name": user });
            if let Some(tz) = shared.lock().timezones.get(user) {
                info["tz"] = json!(tz);
            }
            ok(json!({ "user": info }))
        }
        "conversations.replies" | "conversations.history" => {
            let channel = args.get("channel").and_then(Value::as_str).unwrap_or("");
            let thread = args.get("ts").and_then(Value::as_str);
            let oldest = args
                .get("oldest")
                .and_then(Value::as_str)
                .map(ts_order)
                .unwrap_or_default();
            let limit = args
                .get("limit")
                .and_then(|l| l.as_str().and_then(|l| l.parse().ok()).or(l.as_u64()))
                .unwrap_or(100) as usize;
            let in_channel: Vec<Value> = shared
                .lock()
                .posted
                .iter()
                .filter(|m| m["channel"] == channel)
                .cloned()
                .collect();
            let ts = |m: &Value| ts_order(m["ts"].as_str().unwrap_or_default());
            let mut messages: Vec<Value> = match thread {
                // The root first, then the replies after `oldest`, oldest first.
                Some(t) => {
                    let root = in_channel.iter().filter(|m| m["ts"] == t).cloned();
                    let mut replies: Vec<Value> = in_channel
                        .iter()
                        .filter(|m| m["thread_ts"] == t && m["ts"] != t && ts(m) > oldest)
                        .cloned()
                        .collect();
                    replies.sort_by_key(ts);
                    root.chain(replies).collect()
                }
                // Top-level messages (and replies also sent to the channel) after `oldest`,
                // newest first.
                None => {
                    let mut top: Vec<Value> = in_channel
                        .into_iter()
                        .filter(|m| {
                            m["thread_ts"].is_null()
                                || m["thread_ts"] == m["ts"]
                                || m["subtype"] == "thread_broadcast"
                        })
                        .filter(|m| ts(m) > oldest)
                        .collect();
                    top.sort_by_key(|m| std::cmp::Reverse(ts(m)));
                    top
                }
            };
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            ok(json!({ "messages": messages, "has_more": has_more }))
        }
        "files.getUploadURLExternal" => {
            let id = format!("F{:06}", shared.ids.fetch_add(1, Ordering::Relaxed));
            ok(json!({
                "upload_url": format!("{}/upload/{id}", shared.base),
                "file_id": id,
            }))
        }
        "files.completeUploadExternal" => {
            let files: Vec<Value> = args
                .get("files")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| json!({ "id": f["id"], "title": f["title"] }))
                .collect();
            ok(json!({ "files": files }))
        }
        "oauth.v2.access" => {
            let code = args.get("code").and_then(Value::as_str).unwrap_or("");
            let grant = shared.lock().grants.get(code).cloned();
            match grant {
                Some(g) => ok(json!({
                    "access_token": g.bot_token,
                    "token_type": "bot",
                    "scope": "chat:write,commands",
                    "bot_user_id": g.bot_user_id,
                    "app_id": "AFAKE",
                    "team": { "id": g.team_id, "name": g.team_name },
                    "authed_user": { "id": "UINSTALLER" },
                })),
                None => slack_error("invalid_code"),
            }
        }
        "apps.connections.open" => ok(json!({ "url": shared.socket_url })),
        _ => slack_error("unknown_method"),
    }
}

/// Add a streaming call's `markdown_text` and `chunks` (Markdown text, task updates) to a
/// streaming message.
fn stream_content(message: &mut Value, args: &Value) {
    let mut text = message["text"].as_str().unwrap_or_default().to_string();
    if let Some(more) = args.get("markdown_text").and_then(Value::as_str) {
        text.push_str(more);
    }
    for chunk in args
        .get("chunks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match chunk["type"].as_str() {
            Some("markdown_text") => text.push_str(chunk["text"].as_str().unwrap_or_default()),
            Some("task_update") => {
                let id = chunk["id"].as_str().unwrap_or_default().to_string();
                message["tasks"][id] =
                    json!({ "title": chunk["title"], "status": chunk["status"] });
            }
            _ => {}
        }
    }
    message["text"] = json!(text);
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    Path(file_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let len = body.len();
    shared.record(Call {
        method: "upload".into(),
        authorization: header(&headers, "authorization"),
        args: json!({ "file_id": file_id }),
        body,
        content_type: header(&headers, "content-type"),
        at: Instant::now(),
    });
    (StatusCode::OK, format!("OK - {len}")).into_response()
}

async fn response_url(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut args = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    if args.is_object() {
        args["response_id"] = json!(id);
    }
    shared.record(Call {
        method: "response_url".into(),
        authorization: header(&headers, "authorization"),
        args,
        body,
        content_type: header(&headers, "content-type"),
        at: Instant::now(),
    });
    axum::Json(json!({ "ok": true })).into_response()
}

async fn download(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorization = header(&headers, "authorization");
    shared.record(Call {
        method: "download".into(),
        authorization: authorization.clone(),
        args: json!({ "name": name }),
        body: Bytes::new(),
        content_type: None,
        at: Instant::now(),
    });
    let bearer = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    let (delay, file) = {
        let state = shared.lock();
        // Files need a bot token (one of the accepted ones, once a list is set).
        let allowed = bearer
            .as_ref()
            .is_some_and(|t| state.tokens.is_empty() || state.tokens.contains(t));
        if !allowed {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        (state.download_delay, state.files.get(&name).cloned())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match file {
        Some(bytes) => bytes.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn socket_connection(shared: Arc<Shared>, tcp: tokio::net::TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut state = shared.lock();
        state.socket.connections += 1;
        state.socket.current = Some(tx);
    }
    let hello = json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": { "host": "fake", "approximate_connection_time": 18060 },
        "connection_info": { "app_id": "AFAKE" },
    });
    if ws
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    shared.changed.notify_waiters();
    loop {
        tokio::select! {
            control = rx.recv() => match control {
                Some(Control::Send(text)) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Control::Drop) | None => return,
                Some(Control::Silence) => {
                    // Hold the socket open, answering nothing, until the client gives up.
                    let _held = ws;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ack) = serde_json::from_str::<Value>(text.as_str()) {
                        shared.lock().socket.acks.push(ack);
                        shared.changed.notify_waiters();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}
