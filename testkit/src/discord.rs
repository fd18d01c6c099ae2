//! A fake Discord on 127.0.0.1: the REST routes the adapter calls (`/api/v10/…`: users/@me,
//! gateway, channels and messages (JSON and multipart), threads, typing, interaction
//! callbacks, webhook edits and follow-ups, application commands) and the gateway websocket
//! (HELLO, IDENTIFY → READY, RESUME → replay + RESUMED, heartbeats, dispatches with sequence
//! numbers, forced disconnects). Every REST request is recorded for assertions, and what a
//! Discord user would see (posted messages) is kept apart from the raw requests.
//!
//! Point the adapter at it with `DISCORD_API_URL` (`fake.url()`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

pub const BOT_USER_ID: &str = "1100000000000000001";
pub const APPLICATION_ID: &str = "1100000000000000002";
pub const GUILD_ID: &str = "1100000000000000003";
/// A guild text channel.
pub const CHANNEL_ID: &str = "1100000000000000004";
pub const USER_ID: &str = "1100000000000000005";
/// The DM channel between [`USER_ID`] and the bot.
pub const DM_CHANNEL_ID: &str = "1100000000000000006";
/// Another bot in the guild.
pub const OTHER_BOT_ID: &str = "1100000000000000007";
pub const TOKEN: &str = "fake-bot-token";

/// One recorded REST request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Without the `/api/v10` prefix, e.g. `/channels/1/messages`.
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    /// The JSON body (for multipart: the `payload_json` part); `Null` when none.
    pub json: Value,
    pub files: Vec<File>,
    pub at: Instant,
}

/// A file of a multipart request.
#[derive(Clone, Debug)]
pub struct File {
    pub field: String,
    pub filename: String,
    pub content_type: String,
    pub bytes: Bytes,
}

/// A message as a Discord user would see it.
#[derive(Clone, Debug)]
pub struct Posted {
    pub id: String,
    /// The channel (thread, DM) it appeared in; for interaction responses, the interaction's
    /// channel.
    pub channel: String,
    pub content: String,
    pub files: Vec<File>,
    pub components: Value,
    /// `message`, `original` (edit of an interaction's response) or `followup`.
    pub via: String,
    /// The interaction token, for responses.
    pub token: Option<String>,
    pub at: Instant,
}

/// An edit of a posted message (`PATCH` of a channel message or a follow-up) or a deletion.
#[derive(Clone, Debug)]
pub struct Edit {
    pub message_id: String,
    /// The new content; `None` for a deletion.
    pub content: Option<String>,
    pub at: Instant,
}

/// An interaction's first response (`POST /interactions/{id}/{token}/callback`).
#[derive(Clone, Debug)]
pub struct Callback {
    pub interaction_id: String,
    pub token: String,
    pub kind: u64,
    pub data: Value,
    pub at: Instant,
}

enum Out {
    Text(String),
    /// Drop the connection without a close frame (a network failure).
    Drop,
    /// Close the connection with this code and reason.
    Close(u16, String),
}

#[derive(Default)]
struct Gateway {
    conn: Option<mpsc::UnboundedSender<Out>>,
    session: Option<String>,
    seq: u64,
    history: VecDeque<(u64, String)>,
    identifies: u32,
    /// The last IDENTIFY's `d` (token, intents, …).
    identify: Value,
    resumes: u32,
    heartbeats: u32,
    connections: u32,
    /// Connections the client ended (a close frame, or the socket dropped from its side).
    client_closes: u32,
    /// A zombie: the socket stays open, but heartbeats get no ACK.
    silent: bool,
}

#[derive(Default)]
struct Data {
    requests: Vec<Request>,
    posted: Vec<Posted>,
    edits: Vec<Edit>,
    callbacks: Vec<Callback>,
    /// thread id → parent channel id.
    threads: HashMap<String, String>,
    /// Tokens of interactions dispatched over the gateway → (interaction id, channel); their
    /// callback must come before any edit of the original response.
    dispatched_tokens: HashMap<String, (String, String)>,
    /// Interaction ids acknowledged.
    acked: HashSet<String>,
    /// (channel, nonce) → message id, for `enforce_nonce`.
    nonces: HashMap<(String, String), String>,
    attachments: HashMap<String, Bytes>,
    /// Status and Discord error code answered (once each) for requests whose path contains
    /// the needle.
    faults: Vec<(String, u16, u64)>,
    /// Status answered for every request whose path contains the needle, until cleared.
    outages: Vec<(String, u16)>,
    /// Users' messages, as `GET /channels/{id}/messages` returns them.
    user_messages: Vec<Value>,
    gateway: Gateway,
}

