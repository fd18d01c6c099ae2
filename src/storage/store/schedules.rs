//! Scheduled jobs: reminders, recurring jobs and heartbeats, each tied to the conversation it
//! was asked in. The store keeps what a job does and when it is next due; what its `spec` means
//! (once, every N, cron, in a time zone) is `crate::schedule`'s business.
//!
//! A run moves `next_due_at` on only if it still holds the due time the run was for (compare
//! and set), so two instances that both saw a job due never move it twice.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::{Deserialize, Serialize};

use super::conversations::{conversation_from_row, upsert};
use super::db::{Columns, Tx, on_reader, rows};
use super::inbox::{Inserted, NewEvent, insert_event};
use super::{Result, ScheduleId, SqlStore, StoreError, UnixMs};

/// What a job does when it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Post its text into the conversation.
    Post,
    /// Run its text as a prompt for the agent (with the channel's memory and tools); a
    /// heartbeat may answer that there is nothing to report, and then nothing is posted.
    Agent,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Post => "post",
            JobKind::Agent => "agent",
        }
    }
}

impl FromStr for JobKind {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "post" => Ok(JobKind::Post),
            "agent" => Ok(JobKind::Agent),
            other => Err(StoreError::Corrupt(format!("unknown job kind `{other}`"))),
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its next due time.
    Active,
    /// Ran for the last time.
    Done,
    /// Cancelled by a user, the model or an admin.
    Cancelled,
    /// A one-off job whose time passed while the server was down, beyond the grace period.
    Missed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Active => "active",
            JobStatus::Done => "done",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Missed => "missed",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "active" => Ok(JobStatus::Active),
            "done" => Ok(JobStatus::Done),
            "cancelled" => Ok(JobStatus::Cancelled),
            "missed" => Ok(JobStatus::Missed),
            other => Err(StoreError::Corrupt(format!("unknown job status `{other}`"))),
        }
    }
}

/// A job to store.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    pub conversation: ConversationRef,
    pub created_by: String,
    pub kind: JobKind,
    pub text: String,
    /// When it runs (JSON, see `crate::schedule::Spec`).
    pub spec: String,
    /// When it runs, as the user said it.
    pub description: String,
    /// IANA time zone name.
    pub timezone: String,
    /// The adapter's route of the event that asked for it (JSON).
    pub route: String,
    pub next_due_at: UnixMs,
    pub max_runs: Option<i64>,
    /// Set by `ecdysis import`: a job with the same key is not stored twice.
    pub import_key: Option<String>,
}

/// A stored job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub conversation: ConversationRef,
    pub created_by: String,
    pub kind: JobKind,
    pub text: String,
    pub spec: String,
    pub description: String,
    pub timezone: String,
    pub route: String,
    pub status: JobStatus,
    pub next_due_at: Option<UnixMs>,
    pub last_run_at: Option<UnixMs>,
    pub runs: i64,
    pub skipped: i64,
    pub max_runs: Option<i64>,
    pub note: Option<String>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

impl Schedule {
    /// The channel the job belongs to (listing, the cap).
    pub fn channel(&self) -> ChannelRef {
        self.conversation.channel_ref()
    }
}

/// The outcome of storing a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    Stored(ScheduleId),
    /// The channel already has `active` jobs, the cap; nothing was stored.
    OverCap {
        active: i64,
    },
    /// A job with the same import key is stored already; nothing was stored.
    Duplicate,
}

/// What happened at one due time of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// It ran (its event is in the inbox).
    Ran,
    /// It was skipped: due too long ago (the server was down past the grace period).
    Skipped,
}

/// Moving a job past one due time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The `next_due_at` the job must still have (compare and set).
    pub from: UnixMs,
    /// The due time that ran or was skipped.
    pub due: UnixMs,
    pub kind: StepKind,
    /// The next due time; `None` finishes the job (`done` after a run, `missed` after a skip).
    pub next_due_at: Option<UnixMs>,
    pub note: Option<String>,
}

/// Reminders, recurring jobs and heartbeats.
#[async_trait]
pub trait Schedules: Send + Sync {
    /// Store a job unless its channel already has `cap` active jobs (checked in the same
    /// transaction).
    async fn create_schedule(&self, job: &NewSchedule, cap: i64) -> Result<Created>;

    /// A job by id.
    async fn schedule(&self, id: ScheduleId) -> Result<Option<Schedule>>;

    /// A channel's jobs, soonest first: the active ones, or (with `finished`) the others too.
    async fn channel_schedules(
        &self,
        channel: &ChannelRef,
        finished: bool,
        limit: i64,
    ) -> Result<Vec<Schedule>>;

    /// Every job, active ones first (soonest first), then the rest newest first (admin pages).
    async fn all_schedules(&self, limit: i64) -> Result<Vec<Schedule>>;

    /// Active jobs due at `now` or before, the longest due first.
    async fn due_schedules(&self, now: UnixMs, limit: i64) -> Result<Vec<Schedule>>;

