//! The admin pages and form actions.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ecdysis_chat::ChannelRef;
use ecdysis_web::guard::ClientAddr;
use serde::Deserialize;

use super::auth::Caller;
use super::html::{bytes, csrf_field, esc, maybe_time, page, query_value, time};
use super::{Admin, html_page, internal, now_secs, security_headers, see_other, text};
use crate::sandbox::Snapshot;
use crate::storage::store::{
    ConversationId, EventId, InboxStatus, Message, MessageId, NoteId, Role, now_ms,
};

/// Messages shown per transcript page.
const TRANSCRIPT_PAGE: i64 = 500;
/// Rows shown in the longer lists.
const LIST_LIMIT: i64 = 300;

/// `platform:workspace:channel` (the channel part may itself hold `:`).
pub fn parse_channel(text: &str) -> Option<ChannelRef> {
    let mut parts = text.splitn(3, ':');
    let (platform, workspace, channel) = (parts.next()?, parts.next()?, parts.next()?);
    if platform.is_empty() || channel.is_empty() {
        return None;
    }
    Some(ChannelRef {
        platform: platform.into(),
        workspace: workspace.into(),
        channel: channel.into(),
    })
}

fn channel_text(c: &ChannelRef) -> String {
    format!("{}:{}:{}", c.platform, c.workspace, c.channel)
}

fn notes_link(c: &ChannelRef) -> String {
    let name = channel_text(c);
    format!(
        r#"<a href="/admin/memory/notes?channel={}">{}</a>"#,
        query_value(&name),
        esc(&name)
    )
}

// --- login -----------------------------------------------------------------------------------

pub async fn login_form(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !matches!(
        admin.sessions.caller(&headers, now_secs()),
        Caller::Anonymous
    ) {
        return see_other("/admin");
    }
    html_page(page("Log in", None, LOGIN_FORM))
}

