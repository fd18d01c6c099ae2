//! What the admin pages read across tables: conversations by activity, the inbox by state, the
//! newest event per platform, and re-running a failed event.

use ecdysis_chat::ChannelRef;

use super::conversations::conversation_from_row;
use super::db::{Columns, on_reader, on_tx, rows};
use super::{ConversationInfo, InboxEvent, Result, SqlStore};

impl SqlStore {
    pub(crate) async fn active_conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT c.id, c.platform, c.workspace, c.channel, c.thread, c.created_at,
                        COUNT(m.id) AS messages, MAX(m.created_at) AS last_message_at
                 FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
                 WHERE CAST($1 AS TEXT) IS NULL
                    OR (c.platform = $1 AND c.workspace = $2 AND c.channel = $3)
                 GROUP BY c.id
                 ORDER BY COALESCE(MAX(m.created_at), c.created_at) DESC, c.id DESC
                 LIMIT $4",
            )
            .bind(channel.map(|c| c.platform.as_str()))
            .bind(channel.map(|c| c.workspace.as_str()))
            .bind(channel.map(|c| c.channel.as_str()))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ConversationInfo {
                    id: row.col("id")?,
                    conversation: conversation_from_row(row)?,
                    messages: row.col("messages")?,
                    last_message_at: row.col("last_message_at")?,
                    created_at: row.col("created_at")?,
                })
            })
        })
    }

    pub(crate) async fn events_in(&self, status: &str, limit: i64) -> Result<Vec<InboxEvent>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT i.id, i.platform_event_id, i.status, i.attempts, i.error, i.lease_owner,
                        i.received_at, i.finished_at, c.platform, c.workspace, c.channel,
                        c.thread,
                        (SELECT m.text FROM messages m
                         WHERE m.conversation_id = i.conversation_id AND m.event_id = i.id
                           AND m.role = 'user'
                         ORDER BY m.id LIMIT 1) AS text
                 FROM inbox i JOIN conversations c ON c.id = i.conversation_id
                 WHERE i.status = $1
                 ORDER BY i.id DESC
                 LIMIT $2",
            )
            .bind(status)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(InboxEvent {
                    id: row.col("id")?,
                    conversation: conversation_from_row(row)?,
                    platform_event_id: row.col("platform_event_id")?,
                    status: row.col("status")?,
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

    pub(crate) async fn retry_failed(&self, id: i64) -> Result<Option<i64>> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        self.db
            .write((id, suffix), |tx, (id, suffix)| {
                Box::pin(async move {
                    let now = tx.now;
                    // Marked first: of two concurrent retries, only one finds it failed.
                    let old = on_tx!(tx, |c| {
                        sqlx::query(
                            "UPDATE inbox SET status = 'retried' WHERE id = $1 AND status = 'failed'
                             RETURNING platform, platform_event_id, conversation_id, payload",
                        )
                        .bind(*id)
                        .fetch_optional(c)
                        .await?
                        .map(|row| {
                            Ok::<_, super::StoreError>((
                                row.col::<String>("platform")?,
                                row.col::<String>("platform_event_id")?,
                                row.col::<i64>("conversation_id")?,
                                row.col::<String>("payload")?,
                            ))
                        })
                        .transpose()?
                    });
                    let Some((platform, original, conversation_id, payload)) = old else {
                        return Ok(None);
                    };
                    // A copy at the end of its conversation, under a new platform event id.
                    let new_id: i64 = on_tx!(tx, |c| {
                        sqlx::query(
                            "INSERT INTO inbox (platform, platform_event_id, conversation_id,
                                                payload, available_at, received_at)
                             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
                        )
                        .bind(&platform)
                        .bind(format!("{original}#retry-{suffix}"))
                        .bind(conversation_id)
                        .bind(&payload)
                        .bind(now)
                        .fetch_one(c)
                        .await?
                        .col("id")?
                    });
                    on_tx!(tx, |c| {
                        sqlx::query("UPDATE inbox SET error = $1 WHERE id = $2")
                            .bind(format!("retried as event {new_id}"))
                            .bind(*id)
                            .execute(c)
                            .await?
                            .rows_affected()
                    });
                    Ok(Some(new_id))
                })
            })
            .await
    }

    pub(crate) async fn newest_event_per_platform(&self) -> Result<Vec<(String, i64)>> {
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