struct Inner {
    data: Mutex<Data>,
    changed: Notify,
    next_id: AtomicU64,
    base: String,
    heartbeat_ms: u64,
}

/// The running fake; stops when dropped.
pub struct FakeDiscord {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

impl FakeDiscord {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_heartbeat(Duration::from_secs(5)).await
    }

    /// A fake whose HELLO asks for heartbeats every `interval`.
    pub async fn start_with_heartbeat(interval: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address: SocketAddr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            data: Mutex::new(Data::default()),
            changed: Notify::new(),
            // Snowflakes of now, as Discord's are: catch-up reads them as times.
            next_id: AtomicU64::new(snowflake_now()),
            base: format!("http://{address}"),
            heartbeat_ms: interval.as_millis() as u64,
        });
        let router = Router::new()
            .route("/gateway", get(gateway))
            .route("/attachments/{name}", get(attachment))
            .route("/api/v10/{*path}", any(rest))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { inner, task })
    }

    /// The REST base to use instead of `https://discord.com` (`DISCORD_API_URL`).
    pub fn url(&self) -> String {
        self.inner.base.clone()
    }

    /// A new snowflake.
    pub fn next_id(&self) -> String {
        self.inner.id()
    }

    /// Serve `bytes` at a URL usable as an attachment's `url`.
    pub fn add_attachment(&self, name: &str, bytes: impl Into<Bytes>) -> String {
        self.inner
            .data()
            .attachments
            .insert(name.to_string(), bytes.into());
        format!("{}/attachments/{name}", self.inner.base)
    }

    /// Answer the next request whose path contains `needle` with `status` (once).
    pub fn fail_next(&self, needle: &str, status: u16) {
        self.fail_next_with(needle, status, 0);
    }

    /// Like [`FakeDiscord::fail_next`], with a Discord error `code` in the body.
    pub fn fail_next_with(&self, needle: &str, status: u16, code: u64) {
        self.inner
            .data()
            .faults
            .push((needle.to_string(), status, code));
    }

    /// Answer every request whose path contains `needle` with `status` until
    /// [`FakeDiscord::end_outage`] (e.g. `"gateway"`: `GET /gateway` and `/gateway/bot` fail).
    pub fn start_outage(&self, needle: &str, status: u16) {
        self.inner.data().outages.push((needle.to_string(), status));
    }

    /// Answer requests matching `needle` normally again.
    pub fn end_outage(&self, needle: &str) {
        self.inner.data().outages.retain(|(n, _)| n != needle);
    }

    /// Requests so far whose path contains `needle`.
    pub fn requests_to(&self, needle: &str) -> usize {
        self.inner
            .data()
            .requests
            .iter()
            .filter(|r| r.path.contains(needle))
            .count()
    }

    /// Send a gateway dispatch; kept for replay after a RESUME. Returns its sequence number.
    pub fn dispatch(&self, name: &str, data: Value) -> u64 {
        let mut d = self.inner.data();
        if name == "INTERACTION_CREATE"
            && let (Some(id), Some(token)) = (data["id"].as_str(), data["token"].as_str())
        {
            let channel = data["channel_id"].as_str().unwrap_or_default().to_string();
            d.dispatched_tokens
                .insert(token.to_string(), (id.to_string(), channel));
        }
        dispatch_locked(&mut d, name, data)
    }

    /// Drop the gateway connection without a close frame, as a network failure would.
    pub fn disconnect(&self) {
        let mut d = self.inner.data();
        if let Some(conn) = d.gateway.conn.take() {
            let _ = conn.send(Out::Drop);
        }
    }

    /// Send a frame of any opcode on the open connection (not kept for replay), e.g. op 7
    /// (reconnect) or op 9 (invalid session).
    pub fn send_op(&self, op: u64, data: Value) {
        if let Some(conn) = self.inner.data().gateway.conn.as_ref() {
            let _ = conn.send(Out::Text(json!({ "op": op, "d": data }).to_string()));
        }
    }

    /// Close the open connection with a close code, as Discord does (4004: authentication
    /// failed, 4014: disallowed intents, …).
    pub fn close_gateway(&self, code: u16, reason: &str) {
        let mut d = self.inner.data();
        if let Some(conn) = d.gateway.conn.take() {
            let _ = conn.send(Out::Close(code, reason.to_string()));
        }
    }

    /// Forget the session: the next RESUME is refused (op 9, not resumable), so the client
    /// must identify again.
    pub fn invalidate_session(&self) {
        self.inner.data().gateway.session = None;
    }

    pub fn identifies(&self) -> u32 {
        self.inner.data().gateway.identifies
    }

    /// The last IDENTIFY payload's `d`.
    pub fn identify(&self) -> Value {
        self.inner.data().gateway.identify.clone()
    }

    pub fn resumes(&self) -> u32 {
        self.inner.data().gateway.resumes
    }

    pub fn connections(&self) -> u32 {
        self.inner.data().gateway.connections
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.data().requests.clone()
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.inner.data().posted.clone()
    }

    /// Edits and deletions of posted messages, in order.
    pub fn edits(&self) -> Vec<Edit> {
        self.inner.data().edits.clone()
    }

    pub fn callbacks(&self) -> Vec<Callback> {
        self.inner.data().callbacks.clone()
    }

    /// Threads started on messages: (thread id, parent channel id).
    pub fn threads(&self) -> Vec<(String, String)> {
        self.inner
            .data()
            .threads
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect()
    }

    /// Wait until `check` returns `Some`, up to `limit`.
    pub async fn wait_until<T>(
        &self,
        limit: Duration,
        mut check: impl FnMut(&FakeDiscord) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.changed.notified();
            if let Some(found) = check(self) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(self);
            }
        }
    }

    /// A thread with id `thread` in `parent`, as if the bot had started it on that message.
    pub fn add_thread(&self, thread: &str, parent: &str) {
        self.inner
            .data()
            .threads
            .insert(thread.to_string(), parent.to_string());
    }

    /// Turn the open gateway connection into a zombie: it stays open, but its heartbeats are
    /// no longer acknowledged, until the client connects again.
    pub fn silence_gateway(&self) {
        self.inner.data().gateway.silent = true;
    }

    /// Gateway connections the client ended (closed or dropped from its side).
    pub fn client_closes(&self) -> u32 {
        self.inner.data().gateway.client_closes
    }

    /// Heartbeats received (acknowledged or not).
    pub fn heartbeats(&self) -> u32 {
        self.inner.data().gateway.heartbeats
    }

    /// Wait for the `n`th IDENTIFY (n from 1).
    pub async fn wait_identified(&self, n: u32) -> bool {
        self.wait_until(Duration::from_secs(15), |f| {
            (f.identifies() >= n).then_some(())
        })
        .await
        .is_some()
    }

    /// Wait until at least `n` messages are posted; returns them all.
    pub async fn wait_posted(&self, n: usize) -> Vec<Posted> {
        self.wait_until(Duration::from_secs(15), |f| {
            let posted = f.posted();
            (posted.len() >= n).then_some(posted)
        })
        .await
        .unwrap_or_else(|| self.posted())
    }

    /// A user message in a guild channel (or thread), from [`USER_ID`]. Returns its id.
    pub fn say_in_guild(&self, channel: &str, content: &str, mention: bool) -> String {
        let (id, m) = self.guild_message(channel, content, mention);
        self.dispatch("MESSAGE_CREATE", m);
        id
    }

    /// A DM from [`USER_ID`]. Returns its id.
    pub fn say_in_dm(&self, content: &str) -> String {
        let (id, m) = self.dm_message(content);
        self.dispatch("MESSAGE_CREATE", m);
        id
    }

    /// A user message in a guild channel (or thread) that reaches the channel's history but
    /// no gateway (said while the bot was away). Returns its id.
    pub fn say_in_guild_while_away(&self, channel: &str, content: &str, mention: bool) -> String {
        self.guild_message(channel, content, mention).0
    }

    /// A DM that reaches the channel's history but no gateway. Returns its id.
    pub fn say_in_dm_while_away(&self, content: &str) -> String {
        self.dm_message(content).0
    }

    fn guild_message(&self, channel: &str, content: &str, mention: bool) -> (String, Value) {
        let id = self.next_id();
        let mut m = message(
            &id,
            channel,
            Some(GUILD_ID),
            user(USER_ID, "ann", false),
            content,
        );
        if mention {
            m = mentioning_bot(m);
        }
        self.inner.data().user_messages.push(m.clone());
        (id, m)
    }

    fn dm_message(&self, content: &str) -> (String, Value) {
        let id = self.next_id();
        let m = message(
            &id,
            DM_CHANNEL_ID,
            None,
            user(USER_ID, "ann", false),
            content,
        );
        self.inner.data().user_messages.push(m.clone());
        (id, m)
    }

    /// A slash command in `channel` of the guild. Returns (interaction id, token).
    pub fn slash(&self, channel: &str, name: &str, options: Value) -> (String, String) {
        let id = self.next_id();
        let token = format!("token-{id}");
        self.dispatch(
            "INTERACTION_CREATE",
            command_interaction(&id, &token, channel, Some(GUILD_ID), name, options),
        );
        (id, token)
    }
}

