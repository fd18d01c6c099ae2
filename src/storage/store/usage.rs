//! LLM usage: one row per model call, summed per channel and model for `/status` and the admin
//! pages.

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::Serialize;

use super::conversations::{channel_from_row, upsert};
use super::db::{Columns, Tx, on_reader, rows};
use super::transcript::insert_message;
use super::{ConversationId, EventId, NewMessage, Result, SqlStore, UnixMs};
pub use crate::tokens::Usage;

/// Usage totals of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub calls: i64,
    pub usage: Usage,
}

/// Usage totals of one channel and model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelUsage {
    pub channel: ChannelRef,
    pub model: String,
    pub calls: i64,
    pub usage: Usage,
}

/// Whose usage a budget counts: a channel, a user on a platform, or a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UsageScope {
    Channel(ChannelRef),
    User { platform: String, user_id: String },
    Workspace { platform: String, workspace: String },
}

/// What the model calls cost, in tokens, per conversation.
#[async_trait]
pub trait UsageLog: Send + Sync {
    /// Record one LLM call's usage for a conversation.
    async fn record_usage(
        &self,
        conversation: &ConversationRef,
        model: &str,
        usage: &Usage,
    ) -> Result<()>;

    /// What one agent turn produced besides its answer, in one transaction: its tool rows (in
    /// order) and the usage of each of its model calls (model, usage), counted for `user_id`
    /// (whose message the turn answered; empty for work nobody asked for).
    async fn record_turn(
        &self,
        conversation: &ConversationRef,
        event_id: Option<EventId>,
        user_id: &str,
        messages: &[NewMessage],
        usage: &[(String, Usage)],
    ) -> Result<()>;

    /// Usage totals per model of a channel, a user or a workspace since `since`.
    async fn usage_since(&self, scope: &UsageScope, since: UnixMs) -> Result<Vec<ModelUsage>>;

    /// Usage totals of every conversation of a channel, per model.
    async fn channel_usage(&self, channel: &ChannelRef) -> Result<Vec<ModelUsage>>;

    /// Usage totals per channel and model, the heaviest channel first.
    async fn usage_by_channel(&self) -> Result<Vec<ChannelUsage>>;
}

