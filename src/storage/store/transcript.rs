//! The transcript: messages of a conversation in order, with their attachments (artifacts).

use async_trait::async_trait;
use ecdysis_chat::ConversationRef;
use serde::{Deserialize, Serialize};

use super::conversations::upsert;
use super::db::{Columns, Tx, on_reader, rows};
use super::dialect::ATTACHMENTS;
use super::{ConversationId, EventId, MessageId, Result, SqlStore, StoreError, UnixMs};

/// A transcript role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// A tool call or result inside an agent turn.
    Tool,
    /// A compaction summary that stands for older turns.
    Summary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Summary => "summary",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "summary" => Role::Summary,
            other => return Err(StoreError::Corrupt(format!("unknown role `{other}`"))),
        })
    }
}

/// An artifact whose blob is already stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewArtifact {
    /// Public id (a UUID), used in `/api/artifacts/{id}`.
    pub id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

/// An artifact row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub id: String,
    pub conversation_id: ConversationId,
    pub message_id: Option<MessageId>,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
    pub created_at: UnixMs,
}

/// A message to add to the transcript.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub role: Role,
    pub text: String,
    /// Structured detail (tool call arguments and results, model, …) as JSON; `None` for plain
    /// text.
    pub meta: Option<String>,
    pub attachments: Vec<NewArtifact>,
}

/// A transcript message with its attachments.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub id: MessageId,
    pub event_id: Option<EventId>,
    pub role: Role,
    pub text: String,
    pub meta: Option<String>,
    pub attachments: Vec<Artifact>,
    pub created_at: UnixMs,
}

/// A transcript message to import, with its original time. `import_key` is unique: importing
/// the same message again writes nothing.
#[derive(Clone, Debug)]
pub struct ImportedMessage {
    pub import_key: String,
    pub role: Role,
    pub text: String,
    pub meta: Option<String>,
    pub created_at: UnixMs,
    /// Artifacts of the message (by their original public id; one already there is kept).
    pub attachments: Vec<NewArtifact>,
}

/// A conversation's messages and their files. An event's own rows (the user's message, the
/// answer) are written with the event (see [`super::Inbox`]); these are the rest.
#[async_trait]
pub trait Transcript: Send + Sync {
    /// The conversation's messages in order, after message `after` (0 for all), at most `limit`.
    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: MessageId,
        limit: i64,
    ) -> Result<Vec<Message>>;

    /// The last `limit` messages of the conversation, in order.
    async fn recent_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<Vec<Message>>;

    /// Append messages to a conversation outside an event's completion (agent tool steps).
    async fn append_messages(
        &self,
        conversation: &ConversationRef,
        event_id: Option<EventId>,
        messages: &[NewMessage],
    ) -> Result<Vec<MessageId>>;

    /// Number of messages in a conversation.
    async fn message_count(&self, conversation: &ConversationRef) -> Result<i64>;

    /// One artifact by its public id.
    async fn artifact(&self, id: &str) -> Result<Option<Artifact>>;

    /// Import a transcript message into a conversation (created if new); nothing is written
    /// when the conversation has a message with the same role, text and time (the original, or
    /// an earlier import) or one with the same `import_key`. Returns the message's id and
    /// whether it was written now.
    async fn import_message(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(MessageId, bool)>;
}

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

/// Add a message and its attachments; returns its id.
pub(crate) async fn insert_message(
    tx: &mut Tx,
    conversation_id: ConversationId,
    event_id: Option<EventId>,
    message: &NewMessage,
) -> Result<MessageId> {
    let now = tx.now;
    let id = tx
        .query(
            "INSERT INTO messages (conversation_id, event_id, role, text, meta, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(conversation_id)
        .bind(event_id)
        .bind(message.role.as_str())
        .bind(&message.text)
        .bind(&message.meta)
        .bind(now)
        .insert_id()
        .await?
        .map(MessageId)
        .ok_or_else(|| StoreError::Corrupt("a message was not inserted".into()))?;
    for artifact in &message.attachments {
        insert_artifact(tx, conversation_id, id, artifact, now, false).await?;
    }
    Ok(id)
}

/// Add an artifact of a message, created at `created_at`. With `keep_existing`, an artifact
/// whose id is there already is kept (imports); otherwise a second one is an error.
pub(crate) async fn insert_artifact(
    tx: &mut Tx,
    conversation_id: ConversationId,
    message_id: impl Into<Option<MessageId>>,
    a: &NewArtifact,
    created_at: UnixMs,
    keep_existing: bool,
) -> Result<()> {
    let message_id: Option<MessageId> = message_id.into();
    tx.query(
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
    .execute()
    .await?;
    Ok(())
}

async fn import_message_in(
    tx: &mut Tx,
    conversation: &ConversationRef,
    message: &ImportedMessage,
) -> Result<(MessageId, bool)> {
    let conversation_id = upsert(tx, conversation).await?;
    // The same message (an earlier import, or the message this export came from) is kept.
    let same: Option<MessageId> = tx
        .query(
            "SELECT id FROM messages
             WHERE conversation_id = $1 AND created_at = $2 AND role = $3 AND text = $4
             ORDER BY id LIMIT 1",
        )
        .bind(conversation_id)
        .bind(message.created_at)
        .bind(message.role.as_str())
        .bind(&message.text)
        .fetch_optional()
        .await?
        .map(|row| row.col("id"))
        .transpose()?;
    if let Some(id) = same {
        return Ok((id, false));
    }
    let inserted: Option<MessageId> = tx
        .query(
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
        .fetch_optional()
        .await?
        .map(|row| row.col("id"))
        .transpose()?;
    let Some(id) = inserted else {
        let id = tx
            .query("SELECT id FROM messages WHERE import_key = $1")
            .bind(&message.import_key)
            .fetch_one()
            .await?
            .col("id")?;
        return Ok((id, false));
    };
    for a in &message.attachments {
        insert_artifact(tx, conversation_id, id, a, message.created_at, true).await?;
    }
    Ok((id, true))
}

#[async_trait]
impl Transcript for SqlStore {
    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: MessageId,
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

    async fn recent_messages(
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

    async fn append_messages(
        &self,
        conversation: &ConversationRef,
        event_id: Option<EventId>,
        messages: &[NewMessage],
    ) -> Result<Vec<MessageId>> {
        self.db
            .write_to_lazy(
                conversation,
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

    async fn message_count(&self, conversation: &ConversationRef) -> Result<i64> {
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

    async fn artifact(&self, id: &str) -> Result<Option<Artifact>> {
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

    async fn import_message(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(MessageId, bool)> {
        self.db
            .write_to(
                conversation,
                (conversation.clone(), message.clone()),
                |tx, (conversation, message)| {
                    Box::pin(import_message_in(tx, conversation, message))
                },
            )
            .await
    }
}

impl SqlStore {
    /// Attach artifacts, in the order they were written, to messages (ordered by id).
    pub(crate) async fn with_attachments(
        &self,
        conversation_id: ConversationId,
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
}