fn dispatch_locked(d: &mut Data, name: &str, data: Value) -> u64 {
    d.gateway.seq += 1;
    let seq = d.gateway.seq;
    let frame = json!({ "op": 0, "t": name, "s": seq, "d": data }).to_string();
    d.gateway.history.push_back((seq, frame.clone()));
    if d.gateway.history.len() > 10_000 {
        d.gateway.history.pop_front();
    }
    if let Some(conn) = &d.gateway.conn {
        let _ = conn.send(Out::Text(frame));
    }
    seq
}

// ---------------------------------------------------------------- payloads

/// A snowflake for this moment (Discord's epoch is 2015-01-01).
fn snowflake_now() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms.saturating_sub(1_420_070_400_000) << 22
}

/// A user object.
pub fn user(id: &str, name: &str, bot: bool) -> Value {
    json!({ "id": id, "username": name, "discriminator": "0", "global_name": null, "avatar": null, "bot": bot })
}

/// A MESSAGE_CREATE payload.
pub fn message(
    id: &str,
    channel: &str,
    guild: Option<&str>,
    author: Value,
    content: &str,
) -> Value {
    let mut m = json!({
        "id": id, "channel_id": channel, "author": author, "content": content,
        "timestamp": "2026-11-26T12:00:00.000000+00:00", "edited_timestamp": null, "tts": false,
        "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": false, "type": 0, "flags": 0, "components": []
    });
    if let Some(guild) = guild {
        m["guild_id"] = json!(guild);
        m["member"] = json!({ "roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0 });
    }
    m
}

/// The message with `<@bot>` in front and the bot in `mentions`.
pub fn mentioning_bot(mut m: Value) -> Value {
    let content = m["content"].as_str().unwrap_or_default().to_string();
    m["content"] = json!(format!("<@{BOT_USER_ID}> {content}"));
    m["mentions"] = json!([user(BOT_USER_ID, "ecdysis", true)]);
    m
}

/// Add an attachment to a message payload.
pub fn with_attachment(
    mut m: Value,
    id: &str,
    filename: &str,
    url: &str,
    size: u64,
    content_type: &str,
) -> Value {
    let attachment = json!({
        "id": id, "filename": filename, "size": size, "url": url, "proxy_url": url,
        "content_type": content_type
    });
    if let Some(list) = m["attachments"].as_array_mut() {
        list.push(attachment);
    }
    m
}

fn member(user_id: &str) -> Value {
    json!({
        "user": user(user_id, "ann", false), "roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00",
        "deaf": false, "mute": false, "flags": 0, "permissions": "2147483647"
    })
}

fn interaction_base(id: &str, token: &str, kind: u64, channel: &str, guild: Option<&str>) -> Value {
    let mut i = json!({
        "id": id, "application_id": APPLICATION_ID, "type": kind, "token": token, "version": 1,
        "channel_id": channel, "locale": "en-US", "entitlements": [], "attachment_size_limit": 10_485_760,
        "app_permissions": "2147483647",
        "channel": { "id": channel, "type": if guild.is_some() { 0 } else { 1 } }
    });
    match guild {
        Some(guild) => {
            i["guild_id"] = json!(guild);
            i["guild_locale"] = json!("en-US");
            i["member"] = member(USER_ID);
        }
        None => i["user"] = user(USER_ID, "ann", false),
    }
    i
}

/// An INTERACTION_CREATE payload for a slash command (`options`: `[{"name","type","value"}]`).
pub fn command_interaction(
    id: &str,
    token: &str,
    channel: &str,
    guild: Option<&str>,
    name: &str,
    options: Value,
) -> Value {
    let mut i = interaction_base(id, token, 2, channel, guild);
    i["data"] = json!({ "id": "1100000000000000100", "name": name, "type": 1, "options": options });
    i
}

/// An INTERACTION_CREATE payload for a button press on message `message_id`.
pub fn component_interaction(
    id: &str,
    token: &str,
    channel: &str,
    guild: Option<&str>,
    custom_id: &str,
    message_id: &str,
) -> Value {
    let mut i = interaction_base(id, token, 3, channel, guild);
    i["data"] = json!({ "custom_id": custom_id, "component_type": 2 });
    i["message"] = message(
        message_id,
        channel,
        guild,
        user(BOT_USER_ID, "ecdysis", true),
        "Run it?",
    );
    i
}

/// A PING interaction body for the HTTP endpoint.
pub fn ping_interaction(id: &str) -> Value {
    json!({ "id": id, "application_id": APPLICATION_ID, "type": 1, "token": "ping", "version": 1 })
}

fn bot_user() -> Value {
    json!({ "id": BOT_USER_ID, "username": "ecdysis", "discriminator": "0", "global_name": null, "avatar": null, "bot": true, "verified": true, "mfa_enabled": false, "flags": 0 })
}

fn guild_channel(id: &str) -> Value {
    json!({ "id": id, "type": 0, "name": "general", "guild_id": GUILD_ID, "position": 0, "permission_overwrites": [], "nsfw": false, "parent_id": null })
}

fn thread_channel(id: &str, parent: &str, name: &str) -> Value {
    json!({
        "id": id, "type": 11, "name": name, "guild_id": GUILD_ID, "parent_id": parent, "owner_id": BOT_USER_ID,
        "message_count": 0, "member_count": 1, "rate_limit_per_user": 0,
        "thread_metadata": { "archived": false, "auto_archive_duration": 1440, "archive_timestamp": "2026-11-26T12:00:00.000000+00:00", "locked": false }
    })
}

// ---------------------------------------------------------------- REST

fn error(status: StatusCode, code: u64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// Split a multipart body into its JSON payload and files.
fn parse_multipart(content_type: &str, body: &[u8]) -> (Value, Vec<File>) {
    let Some(boundary) = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return (Value::Null, Vec::new());
    };
    let delimiter = format!("--{boundary}");
    let mut json = Value::Null;
    let mut files = Vec::new();
    for part in split_bytes(body, delimiter.as_bytes()).into_iter().skip(1) {
        if part.starts_with(b"--") {
            break;
        }
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]).to_string();
        let mut content = &part[split + 4..];
        content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or_default();
        let field = quoted_param(disposition, "name").unwrap_or_default();
        let filename = quoted_param(disposition, "filename");
        let part_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        match filename {
            Some(filename) => files.push(File {
                field,
                filename,
                content_type: part_type,
                bytes: Bytes::copy_from_slice(content),
            }),
            None if field == "payload_json" => {
                json = serde_json::from_slice(content).unwrap_or(Value::Null);
            }
            None => {}
        }
    }
    (json, files)
}

