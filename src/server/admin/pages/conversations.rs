//! Conversations: the list, a transcript with its artifacts, and the artifacts' files.

use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{LIST_LIMIT, notes_link, parse_channel};
use crate::server::admin::Admin;
use crate::server::admin::caller::{Authorized, Viewer};
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{
    HtmlPage, bytes, empty_row, maybe_time, page, query_value, security_headers, time,
};
use crate::storage::store::{ConversationId, Message, MessageId, Role};

/// Messages shown per transcript page.
const TRANSCRIPT_PAGE: i64 = 500;

#[derive(Deserialize)]
pub struct ChannelQuery {
    #[serde(default)]
    pub channel: Option<String>,
}

pub async fn list(
    State(admin): State<Admin>,
    viewer: Viewer,
    Query(query): Query<ChannelQuery>,
) -> Result<HtmlPage, AdminError> {
    let channel = query.channel.as_deref().and_then(parse_channel);
    let list = admin
        .parts
        .store
        .conversations(channel.as_ref(), LIST_LIMIT)
        .await
        .cannot("list conversations")?;
    let body = html! {
        @if let Some(channel) = &channel {
            p { "Channel " (notes_link(channel)) " · " a href="/admin/conversations" { "all conversations" } }
        }
        table {
            tr { th { "conversation" } th { "messages" } th { "last message" } th { "memory" } }
            @for info in &list {
                tr {
                    td { a href={ "/admin/conversations/" (info.id) } { (info.conversation.to_string()) } }
                    td { (info.messages) }
                    td { (maybe_time(info.last_message_at)) }
                    td { (notes_link(&info.conversation.channel_ref())) }
                }
            }
            @if list.is_empty() { (empty_row(4, "no conversations yet")) }
        }
    };
    Ok(page("Conversations", Some(&viewer.csrf), body))
}

#[derive(Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    pub after: i64,
}

pub async fn transcript(
    State(admin): State<Admin>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Query(query): Query<AfterQuery>,
) -> Result<HtmlPage, AdminError> {
    let store = &admin.parts.store;
    let conversation = store
        .conversation_by_id(ConversationId(id))
        .await
        .cannot("read the conversation")?
        .ok_or(AdminError::NotFound("no such conversation"))?;
    let messages = store
        .messages(&conversation, MessageId(query.after), TRANSCRIPT_PAGE)
        .await
        .cannot("read the transcript")?;
    let next = (messages.len() as i64 == TRANSCRIPT_PAGE)
        .then(|| messages.last())
        .flatten();
    let body = html! {
        p {
            "Memory: " (notes_link(&conversation.channel_ref()))
            " · " (messages.len()) " messages shown"
            @if query.after > 0 {
                " · " a href={ "/admin/conversations/" (id) } { "from the start" }
            }
        }
        @for message in &messages { (render_message(message)) }
        @if let Some(last) = next {
            p { a href={ "/admin/conversations/" (id) "?after=" (last.id) } { "next page" } }
        }
    };
    Ok(page(&conversation.to_string(), Some(&viewer.csrf), body))
}

/// Who wrote a message: the user's name where the platform gave one.
fn author(message: &Message) -> String {
    #[derive(Deserialize)]
    struct UserMeta {
        user: Option<String>,
    }
    match message.role {
        Role::User => message
            .meta
            .as_deref()
            .and_then(|m| serde_json::from_str::<UserMeta>(m).ok())
            .and_then(|m| m.user)
            .map(|user| format!("user {user}"))
            .unwrap_or_else(|| "user".into()),
        role => role.as_str().to_string(),
    }
}

fn render_message(message: &Message) -> Markup {
    let role = message.role.as_str();
    html! {
        div class={ "msg role-" (role) } id={ "m" (message.id) } {
            div.who { "#" (message.id) " · " (author(message)) " · " (time(message.created_at)) }
            pre.text { (message.text) }
            @for artifact in &message.attachments {
                @let url = format!("/admin/artifacts/{}", query_value(&artifact.id));
                @let label = format!(
                    "{} ({}, {})",
                    artifact.name,
                    artifact.mime,
                    bytes(artifact.size.max(0) as u64)
                );
                @if artifact.mime.starts_with("image/") {
                    a href=(url) { img.artifact src=(url) alt=(label); }
                } @else if artifact.mime.starts_with("video/") {
                    video.artifact controls preload="metadata" src=(url) {}
                }
                div { a href=(url) { (label) } }
            }
            @if matches!(message.role, Role::Tool | Role::Summary) {
                @if let Some(meta) = &message.meta {
                    details { summary { "details" } pre.meta { (meta) } }
                }
            }
        }
    }
}

pub async fn artifact(
    State(admin): State<Admin>,
    _: Authorized,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let artifact = admin
        .parts
        .store
        .artifact(&id)
        .await
        .cannot("read the artifact")?
        .ok_or(AdminError::NotFound("no such artifact"))?;
    let bytes = admin
        .parts
        .blobs
        .get(&artifact.blob_key)
        .await
        .cannot("read the artifact's file")?
        .ok_or(AdminError::NotFound("the artifact's file is missing"))?;
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
    Ok(response)
}
