//! Scheduled work: reminders, recurring jobs and heartbeats.
//!
//! Jobs live in the database ([`crate::storage::store::Schedules`]). One instance scans them (directly on
//! SQLite, under the `scheduler` leader lease on Postgres, see [`scanner`]) with one timer for
//! the next due time. A due job becomes an inbox event whose platform event id is
//! `schedule:<job id>:<due time>`, so each due time is processed exactly once across restarts,
//! retries and instances, in order with the conversation's other events. The bus hands it back
//! to the command handler, which posts the text or runs the agent ([`fired`]).
//!
//! Users create jobs with `remind`, list them with `schedules` and cancel them with
//! `unschedule` ([`commands`]); the model does the same with the `schedule_*` tools
//! ([`tools`]). Clock times are read in the user's time zone (Slack's `users.info`), else
//! `ECDYSIS_TIMEZONE`.

pub mod commands;
pub mod fired;
pub mod scanner;
pub mod spec;
pub mod tools;
pub mod when;

use std::sync::Arc;

use ecdysis_chat::{ChannelRef, ConversationRef};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::debug;

use crate::bus::Adapters;
use crate::config::ScheduleSettings;
use crate::storage::store::{
    Clock, Created, JobKind, NewSchedule, Schedule, ScheduleId, Store, StoreError, UnixMs,
};
use spec::{Spec, show_instant};
use when::When;

/// What a heartbeat's prompt may answer when there is nothing worth posting; then nothing is
/// posted.
pub const NOTHING_TO_REPORT: &str = "NOTHING_TO_REPORT";
/// The longest text or prompt a job keeps.
pub const MAX_JOB_TEXT_CHARS: usize = 4_000;
/// Due times of a cron expression checked against the minimum interval.
const GAP_RUNS: usize = 24;

/// What a fired event is for (kept in the event's payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FiredAction {
    /// Post the job's text.
    Post,
    /// Run the job's prompt through the agent.
    Agent,
    /// Tell the conversation that a run was skipped (the event's text says why).
    Skipped,
}

/// The mark on an inbox event a job fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    pub job: ScheduleId,
    /// The due time this event is for.
    pub due: UnixMs,
    pub action: FiredAction,
}

/// Why a job was not created; the message is the reply.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    When(#[from] when::WhenError),
    #[error("say what to post after the time, e.g. `/remind in 10 minutes stand-up`")]
    NoText,
    #[error("that text is too long ({0} characters); the limit is {MAX_JOB_TEXT_CHARS}")]
    TooLong(usize),
    #[error(
        "that would run every {every}, more often than the minimum interval of {minimum} on this server"
    )]
    TooOften { every: String, minimum: String },
    #[error(
        "this channel has {active} scheduled jobs, the limit; cancel one with `/unschedule <id>` first (`/schedules` lists them)"
    )]
    OverCap { active: i64 },
    #[error("the schedule store failed: {0}")]
    Store(#[from] StoreError),
}

/// The scheduler: creates, lists and cancels jobs, and fires them (see [`scanner`]).
pub struct Scheduler {
    store: Arc<dyn Store>,
    settings: ScheduleSettings,
    /// `ECDYSIS_TIMEZONE`.
    default_tz: String,
    /// The platforms' adapters: later routes and users' time zones.
    adapters: Adapters,
    /// Wakes the scanner when a job is created or cancelled here.
    wake: Notify,
    clock: Arc<Clock>,
}

/// A job to create, from a command or a tool call.
pub struct JobRequest<'a> {
    pub conversation: &'a ConversationRef,
    pub user_id: &'a str,
    pub route: &'a serde_json::Value,
    pub kind: JobKind,
    pub text: String,
    pub when: When,
    pub timezone: String,
}

