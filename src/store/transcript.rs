//! The transcript: messages of a conversation with their attachments (artifacts), and
//! compaction, which replaces older turns by a summary for the agent.

use ecdysis_chat::{ChannelRef, ConversationRef};

use super::conversations::upsert;
use super::db::{Columns, Tx, on_reader, on_tx, rows};
use super::dialect::ATTACHMENTS;
use super::{
    Artifact, Compaction, CompactionStats, ContextMessages, Message, NewArtifact, NewCompaction,
    NewMessage, Result, Role, SqlStore,
};

pub(crate) fn message_from_row(row: &impl Columns) -> Result<Message> {
    Ok(Message {
        id: row.col("id")?,
        event_id: row.col("event_id")?,
        role: Role::parse(&row.col::<String>("role")?)?,
        text: row.col("text")?,
        meta: row.col("meta")?,
        attachments: Vec::new(),
        created_at: row.col("created_at")?,
    })
}

pub(crate) fn artifact_from_row(row: &impl Columns) -> Result<Artifact> {
    Ok(Artifact {
        id: row.col("id")?,
        conversation_id: row.col("conversation_id")?,
        message_id: row.col("message_id")?,
        blob_key: row.col("blob_key")?,
        name: row.col("name")?,
        mime: row.col("mime")?,
        size: row.col("size")?,
        created_at: row.col("created_at")?,
    })
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

/// Add a message and its attachments; returns its id.
pub(crate) async fn insert_message(
    tx: &mut Tx,
    conversation_id: i64,
    event_id: Option<i64>,
    message: &NewMessage,
) -> Result<i64> {
    let now = tx.now;
    let id: i64 = on_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO messages (conversation_id, event_id, role, text, meta, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(conversation_id)
        .bind(event_id)
        .bind(message.role.as_str())
        .bind(&message.text)
        .bind(&message.meta)
        .bind(now)
        .fetch_one(c)
        .await?
        .col("id")?
    });
    for artifact in &message.attachments {
        insert_artifact(tx, conversation_id, id, artifact, now, false).await?;
    }
    Ok(id)
}

/// Add an artifact of a message, created at `created_at`. With `keep_existing`, an artifact
/// whose id is there already is kept (imports); otherwise a second one is an error.
pub(crate) async fn insert_artifact(
    tx: &mut Tx,
    conversation_id: i64,
    message_id: i64,
    a: &NewArtifact,
    created_at: i64,
    keep_existing: bool,
) -> Result<()> {
    on_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO artifacts (id, conversation_id, message_id, blob_key, name, mime, size,
                                    created_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8
             WHERE NOT ($9 AND EXISTS (SELECT 1 FROM artifacts WHERE id = $1))",
        )
        .bind(&a.id)
        .bind(conversation_id)
        .bind(message_id)
        .bind(&a.blob_key)
        .bind(&a.name)
        .bind(&a.mime)
        .bind(a.size)
        .bind(created_at)
        .bind(keep_existing)
        .execute(c)
        .await?
        .rows_affected()
    });
    Ok(())
}

async fn compact(
    tx: &mut Tx,
    conversation: &ConversationRef,
    compaction: &NewCompaction,
) -> Result<Compaction> {
    let conversation_id = upsert(tx, conversation).await?;
    let now = tx.now;
    // The range (not summaries) is compacted, tool detail moved out (the archive has it), and
    // every earlier summary is replaced by the new one.
    let compacted = on_tx!(tx, |c| {
        sqlx::query(
            "UPDATE messages
             SET compacted = TRUE, meta = CASE WHEN role = 'tool' THEN NULL ELSE meta END
             WHERE conversation_id = $1 AND id BETWEEN $2 AND $3
               AND NOT compacted AND role <> 'summary'",
        )
        .bind(conversation_id)
        .bind(compaction.first_message_id)
        .bind(compaction.last_message_id)
        .execute(c)
        .await?
        .rows_affected()
    });
    let compacted = i64::try_from(compacted).unwrap_or(i64::MAX);
    on_tx!(tx, |c| {
        sqlx::query(
            "UPDATE messages SET compacted = TRUE
             WHERE conversation_id = $1 AND role = 'summary' AND NOT compacted",
        )
        .bind(conversation_id)
        .execute(c)
        .await?
        .rows_affected()
    });
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
    on_tx!(tx, |c| {
        compaction_from_row(
            &sqlx::query(
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
            .fetch_one(c)
            .await?,
        )
    })
}

impl SqlStore {
    /// Attach artifacts, in the order they were written, to messages (ordered by id).
    async fn with_attachments(
        &self,
        conversation_id: i64,
        mut messages: Vec<Message>,
    ) -> Result<Vec<Message>> {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Ok(messages);
        };
        let (first, last) = (first.id, last.id);
        let artifacts = on_reader!(&self.db, ATTACHMENTS, |pool, sql| {
            let found = sqlx::query(sql)
                .bind(conversation_id)
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await?;
            rows(&found, artifact_from_row)?
        });
        for artifact in artifacts {
            if let Some(message) = messages
                .iter_mut()
                .find(|m| Some(m.id) == artifact.message_id)
            {
                message.attachments.push(artifact);
            }
        }
        Ok(messages)
    }

    pub(crate) async fn messages_after(
        &self,
        conversation: &ConversationRef,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        let messages = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, event_id, role, text, meta, created_at FROM messages
                 WHERE conversation_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(conversation_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, message_from_row)?
        });
        self.with_attachments(conversation_id, messages).await
    }

    pub(crate) async fn latest_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        let mut messages = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, event_id, role, text, meta, created_at FROM messages
                 WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(conversation_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, message_from_row)?
        });
        messages.reverse();
        self.with_attachments(conversation_id, messages).await
    }

    pub(crate) async fn append(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
    ) -> Result<Vec<i64>> {
        self.db
            .write(
                (conversation.clone(), event_id, messages.to_vec()),
                |tx, (conversation, event_id, messages)| {
                    Box::pin(async move {
                        let conversation_id = upsert(tx, conversation).await?;
                        let mut ids = Vec::with_capacity(messages.len());
                        for message in messages {
                            ids.push(
                                insert_message(tx, conversation_id, *event_id, message).await?,
                            );
                        }
                        Ok(ids)
                    })
                },
            )
            .await
    }

    pub(crate) async fn count_messages(&self, conversation: &ConversationRef) -> Result<i64> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(0);
        };
        on_reader!(&self.db, |pool| {
            sqlx::query("SELECT COUNT(*) AS n FROM messages WHERE conversation_id = $1")
                .bind(conversation_id)
                .fetch_one(pool)
                .await?
                .col("n")
        })
    }

    pub(crate) async fn find_artifact(&self, id: &str) -> Result<Option<Artifact>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT id, conversation_id, message_id, blob_key, name, mime, size, created_at
                 FROM artifacts WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(artifact_from_row)
            .transpose()
        })
    }

    pub(crate) async fn context(
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
            .unwrap_or(0);
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

    pub(crate) async fn compact_messages(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction> {
        self.db
            .write(
                (conversation.clone(), compaction.clone()),
                |tx, (conversation, compaction)| Box::pin(compact(tx, conversation, compaction)),
            )
            .await
    }

    pub(crate) async fn conversation_compactions(
        &self,
        conversation: &ConversationRef,
    ) -> Result<Vec<Compaction>> {
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

    pub(crate) async fn channel_compactions(
        &self,
        channel: &ChannelRef,
    ) -> Result<CompactionStats> {
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
}
