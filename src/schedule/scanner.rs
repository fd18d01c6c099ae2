//! The scanner: turns due jobs into inbox events, with one timer for the next due time.
//!
//! Firing a job is one transaction: move the job to its next due time only if it still waits
//! for this one (compare and set), and put the event `schedule:<id>:<due>` into the inbox (a
//! second insert of the same key writes nothing). A crash leaves both or neither; two scanners
//! racing fire each due time once. A job found due later
//! than the grace period (the server was down) is skipped with a note instead of run, and a
//! recurring job that missed several due times runs (or is skipped) once, for the latest.
//!
//! With SQLite one instance runs the scanner directly; with Postgres it runs under the
//! `scheduler` leader lease, and checks for jobs created by other instances every second
//! (an indexed `MIN(next_due_at)`), besides its timer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::{EventKind, UserRef};
use futures_util::StreamExt;
use jiff::tz::TimeZone;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::spec::{self, Spec, show_instant};
use super::{Fired, FiredAction, Scheduler, show_span};
use crate::bus::{Bus, EventPayload};
use crate::platforms::leader::{LeaderHandle, Leadership, Term, instance_id};
use crate::storage::store::{JobKind, NewEvent, Schedule, Step, StepKind, StoreError, UnixMs};

/// The lease that lets one instance scan (Postgres).
pub const SCHEDULER_LEASE: &str = "scheduler";
/// Jobs read per scan.
const BATCH: i64 = 500;
/// Jobs fired at once (their writes share the store's transactions).
const PARALLEL: usize = 64;
/// The longest the scanner sleeps with a single instance (its timer covers every job it
/// knows of; this only bounds the effect of a clock jump).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// How often the Postgres scanner looks for jobs created by other instances.
const SHARED_WAIT: Duration = Duration::from_secs(1);

/// The running scanner.
pub enum Running {
    Direct {
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    },
    Leased(LeaderHandle),
}

impl Running {
    /// Stop scanning (and give the lease up).
    pub async fn stop(self) {
        match self {
            Running::Direct { stop, task } => {
                let _ = stop.send(true);
                if tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .is_err()
                {
                    warn!("the scheduler did not stop in time");
                }
            }
            Running::Leased(leader) => leader.shutdown().await,
        }
    }

    /// Whether this instance scans now.
    pub fn is_scanning(&self) -> bool {
        match self {
            Running::Direct { task, .. } => !task.is_finished(),
            Running::Leased(leader) => leader.is_leader(),
        }
    }
}

