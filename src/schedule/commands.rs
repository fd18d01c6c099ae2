//! The `remind`, `schedules` and `unschedule` commands: every reply says what happened, and bad
//! input stores nothing.

use crate::bus::EventContext;
use crate::storage::store::{JobKind, ScheduleId};

use super::when::{self, PHRASES};
use super::{JobRequest, Scheduler};

/// The usage line of `remind`.
pub fn remind_usage() -> String {
    format!(
        "Usage: `/remind <when> <what>`, e.g. `/remind in 10 minutes stand-up` or `/remind every weekday at 9:00 ask: summarise yesterday's open PRs` (`ask:` makes it a prompt for me, and I post only when there is news). When: {PHRASES}."
    )
}

/// `/remind <when> <what>`.
pub async fn remind(scheduler: &Scheduler, event: &EventContext, args: &str) -> String {
    let args = args.trim();
    if args.is_empty() {
        return remind_usage();
    }
    let user = event.payload.user.id.as_str();
    let route = &event.payload.route;
    let (timezone, tz) = scheduler
        .timezone_for(&event.conversation, user, route)
        .await;
    let (when, rest) = match when::parse(args, scheduler.now(), &tz) {
        Ok(parsed) => parsed,
        Err(e) => return format!("I could not schedule that: {e}. Nothing was saved."),
    };
    let (kind, text) = job_text(&rest);
    let request = JobRequest {
        conversation: &event.conversation,
        user_id: user,
        route,
        kind,
        text,
        when,
        timezone,
    };
    match scheduler.create(request).await {
        Ok(job) => Scheduler::confirmation(&job),
        Err(e) => format!("I could not schedule that: {e}. Nothing was saved."),
    }
}

/// A job's text: `ask: <prompt>` (or `/ask <prompt>`) makes it a prompt for the agent.
fn job_text(rest: &str) -> (JobKind, String) {
    let rest = rest.trim();
    let lower = rest.to_lowercase();
    for prefix in ["ask:", "/ask "] {
        if lower.starts_with(prefix) {
            return (JobKind::Agent, rest[prefix.len()..].trim().to_string());
        }
    }
    (JobKind::Post, rest.to_string())
}

/// `/schedules`: the channel's active jobs.
pub async fn list(scheduler: &Scheduler, event: &EventContext) -> anyhow::Result<String> {
    let jobs = scheduler
        .channel_jobs(&event.conversation.channel_ref())
        .await?;
    if jobs.is_empty() {
        return Ok(
            "No scheduled jobs in this channel. Add one with `/remind in 10 minutes stand-up`."
                .into(),
        );
    }
    let mut out = format!(
        "{} scheduled job{} in this channel:",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" }
    );
    for job in &jobs {
        out.push('\n');
        out.push_str(&Scheduler::describe(job));
    }
    out.push_str("\nCancel one with `/unschedule <id>`.");
    Ok(out)
}

/// `/unschedule <id>`.
pub async fn unschedule(
    scheduler: &Scheduler,
    event: &EventContext,
    args: &str,
) -> anyhow::Result<String> {
    let Ok(id) = args.trim().trim_start_matches('#').parse::<i64>() else {
        return Ok(
            "Usage: `/unschedule <id>` with the number `/schedules` shows, e.g. `/unschedule 12`."
                .into(),
        );
    };
    let channel = event.conversation.channel_ref();
    if scheduler.cancel(ScheduleId(id), Some(&channel)).await? {
        Ok(format!("Cancelled job #{id}; it will not run again."))
    } else {
        Ok(format!(
            "This channel has no active job #{id}; nothing was changed. `/schedules` lists them."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_makes_a_prompt() {
        assert_eq!(
            job_text("ask: any new issues?"),
            (JobKind::Agent, "any new issues?".into())
        );
        assert_eq!(
            job_text("/ask any new issues?"),
            (JobKind::Agent, "any new issues?".into())
        );
        assert_eq!(
            job_text("ask Bob about lunch"),
            (JobKind::Post, "ask Bob about lunch".into())
        );
    }
}
