//! The inbox: events by status, and queueing a failed event again.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::LIST_LIMIT;
use crate::server::admin::Admin;
use crate::server::admin::caller::{FormPost, Viewer};
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{HtmlPage, csrf_field, empty_row, page, see_other, time};
use crate::storage::store::{EventId, InboxStatus};

#[derive(Deserialize)]
pub struct StatusQuery {
    #[serde(default)]
    pub status: Option<String>,
}

pub async fn show(
    State(admin): State<Admin>,
    viewer: Viewer,
    Query(query): Query<StatusQuery>,
) -> Result<HtmlPage, AdminError> {
    let status = status_of(query.status.as_deref())?;
    let store = &admin.parts.store;
    let counts = store.inbox_counts().await.cannot("read the inbox")?;
    let events = store
        .inbox_events(status, LIST_LIMIT)
        .await
        .cannot("read the inbox")?;
    let csrf = &viewer.csrf;
    let body = html! {
        p {
            @for (name, n) in [
                ("pending", Some(counts.pending)),
                ("leased", Some(counts.leased)),
                ("failed", Some(counts.failed)),
                ("done", Some(counts.done)),
                ("retried", None),
            ] {
                @let label = match n {
                    Some(n) => format!("{name} ({n})"),
                    None => name.to_string(),
                };
                @if name == status.as_str() {
                    b { (label) }
                } @else {
                    a href={ "/admin/inbox?status=" (name) } { (label) }
                }
                " · "
            }
        }
        table {
            tr {
                th { "event" } th { "conversation" } th { "received" } th { "attempts" }
                th { "message" } th { "error / lease" } th {}
            }
            @for event in &events {
                @let text: String = event.text.as_deref().unwrap_or("").chars().take(200).collect();
                tr {
                    td { (event.id) " " span.muted { (event.platform_event_id) } }
                    td { (event.conversation.to_string()) }
                    td { (time(event.received_at)) }
                    td { (event.attempts) }
                    td { (text) }
                    td {
                        @if let Some(error) = &event.error {
                            span.bad { (error) }
                        } @else if let Some(owner) = &event.lease_owner {
                            code { (owner) }
                        }
                    }
                    td {
                        @if event.status == InboxStatus::Failed {
                            form method="post" action={ "/admin/inbox/" (event.id) "/retry" } {
                                (csrf_field(csrf))
                                button type="submit" { "Retry" }
                            }
                        }
                    }
                }
            }
            @if events.is_empty() { (empty_row(7, "none")) }
        }
    };
    Ok(page("Inbox", Some(csrf), body))
}

pub async fn retry(
    State(admin): State<Admin>,
    Path(id): Path<i64>,
    _: FormPost,
) -> Result<Response, AdminError> {
    let new_id = admin
        .parts
        .store
        .retry_event(EventId(id))
        .await
        .cannot("retry the event")?
        .ok_or(AdminError::Conflict("that event is not failed"))?;
    tracing::info!(event = id, retry = %new_id, "admin: failed event queued again");
    admin.parts.bus.wake();
    Ok(see_other("/admin/inbox?status=failed"))
}

/// The `?status=` of the inbox views (the page and `/api/admin/inbox`): `failed` when absent.
pub(in crate::server::admin) fn status_of(status: Option<&str>) -> Result<InboxStatus, AdminError> {
    match status {
        None => Ok(InboxStatus::Failed),
        Some(status) => status.parse::<InboxStatus>().map_err(|_| {
            AdminError::BadRequest("status is one of pending, leased, failed, done, retried".into())
        }),
    }
}
