//! The admin page of scheduled jobs: every job with its channel, schedule, next and last run
//! and status, and a button that cancels an active one.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::html::{csrf_field, esc, maybe_time, page};
use super::pages::field;
use super::{Admin, html_page, internal, see_other, text};
use crate::schedule::Scheduler;
use crate::storage::store::{JobStatus, ScheduleId};

/// Jobs shown.
const LIMIT: i64 = 500;

pub async fn list(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = match admin.require(&headers, true) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let jobs = match admin.app.store.all_schedules(LIMIT).await {
        Ok(jobs) => jobs,
        Err(e) => return internal("read the scheduled jobs", e),
    };
    let csrf = admin.csrf(&caller);
    let mut body = String::from(
        "<table><tr><th>job</th><th>conversation</th><th>what</th><th>when</th><th>next run</th><th>last run</th><th>runs</th><th>status</th><th></th></tr>",
    );
    for job in &jobs {
        let action = if job.status == JobStatus::Active {
            format!(
                r#"<form method="post" action="/admin/schedules/{}/cancel">{}<button type="submit">Cancel</button></form>"#,
                job.id,
                csrf_field(&csrf)
            )
        } else {
            String::new()
        };
        let status = match &job.note {
            Some(note) => format!(r#"{} <span class="muted">{}</span>"#, job.status, esc(note)),
            None => job.status.to_string(),
        };
        let what: String = job.text.chars().take(200).collect();
        let _ = write!(
            body,
            "<tr><td>#{} <span class=\"muted\">by {}</span></td><td>{}</td><td>{} {}</td><td>{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{} (+{} skipped)</td><td>{status}</td><td>{action}</td></tr>",
            job.id,
            esc(&job.created_by),
            esc(&job.conversation.to_string()),
            job.kind.as_str(),
            esc(&what),
            esc(&job.description),
            esc(&job.timezone),
            maybe_time(job.next_due_at),
            maybe_time(job.last_run_at),
            job.runs,
            job.skipped,
        );
    }
    if jobs.is_empty() {
        body.push_str("<tr><td colspan=9 class=\"muted\">none</td></tr>");
    }
    body.push_str("</table>");
    html_page(page("Scheduled jobs", Some(&csrf), &body))
}

pub async fn cancel(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let caller = match admin.require(&headers, false) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    if !admin.sessions.csrf_ok(&caller, &field(&body, "csrf")) {
        return text(
            StatusCode::FORBIDDEN,
            "the form is stale or came from another site (CSRF check failed); reload the page and try again",
        );
    }
    let scheduler: &Scheduler = &admin.app.scheduler;
    match scheduler.cancel(ScheduleId(id), None).await {
        Ok(true) => {
            tracing::info!(job = id, "admin: scheduled job cancelled");
            see_other("/admin/schedules")
        }
        Ok(false) => text(StatusCode::CONFLICT, "that job is not active"),
        Err(e) => internal("cancel the job", e),
    }
}
