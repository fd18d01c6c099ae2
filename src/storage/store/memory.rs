//! Memory notes: what a channel asked the agent to remember, searchable by full text (FTS5 on
//! SQLite, a `tsvector` on Postgres; see [`super::dialect::RECALL`]). Every write is one
//! transaction.

use async_trait::async_trait;
use ecdysis_chat::ChannelRef;
use serde::{Deserialize, Serialize};

use super::conversations::channel_from_row;
use super::db::{Columns, Tx, on_reader, rows};
use super::dialect::{RECALL, text_query};
use super::{NoteId, Result, SqlStore, UnixMs};

/// A memory note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    pub id: NoteId,
    pub text: String,
    pub created_by: String,
    pub created_at: UnixMs,
}

/// A note to remember.
#[derive(Clone, Debug)]
pub struct NewNote {
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    /// Makes the write idempotent: the same source never stores a second note.
    pub source: Option<String>,
}

/// A memory note with everything an export needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNote {
    pub id: NoteId,
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    pub source: Option<String>,
    pub created_at: UnixMs,
}

/// How many notes a channel has (the admin memory page).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelNotes {
    pub channel: ChannelRef,
    pub notes: i64,
    pub last_at: UnixMs,
}

/// A note to import: kept with its original time; `source` makes the import idempotent.
#[derive(Clone, Debug)]
pub struct ImportedNote {
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    pub source: String,
    pub created_at: UnixMs,
}

/// What channels asked the agent to remember, always scoped to one channel (except the admin
/// pages, which see every channel's notes).
#[async_trait]
pub trait Memory: Send + Sync {
    /// Store a note (one transaction); with a `source` seen before, returns the earlier note's
    /// id.
    async fn remember(&self, note: &NewNote) -> Result<NoteId>;

    /// Notes of this channel matching any word of `query`, best first.
    async fn recall(&self, channel: &ChannelRef, query: &str, limit: i64) -> Result<Vec<Note>>;

    /// Delete a note of this channel; false when the channel has no such note.
    async fn forget(&self, channel: &ChannelRef, id: NoteId) -> Result<bool>;

    /// The channel's newest notes.
    async fn notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>>;

    /// How many notes the channel has.
    async fn note_count(&self, channel: &ChannelRef) -> Result<i64>;

    /// Channels that have notes, with their count and newest note time.
    async fn note_channels(&self) -> Result<Vec<ChannelNotes>>;

    /// One note by id, with its channel.
    async fn note(&self, id: NoteId) -> Result<Option<StoredNote>>;

    /// Every note of a channel, oldest first, with sources (exports).
    async fn channel_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>>;

    /// Change a note's text (search follows); false when there is no such note.
    async fn update_note(&self, id: NoteId, text: &str) -> Result<bool>;

    /// Delete a note by id; false when there is no such note.
    async fn delete_note(&self, id: NoteId) -> Result<bool>;

    /// Import a note; nothing is written when the channel has a note with the same text and
    /// time (the original, or an earlier import) or one with the same `source`. Returns the
    /// note's id and whether it was written now.
    async fn import_note(&self, note: &ImportedNote) -> Result<(NoteId, bool)>;
}

fn note_from_row(row: &impl Columns) -> Result<Note> {
    Ok(Note {
        id: row.col("id")?,
        text: row.col("text")?,
        created_by: row.col("created_by")?,
        created_at: row.col("created_at")?,
    })
}

fn stored_note_from_row(row: &impl Columns) -> Result<StoredNote> {
    Ok(StoredNote {
        id: row.col("id")?,
        channel: channel_from_row(row)?,
        text: row.col("text")?,
        created_by: row.col("created_by")?,
        source: row.col("source")?,
        created_at: row.col("created_at")?,
    })
}