const LOGIN_FORM: &str = r#"<form method="post" action="/admin/login">
<p><label>Admin token (<code>ECDYSIS_ADMIN_TOKEN</code>)<br>
<input type="password" name="token" autocomplete="current-password" autofocus required size="48"></label></p>
<p><button type="submit">Log in</button></p></form>"#;

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(
    State(admin): State<Admin>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // Per client: someone else's wrong guesses do not lock this client out.
    if let Err(wait) = admin.sessions.logins().check(client) {
        let mut response = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from your address; try again later",
        );
        if let Ok(seconds) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(RETRY_AFTER, seconds);
        }
        return response;
    }
    if !admin.sessions.token_matches(form.token.trim()) {
        tracing::warn!(%client, "admin: failed login");
        admin.sessions.logins().failed(client);
        let mut response = html_page(page(
            "Log in",
            None,
            &format!(r#"<p class="bad">Wrong token.</p>{LOGIN_FORM}"#),
        ));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    admin.sessions.logins().succeeded(client);
    let Some(session) = admin.sessions.new_session(now_secs()) else {
        return internal("start a session", "no randomness available");
    };
    let cookie = admin.sessions.set_cookie(Some(&session), &headers);
    let mut response = see_other("/admin");
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// A field of a urlencoded form body (absent, or no body at all, is an empty string): POST
/// actions read their forms this way so that a bearer client may send no body.
pub(super) fn field(body: &[u8], name: &str) -> String {
    url::form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

pub async fn logout(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match admin.require(&headers, false) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    if !admin.sessions.csrf_ok(&caller, &field(&body, "csrf")) {
        return csrf_refused();
    }
    let mut response = see_other("/admin/login");
    if let Ok(cookie) = HeaderValue::from_str(&admin.sessions.set_cookie(None, &headers)) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

fn csrf_refused() -> Response {
    text(
        StatusCode::FORBIDDEN,
        "the form is stale or came from another site (CSRF check failed); reload the page and try again",
    )
}

/// The caller of a page, or the redirect/401 to answer with.
macro_rules! page_caller {
    ($admin:expr, $headers:expr) => {
        match $admin.require(&$headers, true) {
            Ok(caller) => caller,
            Err(denied) => return denied.into_response(),
        }
    };
}

/// The caller of a form action whose CSRF token checks out.
macro_rules! form_caller {
    ($admin:expr, $headers:expr, $csrf:expr) => {{
        let caller = match $admin.require(&$headers, false) {
            Ok(caller) => caller,
            Err(denied) => return denied.into_response(),
        };
        if !$admin.sessions.csrf_ok(&caller, $csrf) {
            return csrf_refused();
        }
        caller
    }};
}

// --- overview --------------------------------------------------------------------------------

pub async fn overview(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let app = &admin.app;
    let store = &app.store;
    let (counts, last_events, leases) = match (
        store.inbox_counts().await,
        store.last_event_at().await,
        store.leases().await,
    ) {
        (Ok(c), Ok(l), Ok(s)) => (c, l, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return internal("read the overview", e);
        }
    };
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p>ecdysis {} · storage <b>{}</b> · blobs <b>{}</b></p>"#,
        env!("CARGO_PKG_VERSION"),
        esc(store.backend()),
        esc(&app.blobs.describe()),
    );
    body.push_str("<h2>Inbox</h2><div class=\"cards\">");
    for (name, n) in [
        ("pending", counts.pending),
        ("leased", counts.leased),
        ("failed", counts.failed),
        ("done", counts.done),
    ] {
        let _ = write!(
            body,
            r#"<a class="card" href="/admin/inbox?status={name}"><b>{n}</b>{name}</a>"#
        );
    }
    body.push_str("</div>");

    body.push_str(
        "<h2>Adapters</h2><table><tr><th>platform</th><th>status</th><th>last event</th></tr>",
    );
    let health = app.bus.adapter_health();
    let mut platforms: Vec<String> = health.keys().cloned().collect();
    for (platform, _) in &last_events {
        if !platforms.contains(platform) {
            platforms.push(platform.clone());
        }
    }
    platforms.sort();
    for platform in &platforms {
        let status = match health.get(platform) {
            Some(value) => format!("<code>{}</code>", esc(&value.to_string())),
            None if platform == "web" => "built in".to_string(),
            None => r#"<span class="muted">not running here</span>"#.to_string(),
        };
        let last = last_events
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, at)| time(*at))
            .unwrap_or_else(|| "—".into());
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{status}</td><td>{last}</td></tr>",
            esc(platform)
        );
    }
    body.push_str("</table>");

    body.push_str(
        "<h2>Leader leases</h2><p class=\"muted\">With several instances, one holds each gateway/socket connection.</p><table><tr><th>lease</th><th>owner</th><th>state</th><th>since</th></tr>",
    );
    let now = now_ms();
    for lease in &leases {
        let state = if lease.lease_until.0 > now {
            format!(
                r#"<span class="ok">held</span> until {}"#,
                time(lease.lease_until)
            )
        } else {
            format!(
                r#"<span class="bad">expired</span> {}"#,
                time(lease.lease_until)
            )
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td>{state}</td><td>{}</td></tr>",
            esc(&lease.name),
            esc(&lease.owner),
            time(lease.acquired_at)
        );
    }
    if leases.is_empty() {
        body.push_str("<tr><td colspan=4 class=\"muted\">none</td></tr>");
    }
    body.push_str("</table>");
    body.push_str(&profiles_section(app));
    html_page(page("Overview", Some(&admin.csrf(&caller)), &body))
}

/// The agent profiles with the channels they claim, and the MCP servers with their state.
fn profiles_section(app: &crate::server::app::App) -> String {
    let mut body = String::from(
        "<h2>Profiles</h2><table><tr><th>profile</th><th>channels</th><th>settings</th></tr>",
    );
    for profile in &app.config.profiles {
        let channels: Vec<String> = profile
            .channels
            .iter()
            .map(|c| format!("<code>{}</code>", esc(c.as_str())))
            .collect();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&profile.name),
            channels.join(" "),
            esc(&profile.describe())
        );
    }
    body.push_str(
        r#"<tr><td>default</td><td class="muted">every other channel</td><td>everything configured</td></tr></table>"#,
    );
    let servers = app.mcp.status();
    if !servers.is_empty() {
        body.push_str("<h2>MCP servers</h2><table><tr><th>server</th><th>state</th></tr>");
        for server in servers {
            let class = match server.health {
                crate::mcp::Health::Up { .. } => "ok",
                _ => "bad",
            };
            let _ = write!(
                body,
                r#"<tr><td>{}</td><td class="{class}">{}</td></tr>"#,
                esc(&server.name),
                esc(&server.line())
            );
        }
        body.push_str("</table>");
    }
    body
}