    /// The soonest due time of any active job.
    async fn next_schedule_due(&self) -> Result<Option<UnixMs>>;

    /// Move a job past one due time (see [`Step`]); false when it no longer had `step.from`
    /// as its due time or is no longer active (another instance moved it, or it was cancelled).
    async fn advance_schedule(&self, id: ScheduleId, step: &Step) -> Result<bool>;

    /// Fire one due time of a job: move the job past it (as [`Schedules::advance_schedule`])
    /// and put `event` (the due time's work) into the inbox, in one transaction, so a crash
    /// leaves both or neither. `None` when the job had moved on (nothing is written then).
    /// The commit is lazy: the event's reply is synced before it leaves, like a completion's.
    async fn fire_schedule(
        &self,
        id: ScheduleId,
        step: &Step,
        event: &NewEvent,
    ) -> Result<Option<Inserted>>;

    /// Cancel an active job; with `channel`, only a job of that channel. False when there is
    /// no such active job.
    async fn cancel_schedule(&self, id: ScheduleId, channel: Option<&ChannelRef>) -> Result<bool>;
}

/// Move job `id` past `step.from` (compare and set); false when it no longer had that due
/// time or is no longer active.
async fn advance(tx: &mut Tx, id: ScheduleId, step: &Step) -> Result<bool> {
    let finished = match step.kind {
        StepKind::Ran => JobStatus::Done,
        StepKind::Skipped => JobStatus::Missed,
    };
    let status = match step.next_due_at {
        Some(_) => JobStatus::Active,
        None => finished,
    };
    let now = tx.now;
    let ran = i64::from(step.kind == StepKind::Ran);
    let moved = tx
        .query(
            "UPDATE schedules
             SET next_due_at = $1, status = $2,
                 runs = runs + $3, skipped = skipped + (1 - $3),
                 last_run_at = CASE WHEN $3 = 1 THEN $4 ELSE last_run_at END,
                 note = COALESCE(CAST($5 AS TEXT), note),
                 updated_at = $6
             WHERE id = $7 AND status = 'active' AND next_due_at = $8",
        )
        .bind(step.next_due_at)
        .bind(status.as_str())
        .bind(ran)
        .bind(step.due)
        .bind(&step.note)
        .bind(now)
        .bind(id)
        .bind(step.from)
        .execute()
        .await?
        .rows_affected();
    Ok(moved == 1)
}

