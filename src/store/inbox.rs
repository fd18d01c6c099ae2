//! The inbox: events as adapters hand them in, claimed by workers with a lease, one
//! conversation at a time in arrival order, and finished with their transcript rows and replies.

use super::conversations::upsert;
use super::db::{Columns, Tx, on_reader, on_tx};
use super::dialect::{self, CLAIM_EVENT};
use super::transcript::insert_message;
use super::{
    ClaimedEvent, Completion, InboxCounts, Inserted, NewEvent, NewMessage, OutboxItem, Result,
    Role, SqlStore,
};

/// Put the event and its user message in; `known` is the conversation's id when the cache
/// knows it and the backend needs no lock. Returns the result and the conversation's id.
async fn insert_event(tx: &mut Tx, e: &NewEvent, known: Option<i64>) -> Result<(Inserted, i64)> {
    let conversation_id = match known {
        Some(id) => id,
        None => upsert(tx, &e.conversation).await?,
    };
    let now = tx.now;
    let inserted: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
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
        .fetch_optional(c)
        .await?
        .map(|row| row.col("id"))
        .transpose()?
    });
    let Some(event_id) = inserted else {
        // A platform retry: the stored event's id, nothing written.
        let existing: i64 = on_tx!(tx, |c| {
            sqlx::query(
                "SELECT id FROM inbox WHERE conversation_id = $1 AND platform_event_id = $2",
            )
            .bind(conversation_id)
            .bind(&e.platform_event_id)
            .fetch_one(c)
            .await?
            .col("id")?
        });
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

/// The done (or failed) mark, transcript rows and outbox rows of a finished event. `None` when
/// `owner` no longer holds the event's lease (nothing is written then).
async fn complete_event(
    tx: &mut Tx,
    event_id: i64,
    owner: &str,
    done: &Completion,
) -> Result<Option<(i64, Vec<(i64, i32, usize)>)>> {
    let now = tx.now;
    let finished: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
            "UPDATE inbox
             SET status = CASE WHEN CAST($1 AS TEXT) IS NULL THEN 'done' ELSE 'failed' END,
                 finished_at = $2, lease_owner = NULL, lease_until = NULL,
                 error = CAST($1 AS TEXT)
             WHERE id = $3 AND status = 'leased' AND lease_owner = $4
             RETURNING conversation_id",
        )
        .bind(&done.error)
        .bind(now)
        .bind(event_id)
        .bind(owner)
        .fetch_optional(c)
        .await?
        .map(|row| row.col("conversation_id"))
        .transpose()?
    });
    let Some(conversation_id) = finished else {
        return Ok(None);
    };
    for message in &done.messages {
        insert_message(tx, conversation_id, Some(event_id), message).await?;
    }
    let mut written = Vec::with_capacity(done.replies.len());
    for (n, reply) in done.replies.iter().enumerate() {
        let row = on_tx!(tx, |c| {
            sqlx::query(
                "INSERT INTO outbox (idempotency_key, event_id, conversation_id, payload,
                                     lease_until, attempts, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING id, attempts",
            )
            .bind(&reply.idempotency_key)
            .bind(event_id)
            .bind(conversation_id)
            .bind(&reply.payload)
            .bind(done.reply_lease_until)
            .bind(i32::from(done.reply_lease_until.is_some()))
            .bind(now)
            .fetch_optional(c)
            .await?
            .map(|row| Ok::<_, super::StoreError>((row.col("id")?, row.col("attempts")?)))
            .transpose()?
        });
        if let Some((id, attempts)) = row {
            written.push((id, attempts, n));
        }
    }
    Ok(Some((conversation_id, written)))
}

impl SqlStore {
    pub(crate) async fn insert_event_row(&self, event: &NewEvent) -> Result<Inserted> {
        let known = if dialect::locks_conversations(&self.db) {
            None
        } else {
            self.conversations.id(&event.conversation)
        };
        let (inserted, conversation_id) = self
            .db
            .write((event.clone(), known), |tx, (e, known)| {
                Box::pin(insert_event(tx, e, *known))
            })
            .await?;
        self.conversations
            .insert(&event.conversation, conversation_id);
        Ok(inserted)
    }