/// Insert a note created at `created_at`; with a `source` seen before, nothing is written and
/// the earlier note's id comes back. Returns the id and whether the note was written now.
async fn insert_note(
    tx: &mut Tx,
    channel: &ChannelRef,
    text: &str,
    created_by: &str,
    source: Option<&str>,
    created_at: UnixMs,
) -> Result<(NoteId, bool)> {
    let inserted: Option<NoteId> = tx
        .query(
            "INSERT INTO memory_notes (platform, workspace, channel, text, created_by, source,
                                       created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (source) DO NOTHING
             RETURNING id",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .bind(text)
        .bind(created_by)
        .bind(source)
        .bind(created_at)
        .insert_id()
        .await?
        .map(NoteId);
    if let Some(id) = inserted {
        return Ok((id, true));
    }
    let existing = tx
        .query("SELECT id FROM memory_notes WHERE source = $1")
        .bind(source)
        .fetch_one()
        .await?
        .col("id")?;
    Ok((existing, false))
}

async fn import_note_in(tx: &mut Tx, note: &ImportedNote) -> Result<(NoteId, bool)> {
    // The same note (an earlier import, or the note this export came from) is kept.
    let same: Option<NoteId> = tx
        .query(
            "SELECT id FROM memory_notes
             WHERE platform = $1 AND workspace = $2 AND channel = $3 AND text = $4
               AND created_at = $5
             ORDER BY id LIMIT 1",
        )
        .bind(&note.channel.platform)
        .bind(&note.channel.workspace)
        .bind(&note.channel.channel)
        .bind(&note.text)
        .bind(note.created_at)
        .fetch_optional()
        .await?
        .map(|row| row.col("id"))
        .transpose()?;
    if let Some(id) = same {
        return Ok((id, false));
    }
    insert_note(
        tx,
        &note.channel,
        &note.text,
        &note.created_by,
        Some(&note.source),
        note.created_at,
    )
    .await
}

#[async_trait]
impl Memory for SqlStore {
    async fn remember(&self, note: &NewNote) -> Result<NoteId> {
        let (id, _) = self
            .db
            .write_lazy(note.clone(), |tx, note| {
                Box::pin(async move {
                    let now = tx.now;
                    insert_note(
                        tx,
                        &note.channel,
                        &note.text,
                        &note.created_by,
                        note.source.as_deref(),
                        now,
                    )
                    .await
                })
            })
            .await?;
        Ok(id)
    }

    async fn recall(&self, channel: &ChannelRef, query: &str, limit: i64) -> Result<Vec<Note>> {
        let Some(query) = text_query(&self.db, query) else {
            return Ok(Vec::new());
        };
        on_reader!(&self.db, RECALL, |pool, sql| {
            let found = sqlx::query(sql)
                .bind(&query)
                .bind(&channel.platform)
                .bind(&channel.workspace)
                .bind(&channel.channel)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows(&found, note_from_row)
        })
    }

    async fn forget(&self, channel: &ChannelRef, id: NoteId) -> Result<bool> {
        self.delete_note_of(Some(channel), id).await
    }

    async fn delete_note(&self, id: NoteId) -> Result<bool> {
        self.delete_note_of(None, id).await
    }

    async fn notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, text, created_by, created_at FROM memory_notes
                 WHERE platform = $1 AND workspace = $2 AND channel = $3
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, note_from_row)
        })
    }

    async fn note_count(&self, channel: &ChannelRef) -> Result<i64> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM memory_notes
                 WHERE platform = $1 AND workspace = $2 AND channel = $3",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .fetch_one(pool)
            .await?
            .col("n")
        })
    }

    async fn note_channels(&self) -> Result<Vec<ChannelNotes>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT platform, workspace, channel, COUNT(*) AS notes,
                        MAX(created_at) AS last_at
                 FROM memory_notes GROUP BY platform, workspace, channel
                 ORDER BY MAX(created_at) DESC",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ChannelNotes {
                    channel: channel_from_row(row)?,
                    notes: row.col("notes")?,
                    last_at: row.col("last_at")?,
                })
            })
        })
    }

    async fn note(&self, id: NoteId) -> Result<Option<StoredNote>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT id, platform, workspace, channel, text, created_by, source, created_at
                 FROM memory_notes WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(stored_note_from_row)
            .transpose()
        })
    }

    async fn channel_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, platform, workspace, channel, text, created_by, source, created_at
                 FROM memory_notes WHERE platform = $1 AND workspace = $2 AND channel = $3
                 ORDER BY id",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .fetch_all(pool)
            .await?;
            rows(&found, stored_note_from_row)
        })
    }

    async fn update_note(&self, id: NoteId, text: &str) -> Result<bool> {
        self.db
            .write((id, text.to_string()), |tx, (id, text)| {
                Box::pin(async move {
                    let done = tx
                        .query("UPDATE memory_notes SET text = $1 WHERE id = $2")
                        .bind(text)
                        .bind(*id)
                        .execute()
                        .await?
                        .rows_affected();
                    Ok(done == 1)
                })
            })
            .await
    }

    async fn import_note(&self, note: &ImportedNote) -> Result<(NoteId, bool)> {
        self.db
            .write(note.clone(), |tx, note| Box::pin(import_note_in(tx, note)))
            .await
    }
}