fn quoted_param(header: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let start = header
        .match_indices(&needle)
        .find(|(i, _)| *i == 0 || matches!(header.as_bytes()[i - 1], b' ' | b';'))?
        .0
        + needle.len();
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(i) = find(rest, delimiter) {
        parts.push(&rest[..i]);
        rest = &rest[i + delimiter.len()..];
    }
    parts.push(rest);
    parts
}

fn posted_message(id: &str, channel: &str, content: &str, files: &[File]) -> Value {
    let mut m = message(id, channel, None, bot_user(), content);
    m["attachments"] = Value::Array(
        files
            .iter()
            .enumerate()
            .map(|(n, f)| json!({ "id": format!("{id}{n}"), "filename": f.filename, "size": f.bytes.len(), "url": "http://127.0.0.1/x", "proxy_url": "http://127.0.0.1/x" }))
            .collect(),
    );
    m
}

async fn attachment(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    match inner.data().attachments.get(&name).cloned() {
        Some(bytes) => bytes.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn rest(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches("/api/v10").to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (json, files) = if content_type.starts_with("multipart/") {
        parse_multipart(&content_type, &body)
    } else {
        (
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            Vec::new(),
        )
    };
    let request = Request {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        json,
        files,
        at: Instant::now(),
    };
    let response = {
        let mut d = inner.data();
        d.requests.push(request.clone());
        let outage = d
            .outages
            .iter()
            .find(|(needle, _)| path.contains(needle.as_str()))
            .map(|(_, status)| *status);
        let fault = d
            .faults
            .iter()
            .position(|(needle, _, _)| path.contains(needle.as_str()));
        match fault {
            _ if outage.is_some() => {
                let status = outage
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error(status, 0, "injected outage")
            }
            Some(i) => {
                let (_, status, code) = d.faults.remove(i);
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error(status, code, "injected failure")
            }
            None => answer(&inner, &mut d, &request),
        }
    };
    inner.changed.notify_waiters();
    response
}

fn answer(inner: &Inner, d: &mut Data, r: &Request) -> Response {
    let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let ok = |v: Value| axum::Json(v).into_response();
    match (r.method.as_str(), segments.as_slice()) {
        ("GET", ["gateway"]) | ("GET", ["gateway", "bot"]) => ok(json!({
            "url": format!("ws://{}/gateway", inner.base.trim_start_matches("http://")),
            "shards": 1,
            "session_start_limit": { "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1 }
        })),
        ("GET", ["users", "@me"]) => ok(bot_user()),
        ("GET", ["oauth2", "applications", "@me"]) => ok(json!({
            "id": APPLICATION_ID, "name": "ecdysis", "icon": null, "description": "", "rpc_origins": [],
            "bot_public": true, "bot_require_code_grant": false, "verify_key": "00", "flags": 0,
            "owner": bot_user(), "team": null
        })),
        ("GET", ["channels", id]) => match d.threads.get(*id) {
            Some(parent) => ok(thread_channel(id, parent, "thread")),
            None if *id == DM_CHANNEL_ID => ok(
                json!({ "id": id, "type": 1, "recipients": [user(USER_ID, "ann", false)], "last_message_id": null }),
            ),
            None => ok(guild_channel(id)),
        },
        ("POST", ["channels", channel, "messages", message, "threads"]) => {
            if d.threads.contains_key(*message) {
                return error(
                    StatusCode::BAD_REQUEST,
                    160_004,
                    "A thread has already been created for this message",
                );
            }
            d.threads.insert(message.to_string(), channel.to_string());
            let name = r.json["name"].as_str().unwrap_or("thread").to_string();
            (
                StatusCode::CREATED,
                axum::Json(thread_channel(message, channel, &name)),
            )
                .into_response()
        }
        ("POST", ["channels", _, "typing"]) => StatusCode::NO_CONTENT.into_response(),
        ("GET", ["channels", channel, "messages"]) => {
            let query: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
            let after: u64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let limit: usize = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(50)
                .min(100);
            let id = |m: &Value| m["id"].as_str().and_then(|i| i.parse::<u64>().ok());
            let mut found: Vec<Value> = d
                .user_messages
                .iter()
                .filter(|m| m["channel_id"] == *channel && id(m).is_some_and(|i| i > after))
                .map(|m| {
                    // REST messages carry no guild id or member.
                    let mut m = m.clone();
                    if let Some(o) = m.as_object_mut() {
                        o.remove("guild_id");
                        o.remove("member");
                    }
                    m
                })
                .collect();
            // The `limit` messages right after `after`, newest first (as Discord answers).
            found.sort_by_key(id);
            found.truncate(limit);
            found.reverse();
            ok(json!(found))
        }
        ("POST", ["channels", channel, "messages"]) => {
            let nonce = r.json["nonce"].as_str().map(str::to_string);
            if r.json["enforce_nonce"] == true
                && let Some(nonce) = &nonce
                && let Some(existing) = d.nonces.get(&(channel.to_string(), nonce.clone()))
            {
                let existing = existing.clone();
                return ok(posted_message(&existing, channel, "", &[]));
            }
            let id = inner.id();
            if let Some(nonce) = nonce {
                d.nonces.insert((channel.to_string(), nonce), id.clone());
            }
            post(d, &id, channel, r, "message", None);
            ok(posted_message(
                &id,
                channel,
                r.json["content"].as_str().unwrap_or_default(),
                &r.files,
            ))
        }
        ("PATCH", ["channels", _, "messages", message])
        | ("PATCH", ["webhooks", _, _, "messages", message])
            if *message != "@original" =>
        {
            let Some(at) = d.posted.iter().position(|p| p.id == *message) else {
                return error(StatusCode::NOT_FOUND, 10_008, "Unknown Message");
            };
            let content = r.json["content"].as_str().unwrap_or_default().to_string();
            let posted = &mut d.posted[at];
            posted.content = content.clone();
            let channel = posted.channel.clone();
            if !r.files.is_empty() {
                posted.files = r.files.clone();
            }
            if !r.json["components"].is_null() {
                posted.components = r.json["components"].clone();
            }
            let reply = posted_message(message, &channel, &content, &r.files);
            d.edits.push(Edit {
                message_id: message.to_string(),
                content: Some(content),
                at: r.at,
            });
            ok(reply)
        }
        ("DELETE", ["channels", _, "messages", message])
        | ("DELETE", ["webhooks", _, _, "messages", message])
            if *message != "@original" =>
        {
            let Some(at) = d.posted.iter().position(|p| p.id == *message) else {
                return error(StatusCode::NOT_FOUND, 10_008, "Unknown Message");
            };
            d.posted.remove(at);
            d.edits.push(Edit {
                message_id: message.to_string(),
                content: None,
                at: r.at,
            });
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["interactions", id, token, "callback"]) => {
            if !d.acked.insert(id.to_string()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    40_060,
                    "Interaction has already been acknowledged.",
                );
            }
            d.callbacks.push(Callback {
                interaction_id: id.to_string(),
                token: token.to_string(),
                kind: r.json["type"].as_u64().unwrap_or_default(),
                data: r.json["data"].clone(),
                at: r.at,
            });
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", ["webhooks", _, token, "messages", "@original"]) => {
            if let Some((id, _)) = d.dispatched_tokens.get(*token)
                && !d.acked.contains(id)
            {
                return error(StatusCode::NOT_FOUND, 10_062, "Unknown interaction");
            }
            // The original response keeps its id (and the time it first showed) when edited again.
            let earlier = d
                .posted
                .iter()
                .position(|p| p.via == "original" && p.token.as_deref() == Some(*token));
            let (id, at) = match earlier {
                Some(i) => {
                    let p = d.posted.remove(i);
                    (p.id, Some(p.at))
                }
                None => (inner.id(), None),
            };
            post(d, &id, "", r, "original", Some(token));
            if let (Some(at), Some(last)) = (at, d.posted.last_mut()) {
                last.at = at;
            }
            let channel = interaction_channel(d, token);
            ok(posted_message(
                &id,
                &channel,
                r.json["content"].as_str().unwrap_or_default(),
                &r.files,
            ))
        }
        ("POST", ["webhooks", _, token]) => {
            let id = inner.id();
            post(d, &id, "", r, "followup", Some(token));
            let channel = interaction_channel(d, token);
            ok(posted_message(
                &id,
                &channel,
                r.json["content"].as_str().unwrap_or_default(),
                &r.files,
            ))
        }
        ("PUT", ["applications", app, "commands"])
        | ("PUT", ["applications", app, "guilds", _, "commands"]) => {
            let commands: Vec<Value> = r
                .json
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c["id"] = json!(inner.id());
                    c["application_id"] = json!(app);
                    c["version"] = json!(inner.id());
                    c["type"] = json!(1);
                    c
                })
                .collect();
            ok(Value::Array(commands))
        }
        _ => error(StatusCode::NOT_FOUND, 0, "404: Not Found (fake Discord)"),
    }
}