// --- conversations ---------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ChannelQuery {
    #[serde(default)]
    channel: Option<String>,
}

pub async fn conversations(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<ChannelQuery>,
) -> Response {
    let caller = page_caller!(admin, headers);
    let channel = query.channel.as_deref().and_then(parse_channel);
    let list = match admin
        .app
        .store
        .conversations(channel.as_ref(), LIST_LIMIT)
        .await
    {
        Ok(list) => list,
        Err(e) => return internal("list conversations", e),
    };
    let mut body = String::new();
    if let Some(channel) = &channel {
        let _ = write!(
            body,
            r#"<p>Channel {} · <a href="/admin/conversations">all conversations</a></p>"#,
            notes_link(channel)
        );
    }
    body.push_str("<table><tr><th>conversation</th><th>messages</th><th>last message</th><th>memory</th></tr>");
    for info in &list {
        let c = &info.conversation;
        let _ = write!(
            body,
            r#"<tr><td><a href="/admin/conversations/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            info.id,
            esc(&c.to_string()),
            info.messages,
            maybe_time(info.last_message_at),
            notes_link(&c.channel_ref())
        );
    }
    if list.is_empty() {
        body.push_str("<tr><td colspan=4 class=\"muted\">no conversations yet</td></tr>");
    }
    body.push_str("</table>");
    html_page(page("Conversations", Some(&admin.csrf(&caller)), &body))
}

#[derive(Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    after: i64,
}

pub async fn conversation(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<AfterQuery>,
) -> Response {
    let caller = page_caller!(admin, headers);
    let store = &admin.app.store;
    let conversation = match store.conversation_by_id(ConversationId(id)).await {
        Ok(Some(c)) => c,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no such conversation"),
        Err(e) => return internal("read the conversation", e),
    };
    let messages = match store
        .messages(&conversation, MessageId(query.after), TRANSCRIPT_PAGE)
        .await
    {
        Ok(messages) => messages,
        Err(e) => return internal("read the transcript", e),
    };
    let mut body = format!(
        "<p>Memory: {} · {} messages shown{}</p>",
        notes_link(&conversation.channel_ref()),
        messages.len(),
        if query.after > 0 {
            format!(r#" · <a href="/admin/conversations/{id}">from the start</a>"#)
        } else {
            String::new()
        }
    );
    for message in &messages {
        render_message(&mut body, message);
    }
    if messages.len() as i64 == TRANSCRIPT_PAGE
        && let Some(last) = messages.last()
    {
        let _ = write!(
            body,
            r#"<p><a href="/admin/conversations/{id}?after={}">next page</a></p>"#,
            last.id
        );
    }
    html_page(page(
        &conversation.to_string(),
        Some(&admin.csrf(&caller)),
        &body,
    ))
}

fn render_message(body: &mut String, message: &Message) {
    let role = message.role.as_str();
    let who = match message.role {
        Role::User => message
            .meta
            .as_deref()
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|m| m["user"].as_str().map(str::to_string))
            .map(|user| format!("user {user}"))
            .unwrap_or_else(|| "user".into()),
        _ => role.to_string(),
    };
    let _ = write!(
        body,
        r#"<div class="msg role-{role}" id="m{}"><div class="who">#{} · {} · {}</div><pre class="text">{}</pre>"#,
        message.id,
        message.id,
        esc(&who),
        time(message.created_at),
        esc(&message.text)
    );
    for artifact in &message.attachments {
        let url = format!("/admin/artifacts/{}", query_value(&artifact.id));
        let label = format!(
            "{} ({}, {})",
            artifact.name,
            artifact.mime,
            bytes(artifact.size.max(0) as u64)
        );
        if artifact.mime.starts_with("image/") {
            let _ = write!(
                body,
                r#"<a href="{url}"><img class="artifact" src="{url}" alt="{}"></a>"#,
                esc(&label)
            );
        } else if artifact.mime.starts_with("video/") {
            let _ = write!(
                body,
                r#"<video class="artifact" controls preload="metadata" src="{url}"></video>"#
            );
        }
        let _ = write!(body, r#"<div><a href="{url}">{}</a></div>"#, esc(&label));
    }
    if matches!(message.role, Role::Tool | Role::Summary)
        && let Some(meta) = &message.meta
    {
        let _ = write!(
            body,
            r#"<details><summary>details</summary><pre class="meta">{}</pre></details>"#,
            esc(meta)
        );
    }
    body.push_str("</div>");
}

pub async fn artifact(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = admin.require(&headers, false) {
        return denied.into_response();
    }
    let artifact = match admin.app.store.artifact(&id).await {
        Ok(Some(a)) => a,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no such artifact"),
        Err(e) => return internal("read the artifact", e),
    };
    let bytes = match admin.app.blobs.get(&artifact.blob_key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return text(StatusCode::NOT_FOUND, "the artifact's file is missing"),
        Err(e) => return internal("read the artifact's file", e),
    };
    // Images, videos and plain text show inline; anything else (HTML above all) downloads, and
    // even shown inline it runs no script in this origin (CSP sandbox).
    let inline = ["image/", "video/", "audio/", "text/plain"]
        .iter()
        .any(|p| artifact.mime.starts_with(p))
        && artifact.mime != "image/svg+xml";
    let disposition = format!(
        "{}; filename=\"{}\"",
        if inline { "inline" } else { "attachment" },
        artifact.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    let mime = if inline {
        HeaderValue::from_str(&artifact.mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static("application/octet-stream")
    };
    headers.insert(CONTENT_TYPE, mime);
    if let Ok(disposition) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, disposition);
    }
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    security_headers(headers);
    response
}

// --- memory ----------------------------------------------------------------------------------

pub async fn memory(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let channels = match admin.app.store.note_channels().await {
        Ok(channels) => channels,
        Err(e) => return internal("list memory", e),
    };
    let mut body =
        String::from("<table><tr><th>channel</th><th>notes</th><th>newest note</th></tr>");
    for c in &channels {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            notes_link(&c.channel),
            c.notes,
            time(c.last_at)
        );
    }
    if channels.is_empty() {
        body.push_str("<tr><td colspan=3 class=\"muted\">no notes yet</td></tr>");
    }
    body.push_str("</table>");
    html_page(page("Memory", Some(&admin.csrf(&caller)), &body))
}

