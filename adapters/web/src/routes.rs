//! The web chat's HTTP side: the page, the JSON API, live updates (server-sent events) and files.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Limits, LiveHandle,
    LiveMessage, LiveSettings, LiveView, Reply, SubmitError, UserRef,
};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::WebBackend;
use crate::auth::{COOKIE, ChatAuth};
use crate::guard::{ClientAddr, too_many};
use crate::limiter::LoginLimiter;
use crate::session::is_https;

const PAGE: &str = include_str!("page.html");
const LOGIN_PAGE: &str = include_str!("login.html");

/// How the web chat is exposed.
#[derive(Clone, Debug)]
pub struct WebSettings {
    /// When set, the chat and its API require this token (bearer header or the signed session
    /// cookie of a `/login`), on loopback too.
    pub token: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest `multipart/form-data` message (text and files) accepted; larger ones get 413.
    pub max_upload_bytes: usize,
    /// Failed logins per client, shared with the admin login and the bearer check.
    pub logins: Arc<LoginLimiter>,
    /// The server is reached over https (`ECDYSIS_PUBLIC_URL`): session cookies are `Secure`.
    pub https: bool,
}

/// The web chat: its routes, fed by an [`EventSink`] and a [`WebBackend`].
#[derive(Clone)]
pub struct WebChat {
    sink: Arc<dyn EventSink>,
    backend: Arc<dyn WebBackend>,
    settings: Arc<WebSettings>,
    auth: Option<Arc<ChatAuth>>,
    updates: broadcast::Sender<WebUpdate>,
}

/// What the open pages of a conversation hear about.
#[derive(Clone, Debug)]
enum WebUpdate {
    /// Messages were stored: the pages read what is new.
    Stored { conversation: String },
    /// An answer being written: its text so far.
    Delta {
        conversation: String,
        event_id: String,
        text: String,
    },
    /// A tool line of an answer being written.
    Progress {
        conversation: String,
        event_id: String,
        text: String,
    },
}

impl WebUpdate {
    fn conversation(&self) -> &str {
        match self {
            WebUpdate::Stored { conversation }
            | WebUpdate::Delta { conversation, .. }
            | WebUpdate::Progress { conversation, .. } => conversation,
        }
    }
}

/// How often a live answer is sent to the open pages.
const LIVE_INTERVAL: Duration = Duration::from_millis(50);

/// The web chat's [`ChatAdapter`]: the core stores replies in the transcript the page shows, so
/// delivering one means telling the open pages of that conversation to read it. Answers being
/// written reach the pages as `delta` and `progress` events.
pub struct WebAdapter {
    updates: broadcast::Sender<WebUpdate>,
}

impl WebAdapter {
    /// Send what changed from `shown` to `view` to the open pages (none is not an error).
    fn show(&self, message: &LiveMessage, shown: &LiveView, view: &LiveView) {
        let conversation = message.conversation.channel.clone();
        if view.text != shown.text {
            let _ = self.updates.send(WebUpdate::Delta {
                conversation: conversation.clone(),
                event_id: message.event_id.clone(),
                text: view.text.clone(),
            });
        }
        for line in view
            .progress
            .iter()
            .filter(|p| !shown.progress.iter().any(|s| s.id == p.id))
        {
            let _ = self.updates.send(WebUpdate::Progress {
                conversation: conversation.clone(),
                event_id: message.event_id.clone(),
                text: line.text.clone(),
            });
        }
    }
}

#[async_trait]
impl ChatAdapter for WebAdapter {
    fn platform(&self) -> &str {
        "web"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_text_chars: 100_000,
            max_file_bytes: 100 * 1024 * 1024,
        }
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        // No open page is not an error: the reply is in the transcript either way.
        let _ = self.updates.send(WebUpdate::Stored {
            conversation: reply.conversation.channel.clone(),
        });
        Ok(Delivered::default())
    }

    fn live(&self, _route: &serde_json::Value) -> Option<LiveSettings> {
        Some(LiveSettings {
            min_interval: LIVE_INTERVAL,
        })
    }

    async fn start_live(
        &self,
        message: &LiveMessage,
        view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        self.show(message, &LiveView::default(), view);
        Ok(serde_json::json!({ "event_id": message.event_id }))
    }

    async fn update_live(
        &self,
        message: &LiveMessage,
        _handle: &LiveHandle,
        shown: &LiveView,
        view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        self.show(message, shown, view);
        Ok(None)
    }
}

