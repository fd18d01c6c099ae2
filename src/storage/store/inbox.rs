//! The inbox: events as adapters hand them in, claimed by workers with a lease, one
//! conversation at a time in arrival order, and finished with their transcript rows and replies.

use async_trait::async_trait;
use ecdysis_chat::ConversationRef;
use serde::Serialize;

use super::conversations::{conversation_from_row, upsert};
use super::db::{Columns, Tx, on_reader, rows};
use super::dialect::{CLAIM_EVENTS, CLAIM_NEXT, SQLITE_CLAIMED_NEXT};
use super::transcript::insert_message;
use super::writer::Durability;
use super::{
    ConversationId, EventId, InboxStatus, NewArtifact, NewMessage, NewReply, OutboxItem, ReplyId,
    Result, Role, SqlStore, StoreError, UnixMs,
};

/// An event to put into the inbox, with the user's message for the transcript.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub platform_event_id: String,
    pub conversation: ConversationRef,
    pub user_id: String,
    /// The event as JSON (see `bus::EventPayload`).
    pub payload: String,
    /// What the transcript shows for the user's message.
    pub text: String,
    /// Attachments already written to the blob store, linked to the user's message.
    pub attachments: Vec<NewArtifact>,
}

/// The result of putting an event into the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub event_id: EventId,
    /// The (conversation, platform event id) was there already; nothing was written.
    pub duplicate: bool,
}

/// An event claimed by a worker, with its lease.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    pub id: EventId,
    pub conversation_id: ConversationId,
    pub conversation: ConversationRef,
    pub payload: String,
    /// How many times this event was claimed, this claim included.
    pub attempts: i32,
    pub received_at: UnixMs,
}

/// What finishing an event writes, in one transaction: transcript rows, replies, and the final
/// state: `done`, or `failed` with `error` (the replies then tell the user what went wrong).
#[derive(Clone, Debug, Default)]
pub struct Completion {
    pub messages: Vec<NewMessage>,
    pub replies: Vec<NewReply>,
    pub error: Option<String>,
    /// When set, the replies are written already claimed for delivery until then, so the worker
    /// that produced them can deliver them at once without another claim.
    pub reply_lease_until: Option<UnixMs>,
    /// When set, the conversation's next event, if it is pending and due, is claimed for the
    /// same owner until then in the same transaction, so the worker goes on with it without
    /// waiting for the dispatcher ([`Completed::next`]).
    pub claim_next_until: Option<UnixMs>,
}

/// What finishing an event wrote.
#[derive(Clone, Debug, Default)]
pub struct Completed {
    /// The outbox rows written, to deliver.
    pub replies: Vec<OutboxItem>,
    /// The conversation's next event, claimed when [`Completion::claim_next_until`] asked.
    pub next: Option<ClaimedEvent>,
}

/// Counts of the inbox by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxCounts {
    pub pending: i64,
    pub leased: i64,
    pub done: i64,
    pub failed: i64,
}

/// An inbox row as the admin pages show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InboxEvent {
    pub id: EventId,
    pub conversation: ConversationRef,
    pub platform_event_id: String,
    pub status: InboxStatus,
    pub attempts: i32,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub received_at: UnixMs,
    pub finished_at: Option<UnixMs>,
    /// The user's message as the transcript shows it.
    pub text: Option<String>,
}