/// The token sums of a usage query, as [`usage_from_row`] reads them.
const SUMS: &str = "CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS input_tokens,
                    CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS output_tokens,
                    CAST(COALESCE(SUM(u.cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens,
                    CAST(COALESCE(SUM(u.cache_write_tokens), 0) AS BIGINT) AS cache_write_tokens";

/// The token sums a usage query reads.
fn usage_from_row(row: &impl Columns) -> Result<Usage> {
    Ok(Usage {
        input_tokens: row.col("input_tokens")?,
        output_tokens: row.col("output_tokens")?,
        cache_read_tokens: row.col("cache_read_tokens")?,
        cache_write_tokens: row.col("cache_write_tokens")?,
    })
}

async fn insert_usage(
    tx: &mut Tx,
    conversation_id: ConversationId,
    user_id: &str,
    model: &str,
    usage: &Usage,
) -> Result<()> {
    let now = tx.now;
    tx.query(
        "INSERT INTO llm_usage (conversation_id, model, input_tokens, output_tokens,
                                    cache_read_tokens, cache_write_tokens, created_at, user_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(conversation_id)
    .bind(model)
    .bind(usage.input_tokens)
    .bind(usage.output_tokens)
    .bind(usage.cache_read_tokens)
    .bind(usage.cache_write_tokens)
    .bind(now)
    .bind(user_id)
    .execute()
    .await?;
    Ok(())
}

/// An agent turn's tool rows and the usage of its model calls.
async fn record_turn_in(
    tx: &mut Tx,
    conversation: &ConversationRef,
    event_id: Option<EventId>,
    user_id: &str,
    messages: &[NewMessage],
    usage: &[(String, Usage)],
) -> Result<()> {
    let conversation_id = upsert(tx, conversation).await?;
    for message in messages {
        insert_message(tx, conversation_id, event_id, message).await?;
    }
    for (model, usage) in usage {
        insert_usage(tx, conversation_id, user_id, model, usage).await?;
    }
    Ok(())
}

#[async_trait]
impl UsageLog for SqlStore {
    async fn record_usage(
        &self,
        conversation: &ConversationRef,
        model: &str,
        usage: &Usage,
    ) -> Result<()> {
        let usage = [(model.to_string(), usage.clone())];
        self.record_turn(conversation, None, "", &[], &usage).await
    }

    async fn record_turn(
        &self,
        conversation: &ConversationRef,
        event_id: Option<EventId>,
        user_id: &str,
        messages: &[NewMessage],
        usage: &[(String, Usage)],
    ) -> Result<()> {
        if messages.is_empty() && usage.is_empty() {
            return Ok(());
        }
        self.db
            .write_to(
                conversation,
                (
                    conversation.clone(),
                    event_id,
                    user_id.to_string(),
                    messages.to_vec(),
                    usage.to_vec(),
                ),
                |tx, (conversation, event_id, user_id, messages, usage)| {
                    Box::pin(record_turn_in(
                        tx,
                        conversation,
                        *event_id,
                        user_id,
                        messages,
                        usage,
                    ))
                },
            )
            .await
    }

    async fn usage_since(&self, scope: &UsageScope, since: UnixMs) -> Result<Vec<ModelUsage>> {
        // Each scope narrows by its own columns (channel, user or workspace) and by time.
        let (filter, binds): (&str, Vec<&str>) = match scope {
            UsageScope::Channel(channel) => (
                "c.platform = $1 AND c.workspace = $2 AND c.channel = $3",
                vec![&channel.platform, &channel.workspace, &channel.channel],
            ),
            UsageScope::User { platform, user_id } => (
                "c.platform = $1 AND u.user_id = $2",
                vec![platform, user_id],
            ),
            UsageScope::Workspace {
                platform,
                workspace,
            } => (
                "c.platform = $1 AND c.workspace = $2",
                vec![platform, workspace],
            ),
        };
        let time = format!("${}", binds.len() + 1);
        let sql = format!(
            "SELECT u.model, COUNT(*) AS calls, {SUMS}
             FROM llm_usage u JOIN conversations c ON c.id = u.conversation_id
             WHERE {filter} AND u.created_at >= {time}
             GROUP BY u.model ORDER BY u.model"
        );
        on_reader!(&self.db, |pool| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for bind in &binds {
                query = query.bind(*bind);
            }
            let found = query.bind(since).fetch_all(pool).await?;
            rows(&found, |row| {
                Ok(ModelUsage {
                    model: row.col("model")?,
                    calls: row.col("calls")?,
                    usage: usage_from_row(row)?,
                })
            })
        })
    }

    async fn channel_usage(&self, channel: &ChannelRef) -> Result<Vec<ModelUsage>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT u.model, COUNT(*) AS calls,
                        CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS input_tokens,
                        CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS output_tokens,
                        CAST(COALESCE(SUM(u.cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens,
                        CAST(COALESCE(SUM(u.cache_write_tokens), 0) AS BIGINT)
                            AS cache_write_tokens
                 FROM llm_usage u JOIN conversations c ON c.id = u.conversation_id
                 WHERE c.platform = $1 AND c.workspace = $2 AND c.channel = $3
                 GROUP BY u.model ORDER BY u.model",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ModelUsage {
                    model: row.col("model")?,
                    calls: row.col("calls")?,
                    usage: usage_from_row(row)?,
                })
            })
        })
    }

    async fn usage_by_channel(&self) -> Result<Vec<ChannelUsage>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT c.platform, c.workspace, c.channel, u.model, COUNT(*) AS calls,
                        CAST(COALESCE(SUM(u.input_tokens), 0) AS BIGINT) AS input_tokens,
                        CAST(COALESCE(SUM(u.output_tokens), 0) AS BIGINT) AS output_tokens,
                        CAST(COALESCE(SUM(u.cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens,
                        CAST(COALESCE(SUM(u.cache_write_tokens), 0) AS BIGINT)
                            AS cache_write_tokens
                 FROM llm_usage u JOIN conversations c ON c.id = u.conversation_id
                 GROUP BY c.platform, c.workspace, c.channel, u.model
                 ORDER BY SUM(u.input_tokens + u.output_tokens) DESC, c.platform, c.workspace,
                          c.channel, u.model",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ChannelUsage {
                    channel: channel_from_row(row)?,
                    model: row.col("model")?,
                    calls: row.col("calls")?,
                    usage: usage_from_row(row)?,
                })
            })
        })
    }
}