/// The conversation a web chat name stands for. Its platform is always `web`: a name such as
/// `slack:T012AB:C345CD` is a web conversation of that name, never a Slack channel (allow lists
/// see it as `web:slack:T012AB:C345CD`).
pub fn conversation_ref(name: &str) -> ConversationRef {
    ConversationRef::new("web", "local", name, None)
}

/// The sender of a web chat event. The name is the client's own claim, so the core only ever
/// sees it as a web identity (`web:<name>`, the conversation's platform), whatever it says.
fn web_user(name: Option<String>) -> UserRef {
    let name = name
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "web".into());
    UserRef {
        id: name.chars().take(100).collect(),
        name: None,
    }
}

fn valid_conversation(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl WebChat {
    pub fn new(
        sink: Arc<dyn EventSink>,
        backend: Arc<dyn WebBackend>,
        settings: WebSettings,
    ) -> (Self, WebAdapter) {
        let updates = broadcast::channel(256).0;
        let adapter = WebAdapter {
            updates: updates.clone(),
        };
        let chat = Self {
            sink,
            backend,
            auth: settings
                .token
                .as_deref()
                .map(|t| Arc::new(ChatAuth::new(t))),
            settings: Arc::new(settings),
            updates,
        };
        (chat, adapter)
    }

    /// The routes: `/`, `/login`, `/logout`, `/api/chat/{conversation}` (+ `/messages`,
    /// `/events`, `/actions`) and `/api/artifacts/{id}`. They belong behind
    /// [`crate::guard::guard`] (host and origin checks).
    pub fn router(self) -> Router {
        let limit = self.settings.max_body_bytes;
        // Uploads may be larger; a JSON body is held to `limit` in the handler.
        let upload_limit = self.settings.max_upload_bytes.max(limit);
        Router::new()
            .route("/", get(page))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route(
                "/api/chat/{conversation}",
                post(send_message).layer(DefaultBodyLimit::max(upload_limit)),
            )
            .route("/api/chat/{conversation}/messages", get(list_messages))
            .route("/api/chat/{conversation}/events", get(live_updates))
            .route("/api/chat/{conversation}/actions", post(press_button))
            .route("/api/artifacts/{id}", get(artifact))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    fn allowed(&self, headers: &HeaderMap) -> bool {
        match &self.auth {
            None => true,
            Some(auth) => auth.authorized(headers, now_secs()),
        }
    }
}

fn now_secs() -> i64 {
    ecdysis_chat::time::now_ms() / 1000
}

/// Whether a POST body is of a type a page on another site cannot send without the browser
/// asking first (CORS preflight) or naming itself (`Origin`): JSON, or a multipart form.
fn accepted_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("multipart/form-data")
}

fn unsupported_type() -> Response {
    error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "send `content-type: application/json` or `multipart/form-data`",
    )
}

fn is_multipart(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())?;
    let essence = value.split(';').next().unwrap_or("").trim();
    essence
        .eq_ignore_ascii_case("multipart/form-data")
        .then_some(value)
}

fn too_large(limit: usize, what: &str) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} is larger than {} KiB", limit / 1024),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "this server needs ECDYSIS_ADMIN_TOKEN: send `Authorization: Bearer <token>` or log in at /login",
    )
}

async fn page(State(chat): State<WebChat>, headers: HeaderMap) -> Response {
    if !chat.allowed(&headers) {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response();
    }
    Html(PAGE).into_response()
}

async fn login_page() -> Html<&'static str> {
    Html(LOGIN_PAGE)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(chat): State<WebChat>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Some(auth) = &chat.auth else {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    };
    if let Err(wait) = chat.settings.logins.check(client) {
        return too_many(wait);
    }
    if !auth.token_matches(form.token.trim()) {
        tracing::warn!(%client, "web chat: failed login");
        chat.settings.logins.failed(client);
        return error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    chat.settings.logins.succeeded(client);
    let Some(session) = auth.sessions().issue(now_secs()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot start a session: no randomness available",
        );
    };
    let secure = is_https(&headers, chat.settings.https);
    let cookie = COOKIE.set(&session, auth.sessions().lifetime_seconds(), secure);
    redirect_with_cookie("/", &cookie)
}

/// End this browser's session: the cookie is cleared. (Every session ends when the admin
/// token changes.)
async fn logout(State(chat): State<WebChat>, headers: HeaderMap) -> Response {
    let to = if chat.auth.is_some() { "/login" } else { "/" };
    redirect_with_cookie(to, &COOKIE.clear(is_https(&headers, chat.settings.https)))
}

