//! The outbox: replies waiting for delivery, claimed with a lease; each carries an idempotency
//! key, so a re-run never posts twice.

use super::db::{Columns, on_tx, rows};
use super::dialect::CLAIM_REPLIES;
use super::{OutboxItem, Result, SqlStore};

impl SqlStore {
    pub(crate) async fn claim_outbox(
        &self,
        event_id: Option<i64>,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let claimed = self
            .db
            .write(
                (event_id, lease_until, limit),
                |tx, (event_id, until, limit)| {
                    Box::pin(async move {
                        let now = tx.now;
                        on_tx!(tx, CLAIM_REPLIES, |c, sql| {
                            let found = sqlx::query(sql)
                                .bind(*until)
                                .bind(now)
                                .bind(*event_id)
                                .bind(*limit)
                                .fetch_all(c)
                                .await?;
                            rows(&found, |row| {
                                Ok((
                                    row.col::<i64>("id")?,
                                    row.col::<String>("idempotency_key")?,
                                    row.col::<i64>("event_id")?,
                                    row.col::<i64>("conversation_id")?,
                                    row.col::<String>("payload")?,
                                    row.col::<i32>("attempts")?,
                                ))
                            })
                        })
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

    pub(crate) async fn reply_sent(
        &self,
        id: i64,
        platform_message_id: Option<&str>,
    ) -> Result<()> {
        self.db
            .write(
                (id, platform_message_id.map(str::to_string)),
                |tx, (id, platform_message_id)| {
                    Box::pin(async move {
                        let now = tx.now;
                        on_tx!(tx, |c| {
                            sqlx::query(
                                "UPDATE outbox SET status = 'sent', sent_at = $1,
                                                   platform_message_id = $2,
                                                   lease_until = NULL, error = NULL
                                 WHERE id = $3",
                            )
                            .bind(now)
                            .bind(platform_message_id)
                            .bind(*id)
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

    pub(crate) async fn reply_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        self.db
            .write(
                (id, error.to_string(), retry_at),
                |tx, (id, error, retry_at)| {
                    Box::pin(async move {
                        on_tx!(tx, |c| {
                            sqlx::query(
                                "UPDATE outbox
                                 SET status = CASE WHEN CAST($1 AS BIGINT) IS NULL
                                                   THEN 'failed' ELSE 'pending' END,
                                     lease_until = CAST($1 AS BIGINT), error = $2
                                 WHERE id = $3",
                            )
                            .bind(*retry_at)
                            .bind(error)
                            .bind(*id)
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
}