    pub(crate) async fn claim_event_row(
        &self,
        owner: &str,
        lease_until: i64,
    ) -> Result<Option<ClaimedEvent>> {
        let claimed = self
            .db
            .write((owner.to_string(), lease_until), |tx, (owner, until)| {
                Box::pin(async move {
                    let now = tx.now;
                    on_tx!(tx, CLAIM_EVENT, |c, sql| {
                        sqlx::query(sql)
                            .bind(owner)
                            .bind(*until)
                            .bind(now)
                            .fetch_optional(c)
                            .await?
                            .map(|row| {
                                Ok::<_, super::StoreError>((
                                    row.col::<i64>("id")?,
                                    row.col::<i64>("conversation_id")?,
                                    row.col::<String>("payload")?,
                                    row.col::<i32>("attempts")?,
                                    row.col::<i64>("received_at")?,
                                ))
                            })
                            .transpose()
                    })
                })
            })
            .await?;
        let Some((id, conversation_id, payload, attempts, received_at)) = claimed else {
            return Ok(None);
        };
        Ok(Some(ClaimedEvent {
            id,
            conversation_id,
            conversation: self.conversation_ref(conversation_id).await?,
            payload,
            attempts,
            received_at,
        }))
    }

    pub(crate) async fn renew_lease_row(
        &self,
        event_id: i64,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        self.db
            .write(
                (event_id, owner.to_string(), lease_until),
                |tx, (id, owner, until)| {
                    Box::pin(async move {
                        let done = on_tx!(tx, |c| {
                            sqlx::query(
                                "UPDATE inbox SET lease_until = $1
                                 WHERE id = $2 AND status = 'leased' AND lease_owner = $3",
                            )
                            .bind(*until)
                            .bind(*id)
                            .bind(owner)
                            .execute(c)
                            .await?
                            .rows_affected()
                        });
                        Ok(done == 1)
                    })
                },
            )
            .await
    }

    pub(crate) async fn release_leases_of(&self, owner: Option<&str>) -> Result<u64> {
        self.db
            .write(owner.map(str::to_string), |tx, owner| {
                Box::pin(async move {
                    let released = on_tx!(tx, |c| {
                        sqlx::query(
                            "UPDATE inbox SET status = 'pending', lease_owner = NULL,
                                              lease_until = NULL
                             WHERE status = 'leased'
                               AND (CAST($1 AS TEXT) IS NULL OR lease_owner = $1)",
                        )
                        .bind(owner)
                        .execute(c)
                        .await?
                        .rows_affected()
                    });
                    if owner.is_none() {
                        // Nothing else runs: replies claimed by the last run may go at once.
                        on_tx!(tx, |c| {
                            sqlx::query(
                                "UPDATE outbox SET lease_until = NULL WHERE status = 'pending'",
                            )
                            .execute(c)
                            .await?
                            .rows_affected()
                        });
                    }
                    Ok(released)
                })
            })
            .await
    }

    pub(crate) async fn complete_event_row(
        &self,
        event_id: i64,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Vec<OutboxItem>>> {
        let written = self
            .db
            .write(
                (event_id, owner.to_string(), done.clone()),
                |tx, (id, owner, done)| Box::pin(complete_event(tx, *id, owner, done)),
            )
            .await?;
        let Some((conversation_id, written)) = written else {
            return Ok(None);
        };
        let conversation = self.conversation_ref(conversation_id).await?;
        Ok(Some(
            written
                .into_iter()
                .map(|(id, attempts, n)| OutboxItem {
                    id,
                    idempotency_key: done.replies[n].idempotency_key.clone(),
                    event_id,
                    conversation: conversation.clone(),
                    payload: done.replies[n].payload.clone(),
                    attempts,
                })
                .collect(),
        ))
    }

    pub(crate) async fn fail_event_row(
        &self,
        event_id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        self.db
            .write(
                (event_id, owner.to_string(), error.to_string(), retry_at),
                |tx, (id, owner, error, retry_at)| {
                    Box::pin(async move {
                        let now = tx.now;
                        on_tx!(tx, |c| {
                            sqlx::query(
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
                            .execute(c)
                            .await?
                            .rows_affected()
                        });
                        Ok(())
                    })
                },
            )
            .await
    }

    pub(crate) async fn open_events(&self) -> Result<i64> {
        on_reader!(&self.db, |pool| {
            sqlx::query("SELECT COUNT(*) AS n FROM inbox WHERE status IN ('pending', 'leased')")
                .fetch_one(pool)
                .await?
                .col("n")
        })
    }

    pub(crate) async fn count_inbox(&self) -> Result<InboxCounts> {
        let counts: Vec<(String, i64)> = on_reader!(&self.db, |pool| {
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM inbox GROUP BY status")
                .fetch_all(pool)
                .await?;
            super::db::rows(&rows, |row| Ok((row.col("status")?, row.col("n")?)))?
        });
        let mut by_status = InboxCounts::default();
        for (status, n) in counts {
            match status.as_str() {
                "pending" => by_status.pending = n,
                "leased" => by_status.leased = n,
                "done" => by_status.done = n,
                "failed" => by_status.failed = n,
                _ => {}
            }
        }
        Ok(by_status)
    }
}