pub async fn channel_notes(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<ChannelQuery>,
) -> Response {
    let caller = page_caller!(admin, headers);
    let Some(channel) = query.channel.as_deref().and_then(parse_channel) else {
        return text(
            StatusCode::BAD_REQUEST,
            "?channel=platform:workspace:channel is required",
        );
    };
    let mut notes = match admin.app.store.channel_notes(&channel).await {
        Ok(notes) => notes,
        Err(e) => return internal("read the notes", e),
    };
    notes.reverse();
    let csrf = admin.csrf(&caller);
    let name = channel_text(&channel);
    let mut body = format!(
        r#"<p>{} notes · <a href="/admin/conversations?channel={}">conversations of this channel</a></p>"#,
        notes.len(),
        query_value(&name)
    );
    for note in &notes {
        let _ = write!(
            body,
            r#"<div class="msg" id="n{id}"><div class="who">#{id} · by {} · {}{}</div>
<form method="post" action="/admin/notes/{id}">{csrf_field}<textarea name="text" maxlength="10000">{}</textarea><button type="submit">Save</button></form>
<form class="inline" method="post" action="/admin/notes/{id}/delete">{csrf_field}<button type="submit">Delete</button></form></div>"#,
            esc(&note.created_by),
            time(note.created_at),
            note.source
                .as_deref()
                .map(|s| format!(" · source <code>{}</code>", esc(s)))
                .unwrap_or_default(),
            esc(&note.text),
            id = note.id,
            csrf_field = csrf_field(&csrf),
        );
    }
    if notes.is_empty() {
        body.push_str("<p class=\"muted\">No notes.</p>");
    }
    html_page(page(&format!("Memory of {name}"), Some(&csrf), &body))
}