impl Scheduler {
    /// Start scanning: directly with SQLite, under the `scheduler` lease with Postgres
    /// (`lease_ttl` is its time to live).
    pub fn start(self: &Arc<Self>, lease_ttl: Duration, bus: &Bus) -> Running {
        if self.store.backend() != "postgres" {
            let (stop, mut stopped) = watch::channel(false);
            let scheduler = self.clone();
            let bus = bus.clone();
            let task = tokio::spawn(async move {
                scheduler
                    .scan(&bus, IDLE_WAIT, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
            });
            return Running::Direct { stop, task };
        }
        let lease = Leadership::new(
            self.store.clone(),
            SCHEDULER_LEASE,
            instance_id(),
            lease_ttl,
        );
        let scheduler = self.clone();
        let bus = bus.clone();
        Running::Leased(lease.spawn(move |mut term: Term| {
            let scheduler = scheduler.clone();
            let bus = bus.clone();
            async move {
                scheduler
                    .scan(&bus, SHARED_WAIT, async move { term.lost().await })
                    .await
            }
        }))
    }

    /// Fire due jobs into `bus` until `stopped` resolves; between scans, sleep until the next
    /// due time (at most `max_wait`) or a wake-up.
    pub async fn scan(&self, bus: &Bus, max_wait: Duration, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        info!("the scheduler is scanning for due jobs");
        loop {
            let wait = match self.fire_due(bus).await {
                Ok(true) => Duration::ZERO,
                Ok(false) => self.until_next(max_wait).await,
                Err(e) => {
                    error!(error = %e, "cannot fire due jobs; trying again shortly");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                tokio::select! {
                    biased;
                    () = &mut stopped => break,
                    () = std::future::ready(()) => continue,
                }
            }
            tokio::select! {
                () = &mut stopped => break,
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
        debug!("the scheduler stopped scanning");
    }

    /// How long until the next job is due (at most `max_wait`).
    async fn until_next(&self, max_wait: Duration) -> Duration {
        match self.store.next_schedule_due().await {
            Ok(Some(next)) => {
                let ms = next.since(self.now()).max(0) as u64;
                Duration::from_millis(ms).min(max_wait)
            }
            Ok(None) => max_wait,
            Err(e) => {
                error!(error = %e, "cannot read the next due time");
                Duration::from_secs(1)
            }
        }
    }

    /// Fire every job due now into `bus`; true when there may be more (a full batch).
    pub async fn fire_due(&self, bus: &Bus) -> Result<bool, StoreError> {
        let now = self.now();
        let due = self.store.due_schedules(now, BATCH).await?;
        if due.is_empty() {
            return Ok(false);
        }
        let full = due.len() as i64 == BATCH;
        let failures = futures_util::stream::iter(due)
            .map(|job| async move {
                let id = job.id;
                self.fire(&job, now).await.map_err(|e| (id, e))
            })
            .buffer_unordered(PARALLEL)
            .filter_map(|r| async move { r.err() })
            .collect::<Vec<_>>()
            .await;
        bus.wake();
        let count = failures.len();
        let mut first = None;
        for (id, e) in failures {
            error!(job = %id, error = %e, "cannot fire the job; it stays due");
            first.get_or_insert(e);
        }
        match first {
            Some(e) => {
                warn!(count, "some due jobs could not be fired");
                Err(e)
            }
            None => Ok(full),
        }
    }

    /// Fire one due job (or skip it with a note) and move it on.
    async fn fire(&self, job: &Schedule, now: UnixMs) -> Result<(), StoreError> {
        let Some(from) = job.next_due_at else {
            return Ok(());
        };
        let tz = spec::time_zone(&job.timezone).unwrap_or(TimeZone::UTC);
        let spec = match Spec::from_json(&job.spec) {
            Ok(spec) => spec,
            Err(e) => {
                error!(job = %job.id, error = %e, "a job's schedule is unreadable; stopping it");
                let step = Step {
                    from,
                    due: from,
                    kind: StepKind::Skipped,
                    next_due_at: None,
                    note: Some(e.to_string()),
                };
                self.store.advance_schedule(job.id, &step).await?;
                return Ok(());
            }
        };
        let due = spec.latest_due(from, now, &tz);
        let late = now.since(due);
        let grace = self.settings.grace.as_millis() as i64;
        let runs = late <= grace.max(1_000);
        let mut next = if spec.recurring() {
            spec.next_after(now.max(due), &tz).unwrap_or_else(|e| {
                error!(job = %job.id, error = %e, "cannot compute the next due time");
                None
            })
        } else {
            None
        };
        if runs && job.max_runs.is_some_and(|max| job.runs + 1 >= max) {
            next = None;
        }
        let (action, text, note) = if runs {
            let action = match job.kind {
                JobKind::Post => FiredAction::Post,
                JobKind::Agent => FiredAction::Agent,
            };
            (action, job.text.clone(), None)
        } else {
            let note = skip_note(job, due, now, next, &tz, grace);
            (FiredAction::Skipped, note.clone(), Some(note))
        };
        if late > 0 {
            debug!(job = %job.id, late_ms = late, runs, "job due");
        }
        let event = self.event(job, due, now, action, text)?;
        let step = Step {
            from,
            due,
            kind: if runs {
                StepKind::Ran
            } else {
                StepKind::Skipped
            },
            next_due_at: next,
            note,
        };
        match self.store.fire_schedule(job.id, &step, &event).await? {
            None => debug!(job = %job.id, "the job was moved on or cancelled meanwhile"),
            Some(inserted) if inserted.duplicate => {
                debug!(job = %job.id, %due, "this due time was fired before");
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The inbox event of one due time.
    fn event(
        &self,
        job: &Schedule,
        due: UnixMs,
        now: UnixMs,
        action: FiredAction,
        text: String,
    ) -> Result<NewEvent, StoreError> {
        let platform_event_id = format!("schedule:{}:{}", job.id, due);
        let stored: serde_json::Value =
            serde_json::from_str(&job.route).unwrap_or(serde_json::Value::Null);
        let route = self
            .adapters
            .later_route(&job.conversation.platform, &stored, now.0);
        let transcript = match action {
            FiredAction::Skipped => format!("[job #{} skipped]", job.id),
            FiredAction::Post | FiredAction::Agent => format!("[job #{}] {}", job.id, job.text),
        };
        let payload = EventPayload {
            platform_event_id: platform_event_id.clone(),
            user: UserRef {
                id: job.created_by.clone(),
                name: None,
            },
            kind: EventKind::Message,
            text,
            attachments: Vec::new(),
            remote_files: Vec::new(),
            route,
            scheduled: Some(Fired {
                job: job.id,
                due,
                action,
            }),
        };
        Ok(NewEvent {
            platform_event_id,
            conversation: job.conversation.clone(),
            user_id: job.created_by.clone(),
            payload: serde_json::to_string(&payload)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            text: transcript,
            attachments: Vec::new(),
        })
    }
}

/// What the conversation is told about a run skipped past the grace period.
fn skip_note(
    job: &Schedule,
    due: UnixMs,
    now: UnixMs,
    next: Option<UnixMs>,
    tz: &TimeZone,
    grace: i64,
) -> String {
    let then = match next {
        Some(next) => format!("The next run is {}.", show_instant(next, tz)),
        None => "It will not run again.".to_string(),
    };
    format!(
        "⏰ Skipped job #{id} (“{text}”): it was due {due}, but the server was not running until {now}, more than the {grace} grace period. {then}",
        id = job.id,
        text = super::one_line(&job.text, 120),
        due = show_instant(due, tz),
        now = show_instant(now, tz),
        grace = show_span(grace),
    )
}
