//! Conversations: the (platform, workspace, channel, thread) every event, message and usage row
//! belongs to, and the cache of their ids.

use ecdysis_chat::{ChannelRef, ConversationRef};

use super::db::{Columns, Tx, on_reader, on_tx};
use super::{Result, SqlStore};

/// Conversation ids by reference and back. Rows of `conversations` never change once written,
/// so caching them is safe; the cache is bounded and simply starts over when full.
#[derive(Default)]
pub(crate) struct ConversationCache {
    maps: std::sync::Mutex<ConversationMaps>,
}

#[derive(Default)]
struct ConversationMaps {
    ids: std::collections::HashMap<(String, String, String, String), i64>,
    refs: std::collections::HashMap<i64, ConversationRef>,
}

fn conversation_key(c: &ConversationRef) -> (String, String, String, String) {
    (
        c.platform.clone(),
        c.workspace.clone(),
        c.channel.clone(),
        c.thread.clone().unwrap_or_default(),
    )
}

impl ConversationCache {
    const MAX: usize = 10_000;

    pub(crate) fn id(&self, c: &ConversationRef) -> Option<i64> {
        let maps = self.maps.lock().ok()?;
        maps.ids.get(&conversation_key(c)).copied()
    }

    pub(crate) fn conversation(&self, id: i64) -> Option<ConversationRef> {
        let maps = self.maps.lock().ok()?;
        maps.refs.get(&id).cloned()
    }

    /// Remember a committed conversation row.
    pub(crate) fn insert(&self, c: &ConversationRef, id: i64) {
        if let Ok(mut maps) = self.maps.lock() {
            if maps.ids.len() >= Self::MAX {
                maps.ids.clear();
                maps.refs.clear();
            }
            maps.ids.insert(conversation_key(c), id);
            maps.refs.insert(
                id,
                ConversationRef::new(&c.platform, &c.workspace, &c.channel, c.thread.clone()),
            );
        }
    }
}

/// A conversation from a row with `platform`, `workspace`, `channel` and `thread`.
pub(crate) fn conversation_from_row(row: &impl Columns) -> Result<ConversationRef> {
    Ok(ConversationRef::new(
        row.col::<String>("platform")?,
        row.col::<String>("workspace")?,
        row.col::<String>("channel")?,
        Some(row.col::<String>("thread")?),
    ))
}

/// A channel from a row with `platform`, `workspace` and `channel`.
pub(crate) fn channel_from_row(row: &impl Columns) -> Result<ChannelRef> {
    Ok(ChannelRef {
        platform: row.col("platform")?,
        workspace: row.col("workspace")?,
        channel: row.col("channel")?,
    })
}

/// The conversation's id, created if new. On Postgres this locks the conversation's row until
/// the transaction ends (see [`super::dialect::locks_conversations`]).
pub(crate) async fn upsert(tx: &mut Tx, c: &ConversationRef) -> Result<i64> {
    let now = tx.now;
    on_tx!(tx, |conn| {
        sqlx::query(
            "INSERT INTO conversations (platform, workspace, channel, thread, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (platform, workspace, channel, thread)
             DO UPDATE SET platform = excluded.platform
             RETURNING id",
        )
        .bind(&c.platform)
        .bind(&c.workspace)
        .bind(&c.channel)
        .bind(c.thread.as_deref().unwrap_or(""))
        .bind(now)
        .fetch_one(conn)
        .await?
        .col("id")
    })
}

impl SqlStore {
    /// The id of a conversation that has rows; `None` when it has none.
    pub(crate) async fn conversation_id(&self, c: &ConversationRef) -> Result<Option<i64>> {
        if let Some(id) = self.conversations.id(c) {
            return Ok(Some(id));
        }
        let id: Option<i64> = on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT id FROM conversations
                 WHERE platform = $1 AND workspace = $2 AND channel = $3 AND thread = $4",
            )
            .bind(&c.platform)
            .bind(&c.workspace)
            .bind(&c.channel)
            .bind(c.thread.as_deref().unwrap_or(""))
            .fetch_optional(pool)
            .await?
            .map(|row| row.col("id"))
            .transpose()?
        });
        if let Some(id) = id {
            self.conversations.insert(c, id);
        }
        Ok(id)
    }

    /// The conversation a committed row points at.
    pub(crate) async fn conversation_ref(&self, id: i64) -> Result<ConversationRef> {
        if let Some(c) = self.conversations.conversation(id) {
            return Ok(c);
        }
        let c = on_reader!(&self.db, |pool| {
            conversation_from_row(
                &sqlx::query(
                    "SELECT platform, workspace, channel, thread FROM conversations WHERE id = $1",
                )
                .bind(id)
                .fetch_one(pool)
                .await?,
            )?
        });
        self.conversations.insert(&c, id);
        Ok(c)
    }

    /// A conversation by its id (the admin pages' links); `None` for an unknown id.
    pub(crate) async fn find_conversation(&self, id: i64) -> Result<Option<ConversationRef>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(
                "SELECT platform, workspace, channel, thread FROM conversations WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(conversation_from_row)
            .transpose()
        })
    }
}
