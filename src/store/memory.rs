//! Memory notes: what a channel asked the agent to remember, searchable by full text (FTS5 on
//! SQLite, a `tsvector` on Postgres; see [`super::dialect::RECALL`]). Every write is one
//! transaction.

use ecdysis_chat::ChannelRef;

use super::conversations::channel_from_row;
use super::db::{Columns, Tx, on_reader, on_tx, rows};
use super::dialect::{RECALL, text_query};
use super::{ChannelNotes, ImportedNote, NewNote, Note, Result, SqlStore, StoredNote};

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
    created_at: i64,
) -> Result<(i64, bool)> {
    let inserted: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
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
        .fetch_optional(c)
        .await?
        .map(|row| row.col("id"))
        .transpose()?
    });
    if let Some(id) = inserted {
        return Ok((id, true));
    }
    let existing = on_tx!(tx, |c| {
        sqlx::query("SELECT id FROM memory_notes WHERE source = $1")
            .bind(source)
            .fetch_one(c)
            .await?
            .col("id")?
    });
    Ok((existing, false))
}

async fn import_note(tx: &mut Tx, note: &ImportedNote) -> Result<(i64, bool)> {
    // The same note (an earlier import, or the note this export came from) is kept.
    let same: Option<i64> = on_tx!(tx, |c| {
        sqlx::query(
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
        .fetch_optional(c)
        .await?
        .map(|row| row.col("id"))
        .transpose()?
    });
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

impl SqlStore {
    pub(crate) async fn remember_note(&self, note: &NewNote) -> Result<i64> {
        let (id, _) = self
            .db
            .write(note.clone(), |tx, note| {
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

    pub(crate) async fn recall_notes(
        &self,
        channel: &ChannelRef,
        query: &str,
        limit: i64,
    ) -> Result<Vec<Note>> {
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

    /// Delete a note; with a channel, only a note of that channel.
    pub(crate) async fn delete_note_of(
        &self,
        channel: Option<&ChannelRef>,
        id: i64,
    ) -> Result<bool> {
        self.db
            .write((channel.cloned(), id), |tx, (channel, id)| {
                Box::pin(async move {
                    let done = on_tx!(tx, |c| {
                        sqlx::query(
                            "DELETE FROM memory_notes
                             WHERE id = $1
                               AND (CAST($2 AS TEXT) IS NULL
                                    OR (platform = $2 AND workspace = $3 AND channel = $4))",
                        )
                        .bind(*id)
                        .bind(channel.as_ref().map(|c| &c.platform))
                        .bind(channel.as_ref().map(|c| &c.workspace))
                        .bind(channel.as_ref().map(|c| &c.channel))
                        .execute(c)
                        .await?
                        .rows_affected()
                    });
                    Ok(done == 1)
                })
            })
            .await
    }

    pub(crate) async fn newest_notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>> {
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

    pub(crate) async fn count_notes(&self, channel: &ChannelRef) -> Result<i64> {
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

    pub(crate) async fn channels_with_notes(&self) -> Result<Vec<ChannelNotes>> {
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

    pub(crate) async fn find_note(&self, id: i64) -> Result<Option<StoredNote>> {
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

    pub(crate) async fn all_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>> {
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

    pub(crate) async fn edit_note(&self, id: i64, text: &str) -> Result<bool> {
        self.db
            .write((id, text.to_string()), |tx, (id, text)| {
                Box::pin(async move {
                    let done = on_tx!(tx, |c| {
                        sqlx::query("UPDATE memory_notes SET text = $1 WHERE id = $2")
                            .bind(text)
                            .bind(*id)
                            .execute(c)
                            .await?
                            .rows_affected()
                    });
                    Ok(done == 1)
                })
            })
            .await
    }

    pub(crate) async fn import_note_row(&self, note: &ImportedNote) -> Result<(i64, bool)> {
        self.db
            .write(note.clone(), |tx, note| Box::pin(import_note(tx, note)))
            .await
    }
}
