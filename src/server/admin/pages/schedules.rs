//! The admin page of scheduled jobs: every job with its channel, schedule, next and last run
//! and status, and a button that cancels an active one.

use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;

use crate::server::admin::Admin;
use crate::server::admin::caller::{FormPost, Viewer};
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{HtmlPage, csrf_field, empty_row, maybe_time, page, see_other};
use crate::storage::store::{JobStatus, ScheduleId};

/// Jobs shown.
const LIMIT: i64 = 500;

pub async fn list(State(admin): State<Admin>, viewer: Viewer) -> Result<HtmlPage, AdminError> {
    let jobs = admin
        .parts
        .store
        .all_schedules(LIMIT)
        .await
        .cannot("read the scheduled jobs")?;
    let csrf = &viewer.csrf;
    let body = html! {
        table {
            tr {
                th { "job" } th { "conversation" } th { "what" } th { "when" } th { "next run" }
                th { "last run" } th { "runs" } th { "status" } th {}
            }
            @for job in &jobs {
                @let what: String = job.text.chars().take(200).collect();
                tr {
                    td { "#" (job.id) " " span.muted { "by " (job.created_by) } }
                    td { (job.conversation.to_string()) }
                    td { (job.kind.as_str()) " " (what) }
                    td { (job.description) " " span.muted { (job.timezone) } }
                    td { (maybe_time(job.next_due_at)) }
                    td { (maybe_time(job.last_run_at)) }
                    td { (job.runs) " (+" (job.skipped) " skipped)" }
                    td {
                        (job.status.to_string())
                        @if let Some(note) = &job.note { " " span.muted { (note) } }
                    }
                    td {
                        @if job.status == JobStatus::Active {
                            form method="post" action={ "/admin/schedules/" (job.id) "/cancel" } {
                                (csrf_field(csrf))
                                button type="submit" { "Cancel" }
                            }
                        }
                    }
                }
            }
            @if jobs.is_empty() { (empty_row(9, "none")) }
        }
    };
    Ok(page("Scheduled jobs", Some(csrf), body))
}

pub async fn cancel(
    State(admin): State<Admin>,
    Path(id): Path<i64>,
    _: FormPost,
) -> Result<Response, AdminError> {
    if !admin
        .parts
        .scheduler
        .cancel(ScheduleId(id), None)
        .await
        .cannot("cancel the job")?
    {
        return Err(AdminError::Conflict("that job is not active"));
    }
    tracing::info!(job = id, "admin: scheduled job cancelled");
    Ok(see_other("/admin/schedules"))
}