fn schedule_from_row(row: &impl Columns) -> Result<Schedule> {
    Ok(Schedule {
        id: row.col("id")?,
        conversation: conversation_from_row(row)?,
        created_by: row.col("created_by")?,
        kind: row.col::<String>("kind")?.parse()?,
        text: row.col("text")?,
        spec: row.col("spec")?,
        description: row.col("description")?,
        timezone: row.col("timezone")?,
        route: row.col("route")?,
        status: row.col::<String>("status")?.parse()?,
        next_due_at: row.col("next_due_at")?,
        last_run_at: row.col("last_run_at")?,
        runs: row.col("runs")?,
        skipped: row.col("skipped")?,
        max_runs: row.col("max_runs")?,
        note: row.col("note")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

/// Queries over `schedules s JOIN conversations c`, built once from [`COLUMNS`].
mod sql {
    macro_rules! select {
        ($($rest:literal),*) => {
            concat!(
                "SELECT s.id, s.created_by, s.kind, s.text, s.spec, s.description, s.timezone,
                        s.route, s.status, s.next_due_at, s.last_run_at, s.runs, s.skipped,
                        s.max_runs, s.note, s.created_at, s.updated_at,
                        c.platform, c.workspace, c.channel, c.thread
                 FROM schedules s JOIN conversations c ON c.id = s.conversation_id ",
                $($rest),*
            )
        };
    }

    pub(super) const BY_ID: &str = select!("WHERE s.id = $1");
    pub(super) const BY_CHANNEL: &str = select!(
        "WHERE s.platform = $1 AND s.workspace = $2 AND s.channel = $3
           AND (s.status = 'active' OR CAST($4 AS BIGINT) = 1)
         ORDER BY CASE WHEN s.status = 'active' THEN 0 ELSE 1 END, s.next_due_at, s.id DESC
         LIMIT $5"
    );
    pub(super) const ALL: &str = select!(
        "ORDER BY CASE WHEN s.status = 'active' THEN 0 ELSE 1 END, s.next_due_at, s.id DESC
         LIMIT $1"
    );
    pub(super) const DUE: &str = select!(
        "WHERE s.status = 'active' AND s.next_due_at <= $1
         ORDER BY s.next_due_at, s.id
         LIMIT $2"
    );
}

#[async_trait]
impl Schedules for SqlStore {
    async fn create_schedule(&self, job: &NewSchedule, cap: i64) -> Result<Created> {
        self.db
            .write((job.clone(), cap), |tx, (job, cap)| {
                Box::pin(async move {
                    let now = tx.now;
                    let channel = &job.conversation;
                    let active: i64 = tx
                        .query(
                            "SELECT COUNT(*) AS n FROM schedules
                             WHERE platform = $1 AND workspace = $2 AND channel = $3
                               AND status = 'active'",
                        )
                        .bind(&channel.platform)
                        .bind(&channel.workspace)
                        .bind(&channel.channel)
                        .fetch_one()
                        .await?
                        .col("n")?;
                    if active >= *cap {
                        return Ok(Created::OverCap { active });
                    }
                    let conversation_id = upsert(tx, &job.conversation).await?;
                    let id: Option<ScheduleId> = tx
                        .query(
                            "INSERT INTO schedules (conversation_id, platform, workspace, channel,
                                 created_by, kind, text, spec, description, timezone, route,
                                 status, next_due_at, max_runs, import_key, created_at,
                                 updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'active', $12,
                                     $13, $14, $15, $15)
                             ON CONFLICT DO NOTHING
                             RETURNING id",
                        )
                        .bind(conversation_id)
                        .bind(&channel.platform)
                        .bind(&channel.workspace)
                        .bind(&channel.channel)
                        .bind(&job.created_by)
                        .bind(job.kind.as_str())
                        .bind(&job.text)
                        .bind(&job.spec)
                        .bind(&job.description)
                        .bind(&job.timezone)
                        .bind(&job.route)
                        .bind(job.next_due_at)
                        .bind(job.max_runs)
                        .bind(&job.import_key)
                        .bind(now)
                        .fetch_optional()
                        .await?
                        .map(|row| row.col("id"))
                        .transpose()?;
                    Ok(match id {
                        Some(id) => Created::Stored(id),
                        None => Created::Duplicate,
                    })
                })
            })
            .await
    }

    async fn schedule(&self, id: ScheduleId) -> Result<Option<Schedule>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(sql::BY_ID)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| schedule_from_row(&row))
                .transpose()
        })
    }

    async fn channel_schedules(
        &self,
        channel: &ChannelRef,
        finished: bool,
        limit: i64,
    ) -> Result<Vec<Schedule>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sql::BY_CHANNEL)
                .bind(&channel.platform)
                .bind(&channel.workspace)
                .bind(&channel.channel)
                .bind(i64::from(finished))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows(&found, schedule_from_row)
        })
    }

    async fn all_schedules(&self, limit: i64) -> Result<Vec<Schedule>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sql::ALL).bind(limit).fetch_all(pool).await?;
            rows(&found, schedule_from_row)
        })
    }

    async fn due_schedules(&self, now: UnixMs, limit: i64) -> Result<Vec<Schedule>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sql::DUE)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows(&found, schedule_from_row)
        })
    }

    async fn next_schedule_due(&self) -> Result<Option<UnixMs>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT MIN(next_due_at) AS due FROM schedules
                 WHERE status = 'active' AND next_due_at IS NOT NULL",
            )
            .fetch_one(pool)
            .await?
            .col::<Option<UnixMs>>("due")
        })
    }

    async fn advance_schedule(&self, id: ScheduleId, step: &Step) -> Result<bool> {
        self.db
            .write((id, step.clone()), |tx, (id, step)| {
                Box::pin(advance(tx, *id, step))
            })
            .await
    }

    async fn fire_schedule(
        &self,
        id: ScheduleId,
        step: &Step,
        event: &NewEvent,
    ) -> Result<Option<Inserted>> {
        let known = self.known_conversation(&event.conversation);
        let fired = self
            .db
            .write_to_lazy(
                &event.conversation,
                (id, step.clone(), event.clone(), known),
                |tx, (id, step, event, known)| {
                    Box::pin(async move {
                        if !advance(tx, *id, step).await? {
                            return Ok(None);
                        }
                        insert_event(tx, event, *known).await.map(Some)
                    })
                },
            )
            .await?;
        Ok(fired.map(|(inserted, conversation_id)| {
            self.conversations
                .insert(&event.conversation, conversation_id);
            inserted
        }))
    }

    async fn cancel_schedule(&self, id: ScheduleId, channel: Option<&ChannelRef>) -> Result<bool> {
        self.db
            .write((id, channel.cloned()), |tx, (id, channel)| {
                Box::pin(async move {
                    let now = tx.now;
                    let (platform, workspace, name) = match channel {
                        Some(c) => (
                            Some(c.platform.as_str()),
                            Some(c.workspace.as_str()),
                            Some(c.channel.as_str()),
                        ),
                        None => (None, None, None),
                    };
                    let cancelled = tx
                        .query(
                            "UPDATE schedules
                             SET status = 'cancelled', next_due_at = NULL, updated_at = $1
                             WHERE id = $2 AND status = 'active'
                               AND (CAST($3 AS TEXT) IS NULL
                                    OR (platform = $3 AND workspace = $4 AND channel = $5))",
                        )
                        .bind(now)
                        .bind(*id)
                        .bind(platform)
                        .bind(workspace)
                        .bind(name)
                        .execute()
                        .await?
                        .rows_affected();
                    Ok(cancelled == 1)
                })
            })
            .await
    }
}