/// Events in, claimed, finished: the durable queue every adapter feeds.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Put an event into the inbox together with the user's transcript message, in one
    /// transaction; a (conversation, platform event id) seen before writes nothing. Returns
    /// once the commit is durable (the platform may be acknowledged then), or
    /// [`StoreError::Busy`] at once when too many writes are waiting.
    async fn insert_event(&self, event: &NewEvent) -> Result<Inserted>;

    /// Claim up to `limit` events, oldest first: each the head of its conversation (no earlier
    /// unfinished event there), pending or with an expired lease, and due; so no two are of
    /// one conversation. The claims last until `lease_until`.
    async fn claim_events(
        &self,
        owner: &str,
        lease_until: UnixMs,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>>;

    /// Extend a lease this owner holds; false when the lease was lost.
    async fn renew_lease(
        &self,
        event_id: EventId,
        owner: &str,
        lease_until: UnixMs,
    ) -> Result<bool>;

    /// Release every lease `owner` holds (graceful shutdown): the events become pending again.
    async fn release_leases(&self, owner: &str) -> Result<u64>;

    /// Make every leased event pending again (single-instance start-up after a crash).
    async fn release_all_leases(&self) -> Result<u64>;

    /// Finish an event: transcript rows, outbox rows and the done mark in one transaction (and
    /// the claim of the conversation's next event, when asked). Returns what was written, or
    /// `None` (and writes nothing) when `owner` no longer holds the event's lease.
    async fn complete_event(
        &self,
        event: &ClaimedEvent,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Completed>>;

    /// Give a claimed event back: retry at `retry_at`, or mark it failed when `retry_at` is None.
    /// False (and nothing written) when `owner` no longer holds the event's lease.
    async fn fail_event(
        &self,
        event: &ClaimedEvent,
        owner: &str,
        error: &str,
        retry_at: Option<UnixMs>,
    ) -> Result<bool>;

    /// Events not yet done or failed (the queue depth).
    async fn open_event_count(&self) -> Result<i64>;

    /// Counts of the inbox by state.
    async fn inbox_counts(&self) -> Result<InboxCounts>;

    /// Inbox events in one state, newest first (the admin pages).
    async fn inbox_events(&self, status: InboxStatus, limit: i64) -> Result<Vec<InboxEvent>>;

    /// Run a failed event again: a copy of it is queued as a new event (at the end of its
    /// conversation, so its replies get new idempotency keys and are really posted) and the
    /// failed one is marked `retried`. Returns the new event's id; `None` when the event is
    /// not failed.
    async fn retry_event(&self, id: EventId) -> Result<Option<EventId>>;

    /// The newest event time per platform (`received_at`).
    async fn last_event_at(&self) -> Result<Vec<(String, UnixMs)>>;
}

/// Put the event and its user message in; `known` is the conversation's id when the cache
/// knows it and the backend needs no lock. Returns the result and the conversation's id.
pub(super) async fn insert_event(
    tx: &mut Tx,
    e: &NewEvent,
    known: Option<ConversationId>,
) -> Result<(Inserted, ConversationId)> {
    let conversation_id = match known {
        Some(id) => id,
        None => upsert(tx, &e.conversation).await?,
    };
    let now = tx.now;
    let inserted: Option<EventId> = tx
        .query(
            "INSERT INTO inbox (platform, platform_event_id, conversation_id, payload,
                                available_at, received_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (conversation_id, platform_event_id) DO NOTHING
             RETURNING id",
        )
        .bind(&e.conversation.platform)
        .bind(&e.platform_event_id)
        .bind(conversation_id)
        .bind(&e.payload)
        .bind(now)
        .insert_id()
        .await?
        .map(EventId);
    let Some(event_id) = inserted else {
        // A platform retry: the stored event's id, nothing written.
        let existing: EventId = tx
            .query("SELECT id FROM inbox WHERE conversation_id = $1 AND platform_event_id = $2")
            .bind(conversation_id)
            .bind(&e.platform_event_id)
            .fetch_one()
            .await?
            .col("id")?;
        let duplicate = Inserted {
            event_id: existing,
            duplicate: true,
        };
        return Ok((duplicate, conversation_id));
    };
    let message = NewMessage {
        role: Role::User,
        text: e.text.clone(),
        meta: Some(serde_json::json!({ "user": e.user_id }).to_string()),
        attachments: e.attachments.clone(),
    };
    insert_message(tx, conversation_id, Some(event_id), &message).await?;
    let inserted = Inserted {
        event_id,
        duplicate: false,
    };
    Ok((inserted, conversation_id))
}

/// How durable a completion's commit must be before the worker hears back. Replies written
/// already claimed leave for the platform as soon as it does, so their commit must be on disk
/// first: after a power loss the event would otherwise run again and post its answer a second
/// time. Without them, the commit can wait for the next synced one (see the writer).
fn completion_durability(done: &Completion) -> Durability {
    if done.reply_lease_until.is_some() && !done.replies.is_empty() {
        Durability::Synced
    } else {
        Durability::Lazy
    }
}

/// A row of a claim: id, conversation, payload, attempts, received.
type ClaimedRow = (EventId, ConversationId, String, i32, UnixMs);

fn claimed_row(row: &impl Columns) -> Result<ClaimedRow> {
    Ok((
        row.col("id")?,
        row.col("conversation_id")?,
        row.col("payload")?,
        row.col("attempts")?,
        row.col("received_at")?,
    ))
}

/// The outbox rows a completion wrote (id, attempts, which reply) and the next event it claimed.
type CompletedRows = (Vec<(ReplyId, i32, usize)>, Option<ClaimedRow>);

/// The done (or failed) mark, transcript rows and outbox rows of a finished event, and the
/// claim of its conversation's next event when asked. `None` when `owner` no longer holds the
/// event's lease (nothing is written then).
async fn complete_event(
    tx: &mut Tx,
    (event_id, conversation_id): (EventId, ConversationId),
    owner: &str,
    done: &Completion,
) -> Result<Option<CompletedRows>> {
    let now = tx.now;
    let finished = tx
        .query(
            "UPDATE inbox
             SET status = CASE WHEN CAST($1 AS TEXT) IS NULL THEN 'done' ELSE 'failed' END,
                 finished_at = $2, lease_owner = NULL, lease_until = NULL,
                 error = CAST($1 AS TEXT)
             WHERE id = $3 AND status = 'leased' AND lease_owner = $4",
        )
        .bind(&done.error)
        .bind(now)
        .bind(event_id)
        .bind(owner)
        .execute()
        .await?;
    if finished.rows_affected() == 0 {
        return Ok(None);
    }
    for message in &done.messages {
        insert_message(tx, conversation_id, Some(event_id), message).await?;
    }
    let mut written = Vec::with_capacity(done.replies.len());
    // A reply written already claimed has had its first attempt.
    let attempts = i32::from(done.reply_lease_until.is_some());
    for (n, reply) in done.replies.iter().enumerate() {
        let id = tx
            .query(
                "INSERT INTO outbox (idempotency_key, event_id, conversation_id, payload,
                                     lease_until, attempts, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING id",
            )
            .bind(&reply.idempotency_key)
            .bind(event_id)
            .bind(conversation_id)
            .bind(&reply.payload)
            .bind(done.reply_lease_until)
            .bind(attempts)
            .bind(now)
            .insert_id()
            .await?;
        if let Some(id) = id {
            written.push((ReplyId(id), attempts, n));
        }
    }
    let next = match done.claim_next_until {
        // The finished event is no longer the head: its trigger made the next one the head.
        Some(until) => tx
            .query(CLAIM_NEXT)
            .bind(owner)
            .bind(until)
            .bind(conversation_id)
            .bind(now)
            .fetch_updated(SQLITE_CLAIMED_NEXT)
            .await?
            .first()
            .map(claimed_row)
            .transpose()?,
        None => None,
    };
    Ok(Some((written, next)))
}

/// The admin list of inbox events in one state (`$1`), newest first, at most `$2`, with the
/// user's message; `$cond` narrows the rows to those of one index (see `inbox_events`).
macro_rules! inbox_events_sql {
    ($cond:literal) => {
        concat!(
            "SELECT i.id, i.platform_event_id, i.status, i.attempts, i.error, i.lease_owner,
                    i.received_at, i.finished_at, c.platform, c.workspace, c.channel,
                    c.thread,
                    (SELECT m.text FROM messages m
                     WHERE m.conversation_id = i.conversation_id AND m.event_id = i.id
                       AND m.role = 'user'
                     ORDER BY m.id LIMIT 1) AS text
             FROM inbox i JOIN conversations c ON c.id = i.conversation_id
             WHERE i.status = $1 ",
            $cond,
            "
             ORDER BY i.id DESC
             LIMIT $2"
        )
    };
}

#[async_trait]
impl Inbox for SqlStore {
    async fn insert_event(&self, event: &NewEvent) -> Result<Inserted> {
        let known = self.known_conversation(&event.conversation);
        let (inserted, conversation_id) = self
            .db
            .accept_to(
                &event.conversation,
                (event.clone(), known),
                |tx, (e, known)| Box::pin(insert_event(tx, e, *known)),
            )
            .await?;
        self.conversations
            .insert(&event.conversation, conversation_id);
        Ok(inserted)
    }

    async fn claim_events(
        &self,
        owner: &str,
        lease_until: UnixMs,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let claimed = self
            .db
            .write_lazy(
                (owner.to_string(), lease_until, limit),
                |tx, (owner, until, limit)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let found = tx
                            .query(CLAIM_EVENTS)
                            .bind(owner)
                            .bind(*until)
                            .bind(now)
                            .bind(*limit)
                            .fetch_all()
                            .await?;
                        rows(&found, claimed_row)
                    })
                },
            )
            .await?;
        let mut events = Vec::with_capacity(claimed.len());
        for (id, conversation_id, payload, attempts, received_at) in claimed {
            events.push(ClaimedEvent {
                id,
                conversation_id,
                conversation: self.conversation_ref(conversation_id).await?,
                payload,
                attempts,
                received_at,
            });
        }
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn renew_lease(
        &self,
        event_id: EventId,
        owner: &str,
        lease_until: UnixMs,
    ) -> Result<bool> {
        self.db
            .write_lazy(
                (event_id, owner.to_string(), lease_until),
                |tx, (id, owner, until)| {
                    Box::pin(async move {
                        let done = tx
                            .query(
                                "UPDATE inbox SET lease_until = $1
                                 WHERE id = $2 AND status = 'leased' AND lease_owner = $3",
                            )
                            .bind(*until)
                            .bind(*id)
                            .bind(owner)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(done == 1)
                    })
                },
            )
            .await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64> {
        self.release_leases_of(Some(owner)).await
    }

    async fn release_all_leases(&self) -> Result<u64> {
        self.release_leases_of(None).await
    }

    async fn complete_event(
        &self,
        event: &ClaimedEvent,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Completed>> {
        let event_id = event.id;
        let written = self
            .db
            .write_to_as(
                completion_durability(done),
                &event.conversation,
                (
                    (event_id, event.conversation_id),
                    owner.to_string(),
                    done.clone(),
                ),
                |tx, (ids, owner, done)| Box::pin(complete_event(tx, *ids, owner, done)),
            )
            .await?;
        let Some((written, next)) = written else {
            return Ok(None);
        };
        let conversation = &event.conversation;
        let replies = written
            .into_iter()
            .map(|(id, attempts, n)| OutboxItem {
                id,
                idempotency_key: done.replies[n].idempotency_key.clone(),
                event_id,
                conversation: conversation.clone(),
                payload: done.replies[n].payload.clone(),
                attempts,
            })
            .collect();
        let next = next.map(
            |(id, conversation_id, payload, attempts, received_at)| ClaimedEvent {
                id,
                conversation_id,
                conversation: conversation.clone(),
                payload,
                attempts,
                received_at,
            },
        );
        Ok(Some(Completed { replies, next }))
    }

    async fn fail_event(
        &self,
        event: &ClaimedEvent,
        owner: &str,
        error: &str,
        retry_at: Option<UnixMs>,
    ) -> Result<bool> {
        self.db
            .write_to_lazy(
                &event.conversation,
                (event.id, owner.to_string(), error.to_string(), retry_at),
                |tx, (id, owner, error, retry_at)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let changed = tx
                            .query(
                                "UPDATE inbox
                                 SET status = CASE WHEN CAST($1 AS BIGINT) IS NULL
                                                   THEN 'failed' ELSE 'pending' END,
                                     available_at = COALESCE(CAST($1 AS BIGINT), available_at),
                                     finished_at = CASE WHEN CAST($1 AS BIGINT) IS NULL
                                                        THEN $2 ELSE NULL END,
                                     error = $3, lease_owner = NULL, lease_until = NULL
                                 WHERE id = $4 AND status = 'leased' AND lease_owner = $5",
                            )
                            .bind(*retry_at)
                            .bind(now)
                            .bind(error)
                            .bind(*id)
                            .bind(owner)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(changed == 1)
                    })
                },
            )
            .await
    }

    async fn open_event_count(&self) -> Result<i64> {
        on_reader!(&self.db, |pool| {
            sqlx::query("SELECT COUNT(*) AS n FROM inbox WHERE status IN ('pending', 'leased')")
                .fetch_one(pool)
                .await?
                .col("n")
        })
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        // Open and failed events are counted on their partial indexes; the done ones are the
        // rest (there is no index by status: see migration 0019).
        let counts: Vec<(String, i64)> = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT status, COUNT(*) AS n FROM inbox
                 WHERE status IN ('pending', 'leased') GROUP BY status
                 UNION ALL
                 SELECT status, COUNT(*) AS n FROM inbox
                 WHERE status IN ('failed', 'retried') GROUP BY status
                 UNION ALL
                 SELECT 'all' AS status, COUNT(*) AS n FROM inbox",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| Ok((row.col("status")?, row.col("n")?)))?
        });
        let mut by_status = InboxCounts::default();
        let mut all = 0;
        let mut retried = 0;
        for (status, n) in counts {
            match status.as_str() {
                "pending" => by_status.pending = n,
                "leased" => by_status.leased = n,
                "failed" => by_status.failed = n,
                "retried" => retried = n,
                "all" => all = n,
                _ => {}
            }
        }
        by_status.done = all - by_status.pending - by_status.leased - by_status.failed - retried;
        Ok(by_status)
    }

    async fn inbox_events(&self, status: InboxStatus, limit: i64) -> Result<Vec<InboxEvent>> {
        // Open, failed and retried events come newest first from the partial index that holds
        // them (the condition is spelled out so the planner sees it applies); done events, most
        // of the inbox, from the table itself.
        let sql = match status {
            InboxStatus::Pending | InboxStatus::Leased => {
                inbox_events_sql!("AND i.status IN ('pending', 'leased')")
            }
            InboxStatus::Failed | InboxStatus::Retried => {
                inbox_events_sql!("AND i.status IN ('failed', 'retried')")
            }
            InboxStatus::Done => inbox_events_sql!(""),
        };
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sql)
                .bind(status.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows(&found, |row| {
                Ok(InboxEvent {
                    id: row.col("id")?,
                    conversation: conversation_from_row(row)?,
                    platform_event_id: row.col("platform_event_id")?,
                    status: InboxStatus::parse(&row.col::<String>("status")?)?,
                    attempts: row.col("attempts")?,
                    error: row.col("error")?,
                    lease_owner: row.col("lease_owner")?,
                    received_at: row.col("received_at")?,
                    finished_at: row.col("finished_at")?,
                    text: row.col("text")?,
                })
            })
        })
    }

    async fn retry_event(&self, id: EventId) -> Result<Option<EventId>> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        self.db
            .write((id, suffix), |tx, (id, suffix)| {
                Box::pin(async move {
                    let now = tx.now;
                    // Marked first: of two concurrent retries, only one finds it failed.
                    let old = tx.query(
                            "UPDATE inbox SET status = 'retried' WHERE id = $1 AND status = 'failed'
                             RETURNING platform, platform_event_id, conversation_id, payload",
                        )
                        .bind(*id)
                        .fetch_optional()
                        .await?
                        .map(|row| {
                            Ok::<_, StoreError>((
                                row.col::<String>("platform")?,
                                row.col::<String>("platform_event_id")?,
                                row.col::<ConversationId>("conversation_id")?,
                                row.col::<String>("payload")?,
                            ))
                        })
                        .transpose()?;
                    let Some((platform, original, conversation_id, payload)) = old else {
                        return Ok(None);
                    };
                    // A copy at the end of its conversation, under a new platform event id.
                    let new_id: EventId = tx
                        .query(
                            "INSERT INTO inbox (platform, platform_event_id, conversation_id,
                                                payload, available_at, received_at)
                             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                        )
                        .bind(&platform)
                        .bind(format!("{original}#retry-{suffix}"))
                        .bind(conversation_id)
                        .bind(&payload)
                        .bind(now)
                        .fetch_one()
                        .await?
                        .col("id")?;
                    tx.query("UPDATE inbox SET error = $1 WHERE id = $2")
                        .bind(format!("retried as event {new_id}"))
                        .bind(*id)
                        .execute()
                        .await?;
                    Ok(Some(new_id))
                })
            })
            .await
    }

    async fn last_event_at(&self) -> Result<Vec<(String, UnixMs)>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT platform, MAX(received_at) AS at FROM inbox
                 GROUP BY platform ORDER BY platform",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| Ok((row.col("platform")?, row.col("at")?)))
        })
    }
}