fn redirect_with_cookie(to: &'static str, cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(cookie) => (
            StatusCode::SEE_OTHER,
            [
                (LOCATION, HeaderValue::from_static(to)),
                (SET_COOKIE, cookie),
            ],
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot set the cookie"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: String,
    #[serde(default)]
    user: Option<String>,
    /// The client's id for this message: sending the same id twice stores it once.
    #[serde(default)]
    id: Option<String>,
}

async fn send_message(
    State(chat): State<WebChat>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !chat.allowed(&headers) {
        return unauthorized();
    }
    if !accepted_content_type(&headers) {
        return unsupported_type();
    }
    if !valid_conversation(&conversation) {
        return error(
            StatusCode::BAD_REQUEST,
            "conversation names are 1-100 characters of A-Z a-z 0-9 - _ . :",
        );
    }
    let (body, files) = match is_multipart(&headers) {
        Some(content_type) => match crate::upload::parse(content_type, body).await {
            Ok(upload) => (
                SendBody {
                    text: upload.text,
                    user: upload.user,
                    id: upload.id,
                },
                upload.files,
            ),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => {
            if body.len() > chat.settings.max_body_bytes {
                return too_large(chat.settings.max_body_bytes, "a JSON message");
            }
            match serde_json::from_slice::<SendBody>(&body) {
                Ok(body) => (body, Vec::new()),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("expected JSON {{\"text\": \"...\", \"user\": \"...\"}}: {e}"),
                    );
                }
            }
        }
    };
    if body.text.trim().is_empty() && files.is_empty() {
        return error(StatusCode::BAD_REQUEST, "text is empty");
    }
    let id = match body.id {
        Some(id) if id.is_empty() || id.len() > 200 => {
            return error(StatusCode::BAD_REQUEST, "id must be 1-200 characters");
        }
        Some(id) => id,
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let mut event = Event::from_text(
        format!("{conversation}:{id}"),
        conversation_ref(&conversation),
        web_user(body.user),
        body.text,
    );
    event.attachments = files;
    match chat.sink.submit(event).await {
        Ok(accepted) => {
            if !accepted.duplicate && !accepted.ignored {
                // The user's message is stored: the open pages show it.
                let _ = chat.updates.send(WebUpdate::Stored {
                    conversation: conversation.clone(),
                });
            }
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "event_id": accepted.event_id,
                    "duplicate": accepted.duplicate,
                })),
            )
                .into_response()
        }
        Err(SubmitError::Invalid(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(SubmitError::Busy(why)) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, why);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Err(SubmitError::Internal(why)) => {
            tracing::error!(error = %why, "cannot accept a web chat message");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the message could not be stored; nothing was accepted",
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_id: String,
    value: String,
    #[serde(default)]
    user: Option<String>,
}

async fn press_button(
    State(chat): State<WebChat>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !chat.allowed(&headers) {
        return unauthorized();
    }
    if !accepted_content_type(&headers) {
        return unsupported_type();
    }
    if !valid_conversation(&conversation) {
        return error(StatusCode::BAD_REQUEST, "invalid conversation name");
    }
    let body: ActionBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"action_id\": \"...\", \"value\": \"...\"}}: {e}"),
            );
        }
    };
    let mut event = Event::from_text(
        format!("{conversation}:action:{}", uuid::Uuid::new_v4().simple()),
        conversation_ref(&conversation),
        web_user(body.user),
        String::new(),
    );
    event.kind = ecdysis_chat::EventKind::Action {
        action_id: body.action_id,
        value: body.value,
    };
    match chat.sink.submit(event).await {
        Ok(accepted) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "event_id": accepted.event_id })),
        )
            .into_response(),
        Err(SubmitError::Invalid(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(SubmitError::Busy(why)) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        Err(SubmitError::Internal(why)) => {
            tracing::error!(error = %why, "cannot accept a button press");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the button press could not be stored",
            )
        }
    }
}

#[derive(Deserialize)]
struct MessagesQuery {
    #[serde(default)]
    after: i64,
}

