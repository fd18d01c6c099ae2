//! The outbox: replies waiting for delivery, claimed with a lease; each carries an idempotency
//! key, so a re-run never posts twice.

use async_trait::async_trait;
use ecdysis_chat::ConversationRef;

use super::db::{Columns, rows};
use super::dialect::CLAIM_REPLIES;
use super::{ConversationId, EventId, ReplyId, Result, SqlStore, UnixMs};

/// A reply to deliver through the outbox.
#[derive(Clone, Debug)]
pub struct NewReply {
    /// Unique forever: a second insert with the same key is ignored, so a re-run never posts
    /// twice.
    pub idempotency_key: String,
    /// Text, artifact ids and the adapter's route, as JSON (see `bus::ReplyPayload`).
    pub payload: String,
}

/// An outbox row waiting for delivery (claimed with a lease).
#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub id: ReplyId,
    pub idempotency_key: String,
    pub event_id: EventId,
    pub conversation: ConversationRef,
    pub payload: String,
    pub attempts: i32,
}

/// Replies on their way out. They are written with the event's completion (see
/// [`super::Inbox::complete_event`]), claimed here, and marked sent or failed.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Claim undelivered replies, oldest first: of one event when `event_id` is given (the
    /// worker delivering what it just produced), else of any event (the retry sweep).
    async fn claim_replies(
        &self,
        event_id: Option<EventId>,
        lease_until: UnixMs,
        limit: i64,
    ) -> Result<Vec<OutboxItem>>;

    /// Mark a reply delivered.
    async fn mark_reply_sent(&self, id: ReplyId, platform_message_id: Option<&str>) -> Result<()>;

    /// Record a failed delivery: retry at `retry_at`, or give up when `None`.
    async fn mark_reply_failed(
        &self,
        id: ReplyId,
        error: &str,
        retry_at: Option<UnixMs>,
    ) -> Result<()>;
}

#[async_trait]
impl Outbox for SqlStore {
    async fn claim_replies(
        &self,
        event_id: Option<EventId>,
        lease_until: UnixMs,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let claimed = self
            .db
            .write(
                (event_id, lease_until, limit),
                |tx, (event_id, until, limit)| {
                    Box::pin(async move {
                        let now = tx.now;
                        {
                            let found = tx
                                .query(CLAIM_REPLIES)
                                .bind(*until)
                                .bind(now)
                                .bind(*event_id)
                                .bind(*limit)
                                .fetch_all()
                                .await?;
                            rows(&found, |row| {
                                Ok((
                                    row.col::<ReplyId>("id")?,
                                    row.col::<String>("idempotency_key")?,
                                    row.col::<EventId>("event_id")?,
                                    row.col::<ConversationId>("conversation_id")?,
                                    row.col::<String>("payload")?,
                                    row.col::<i32>("attempts")?,
                                ))
                            })
                        }
                    })
                },
            )
            .await?;
        let mut items = Vec::with_capacity(claimed.len());
        for (id, idempotency_key, event_id, conversation_id, payload, attempts) in claimed {
            items.push(OutboxItem {
                id,
                idempotency_key,
                event_id,
                conversation: self.conversation_ref(conversation_id).await?,
                payload,
                attempts,
            });
        }
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    async fn mark_reply_sent(&self, id: ReplyId, platform_message_id: Option<&str>) -> Result<()> {
        self.db
            .write_lazy(
                (id, platform_message_id.map(str::to_string)),
                |tx, (id, platform_message_id)| {
                    Box::pin(async move {
                        let now = tx.now;
                        tx.query(
                            "UPDATE outbox SET status = 'sent', sent_at = $1,
                                                   platform_message_id = $2,
                                                   lease_until = NULL, error = NULL
                                 WHERE id = $3",
                        )
                        .bind(now)
                        .bind(platform_message_id)
                        .bind(*id)
                        .execute()
                        .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn mark_reply_failed(
        &self,
        id: ReplyId,
        error: &str,
        retry_at: Option<UnixMs>,
    ) -> Result<()> {
        self.db
            .write_lazy(
                (id, error.to_string(), retry_at),
                |tx, (id, error, retry_at)| {
                    Box::pin(async move {
                        tx.query(
                            "UPDATE outbox
                                 SET status = CASE WHEN CAST($1 AS BIGINT) IS NULL
                                                   THEN 'failed' ELSE 'pending' END,
                                     lease_until = CAST($1 AS BIGINT), error = $2
                                 WHERE id = $3",
                        )
                        .bind(*retry_at)
                        .bind(error)
                        .bind(*id)
                        .execute()
                        .await?;
                        Ok(())
                    })
                },
            )
            .await
    }
}