pub async fn edit_note(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    form_caller!(admin, headers, &field(&body, "csrf"));
    let new_text = field(&body, "text");
    let text_value = new_text.trim();
    if text_value.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "a note cannot be empty (delete it instead)",
        );
    }
    let store = &admin.app.store;
    let note = match store.note(NoteId(id)).await {
        Ok(Some(note)) => note,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no such note"),
        Err(e) => return internal("read the note", e),
    };
    match store.update_note(NoteId(id), text_value).await {
        Ok(true) => {
            tracing::info!(note = id, "admin: note edited");
            see_other(&format!(
                "/admin/memory/notes?channel={}#n{id}",
                query_value(&channel_text(&note.channel))
            ))
        }
        Ok(false) => text(StatusCode::NOT_FOUND, "no such note"),
        Err(e) => internal("save the note", e),
    }
}

pub async fn delete_note(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    form_caller!(admin, headers, &field(&body, "csrf"));
    let store = &admin.app.store;
    let note = match store.note(NoteId(id)).await {
        Ok(Some(note)) => note,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no such note"),
        Err(e) => return internal("read the note", e),
    };
    match store.delete_note(NoteId(id)).await {
        Ok(_) => {
            tracing::info!(note = id, "admin: note deleted");
            see_other(&format!(
                "/admin/memory/notes?channel={}",
                query_value(&channel_text(&note.channel))
            ))
        }
        Err(e) => internal("delete the note", e),
    }
}

// --- usage -----------------------------------------------------------------------------------

pub async fn usage(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let rows = match admin.app.store.usage_by_channel().await {
        Ok(rows) => rows,
        Err(e) => return internal("read usage", e),
    };
    let mut body = String::from(
        "<table><tr><th>channel</th><th>model</th><th>calls</th><th>input tokens</th><th>output tokens</th><th>cache read</th><th>cache write</th></tr>",
    );
    let (mut calls, mut input, mut output, mut read, mut written) = (0, 0, 0, 0, 0);
    for row in &rows {
        let u = &row.usage;
        calls += row.calls;
        input += u.input_tokens;
        output += u.output_tokens;
        read += u.cache_read_tokens;
        written += u.cache_write_tokens;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            notes_link(&row.channel),
            esc(&row.model),
            row.calls,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens
        );
    }
    let _ = write!(
        body,
        "<tr><th>total</th><th></th><th>{calls}</th><th>{input}</th><th>{output}</th><th>{read}</th><th>{written}</th></tr></table>"
    );
    html_page(page("Usage", Some(&admin.csrf(&caller)), &body))
}

// --- inbox -----------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct StatusQuery {
    #[serde(default)]
    status: Option<String>,
}

pub async fn inbox(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(query): Query<StatusQuery>,
) -> Response {
    let caller = page_caller!(admin, headers);
    let status = match query.status.as_deref().map(str::parse::<InboxStatus>) {
        None => InboxStatus::Failed,
        Some(Ok(status)) => status,
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "status is one of pending, leased, failed, done, retried",
            );
        }
    };
    let store = &admin.app.store;
    let (counts, events) = match (
        store.inbox_counts().await,
        store.inbox_events(status, LIST_LIMIT).await,
    ) {
        (Ok(c), Ok(e)) => (c, e),
        (Err(e), _) | (_, Err(e)) => return internal("read the inbox", e),
    };
    let csrf = admin.csrf(&caller);
    let mut body = String::from("<p>");
    for (name, n) in [
        ("pending", Some(counts.pending)),
        ("leased", Some(counts.leased)),
        ("failed", Some(counts.failed)),
        ("done", Some(counts.done)),
        ("retried", None),
    ] {
        let label = match n {
            Some(n) => format!("{name} ({n})"),
            None => name.to_string(),
        };
        if name == status.as_str() {
            let _ = write!(body, "<b>{label}</b> · ");
        } else {
            let _ = write!(
                body,
                r#"<a href="/admin/inbox?status={name}">{label}</a> · "#
            );
        }
    }
    body.push_str("</p><table><tr><th>event</th><th>conversation</th><th>received</th><th>attempts</th><th>message</th><th>error / lease</th><th></th></tr>");
    for event in &events {
        let detail = match (&event.error, &event.lease_owner) {
            (Some(error), _) => format!(r#"<span class="bad">{}</span>"#, esc(error)),
            (None, Some(owner)) => format!("<code>{}</code>", esc(owner)),
            (None, None) => String::new(),
        };
        let action = if event.status == InboxStatus::Failed {
            format!(
                r#"<form method="post" action="/admin/inbox/{}/retry">{}<button type="submit">Retry</button></form>"#,
                event.id,
                csrf_field(&csrf)
            )
        } else {
            String::new()
        };
        let text_value: String = event
            .text
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let _ = write!(
            body,
            "<tr><td>{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{detail}</td><td>{action}</td></tr>",
            event.id,
            esc(&event.platform_event_id),
            esc(&event.conversation.to_string()),
            time(event.received_at),
            event.attempts,
            esc(&text_value),
        );
    }
    if events.is_empty() {
        body.push_str("<tr><td colspan=7 class=\"muted\">none</td></tr>");
    }
    body.push_str("</table>");
    html_page(page("Inbox", Some(&csrf), &body))
}