impl SqlStore {
    /// Delete a note; with a channel, only a note of that channel.
    async fn delete_note_of(&self, channel: Option<&ChannelRef>, id: NoteId) -> Result<bool> {
        self.db
            .write((channel.cloned(), id), |tx, (channel, id)| {
                Box::pin(async move {
                    let done = tx
                        .query(
                            "DELETE FROM memory_notes
                             WHERE id = $1
                               AND (CAST($2 AS TEXT) IS NULL
                                    OR (platform = $2 AND workspace = $3 AND channel = $4))",
                        )
                        .bind(*id)
                        .bind(channel.as_ref().map(|c| &c.platform))
                        .bind(channel.as_ref().map(|c| &c.workspace))
                        .bind(channel.as_ref().map(|c| &c.channel))
                        .execute()
                        .await?
                        .rows_affected();
                    Ok(done == 1)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::store::Clock;

    async fn ids_of(store: &SqlStore, channel: &ChannelRef, query: &str) -> Vec<NoteId> {
        let found = store.recall(channel, query, 10).await.unwrap();
        found.iter().map(|n| n.id).collect()
    }

    /// On SQLite a new note reaches the full-text index just before its transaction commits
    /// (migration 0019). A note edited or deleted in the transaction that added it, and a note
    /// edited or deleted after it was indexed, leave the index exactly as the notes are.
    #[tokio::test]
    async fn notes_changed_before_their_commit_are_indexed_as_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db", dir.path().display());
        let store = SqlStore::open(&url, Arc::new(Clock::default()))
            .await
            .unwrap();
        let channel = ChannelRef {
            platform: "test".into(),
            workspace: "W".into(),
            channel: "C".into(),
        };
        let (cat, dog, bird) = store
            .db
            .write(channel.clone(), |tx, channel| {
                Box::pin(async move {
                    let at = UnixMs(1);
                    let (cat, _) =
                        insert_note(tx, channel, "the cat sleeps", "U", None, at).await?;
                    let (dog, _) = insert_note(tx, channel, "the dog barks", "U", None, at).await?;
                    let (bird, _) = insert_note(tx, channel, "a bird sings", "U", None, at).await?;
                    tx.query("UPDATE memory_notes SET text = $1 WHERE id = $2")
                        .bind("the cat purrs")
                        .bind(cat)
                        .execute()
                        .await?;
                    tx.query("DELETE FROM memory_notes WHERE id = $1")
                        .bind(dog)
                        .execute()
                        .await?;
                    Ok((cat, dog, bird))
                })
            })
            .await
            .unwrap();
        assert_eq!(ids_of(&store, &channel, "purrs").await, [cat]);
        assert!(ids_of(&store, &channel, "sleeps").await.is_empty());
        assert!(ids_of(&store, &channel, "barks").await.is_empty());
        assert_eq!(ids_of(&store, &channel, "sings").await, [bird]);

        // Indexed notes edited and deleted in later transactions.
        assert!(store.update_note(bird, "a bird flies").await.unwrap());
        assert!(store.delete_note(cat).await.unwrap());
        assert!(!store.delete_note(dog).await.unwrap());
        assert!(ids_of(&store, &channel, "sings").await.is_empty());
        assert_eq!(ids_of(&store, &channel, "flies").await, [bird]);
        assert!(ids_of(&store, &channel, "purrs").await.is_empty());

        // FTS5 checks its index against the notes; nothing is left waiting.
        let waiting: i64 = store
            .db
            .write((), |tx, ()| {
                Box::pin(async move {
                    tx.query("INSERT INTO memory_fts (memory_fts) VALUES ('integrity-check')")
                        .execute()
                        .await?;
                    tx.query("SELECT COUNT(*) AS n FROM memory_fts_pending")
                        .fetch_one()
                        .await?
                        .col("n")
                })
            })
            .await
            .unwrap();
        assert_eq!(waiting, 0);
    }
}
