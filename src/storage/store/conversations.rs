//! Conversations: the (platform, workspace, channel, thread) every event, message and usage row
//! belongs to, and the cache of their ids.

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::Serialize;

use super::db::{Columns, Tx, on_reader, rows};
use super::{ConversationId, Result, SqlStore, UnixMs};

/// A conversation with its activity, for the admin pages and exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationInfo {
    pub id: ConversationId,
    pub conversation: ConversationRef,
    pub messages: i64,
    /// When its newest message was written; `None` without messages.
    pub last_message_at: Option<UnixMs>,
    pub created_at: UnixMs,
}

/// The newest event of a conversation heard from lately (catch-up after downtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeardFrom {
    pub conversation: ConversationRef,
    pub platform_event_id: String,
    /// The event as stored (see `bus::EventPayload`).
    pub payload: String,
    pub received_at: UnixMs,
}

/// The conversations the store knows, for the admin pages, exports and catch-up.
#[async_trait]
pub trait Conversations: Send + Sync {
    /// Conversations, most recently active first: every one, or those of one channel.
    async fn conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>>;

    /// A conversation by its id.
    async fn conversation_by_id(&self, id: ConversationId) -> Result<Option<ConversationRef>>;

    /// The conversations of `platform` that received a platform event (scheduled runs do not
    /// count) at or after `since`, each with its newest such event, most recent first.
    async fn last_heard(&self, platform: &str, since: UnixMs, limit: i64)
    -> Result<Vec<HeardFrom>>;
}

/// Conversation ids by reference and back. Rows of `conversations` never change once written,
/// so caching them is safe; the cache is bounded and simply starts over when full.
#[derive(Default)]
pub(crate) struct ConversationCache {
    maps: std::sync::Mutex<ConversationMaps>,
}

#[derive(Default)]
struct ConversationMaps {
    ids: std::collections::HashMap<(String, String, String, String), ConversationId>,
    refs: std::collections::HashMap<ConversationId, ConversationRef>,
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

    pub(crate) fn id(&self, c: &ConversationRef) -> Option<ConversationId> {
        let maps = self.maps.lock().ok()?;
        maps.ids.get(&conversation_key(c)).copied()
    }

    pub(crate) fn conversation(&self, id: ConversationId) -> Option<ConversationRef> {
        let maps = self.maps.lock().ok()?;
        maps.refs.get(&id).cloned()
    }

    /// Remember a committed conversation row.
    pub(crate) fn insert(&self, c: &ConversationRef, id: ConversationId) {
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
pub(crate) async fn upsert(tx: &mut Tx, c: &ConversationRef) -> Result<ConversationId> {
    let now = tx.now;
    tx.query(
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
    .fetch_one()
    .await?
    .col("id")
}

impl SqlStore {
    /// The id of a conversation that has rows; `None` when it has none.
    pub(crate) async fn conversation_id(
        &self,
        c: &ConversationRef,
    ) -> Result<Option<ConversationId>> {
        if let Some(id) = self.conversations.id(c) {
            return Ok(Some(id));
        }
        let id: Option<ConversationId> = on_reader!(&self.db, |pool| {
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
    pub(crate) async fn conversation_ref(&self, id: ConversationId) -> Result<ConversationRef> {
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
}

#[async_trait]
impl Conversations for SqlStore {
    async fn conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT c.id, c.platform, c.workspace, c.channel, c.thread, c.created_at,
                        COUNT(m.id) AS messages, MAX(m.created_at) AS last_message_at
                 FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
                 WHERE CAST($1 AS TEXT) IS NULL
                    OR (c.platform = $1 AND c.workspace = $2 AND c.channel = $3)
                 GROUP BY c.id
                 ORDER BY COALESCE(MAX(m.created_at), c.created_at) DESC, c.id DESC
                 LIMIT $4",
            )
            .bind(channel.map(|c| c.platform.as_str()))
            .bind(channel.map(|c| c.workspace.as_str()))
            .bind(channel.map(|c| c.channel.as_str()))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ConversationInfo {
                    id: row.col("id")?,
                    conversation: conversation_from_row(row)?,
                    messages: row.col("messages")?,
                    last_message_at: row.col("last_message_at")?,
                    created_at: row.col("created_at")?,
                })
            })
        })
    }

    async fn last_heard(
        &self,
        platform: &str,
        since: UnixMs,
        limit: i64,
    ) -> Result<Vec<HeardFrom>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT c.platform, c.workspace, c.channel, c.thread,
                        i.platform_event_id, i.payload, i.received_at
                 FROM (SELECT conversation_id, MAX(id) AS id FROM inbox
                       WHERE received_at >= $2 AND platform = $1
                         AND platform_event_id NOT LIKE 'schedule:%'
                       GROUP BY conversation_id) newest
                 JOIN inbox i ON i.id = newest.id
                 JOIN conversations c ON c.id = newest.conversation_id
                 ORDER BY i.id DESC
                 LIMIT $3",
            )
            .bind(platform)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(HeardFrom {
                    conversation: conversation_from_row(row)?,
                    platform_event_id: row.col("platform_event_id")?,
                    payload: row.col("payload")?,
                    received_at: row.col("received_at")?,
                })
            })
        })
    }

    /// A conversation by its id (the admin pages' links); `None` for an unknown id.
    async fn conversation_by_id(&self, id: ConversationId) -> Result<Option<ConversationRef>> {
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
