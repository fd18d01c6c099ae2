//! Importing a backup: transcript messages and compactions, each written once however often the
//! same export is imported (notes are imported in [`super::memory`]).

use ecdysis_chat::ConversationRef;

use super::conversations::upsert;
use super::db::{Columns, Tx, on_tx};
use super::transcript::insert_artifact;
use super::{ImportedCompaction, ImportedMessage, Result, SqlStore};

async fn import_message(
    tx: &mut Tx,
    conversation: &ConversationRef,
    message: &ImportedMessage,
) -> Result<(i64, bool)> {
    let conversation_id = upsert(tx, conversation).await?;
    // The same message (an earlier import, or the message this export came from) is kept.
    let same: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
            "SELECT id FROM messages
             WHERE conversation_id = $1 AND created_at = $2 AND role = $3 AND text = $4
             ORDER BY id LIMIT 1",
        )
        .bind(conversation_id)
        .bind(message.created_at)
        .bind(message.role.as_str())
        .bind(&message.text)
        .fetch_optional(c)
        .await?
        .map(|row| row.col("id"))
        .transpose()?
    });
    if let Some(id) = same {
        return Ok((id, false));
    }
    let inserted: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO messages (conversation_id, role, text, meta, created_at, import_key)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (import_key) WHERE import_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(conversation_id)
        .bind(message.role.as_str())
        .bind(&message.text)
        .bind(&message.meta)
        .bind(message.created_at)
        .bind(&message.import_key)
        .fetch_optional(c)
        .await?
        .map(|row| row.col("id"))
        .transpose()?
    });
    let Some(id) = inserted else {
        let id = on_tx!(tx, |c| {
            sqlx::query("SELECT id FROM messages WHERE import_key = $1")
                .bind(&message.import_key)
                .fetch_one(c)
                .await?
                .col("id")?
        });
        return Ok((id, false));
    };
    for a in &message.attachments {
        insert_artifact(tx, conversation_id, id, a, message.created_at, true).await?;
    }
    Ok((id, true))
}

async fn import_compaction(
    tx: &mut Tx,
    conversation: &ConversationRef,
    compaction: &ImportedCompaction,
) -> Result<bool> {
    let conversation_id = upsert(tx, conversation).await?;
    let exists = on_tx!(tx, |c| {
        sqlx::query("SELECT 1 FROM compactions WHERE conversation_id = $1 AND archive_key = $2")
            .bind(conversation_id)
            .bind(&compaction.archive_key)
            .fetch_optional(c)
            .await?
            .is_some()
    });
    if exists {
        return Ok(false);
    }
    on_tx!(tx, |c| {
        sqlx::query(
            "UPDATE messages SET compacted = TRUE
             WHERE conversation_id = $1
               AND ((id BETWEEN $2 AND $3 AND role <> 'summary')
                    OR (role = 'summary' AND id < $4))",
        )
        .bind(conversation_id)
        .bind(compaction.first_message_id)
        .bind(compaction.last_message_id)
        .bind(compaction.summary_message_id)
        .execute(c)
        .await?
        .rows_affected()
    });
    on_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO compactions (conversation_id, summary_message_id, first_message_id,
                                      last_message_id, message_count, archive_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(conversation_id)
        .bind(compaction.summary_message_id)
        .bind(compaction.first_message_id)
        .bind(compaction.last_message_id)
        .bind(compaction.message_count)
        .bind(&compaction.archive_key)
        .bind(compaction.created_at)
        .execute(c)
        .await?
        .rows_affected()
    });
    Ok(true)
}

impl SqlStore {
    pub(crate) async fn import_message_row(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(i64, bool)> {
        self.db
            .write(
                (conversation.clone(), message.clone()),
                |tx, (conversation, message)| Box::pin(import_message(tx, conversation, message)),
            )
            .await
    }

    pub(crate) async fn import_compaction_row(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool> {
        self.db
            .write(
                (conversation.clone(), compaction.clone()),
                |tx, (conversation, compaction)| {
                    Box::pin(import_compaction(tx, conversation, compaction))
                },
            )
            .await
    }
}