impl SqlStore {
    async fn release_leases_of(&self, owner: Option<&str>) -> Result<u64> {
        self.db
            .write_lazy(owner.map(str::to_string), |tx, owner| {
                Box::pin(async move {
                    let released = tx
                        .query(
                            "UPDATE inbox SET status = 'pending', lease_owner = NULL,
                                              lease_until = NULL
                             WHERE status = 'leased'
                               AND (CAST($1 AS TEXT) IS NULL OR lease_owner = $1)",
                        )
                        .bind(owner)
                        .execute()
                        .await?
                        .rows_affected();
                    if owner.is_none() {
                        // Nothing else runs: replies claimed by the last run may go at once.
                        tx.query("UPDATE outbox SET lease_until = NULL WHERE status = 'pending'")
                            .execute()
                            .await?;
                    }
                    Ok(released)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> NewReply {
        NewReply {
            idempotency_key: "k".into(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn completions_whose_replies_leave_at_once_are_synced() {
        let claimed = Completion {
            replies: vec![reply()],
            reply_lease_until: Some(UnixMs(1)),
            ..Completion::default()
        };
        assert_eq!(completion_durability(&claimed), Durability::Synced);
        // Replies left for the sweep are claimed by a synced write of their own.
        let unclaimed = Completion {
            replies: vec![reply()],
            ..Completion::default()
        };
        assert_eq!(completion_durability(&unclaimed), Durability::Lazy);
        let silent = Completion {
            reply_lease_until: Some(UnixMs(1)),
            ..Completion::default()
        };
        assert_eq!(completion_durability(&silent), Durability::Lazy);
    }
}
