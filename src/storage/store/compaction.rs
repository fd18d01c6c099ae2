//! Compaction: the older turns of a long conversation replaced, for the agent, by a summary,
//! and archived verbatim in the blob store.

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::Serialize;

use super::conversations::upsert;
use super::db::{Columns, Tx, on_reader, rows};
use super::transcript::{insert_message, message_from_row};
use super::{
    CompactionId, EventId, Message, MessageId, NewMessage, Result, Role, SqlStore, UnixMs,
};

/// One compaction: older turns of a conversation replaced (for the agent) by a summary, and
/// archived verbatim in the blob store under `archive_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compaction {
    pub id: CompactionId,
    /// The summary message (role `summary`) that stands for the compacted turns.
    pub summary_message_id: MessageId,
    /// The compacted range of message ids (inclusive).
    pub first_message_id: MessageId,
    pub last_message_id: MessageId,
    /// How many messages were compacted.
    pub message_count: i64,
    /// Where the compacted messages are archived (JSON lines in the blob store).
    pub archive_key: String,
    pub created_at: UnixMs,
}

/// A compaction to record.
#[derive(Clone, Debug)]
pub struct NewCompaction {
    /// The event during which the compaction ran.
    pub event_id: Option<EventId>,
    pub first_message_id: MessageId,
    pub last_message_id: MessageId,
    pub summary: String,
    /// Already written to the blob store.
    pub archive_key: String,
}

/// What the agent reads of a conversation: the latest summary and the messages after it.
#[derive(Clone, Debug, Default)]
pub struct ContextMessages {
    /// The latest compaction's summary message and the compaction itself.
    pub summary: Option<(Message, Compaction)>,
    /// Messages that are not compacted (and not summaries), newest `limit`, in order.
    pub messages: Vec<Message>,
}

/// Compactions of a channel's conversations, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactionStats {
    pub count: i64,
    pub messages: i64,
    pub last_at: Option<UnixMs>,
}

/// A compaction to import, with message ids already mapped to the importing database.
#[derive(Clone, Debug)]
pub struct ImportedCompaction {
    pub summary_message_id: MessageId,
    pub first_message_id: MessageId,
    pub last_message_id: MessageId,
    pub message_count: i64,
    pub archive_key: String,
    pub created_at: UnixMs,
}

/// Long conversations: older turns replaced, for the agent, by a summary.
#[async_trait]
pub trait Compactions: Send + Sync {
    /// The agent's context: the latest compaction summary, and the newest `limit` messages
    /// after it that are neither compacted nor summaries, in order.
    async fn context_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<ContextMessages>;