/// A job just created.
pub struct CreatedJob {
    pub id: ScheduleId,
    pub first: UnixMs,
    pub when: When,
    pub timezone: String,
    pub kind: JobKind,
    pub text: String,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        settings: ScheduleSettings,
        default_tz: &str,
        adapters: Adapters,
    ) -> Self {
        Self {
            store,
            settings,
            default_tz: default_tz.to_string(),
            adapters,
            wake: Notify::new(),
            clock: Arc::new(Clock::default()),
        }
    }

    /// Time jobs by `clock` (tests move it ahead).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> UnixMs {
        UnixMs(self.clock.now())
    }

    /// Wake the scanner (a job was created or cancelled, or a test moved the clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The time zone of `user` (as their platform reports it), else `ECDYSIS_TIMEZONE`: its
    /// name and the zone.
    pub async fn timezone_for(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
        route: &serde_json::Value,
    ) -> (String, TimeZone) {
        if let Some(name) = self
            .adapters
            .user_timezone(&conversation.platform, user_id, route)
            .await
        {
            match spec::time_zone(&name) {
                Ok(tz) => return (name, tz),
                Err(e) => debug!(error = %e, "the platform's time zone is unknown here"),
            }
        }
        let tz = spec::time_zone(&self.default_tz).unwrap_or(TimeZone::UTC);
        (self.default_tz.clone(), tz)
    }

    /// Check and store a job.
    pub async fn create(&self, request: JobRequest<'_>) -> Result<CreatedJob, CreateError> {
        let text = request.text.trim().to_string();
        if text.is_empty() {
            return Err(CreateError::NoText);
        }
        let chars = text.chars().count();
        if chars > MAX_JOB_TEXT_CHARS {
            return Err(CreateError::TooLong(chars));
        }
        let tz = spec::time_zone(&request.timezone).map_err(when::WhenError::from)?;
        let minimum = self.settings.min_interval.as_millis() as i64;
        if let Some(gap) = request
            .when
            .spec
            .shortest_gap(self.now(), &tz, GAP_RUNS)
            .map_err(when::WhenError::from)?
            && gap < minimum
        {
            return Err(CreateError::TooOften {
                every: show_span(gap),
                minimum: show_span(minimum),
            });
        }
        let job = NewSchedule {
            conversation: request.conversation.clone(),
            created_by: request.user_id.to_string(),
            kind: request.kind,
            text: text.clone(),
            spec: request.when.spec.to_json(),
            description: request.when.description.clone(),
            timezone: request.timezone.clone(),
            route: request.route.to_string(),
            next_due_at: request.when.first,
            max_runs: None,
            import_key: None,
        };
        let cap = self.settings.max_jobs_per_channel as i64;
        match self.store.create_schedule(&job, cap).await? {
            Created::Stored(id) => {
                self.wake();
                Ok(CreatedJob {
                    id,
                    first: request.when.first,
                    when: request.when,
                    timezone: request.timezone,
                    kind: request.kind,
                    text,
                })
            }
            Created::OverCap { active } => Err(CreateError::OverCap { active }),
            Created::Duplicate => Err(CreateError::Store(StoreError::Corrupt(
                "a job with the same import key exists".into(),
            ))),
        }
    }

    /// The active jobs of a channel, soonest first.
    pub async fn channel_jobs(&self, channel: &ChannelRef) -> Result<Vec<Schedule>, StoreError> {
        let limit = self.settings.max_jobs_per_channel.max(1) as i64;
        self.store.channel_schedules(channel, false, limit).await
    }

    /// Cancel an active job of `channel` (`None`: any channel, for admins).
    pub async fn cancel(
        &self,
        id: ScheduleId,
        channel: Option<&ChannelRef>,
    ) -> Result<bool, StoreError> {
        let cancelled = self.store.cancel_schedule(id, channel).await?;
        if cancelled {
            self.wake();
        }
        Ok(cancelled)
    }

    /// The reply to a created job: what, when (in the user's time zone) and how to stop it.
    pub fn confirmation(job: &CreatedJob) -> String {
        let tz = spec::time_zone(&job.timezone).unwrap_or(TimeZone::UTC);
        let what = match job.kind {
            JobKind::Post => format!("post “{}”", one_line(&job.text, 200)),
            JobKind::Agent => format!("run “{}”", one_line(&job.text, 200)),
        };
        let first = show_instant(job.first, &tz);
        if job.when.spec.recurring() {
            format!(
                "OK, job #{id}: I will {what} {desc} ({tz}); the first run is {first}. Stop it with `/unschedule {id}`.",
                id = job.id,
                desc = job.when.description,
                tz = job.timezone,
            )
        } else {
            format!(
                "OK, job #{id}: I will {what} here on {first} ({tz}). Cancel it with `/unschedule {id}`.",
                id = job.id,
                tz = job.timezone,
            )
        }
    }

    /// One line per job, for `/schedules`, `/status` and the `schedule_list` tool.
    pub fn describe(job: &Schedule) -> String {
        let tz = spec::time_zone(&job.timezone).unwrap_or(TimeZone::UTC);
        let next = job
            .next_due_at
            .map(|at| show_instant(at, &tz))
            .unwrap_or_else(|| job.status.to_string());
        let kind = match job.kind {
            JobKind::Post => "post",
            JobKind::Agent => "agent",
        };
        let recurring = Spec::from_json(&job.spec).is_ok_and(|s| s.recurring());
        let schedule = if recurring {
            format!("{} · ", job.description)
        } else {
            String::new()
        };
        format!(
            "#{} {schedule}next {next} ({}) · {kind} “{}”",
            job.id,
            job.timezone,
            one_line(&job.text, 120)
        )
    }
}

/// A span of milliseconds as people say it: `90 seconds`, `5 minutes`, `2 hours`.
pub fn show_span(ms: i64) -> String {
    let seconds = ms / 1000;
    let (n, unit) = match seconds {
        s if s % 86_400 == 0 && s >= 86_400 => (s / 86_400, "day"),
        s if s % 3600 == 0 && s >= 3600 => (s / 3600, "hour"),
        s if s % 60 == 0 && s >= 60 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The text on one line, cut at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_well() {
        assert_eq!(show_span(1_000), "1 second");
        assert_eq!(show_span(90_000), "90 seconds");
        assert_eq!(show_span(300_000), "5 minutes");
        assert_eq!(show_span(7_200_000), "2 hours");
        assert_eq!(show_span(86_400_000), "1 day");
    }

    #[test]
    fn long_text_is_cut_on_one_line() {
        assert_eq!(one_line("a\nb  c", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
