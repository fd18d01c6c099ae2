//! Live messages: the platform handles of answers shown while they are written, kept so that a
//! re-run of the event (after a crash or a retry) finishes the same platform message instead of
//! posting a second one.
//!
//! They are rows of the outbox in the state `live`, which delivery never claims, under the key
//! `live:{event_id}:{piece}`; the handle (adapter-defined JSON) sits in `platform_message_id`.

use async_trait::async_trait;

use super::db::{Columns, on_reader, rows};
use super::{EventId, Result, SqlStore};

/// The handles of live messages, by event and piece of the answer.
#[async_trait]
pub trait LiveMessages: Send + Sync {
    /// Store (or replace) the handle of piece `piece` of the answer to `event_id`. Written
    /// before the message is first updated; nothing is written for an unknown event.
    async fn save_live_message(&self, event_id: EventId, piece: usize, handle: &str) -> Result<()>;

    /// The stored handles of an event's live messages: (piece, handle), by piece.
    async fn live_messages(&self, event_id: EventId) -> Result<Vec<(usize, String)>>;
}

fn live_key(event_id: EventId, piece: usize) -> String {
    format!("live:{event_id}:{piece}")
}

#[async_trait]
impl LiveMessages for SqlStore {
    async fn save_live_message(&self, event_id: EventId, piece: usize, handle: &str) -> Result<()> {
        self.db
            .write(
                (event_id, live_key(event_id, piece), handle.to_string()),
                |tx, (event_id, key, handle)| {
                    Box::pin(async move {
                        let now = tx.now;
                        tx.query(
                            "INSERT INTO outbox (idempotency_key, event_id, conversation_id,
                                                     payload, status, platform_message_id,
                                                     created_at)
                                 SELECT $1, id, conversation_id, '{}', 'live', $2, $3
                                 FROM inbox WHERE id = $4
                                 ON CONFLICT (idempotency_key)
                                 DO UPDATE SET platform_message_id = excluded.platform_message_id",
                        )
                        .bind(key)
                        .bind(handle)
                        .bind(now)
                        .bind(*event_id)
                        .execute()
                        .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn live_messages(&self, event_id: EventId) -> Result<Vec<(usize, String)>> {
        let prefix = format!("live:{event_id}:");
        let found = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT idempotency_key, platform_message_id FROM outbox
                 WHERE event_id = $1 AND status = 'live' AND platform_message_id IS NOT NULL",
            )
            .bind(event_id)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok((
                    row.col::<String>("idempotency_key")?,
                    row.col::<String>("platform_message_id")?,
                ))
            })?
        });
        let mut handles: Vec<(usize, String)> = found
            .into_iter()
            .filter_map(|(key, handle)| {
                let piece = key.strip_prefix(&prefix)?.parse().ok()?;
                Some((piece, handle))
            })
            .collect();
        handles.sort_by_key(|(piece, _)| *piece);
        Ok(handles)
    }
}