    /// Compact messages `first..=last` of a conversation, in one transaction: mark them (and
    /// earlier summaries) compacted, drop the bulky `meta` of compacted tool rows (the archive
    /// holds it verbatim), add the summary message and the compaction row.
    async fn compact(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction>;

    /// A conversation's compactions, oldest first (an export reads the archives they name).
    async fn compactions(&self, conversation: &ConversationRef) -> Result<Vec<Compaction>>;

    /// Compactions of every conversation of a channel.
    async fn compaction_stats(&self, channel: &ChannelRef) -> Result<CompactionStats>;

    /// Import a compaction (marking the messages it covers compacted, like
    /// [`Compactions::compact`]); a compaction of the conversation with the same archive key is
    /// not written twice.
    async fn import_compaction(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool>;
}

pub(crate) fn compaction_from_row(row: &impl Columns) -> Result<Compaction> {
    Ok(Compaction {
        id: row.col("id")?,
        summary_message_id: row.col("summary_message_id")?,
        first_message_id: row.col("first_message_id")?,
        last_message_id: row.col("last_message_id")?,
        message_count: row.col("message_count")?,
        archive_key: row.col("archive_key")?,
        created_at: row.col("created_at")?,
    })
}

async fn compact_in(
    tx: &mut Tx,
    conversation: &ConversationRef,
    compaction: &NewCompaction,
) -> Result<Compaction> {
    let conversation_id = upsert(tx, conversation).await?;
    let now = tx.now;
    // The range (not summaries) is compacted, tool detail moved out (the archive has it), and
    // every earlier summary is replaced by the new one.
    let compacted = tx
        .query(
            "UPDATE messages
             SET compacted = TRUE, meta = CASE WHEN role = 'tool' THEN NULL ELSE meta END
             WHERE conversation_id = $1 AND id BETWEEN $2 AND $3
               AND NOT compacted AND role <> 'summary'",
        )
        .bind(conversation_id)
        .bind(compaction.first_message_id)
        .bind(compaction.last_message_id)
        .execute()
        .await?
        .rows_affected();
    let compacted = i64::try_from(compacted).unwrap_or(i64::MAX);
    tx.query(
        "UPDATE messages SET compacted = TRUE
             WHERE conversation_id = $1 AND role = 'summary' AND NOT compacted",
    )
    .bind(conversation_id)
    .execute()
    .await?;
    let meta = serde_json::json!({
        "archive_key": compaction.archive_key,
        "first_message_id": compaction.first_message_id,
        "last_message_id": compaction.last_message_id,
        "message_count": compacted,
    });
    let summary = NewMessage {
        role: Role::Summary,
        text: compaction.summary.clone(),
        meta: Some(meta.to_string()),
        attachments: Vec::new(),
    };
    let summary_id = insert_message(tx, conversation_id, compaction.event_id, &summary).await?;
    {
        compaction_from_row(
            &tx.query(
                "INSERT INTO compactions (conversation_id, summary_message_id, first_message_id,
                                          last_message_id, message_count, archive_key,
                                          created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 RETURNING id, summary_message_id, first_message_id, last_message_id,
                           message_count, archive_key, created_at",
            )
            .bind(conversation_id)
            .bind(summary_id)
            .bind(compaction.first_message_id)
            .bind(compaction.last_message_id)
            .bind(compacted)
            .bind(&compaction.archive_key)
            .bind(now)
            .fetch_one()
            .await?,
        )
    }
}

async fn import_compaction_in(
    tx: &mut Tx,
    conversation: &ConversationRef,
    compaction: &ImportedCompaction,
) -> Result<bool> {
    let conversation_id = upsert(tx, conversation).await?;
    let exists = tx
        .query("SELECT 1 FROM compactions WHERE conversation_id = $1 AND archive_key = $2")
        .bind(conversation_id)
        .bind(&compaction.archive_key)
        .fetch_optional()
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    tx.query(
        "UPDATE messages SET compacted = TRUE
             WHERE conversation_id = $1
               AND ((id BETWEEN $2 AND $3 AND role <> 'summary')
                    OR (role = 'summary' AND id < $4))",
    )
    .bind(conversation_id)
    .bind(compaction.first_message_id)
    .bind(compaction.last_message_id)
    .bind(compaction.summary_message_id)
    .execute()
    .await?;
    tx.query(
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
    .execute()
    .await?;
    Ok(true)
}

#[async_trait]
impl Compactions for SqlStore {
    async fn context_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<ContextMessages> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(ContextMessages::default());
        };
        let latest = on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT id, summary_message_id, first_message_id, last_message_id,
                        message_count, archive_key, created_at
                 FROM compactions WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(conversation_id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(compaction_from_row)
            .transpose()?
        });
        let summary = match latest {
            Some(compaction) => {
                let message = on_reader!(&self.db, |pool| {
                    message_from_row(
                        &sqlx::query(
                            "SELECT id, event_id, role, text, meta, created_at
                             FROM messages WHERE id = $1",
                        )
                        .bind(compaction.summary_message_id)
                        .fetch_one(pool)
                        .await?,
                    )?
                });
                Some((message, compaction))
            }
            None => None,
        };
        let after = summary
            .as_ref()
            .map(|(_, c)| c.last_message_id)
            .unwrap_or_default();
        let mut messages = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, event_id, role, text, meta, created_at FROM messages
                 WHERE conversation_id = $1 AND id > $2 AND NOT compacted AND role <> 'summary'
                 ORDER BY id DESC LIMIT $3",
            )
            .bind(conversation_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, message_from_row)?
        });
        messages.reverse();
        let messages = self.with_attachments(conversation_id, messages).await?;
        Ok(ContextMessages { summary, messages })
    }

    async fn compact(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction> {
        self.db
            .write_to(
                conversation,
                (conversation.clone(), compaction.clone()),
                |tx, (conversation, compaction)| Box::pin(compact_in(tx, conversation, compaction)),
            )
            .await
    }

    async fn compactions(&self, conversation: &ConversationRef) -> Result<Vec<Compaction>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, summary_message_id, first_message_id, last_message_id,
                        message_count, archive_key, created_at
                 FROM compactions WHERE conversation_id = $1 ORDER BY id",
            )
            .bind(conversation_id)
            .fetch_all(pool)
            .await?;
            rows(&found, compaction_from_row)
        })
    }

    async fn compaction_stats(&self, channel: &ChannelRef) -> Result<CompactionStats> {
        on_reader!(&self.db, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(k.message_count), 0) AS BIGINT) AS messages,
                        MAX(k.created_at) AS last_at
                 FROM compactions k JOIN conversations c ON c.id = k.conversation_id
                 WHERE c.platform = $1 AND c.workspace = $2 AND c.channel = $3",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .fetch_one(pool)
            .await?;
            Ok(CompactionStats {
                count: row.col("n")?,
                messages: row.col("messages")?,
                last_at: row.col("last_at")?,
            })
        })
    }
    async fn import_compaction(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool> {
        self.db
            .write_to(
                conversation,
                (conversation.clone(), compaction.clone()),
                |tx, (conversation, compaction)| {
                    Box::pin(import_compaction_in(tx, conversation, compaction))
                },
            )
            .await
    }
}
