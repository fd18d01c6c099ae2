//! `/api/admin/*`: what the admin pages show, as JSON, for scripts and dashboards. Same access
//! as the pages (the admin token as a bearer header, or a logged-in session); a stranger gets
//! 401. Read-only: the pages' forms (retry, cancel, approve, edit) accept the bearer token too.
//! Bot tokens are never part of an answer, not even encrypted.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use serde_json::{Value, json};

use super::Admin;
use super::caller::Authorized;
use super::error::{AdminError, Cannot};
use super::pages::conversations::{AfterQuery, ChannelQuery};
use super::pages::inbox::{StatusQuery, status_of};
use super::pages::{LIST_LIMIT, parse_channel};
use crate::storage::store::{ConversationId, MessageId, UnixMs};

/// Transcript messages per answer (`?after=` pages on).
const TRANSCRIPT_PAGE: i64 = 500;

type ApiResult = Result<Json<Value>, AdminError>;

/// Storage, inbox counts, adapters and their last events, leader leases, profiles and MCP
/// servers.
pub async fn overview(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let parts = &admin.parts;
    let store = &parts.store;
    let inbox = store.inbox_counts().await.cannot("read the overview")?;
    let last_events: Vec<Value> = store
        .last_event_at()
        .await
        .cannot("read the overview")?
        .into_iter()
        .map(|(platform, at)| json!({ "platform": platform, "at": at }))
        .collect();
    let leases = store.leases().await.cannot("read the overview")?;
    let profiles: Vec<Value> = parts
        .profiles
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "channels": p.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "settings": p.describe(),
            })
        })
        .collect();
    let mcp: Vec<Value> = parts
        .mcp
        .status()
        .iter()
        .map(|s| json!({ "name": s.name, "state": s.line() }))
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "storage": store.backend(),
        "blobs": parts.blobs.describe(),
        "inbox": inbox,
        "adapters": parts.bus.adapter_health(),
        "last_events": last_events,
        "leases": leases,
        "profiles": profiles,
        "mcp_servers": mcp,
    })))
}

/// Conversations, most recently active first (`?channel=` for one channel's).
pub async fn conversations(
    State(admin): State<Admin>,
    _: Authorized,
    Query(query): Query<ChannelQuery>,
) -> ApiResult {
    let channel = match query.channel.as_deref() {
        Some(text) => Some(parse_channel(text).ok_or_else(bad_channel)?),
        None => None,
    };
    let list = admin
        .parts
        .store
        .conversations(channel.as_ref(), LIST_LIMIT)
        .await
        .cannot("list conversations")?;
    Ok(Json(json!({ "conversations": list })))
}

/// One conversation's transcript, 500 messages at a time (`?after=<message id>`).
pub async fn transcript(
    State(admin): State<Admin>,
    _: Authorized,
    Path(id): Path<i64>,
    Query(query): Query<AfterQuery>,
) -> ApiResult {
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
    let next_after = (messages.len() as i64 == TRANSCRIPT_PAGE)
        .then(|| messages.last().map(|m| m.id))
        .flatten();
    Ok(Json(json!({
        "conversation": conversation,
        "messages": messages,
        "next_after": next_after,
    })))
}

/// The channels with memory notes.
pub async fn memory(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let channels = admin
        .parts
        .store
        .note_channels()
        .await
        .cannot("list memory")?;
    Ok(Json(json!({ "channels": channels })))
}

/// One channel's notes (`?channel=platform:workspace:channel`, required), newest first.
pub async fn notes(
    State(admin): State<Admin>,
    _: Authorized,
    Query(query): Query<ChannelQuery>,
) -> ApiResult {
    let channel = query
        .channel
        .as_deref()
        .and_then(parse_channel)
        .ok_or_else(bad_channel)?;
    let mut notes = admin
        .parts
        .store
        .channel_notes(&channel)
        .await
        .cannot("read the notes")?;
    notes.reverse();
    Ok(Json(json!({ "channel": channel, "notes": notes })))
}

/// Model calls and tokens by channel and model.
pub async fn usage(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let rows = admin
        .parts
        .store
        .usage_by_channel()
        .await
        .cannot("read usage")?;
    Ok(Json(json!({ "usage": rows })))
}

/// Pairing codes waiting for approval and the users paired so far.
pub async fn access(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let store = &admin.parts.store;
    let pending = store.pending_pairings().await.cannot("read the pairings")?;
    let paired = store.paired_users().await.cannot("read the pairings")?;
    Ok(Json(json!({ "pending": pending, "paired": paired })))
}

/// Inbox counts and the events in one state (`?status=`, default `failed`).
pub async fn inbox(
    State(admin): State<Admin>,
    _: Authorized,
    Query(query): Query<StatusQuery>,
) -> ApiResult {
    let status = status_of(query.status.as_deref())?;
    let store = &admin.parts.store;
    let counts = store.inbox_counts().await.cannot("read the inbox")?;
    let events = store
        .inbox_events(status, LIST_LIMIT)
        .await
        .cannot("read the inbox")?;
    Ok(Json(
        json!({ "counts": counts, "status": status, "events": events }),
    ))
}

/// Scheduled jobs.
pub async fn schedules(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let jobs = admin
        .parts
        .store
        .all_schedules(LIST_LIMIT)
        .await
        .cannot("read the scheduled jobs")?;
    Ok(Json(json!({ "schedules": jobs })))
}

/// An OAuth installation without its (encrypted) token.
#[derive(Serialize)]
struct Installation {
    platform: String,
    team_id: String,
    team_name: String,
    bot_user_id: String,
    app_id: String,
    scopes: String,
    installed_by: String,
    installed_at: UnixMs,
    updated_at: UnixMs,
}

/// Workspaces that installed the app through OAuth.
pub async fn installations(State(admin): State<Admin>, _: Authorized) -> ApiResult {
    let rows: Vec<Installation> = admin
        .parts
        .store
        .installations()
        .await
        .cannot("list installations")?
        .into_iter()
        .map(|i| Installation {
            platform: i.platform,
            team_id: i.team_id,
            team_name: i.team_name,
            bot_user_id: i.bot_user_id,
            app_id: i.app_id,
            scopes: i.scopes,
            installed_by: i.installed_by,
            installed_at: i.installed_at,
            updated_at: i.updated_at,
        })
        .collect();
    Ok(Json(json!({ "installations": rows })))
}

fn bad_channel() -> AdminError {
    AdminError::BadRequest("?channel=platform:workspace:channel is required".into())
}