/// The channel of an interaction by its token ([`CHANNEL_ID`] for interactions the fake did not
/// dispatch, such as those posted to the HTTP endpoint).
fn interaction_channel(d: &Data, token: &str) -> String {
    d.dispatched_tokens
        .get(token)
        .map(|(_, channel)| channel.clone())
        .unwrap_or_else(|| CHANNEL_ID.to_string())
}

fn post(d: &mut Data, id: &str, channel: &str, r: &Request, via: &str, token: Option<&str>) {
    let channel = match token.and_then(|t| d.dispatched_tokens.get(t)) {
        Some((_, interaction_channel)) => interaction_channel.clone(),
        None => channel.to_string(),
    };
    d.posted.push(Posted {
        id: id.to_string(),
        channel,
        content: r.json["content"].as_str().unwrap_or_default().to_string(),
        files: r.files.clone(),
        components: r.json["components"].clone(),
        via: via.to_string(),
        token: token.map(str::to_string),
        at: r.at,
    });
}

// ---------------------------------------------------------------- gateway

async fn gateway(State(inner): State<Arc<Inner>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| connection(inner, socket))
}

async fn connection(inner: Arc<Inner>, mut socket: WebSocket) {
    let (out, mut outgoing) = mpsc::unbounded_channel();
    {
        let mut d = inner.data();
        if let Some(old) = d.gateway.conn.replace(out.clone()) {
            let _ = old.send(Out::Drop);
        }
        d.gateway.connections += 1;
        // A new connection is a live one again.
        d.gateway.silent = false;
    }
    let hello = json!({ "op": 10, "d": { "heartbeat_interval": inner.heartbeat_ms } }).to_string();
    if socket.send(WsMessage::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            next = outgoing.recv() => match next {
                Some(Out::Text(text)) => {
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Drop) | None => return,
                Some(Out::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = socket.send(WsMessage::Close(Some(frame))).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    handle_op(&inner, &out, &frame);
                    inner.changed.notify_waiters();
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut d = inner.data();
    d.gateway.client_closes += 1;
    if d.gateway
        .conn
        .as_ref()
        .is_some_and(|c| c.same_channel(&out))
    {
        d.gateway.conn = None;
    }
    drop(d);
    inner.changed.notify_waiters();
}

fn handle_op(inner: &Inner, out: &mpsc::UnboundedSender<Out>, frame: &Value) {
    let mut d = inner.data();
    match frame["op"].as_u64() {
        Some(1) => {
            d.gateway.heartbeats += 1;
            if !d.gateway.silent {
                let _ = out.send(Out::Text(json!({ "op": 11 }).to_string()));
            }
        }
        Some(2) => {
            d.gateway.identifies += 1;
            d.gateway.identify = frame["d"].clone();
            let session = format!("session-{}", inner.id());
            d.gateway.session = Some(session.clone());
            d.gateway.seq = 0;
            d.gateway.history.clear();
            let ready = json!({
                "v": 10, "user": bot_user(), "guilds": [{ "id": GUILD_ID, "unavailable": true }],
                "session_id": session,
                "resume_gateway_url": format!("ws://{}/gateway", inner.base.trim_start_matches("http://")),
                "application": { "id": APPLICATION_ID, "flags": 0 }
            });
            dispatch_locked(&mut d, "READY", ready);
        }
        Some(6) => {
            let session = frame["d"]["session_id"].as_str().unwrap_or_default();
            let seq = frame["d"]["seq"].as_u64().unwrap_or_default();
            if d.gateway.session.as_deref() != Some(session) {
                let _ = out.send(Out::Text(json!({ "op": 9, "d": false }).to_string()));
                return;
            }
            d.gateway.resumes += 1;
            for (s, text) in &d.gateway.history {
                if *s > seq {
                    let _ = out.send(Out::Text(text.clone()));
                }
            }
            dispatch_locked(&mut d, "RESUMED", json!({}));
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- HTTP interactions signing

/// A test key pair for `DISCORD_PUBLIC_KEY`: the public key (hex) and a signer of
/// `timestamp + body` that returns the `X-Signature-Ed25519` header value.
pub struct InteractionKey {
    key: ed25519_dalek::SigningKey,
}

impl InteractionKey {
    pub fn from_seed(seed: u8) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        hex::encode(self.key.sign(&message).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_are_split() {
        let body = b"--XYZ\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XYZ\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{\"content\":\"hi\"}\r\n--XYZ--\r\n";
        let (json, files) = parse_multipart("multipart/form-data; boundary=XYZ", body);
        assert_eq!(json["content"], "hi");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename, "a.png");
        assert_eq!(&files[0].bytes[..], b"\x89PNG");
    }
}
