//! Files that arrive with events: what became of each file an event referred to (fetched after
//! the acknowledgement), and what the model reads of an artifact (a scaled image, a document's
//! text, a transcript), computed once and kept.

use async_trait::async_trait;

use super::db::{Columns, Tx, on_reader, rows};
use super::transcript::{NewArtifact, insert_artifact};
use super::{ConversationId, EventId, MessageId, Result, SqlStore, StoreError};

/// What became of one file of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFile {
    /// The file's position in the event's list.
    pub idx: i64,
    /// The artifact it was stored as.
    pub artifact: Option<NewArtifact>,
    /// Why it was left out (for the model and the user).
    pub note: Option<String>,
}

/// What the model reads of an artifact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extract {
    /// `image`, `text`, `transcript`, …
    pub kind: String,
    pub text: Option<String>,
    /// A derived blob (the scaled image).
    pub blob_key: Option<String>,
    pub mime: Option<String>,
    /// Small JSON detail (dimensions, pages, a note).
    pub detail: Option<String>,
}

/// Files of events and their extracts.
#[async_trait]
pub trait Media: Send + Sync {
    /// What became of the files of an event so far, by position.
    async fn event_files(&self, event: EventId) -> Result<Vec<EventFile>>;

    /// Record what became of file `file.idx` of an event, in one transaction: the artifact
    /// (whose blob is stored already) is attached to the event's user message. Recording a
    /// position twice keeps the first record.
    async fn record_event_file(&self, event: EventId, file: &EventFile) -> Result<()>;

    /// The extract of an artifact of one kind.
    async fn extract(&self, artifact_id: &str, kind: &str) -> Result<Option<Extract>>;

    /// Keep an extract of an artifact (a second one of the same kind is ignored).
    async fn put_extract(&self, artifact_id: &str, extract: &Extract) -> Result<()>;
}

fn event_file_from_row(row: &impl Columns) -> Result<EventFile> {
    let artifact_id: Option<String> = row.col("artifact_id")?;
    let artifact = match artifact_id {
        Some(id) => Some(NewArtifact {
            id,
            blob_key: row.col("blob_key")?,
            name: row.col("name")?,
            mime: row.col("mime")?,
            size: row.col("size")?,
        }),
        None => None,
    };
    Ok(EventFile {
        idx: row.col("idx")?,
        artifact,
        note: row.col("note")?,
    })
}

async fn record_in(tx: &mut Tx, event: EventId, file: &EventFile) -> Result<()> {
    let now = tx.now;
    let known: Option<i64> = tx
        .query("SELECT idx FROM event_files WHERE event_id = $1 AND idx = $2")
        .bind(event)
        .bind(file.idx)
        .fetch_optional()
        .await?
        .map(|row| row.col("idx"))
        .transpose()?;
    if known.is_some() {
        return Ok(());
    }
    if let Some(artifact) = &file.artifact {
        let conversation: Option<ConversationId> = tx
            .query("SELECT conversation_id FROM inbox WHERE id = $1")
            .bind(event)
            .fetch_optional()
            .await?
            .map(|row| row.col("conversation_id"))
            .transpose()?;
        let conversation = conversation
            .ok_or_else(|| StoreError::Corrupt(format!("event {} is not in the inbox", event.0)))?;
        let message: Option<MessageId> = tx
            .query(
                "SELECT id FROM messages WHERE event_id = $1 AND role = 'user' ORDER BY id LIMIT 1",
            )
            .bind(event)
            .fetch_optional()
            .await?
            .map(|row| row.col("id"))
            .transpose()?;
        insert_artifact(tx, conversation, message, artifact, now, true).await?;
    }
    tx.query(
        "INSERT INTO event_files (event_id, idx, artifact_id, note, created_at)
             VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event)
    .bind(file.idx)
    .bind(file.artifact.as_ref().map(|a| a.id.clone()))
    .bind(&file.note)
    .bind(now)
    .execute()
    .await?;
    Ok(())
}

#[async_trait]
impl Media for SqlStore {
    async fn event_files(&self, event: EventId) -> Result<Vec<EventFile>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT f.idx, f.artifact_id, f.note, a.blob_key, a.name, a.mime, a.size
                 FROM event_files f LEFT JOIN artifacts a ON a.id = f.artifact_id
                 WHERE f.event_id = $1 ORDER BY f.idx",
            )
            .bind(event)
            .fetch_all(pool)
            .await?;
            rows(&found, event_file_from_row)
        })
    }

    async fn record_event_file(&self, event: EventId, file: &EventFile) -> Result<()> {
        self.db
            .write((event, file.clone()), |tx, (event, file)| {
                Box::pin(record_in(tx, *event, file))
            })
            .await
    }

    async fn extract(&self, artifact_id: &str, kind: &str) -> Result<Option<Extract>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT kind, text, blob_key, mime, detail FROM artifact_extracts
                 WHERE artifact_id = $1 AND kind = $2",
            )
            .bind(artifact_id)
            .bind(kind)
            .fetch_optional(pool)
            .await?
            .map(|row| {
                Ok::<_, StoreError>(Extract {
                    kind: row.col("kind")?,
                    text: row.col("text")?,
                    blob_key: row.col("blob_key")?,
                    mime: row.col("mime")?,
                    detail: row.col("detail")?,
                })
            })
            .transpose()
        })
    }

    async fn put_extract(&self, artifact_id: &str, extract: &Extract) -> Result<()> {
        self.db
            .write(
                (artifact_id.to_string(), extract.clone()),
                |tx, (artifact_id, extract)| {
                    Box::pin(async move {
                        let now = tx.now;
                        tx.query(
                            "INSERT INTO artifact_extracts
                                     (artifact_id, kind, text, blob_key, mime, detail, created_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                                 ON CONFLICT (artifact_id, kind) DO NOTHING",
                        )
                        .bind(artifact_id)
                        .bind(&extract.kind)
                        .bind(&extract.text)
                        .bind(&extract.blob_key)
                        .bind(&extract.mime)
                        .bind(&extract.detail)
                        .bind(now)
                        .execute()
                        .await?;
                        Ok(())
                    })
                },
            )
            .await
    }
}