pub async fn retry(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    form_caller!(admin, headers, &field(&body, "csrf"));
    match admin.app.store.retry_event(EventId(id)).await {
        Ok(Some(new_id)) => {
            tracing::info!(
                event = id,
                retry = %new_id,
                "admin: failed event queued again"
            );
            admin.app.bus.wake();
            see_other("/admin/inbox?status=failed")
        }
        Ok(None) => text(StatusCode::CONFLICT, "that event is not failed"),
        Err(e) => internal("retry the event", e),
    }
}

// --- workspaces and installations ------------------------------------------------------------

pub async fn workspaces(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let blobs = &admin.app.blobs;
    let keys = match blobs.list("workspaces/").await {
        Ok(keys) => keys,
        Err(e) => return internal("list workspaces", e),
    };
    let mut body = String::from(
        "<table><tr><th>workspace</th><th>size</th><th>compressed</th><th>entries</th><th>last snapshot</th></tr>",
    );
    let mut shown = 0;
    for key in keys
        .iter()
        .filter(|k| k.ends_with(".json"))
        .take(LIST_LIMIT as usize)
    {
        let name = key
            .trim_start_matches("workspaces/")
            .trim_end_matches(".json");
        let snapshot = match blobs.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Snapshot>(&bytes).ok(),
            _ => None,
        };
        shown += 1;
        match snapshot {
            Some(s) => {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    bytes(s.bytes),
                    bytes(s.compressed_bytes),
                    s.files,
                    time(s.saved_at_ms)
                );
            }
            None => {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td colspan=4 class=\"bad\">unreadable snapshot record</td></tr>",
                    esc(name)
                );
            }
        }
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=5 class=\"muted\">no workspace snapshots yet</td></tr>");
    }
    body.push_str("</table>");
    html_page(page(
        "Sandbox workspaces",
        Some(&admin.csrf(&caller)),
        &body,
    ))
}

pub async fn installations(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let rows = match admin.app.store.installations().await {
        Ok(rows) => rows,
        Err(e) => return internal("list installations", e),
    };
    let mut body = String::from(
        "<p class=\"muted\">Workspaces that installed the app through OAuth; their bot tokens are stored encrypted and never shown.</p><table><tr><th>platform</th><th>team</th><th>bot user</th><th>app</th><th>scopes</th><th>installed by</th><th>installed</th><th>updated</th></tr>",
    );
    for i in &rows {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.platform),
            esc(&i.team_name),
            esc(&i.team_id),
            esc(&i.bot_user_id),
            esc(&i.app_id),
            esc(&i.scopes),
            esc(&i.installed_by),
            time(i.installed_at),
            time(i.updated_at)
        );
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=8 class=\"muted\">none</td></tr>");
    }
    body.push_str("</table>");
    html_page(page("Installations", Some(&admin.csrf(&caller)), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse() {
        let c = parse_channel("web:local:team:a").unwrap();
        assert_eq!(
            (
                c.platform.as_str(),
                c.workspace.as_str(),
                c.channel.as_str()
            ),
            ("web", "local", "team:a")
        );
        assert!(parse_channel("web:local").is_none());
        assert!(parse_channel(":x:y").is_none());
        assert_eq!(channel_text(&c), "web:local:team:a");
    }
}