async fn list_messages(
    State(chat): State<WebChat>,
    Path(conversation): Path<String>,
    Query(query): Query<MessagesQuery>,
    headers: HeaderMap,
) -> Response {
    if !chat.allowed(&headers) {
        return unauthorized();
    }
    if !valid_conversation(&conversation) {
        return error(StatusCode::BAD_REQUEST, "invalid conversation name");
    }
    match chat
        .backend
        .messages(&conversation_ref(&conversation), query.after)
        .await
    {
        Ok(messages) => (
            [(CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({ "messages": messages })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read messages");
            error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read messages")
        }
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Send stored messages after this id; by default only those stored from now on.
    #[serde(default)]
    after: Option<i64>,
}

/// `GET /api/chat/{conversation}/events`: `message` for every stored user and assistant
/// message (the JSON of the messages API), `delta` (`{"event_id", "text"}`: the answer so far)
/// while an answer is written, and `progress` (`{"event_id", "text"}`) for each tool line.
async fn live_updates(
    State(chat): State<WebChat>,
    Path(conversation): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    if !chat.allowed(&headers) {
        return unauthorized();
    }
    if !valid_conversation(&conversation) {
        return error(StatusCode::BAD_REQUEST, "invalid conversation name");
    }
    // Subscribed before the newest message is looked up, so nothing stored in between is missed.
    let receiver = chat.updates.subscribe();
    let after = match query.after {
        Some(after) => after,
        None => match newest_message_id(chat.backend.as_ref(), &conversation).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot read messages");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read messages");
            }
        },
    };
    let state = Updates {
        backend: chat.backend.clone(),
        receiver,
        conversation,
        after,
        queue: std::collections::VecDeque::new(),
    };
    Sse::new(updates_for(state))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The id of the newest message of a conversation (0 when it has none).
async fn newest_message_id(
    backend: &dyn WebBackend,
    conversation: &str,
) -> Result<i64, ecdysis_chat::BackendError> {
    let conversation = conversation_ref(conversation);
    let mut after = 0;
    loop {
        let page = backend.messages(&conversation, after).await?;
        match page.iter().map(|m| m.id).max() {
            Some(newest) => after = newest,
            None => return Ok(after),
        }
    }
}

/// One open `events` stream.
struct Updates {
    backend: Arc<dyn WebBackend>,
    receiver: broadcast::Receiver<WebUpdate>,
    conversation: String,
    /// The newest message sent.
    after: i64,
    queue: std::collections::VecDeque<SseEvent>,
}

impl Updates {
    /// Queue the messages stored since the last one sent.
    async fn read_stored(&mut self) {
        let conversation = conversation_ref(&self.conversation);
        match self.backend.messages(&conversation, self.after).await {
            Ok(messages) => {
                for message in messages {
                    self.after = self.after.max(message.id);
                    if let Ok(event) = SseEvent::default().event("message").json_data(&message) {
                        self.queue.push_back(event);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "live updates: cannot read messages"),
        }
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            match self.receiver.recv().await {
                Ok(update) if update.conversation() != self.conversation => continue,
                Ok(WebUpdate::Stored { .. }) => self.read_stored().await,
                Ok(WebUpdate::Delta { event_id, text, .. }) => {
                    let data = serde_json::json!({ "event_id": event_id, "text": text });
                    return Some(SseEvent::default().event("delta").data(data.to_string()));
                }
                Ok(WebUpdate::Progress { event_id, text, .. }) => {
                    let data = serde_json::json!({ "event_id": event_id, "text": text });
                    return Some(SseEvent::default().event("progress").data(data.to_string()));
                }
                // Missed updates: a later delta or the stored message makes up for them.
                Err(broadcast::error::RecvError::Lagged(_)) => self.read_stored().await,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn updates_for(state: Updates) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok(event), state))
    })
}

async fn artifact(
    State(chat): State<WebChat>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !chat.allowed(&headers) {
        return unauthorized();
    }
    match chat.backend.file(&id).await {
        Ok(Some(file)) => {
            let disposition = format!(
                "inline; filename=\"{}\"",
                file.name.replace(['"', '\\', '\r', '\n'], "_")
            );
            let mut response = file.bytes.into_response();
            let headers = response.headers_mut();
            if let Ok(mime) = HeaderValue::from_str(&file.mime) {
                headers.insert(CONTENT_TYPE, mime);
            }
            if let Ok(disposition) = HeaderValue::from_str(&disposition) {
                headers.insert(CONTENT_DISPOSITION, disposition);
            }
            headers.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            // A stored file may be HTML or SVG from a chat user: opened directly it runs no
            // script in this origin (where the login cookies live).
            headers.insert(
                axum::http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            );
            response
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such artifact"),
        Err(e) => {
            tracing::error!(error = %e, "cannot read an artifact");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the artifact",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_names_are_checked() {
        assert!(valid_conversation("general"));
        assert!(valid_conversation("team-a:b_c.d"));
        assert!(!valid_conversation(""));
        assert!(!valid_conversation("a/b"));
        assert!(!valid_conversation(&"x".repeat(101)));
    }
}
