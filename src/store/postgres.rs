//! The PostgreSQL backend: safe with several ecdysis instances on one database.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers (in one process or many) never
//! claim the same event or reply. Inserts that add to a conversation lock its row until they
//! commit, so ids within a conversation follow commit order and per-conversation order holds.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, SqlSafeStr, Transaction};

use super::{
    Artifact, ChannelNotes, ChannelUsage, ClaimedEvent, Compaction, CompactionStats, Completion,
    ContextMessages, ConversationInfo, ImportedCompaction, ImportedMessage, ImportedNote,
    InboxCounts, InboxEvent, Inserted, LeaseInfo, Message, ModelUsage, NewArtifact, NewCompaction,
    NewEvent, NewMessage, NewNote, Note, OutboxItem, Result, Role, Store, StoreError,
    StoredInstallation, StoredNote, Usage, now_ms, query_terms,
};

#[path = "postgres_installations.rs"]
mod installations;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
}

/// The URL for messages: the password hidden, and nothing of a URL that does not parse (it
/// could hold a password that cannot be told apart).
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(_) => crate::config::redact(url),
        Err(_) => "(unparseable URL)".into(),
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0001_init.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "compaction".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0002_compaction.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "installations".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0003_installations.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            4,
            "leases".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0004_leases.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            5,
            "event key".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0005_event_key.sql").into_sql_str(),
            false,
        ),
    ])
}

impl PostgresStore {
    /// Connect and migrate.
    pub async fn open(url: &str) -> Result<Self> {
        let open_error = |problem: String| StoreError::Open {
            url: shown_url(url),
            problem,
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    async fn conversation_id(&self, c: &ConversationRef) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT id FROM conversations
             WHERE platform = $1 AND workspace = $2 AND channel = $3 AND thread = $4",
        )
        .bind(&c.platform)
        .bind(&c.workspace)
        .bind(&c.channel)
        .bind(c.thread.as_deref().unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.get(0)))
    }

    /// Attach artifacts to messages in the range [first, last].
    async fn with_attachments(
        &self,
        conversation_id: i64,
        rows: Vec<PgRow>,
    ) -> Result<Vec<Message>> {
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>>>()?;
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Ok(messages);
        };
        let artifacts = sqlx::query(
            "SELECT a.id, a.conversation_id, a.message_id, a.blob_key, a.name, a.mime, a.size,
                    a.created_at
             FROM artifacts a
             WHERE a.conversation_id = $1 AND a.message_id BETWEEN $2 AND $3
             ORDER BY a.seq",
        )
        .bind(conversation_id)
        .bind(first.id)
        .bind(last.id)
        .fetch_all(&self.pool)
        .await?;
        for row in &artifacts {
            let artifact = artifact_from_row(row);
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

/// The conversation's id, created if new. Locks the conversation's row until the transaction ends.
async fn upsert_conversation(
    tx: &mut Transaction<'_, Postgres>,
    c: &ConversationRef,
) -> Result<i64> {
    Ok(sqlx::query(
        "INSERT INTO conversations (platform, workspace, channel, thread, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (platform, workspace, channel, thread) DO UPDATE SET platform = excluded.platform
         RETURNING id",
    )
    .bind(&c.platform)
    .bind(&c.workspace)
    .bind(&c.channel)
    .bind(c.thread.as_deref().unwrap_or(""))
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?
    .get(0))
}

async fn insert_message(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: i64,
    event_id: Option<i64>,
    message: &NewMessage,
) -> Result<i64> {
    let id: i64 = sqlx::query(
        "INSERT INTO messages (conversation_id, event_id, role, text, meta, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(conversation_id)
    .bind(event_id)
    .bind(message.role.as_str())
    .bind(&message.text)
    .bind(&message.meta)
    .bind(now_ms())
    .fetch_one(&mut **tx)
    .await?
    .get(0);
    for artifact in &message.attachments {
        insert_artifact(tx, conversation_id, Some(id), artifact).await?;
    }
    Ok(id)
}

async fn insert_artifact(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: i64,
    message_id: Option<i64>,
    a: &NewArtifact,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO artifacts (id, conversation_id, message_id, blob_key, name, mime, size, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&a.id)
    .bind(conversation_id)
    .bind(message_id)
    .bind(&a.blob_key)
    .bind(&a.name)
    .bind(&a.mime)
    .bind(a.size)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn conversation_from_row(row: &PgRow) -> ConversationRef {
    ConversationRef::new(
        row.get::<String, _>("platform"),
        row.get::<String, _>("workspace"),
        row.get::<String, _>("channel"),
        Some(row.get::<String, _>("thread")),
    )
}

fn message_from_row(row: &PgRow) -> Result<Message> {
    Ok(Message {
        id: row.get("id"),
        event_id: row.get("event_id"),
        role: Role::parse(row.get("role"))?,
        text: row.get("text"),
        meta: row.get("meta"),
        attachments: Vec::new(),
        created_at: row.get("created_at"),
    })
}

fn artifact_from_row(row: &PgRow) -> Artifact {
    Artifact {
        id: row.get("id"),
        conversation_id: row.get("conversation_id"),
        message_id: row.get("message_id"),
        blob_key: row.get("blob_key"),
        name: row.get("name"),
        mime: row.get("mime"),
        size: row.get("size"),
        created_at: row.get("created_at"),
    }
}

fn compaction_from_row(row: &PgRow) -> Compaction {
    Compaction {
        id: row.get("id"),
        summary_message_id: row.get("summary_message_id"),
        first_message_id: row.get("first_message_id"),
        last_message_id: row.get("last_message_id"),
        message_count: row.get("message_count"),
        archive_key: row.get("archive_key"),
        created_at: row.get("created_at"),
    }
}

fn note_from_row(row: &PgRow) -> Note {
    Note {
        id: row.get("id"),
        text: row.get("text"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
    }
}

fn channel_from_row(row: &PgRow) -> ChannelRef {
    ChannelRef {
        platform: row.get("platform"),
        workspace: row.get("workspace"),
        channel: row.get("channel"),
    }
}

fn stored_note_from_row(row: &PgRow) -> StoredNote {
    StoredNote {
        id: row.get("id"),
        channel: channel_from_row(row),
        text: row.get("text"),
        created_by: row.get("created_by"),
        source: row.get("source"),
        created_at: row.get("created_at"),
    }
}

/// A `to_tsquery` text matching any of the words: `a | b`. Every term is alphanumeric, so it
/// holds no tsquery operator; it is still bound as a parameter.
fn ts_query(query: &str) -> Option<String> {
    let terms = query_terms(query);
    if terms.is_empty() {
        return None;
    }
    Some(terms.join(" | "))
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_event(&self, event: &NewEvent) -> Result<Inserted> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, &event.conversation).await?;
        let now = now_ms();
        let inserted: Option<i64> = sqlx::query(
            "INSERT INTO inbox (platform, platform_event_id, conversation_id, payload,
                                available_at, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (conversation_id, platform_event_id) DO NOTHING
             RETURNING id",
        )
        .bind(&event.conversation.platform)
        .bind(&event.platform_event_id)
        .bind(conversation_id)
        .bind(&event.payload)
        .bind(now)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get(0));
        let Some(event_id) = inserted else {
            tx.rollback().await?;
            let existing: i64 = sqlx::query(
                "SELECT id FROM inbox WHERE conversation_id = $1 AND platform_event_id = $2",
            )
            .bind(conversation_id)
            .bind(&event.platform_event_id)
            .fetch_one(&self.pool)
            .await?
            .get(0);
            return Ok(Inserted {
                event_id: existing,
                duplicate: true,
            });
        };
        let message = NewMessage {
            role: Role::User,
            text: event.text.clone(),
            meta: Some(serde_json::json!({ "user": event.user_id }).to_string()),
            attachments: event.attachments.clone(),
        };
        insert_message(&mut tx, conversation_id, Some(event_id), &message).await?;
        tx.commit().await?;
        Ok(Inserted {
            event_id,
            duplicate: false,
        })
    }

    async fn claim_event(&self, owner: &str, lease_until: i64) -> Result<Option<ClaimedEvent>> {
        let row = sqlx::query(
            "UPDATE inbox
             SET status = 'leased', lease_owner = $1, lease_until = $2, attempts = inbox.attempts + 1
             FROM conversations c
             WHERE c.id = inbox.conversation_id
               AND inbox.id = (
                 SELECT i.id FROM inbox i
                 WHERE i.status IN ('pending', 'leased')
                   AND (i.status = 'pending' OR i.lease_until < $3)
                   AND i.available_at <= $3
                   AND NOT EXISTS (
                       SELECT 1 FROM inbox j
                       WHERE j.conversation_id = i.conversation_id
                         AND j.status IN ('pending', 'leased')
                         AND j.id < i.id)
                 ORDER BY i.id
                 LIMIT 1
                 FOR UPDATE OF i SKIP LOCKED)
             RETURNING inbox.id, inbox.conversation_id, inbox.payload, inbox.attempts,
                       inbox.received_at, c.platform, c.workspace, c.channel, c.thread",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| ClaimedEvent {
            id: row.get("id"),
            conversation_id: row.get("conversation_id"),
            conversation: conversation_from_row(&row),
            payload: row.get("payload"),
            attempts: row.get("attempts"),
            received_at: row.get("received_at"),
        }))
    }

    async fn renew_lease(&self, event_id: i64, owner: &str, lease_until: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE inbox SET lease_until = $1
             WHERE id = $2 AND status = 'leased' AND lease_owner = $3",
        )
        .bind(lease_until)
        .bind(event_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE inbox SET status = 'pending', lease_owner = NULL, lease_until = NULL
             WHERE status = 'leased' AND lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_all_leases(&self) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE inbox SET status = 'pending', lease_owner = NULL, lease_until = NULL
             WHERE status = 'leased'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE outbox SET lease_until = NULL WHERE status = 'pending'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn complete_event(
        &self,
        event_id: i64,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Vec<OutboxItem>>> {
        let mut tx = self.pool.begin().await?;
        let finished = sqlx::query(
            "UPDATE inbox i
             SET status = CASE WHEN $1::TEXT IS NULL THEN 'done' ELSE 'failed' END,
                 finished_at = $2, lease_owner = NULL, lease_until = NULL, error = $1::TEXT
             FROM conversations c
             WHERE i.id = $3 AND i.status = 'leased' AND i.lease_owner = $4
               AND c.id = i.conversation_id
             RETURNING i.conversation_id, c.platform, c.workspace, c.channel, c.thread",
        )
        .bind(&done.error)
        .bind(now_ms())
        .bind(event_id)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(finished) = finished else {
            tx.rollback().await?;
            return Ok(None);
        };
        let conversation_id: i64 = finished.get("conversation_id");
        let conversation = conversation_from_row(&finished);
        for message in &done.messages {
            insert_message(&mut tx, conversation_id, Some(event_id), message).await?;
        }
        let mut items = Vec::with_capacity(done.replies.len());
        for reply in &done.replies {
            let row = sqlx::query(
                "INSERT INTO outbox (idempotency_key, event_id, conversation_id, payload,
                                     lease_until, attempts, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING id, attempts",
            )
            .bind(&reply.idempotency_key)
            .bind(event_id)
            .bind(conversation_id)
            .bind(&reply.payload)
            .bind(done.reply_lease_until)
            .bind(i32::from(done.reply_lease_until.is_some()))
            .bind(now_ms())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                items.push(OutboxItem {
                    id: row.get(0),
                    idempotency_key: reply.idempotency_key.clone(),
                    event_id,
                    conversation: conversation.clone(),
                    payload: reply.payload.clone(),
                    attempts: row.get(1),
                });
            }
        }
        tx.commit().await?;
        Ok(Some(items))
    }

    async fn fail_event(
        &self,
        event_id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE inbox
             SET status = CASE WHEN $1::BIGINT IS NULL THEN 'failed' ELSE 'pending' END,
                 available_at = COALESCE($1::BIGINT, available_at),
                 finished_at = CASE WHEN $1::BIGINT IS NULL THEN $2::BIGINT ELSE NULL END,
                 error = $3, lease_owner = NULL, lease_until = NULL
             WHERE id = $4 AND status = 'leased' AND lease_owner = $5",
        )
        .bind(retry_at)
        .bind(now_ms())
        .bind(error)
        .bind(event_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn open_event_count(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM inbox WHERE status IN ('pending', 'leased')")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM inbox GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = InboxCounts::default();
        for row in rows {
            let n: i64 = row.get(1);
            match row.get::<&str, _>(0) {
                "pending" => counts.pending = n,
                "leased" => counts.leased = n,
                "done" => counts.done = n,
                "failed" => counts.failed = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn claim_replies(
        &self,
        event_id: Option<i64>,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM outbox
                 WHERE status = 'pending'
                   AND (lease_until IS NULL OR lease_until < $2)
                   AND ($3::BIGINT IS NULL OR event_id = $3::BIGINT)
                 ORDER BY id
                 LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o SET lease_until = $1, attempts = o.attempts + 1
             FROM picked p, conversations c
             WHERE o.id = p.id AND c.id = o.conversation_id
             RETURNING o.id, o.idempotency_key, o.event_id, o.payload, o.attempts,
                       c.platform, c.workspace, c.channel, c.thread",
        )
        .bind(lease_until)
        .bind(now_ms())
        .bind(event_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut items: Vec<OutboxItem> = rows
            .iter()
            .map(|row| OutboxItem {
                id: row.get("id"),
                idempotency_key: row.get("idempotency_key"),
                event_id: row.get("event_id"),
                conversation: conversation_from_row(row),
                payload: row.get("payload"),
                attempts: row.get("attempts"),
            })
            .collect();
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    async fn mark_reply_sent(&self, id: i64, platform_message_id: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET status = 'sent', sent_at = $1, platform_message_id = $2,
                               lease_until = NULL, error = NULL
             WHERE id = $3",
        )
        .bind(now_ms())
        .bind(platform_message_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_reply_failed(&self, id: i64, error: &str, retry_at: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE outbox
             SET status = CASE WHEN $1::BIGINT IS NULL THEN 'failed' ELSE 'pending' END,
                 lease_until = $1::BIGINT, error = $2
             WHERE id = $3",
        )
        .bind(retry_at)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT id, event_id, role, text, meta, created_at FROM messages
             WHERE conversation_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.with_attachments(conversation_id, rows).await
    }

    async fn recent_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        let mut rows = sqlx::query(
            "SELECT id, event_id, role, text, meta, created_at FROM messages
             WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(conversation_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        self.with_attachments(conversation_id, rows).await
    }

    async fn append_messages(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
    ) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            ids.push(insert_message(&mut tx, conversation_id, event_id, message).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn message_count(&self, conversation: &ConversationRef) -> Result<i64> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(0);
        };
        Ok(
            sqlx::query("SELECT COUNT(*) FROM messages WHERE conversation_id = $1")
                .bind(conversation_id)
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    async fn artifact(&self, id: &str) -> Result<Option<Artifact>> {
        Ok(sqlx::query(
            "SELECT id, conversation_id, message_id, blob_key, name, mime, size, created_at
             FROM artifacts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(artifact_from_row))
    }

    async fn remember(&self, note: &NewNote) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let inserted: Option<i64> = sqlx::query(
            "INSERT INTO memory_notes (platform, workspace, channel, text, created_by, source,
                                       created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (source) DO NOTHING
             RETURNING id",
        )
        .bind(&note.channel.platform)
        .bind(&note.channel.workspace)
        .bind(&note.channel.channel)
        .bind(&note.text)
        .bind(&note.created_by)
        .bind(&note.source)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get(0));
        let id = match inserted {
            Some(id) => id,
            None => sqlx::query("SELECT id FROM memory_notes WHERE source = $1")
                .bind(&note.source)
                .fetch_one(&mut *tx)
                .await?
                .get(0),
        };
        tx.commit().await?;
        Ok(id)
    }

    async fn recall(&self, channel: &ChannelRef, query: &str, limit: i64) -> Result<Vec<Note>> {
        let Some(ts) = ts_query(query) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT n.id, n.text, n.created_by, n.created_at
             FROM memory_notes n, to_tsquery('english', $1) q
             WHERE n.search @@ q
               AND n.platform = $2 AND n.workspace = $3 AND n.channel = $4
             ORDER BY ts_rank(n.search, q) DESC, n.id DESC
             LIMIT $5",
        )
        .bind(ts)
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(note_from_row).collect())
    }

    async fn forget(&self, channel: &ChannelRef, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM memory_notes
             WHERE id = $1 AND platform = $2 AND workspace = $3 AND channel = $4",
        )
        .bind(id)
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>> {
        let rows = sqlx::query(
            "SELECT id, text, created_by, created_at FROM memory_notes
             WHERE platform = $1 AND workspace = $2 AND channel = $3
             ORDER BY id DESC LIMIT $4",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(note_from_row).collect())
    }

    async fn note_count(&self, channel: &ChannelRef) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM memory_notes
             WHERE platform = $1 AND workspace = $2 AND channel = $3",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .fetch_one(&self.pool)
        .await?
        .get(0))
    }

    async fn record_usage(
        &self,
        conversation: &ConversationRef,
        model: &str,
        usage: &Usage,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        sqlx::query(
            "INSERT INTO llm_usage (conversation_id, model, input_tokens, output_tokens,
                                    cache_read_tokens, cache_write_tokens, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(conversation_id)
        .bind(model)
        .bind(usage.input_tokens)
        .bind(usage.output_tokens)
        .bind(usage.cache_read_tokens)
        .bind(usage.cache_write_tokens)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_turn(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
        usage: &[(String, Usage)],
    ) -> Result<()> {
        if messages.is_empty() && usage.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        for message in messages {
            insert_message(&mut tx, conversation_id, event_id, message).await?;
        }
        for (model, usage) in usage {
            sqlx::query(
                "INSERT INTO llm_usage (conversation_id, model, input_tokens, output_tokens,
                                        cache_read_tokens, cache_write_tokens, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(conversation_id)
            .bind(model)
            .bind(usage.input_tokens)
            .bind(usage.output_tokens)
            .bind(usage.cache_read_tokens)
            .bind(usage.cache_write_tokens)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn channel_usage(&self, channel: &ChannelRef) -> Result<Vec<ModelUsage>> {
        let rows = sqlx::query(
            "SELECT u.model, COUNT(*),
                    COALESCE(SUM(u.input_tokens), 0)::BIGINT,
                    COALESCE(SUM(u.output_tokens), 0)::BIGINT,
                    COALESCE(SUM(u.cache_read_tokens), 0)::BIGINT,
                    COALESCE(SUM(u.cache_write_tokens), 0)::BIGINT
             FROM llm_usage u JOIN conversations c ON c.id = u.conversation_id
             WHERE c.platform = $1 AND c.workspace = $2 AND c.channel = $3
             GROUP BY u.model ORDER BY u.model",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ModelUsage {
                model: row.get(0),
                calls: row.get(1),
                usage: Usage {
                    input_tokens: row.get(2),
                    output_tokens: row.get(3),
                    cache_read_tokens: row.get(4),
                    cache_write_tokens: row.get(5),
                },
            })
            .collect())
    }

    async fn context_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<ContextMessages> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(ContextMessages::default());
        };
        let latest = sqlx::query(
            "SELECT id, summary_message_id, first_message_id, last_message_id,
                    message_count, archive_key, created_at
             FROM compactions WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(compaction_from_row);
        let summary = match latest {
            Some(compaction) => {
                let row = sqlx::query(
                    "SELECT id, event_id, role, text, meta, created_at FROM messages WHERE id = $1",
                )
                .bind(compaction.summary_message_id)
                .fetch_one(&self.pool)
                .await?;
                Some((message_from_row(&row)?, compaction))
            }
            None => None,
        };
        let after = summary
            .as_ref()
            .map(|(_, c)| c.last_message_id)
            .unwrap_or(0);
        let mut rows = sqlx::query(
            "SELECT id, event_id, role, text, meta, created_at FROM messages
             WHERE conversation_id = $1 AND id > $2 AND NOT compacted AND role <> 'summary'
             ORDER BY id DESC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        let messages = self.with_attachments(conversation_id, rows).await?;
        Ok(ContextMessages { summary, messages })
    }

    async fn compact(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        let compacted = sqlx::query(
            "UPDATE messages
             SET compacted = TRUE, meta = CASE WHEN role = 'tool' THEN NULL ELSE meta END
             WHERE conversation_id = $1 AND id BETWEEN $2 AND $3
               AND NOT compacted AND role <> 'summary'",
        )
        .bind(conversation_id)
        .bind(compaction.first_message_id)
        .bind(compaction.last_message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        sqlx::query(
            "UPDATE messages SET compacted = TRUE
             WHERE conversation_id = $1 AND role = 'summary' AND NOT compacted",
        )
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        let meta = serde_json::json!({
            "archive_key": compaction.archive_key,
            "first_message_id": compaction.first_message_id,
            "last_message_id": compaction.last_message_id,
            "message_count": compacted,
        });
        let summary_id = insert_message(
            &mut tx,
            conversation_id,
            compaction.event_id,
            &NewMessage {
                role: Role::Summary,
                text: compaction.summary.clone(),
                meta: Some(meta.to_string()),
                attachments: Vec::new(),
            },
        )
        .await?;
        let row = sqlx::query(
            "INSERT INTO compactions (conversation_id, summary_message_id, first_message_id,
                                      last_message_id, message_count, archive_key, created_at)
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
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(compaction_from_row(&row))
    }

    async fn compactions(&self, conversation: &ConversationRef) -> Result<Vec<Compaction>> {
        let Some(conversation_id) = self.conversation_id(conversation).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT id, summary_message_id, first_message_id, last_message_id,
                    message_count, archive_key, created_at
             FROM compactions WHERE conversation_id = $1 ORDER BY id",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(compaction_from_row).collect())
    }

    async fn compaction_stats(&self, channel: &ChannelRef) -> Result<CompactionStats> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(k.message_count), 0)::BIGINT, MAX(k.created_at)
             FROM compactions k JOIN conversations c ON c.id = k.conversation_id
             WHERE c.platform = $1 AND c.workspace = $2 AND c.channel = $3",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .fetch_one(&self.pool)
        .await?;
        Ok(CompactionStats {
            count: row.get(0),
            messages: row.get(1),
            last_at: row.get(2),
        })
    }

    async fn save_installation(&self, installation: &StoredInstallation) -> Result<()> {
        self.save_installation_row(installation).await
    }

    async fn installation(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>> {
        self.installation_row(platform, team_id).await
    }

    async fn remove_installation(&self, platform: &str, team_id: &str) -> Result<bool> {
        self.remove_installation_row(platform, team_id).await
    }

    async fn put_oauth_state(&self, state: &str, expires_at: i64) -> Result<()> {
        self.put_oauth_state_row(state, expires_at).await
    }

    async fn take_oauth_state(&self, state: &str, now: i64) -> Result<bool> {
        self.take_oauth_state_row(state, now).await
    }

    async fn try_lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool> {
        let held = sqlx::query(
            "WITH now AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS ms)
             INSERT INTO leases (name, owner, lease_until, acquired_at)
             SELECT $1, $2, now.ms + $3, now.ms FROM now
             ON CONFLICT (name) DO UPDATE
             SET owner = excluded.owner, lease_until = excluded.lease_until,
                 acquired_at = CASE WHEN leases.owner = excluded.owner
                                    THEN leases.acquired_at ELSE excluded.acquired_at END
             WHERE leases.owner = excluded.owner OR leases.lease_until < excluded.acquired_at
             RETURNING owner",
        )
        .bind(name)
        .bind(owner)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    async fn release_lead(&self, name: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let rows =
            sqlx::query("SELECT name, owner, lease_until, acquired_at FROM leases ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|row| LeaseInfo {
                name: row.get("name"),
                owner: row.get("owner"),
                lease_until: row.get("lease_until"),
                acquired_at: row.get("acquired_at"),
            })
            .collect())
    }

    async fn conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>> {
        let rows = sqlx::query(
            "SELECT c.id, c.platform, c.workspace, c.channel, c.thread, c.created_at,
                    COUNT(m.id) AS messages, MAX(m.created_at) AS last_message_at
             FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
             WHERE $1::TEXT IS NULL
                OR (c.platform = $1::TEXT AND c.workspace = $2::TEXT AND c.channel = $3::TEXT)
             GROUP BY c.id
             ORDER BY COALESCE(MAX(m.created_at), c.created_at) DESC, c.id DESC
             LIMIT $4",
        )
        .bind(channel.map(|c| c.platform.as_str()))
        .bind(channel.map(|c| c.workspace.as_str()))
        .bind(channel.map(|c| c.channel.as_str()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ConversationInfo {
                id: row.get("id"),
                conversation: conversation_from_row(row),
                messages: row.get("messages"),
                last_message_at: row.get("last_message_at"),
                created_at: row.get("created_at"),
            })
            .collect())
    }

    async fn conversation_by_id(&self, id: i64) -> Result<Option<ConversationRef>> {
        Ok(sqlx::query(
            "SELECT platform, workspace, channel, thread FROM conversations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(conversation_from_row))
    }

    async fn inbox_events(&self, status: &str, limit: i64) -> Result<Vec<InboxEvent>> {
        let rows = sqlx::query(
            "SELECT i.id, i.platform_event_id, i.status, i.attempts, i.error, i.lease_owner,
                    i.received_at, i.finished_at, c.platform, c.workspace, c.channel, c.thread,
                    (SELECT m.text FROM messages m
                     WHERE m.conversation_id = i.conversation_id AND m.event_id = i.id
                       AND m.role = 'user'
                     ORDER BY m.id LIMIT 1) AS text
             FROM inbox i JOIN conversations c ON c.id = i.conversation_id
             WHERE i.status = $1
             ORDER BY i.id DESC
             LIMIT $2",
        )
        .bind(status)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| InboxEvent {
                id: row.get("id"),
                conversation: conversation_from_row(row),
                platform_event_id: row.get("platform_event_id"),
                status: row.get("status"),
                attempts: row.get("attempts"),
                error: row.get("error"),
                lease_owner: row.get("lease_owner"),
                received_at: row.get("received_at"),
                finished_at: row.get("finished_at"),
                text: row.get("text"),
            })
            .collect())
    }

    async fn retry_event(&self, id: i64) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let retried = sqlx::query(
            "UPDATE inbox SET status = 'retried' WHERE id = $1 AND status = 'failed'
             RETURNING platform, platform_event_id, conversation_id, payload",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(old) = retried else {
            tx.rollback().await?;
            return Ok(None);
        };
        let now = now_ms();
        let original: String = old.get("platform_event_id");
        let new_id: i64 = sqlx::query(
            "INSERT INTO inbox (platform, platform_event_id, conversation_id, payload,
                                available_at, received_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(old.get::<String, _>("platform"))
        .bind(format!(
            "{original}#retry-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .bind(old.get::<i64, _>("conversation_id"))
        .bind(old.get::<String, _>("payload"))
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        sqlx::query("UPDATE inbox SET error = $1 WHERE id = $2")
            .bind(format!("retried as event {new_id}"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(new_id))
    }

    async fn last_event_at(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT platform, MAX(received_at) FROM inbox GROUP BY platform ORDER BY platform",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn note_channels(&self) -> Result<Vec<ChannelNotes>> {
        let rows = sqlx::query(
            "SELECT platform, workspace, channel, COUNT(*) AS notes, MAX(created_at) AS last_at
             FROM memory_notes GROUP BY platform, workspace, channel
             ORDER BY MAX(created_at) DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ChannelNotes {
                channel: channel_from_row(row),
                notes: row.get("notes"),
                last_at: row.get("last_at"),
            })
            .collect())
    }

    async fn note(&self, id: i64) -> Result<Option<StoredNote>> {
        Ok(sqlx::query(
            "SELECT id, platform, workspace, channel, text, created_by, source, created_at
             FROM memory_notes WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(stored_note_from_row))
    }

    async fn channel_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>> {
        let rows = sqlx::query(
            "SELECT id, platform, workspace, channel, text, created_by, source, created_at
             FROM memory_notes WHERE platform = $1 AND workspace = $2 AND channel = $3
             ORDER BY id",
        )
        .bind(&channel.platform)
        .bind(&channel.workspace)
        .bind(&channel.channel)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(stored_note_from_row).collect())
    }

    async fn update_note(&self, id: i64, text: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE memory_notes SET text = $1 WHERE id = $2")
            .bind(text)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_note(&self, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM memory_notes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn usage_by_channel(&self) -> Result<Vec<ChannelUsage>> {
        let rows = sqlx::query(
            "SELECT c.platform, c.workspace, c.channel, u.model, COUNT(*) AS calls,
                    COALESCE(SUM(u.input_tokens), 0)::BIGINT AS input_tokens,
                    COALESCE(SUM(u.output_tokens), 0)::BIGINT AS output_tokens,
                    COALESCE(SUM(u.cache_read_tokens), 0)::BIGINT AS cache_read_tokens,
                    COALESCE(SUM(u.cache_write_tokens), 0)::BIGINT AS cache_write_tokens
             FROM llm_usage u JOIN conversations c ON c.id = u.conversation_id
             GROUP BY c.platform, c.workspace, c.channel, u.model
             ORDER BY SUM(u.input_tokens + u.output_tokens) DESC, c.platform, c.workspace,
                      c.channel, u.model",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ChannelUsage {
                channel: channel_from_row(row),
                model: row.get("model"),
                calls: row.get("calls"),
                usage: Usage {
                    input_tokens: row.get("input_tokens"),
                    output_tokens: row.get("output_tokens"),
                    cache_read_tokens: row.get("cache_read_tokens"),
                    cache_write_tokens: row.get("cache_write_tokens"),
                },
            })
            .collect())
    }

    async fn installations(&self) -> Result<Vec<StoredInstallation>> {
        let rows = sqlx::query(
            "SELECT platform, team_id, team_name, bot_user_id, app_id, scopes, installed_by,
                    token_ciphertext, installed_at, updated_at
             FROM installations ORDER BY platform, team_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StoredInstallation {
                platform: r.get(0),
                team_id: r.get(1),
                team_name: r.get(2),
                bot_user_id: r.get(3),
                app_id: r.get(4),
                scopes: r.get(5),
                installed_by: r.get(6),
                token_ciphertext: r.get(7),
                installed_at: r.get(8),
                updated_at: r.get(9),
            })
            .collect())
    }

    async fn import_note(&self, note: &ImportedNote) -> Result<(i64, bool)> {
        // The same note (an earlier import, or the note this export came from) is kept.
        let same: Option<i64> = sqlx::query(
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
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.get(0));
        if let Some(id) = same {
            return Ok((id, false));
        }
        let mut tx = self.pool.begin().await?;
        let inserted: Option<i64> = sqlx::query(
            "INSERT INTO memory_notes (platform, workspace, channel, text, created_by, source,
                                       created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (source) DO NOTHING
             RETURNING id",
        )
        .bind(&note.channel.platform)
        .bind(&note.channel.workspace)
        .bind(&note.channel.channel)
        .bind(&note.text)
        .bind(&note.created_by)
        .bind(&note.source)
        .bind(note.created_at)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get(0));
        let result = match inserted {
            Some(id) => (id, true),
            None => (
                sqlx::query("SELECT id FROM memory_notes WHERE source = $1")
                    .bind(&note.source)
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0),
                false,
            ),
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn import_message(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(i64, bool)> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        // The same message (an earlier import, or the message this export came from) is kept.
        let same: Option<i64> = sqlx::query(
            "SELECT id FROM messages
             WHERE conversation_id = $1 AND created_at = $2 AND role = $3 AND text = $4
             ORDER BY id LIMIT 1",
        )
        .bind(conversation_id)
        .bind(message.created_at)
        .bind(message.role.as_str())
        .bind(&message.text)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get(0));
        if let Some(id) = same {
            tx.commit().await?;
            return Ok((id, false));
        }
        let inserted: Option<i64> = sqlx::query(
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
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get(0));
        let Some(id) = inserted else {
            let id: i64 = sqlx::query("SELECT id FROM messages WHERE import_key = $1")
                .bind(&message.import_key)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            tx.commit().await?;
            return Ok((id, false));
        };
        for a in &message.attachments {
            sqlx::query(
                "INSERT INTO artifacts (id, conversation_id, message_id, blob_key, name, mime,
                                        size, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&a.id)
            .bind(conversation_id)
            .bind(id)
            .bind(&a.blob_key)
            .bind(&a.name)
            .bind(&a.mime)
            .bind(a.size)
            .bind(message.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((id, true))
    }

    async fn import_compaction(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let conversation_id = upsert_conversation(&mut tx, conversation).await?;
        let exists = sqlx::query(
            "SELECT 1 FROM compactions WHERE conversation_id = $1 AND archive_key = $2",
        )
        .bind(conversation_id)
        .bind(&compaction.archive_key)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if exists {
            tx.rollback().await?;
            return Ok(false);
        }
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
        .execute(&mut *tx)
        .await?;
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_query_ors_words() {
        assert_eq!(ts_query("Sky, blue?").as_deref(), Some("blue | sky"));
        assert_eq!(ts_query(" -- "), None);
    }

    /// Migration 5 changes the inbox's dedupe key to (conversation, platform event id): events
    /// stored before it are still recognised. Needs the test Postgres (`.ci/services.sh`).
    #[tokio::test]
    async fn event_key_migration_keeps_stored_events() {
        use sqlx::Connection;
        let Ok(base) = std::env::var("ECDYSIS_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "ECDYSIS_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipping: ECDYSIS_TEST_POSTGRES_URL is not set");
            return;
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let old = PgPool::connect(&url).await.unwrap();
        migrator().run_to(4, &old).await.unwrap();
        for sql in [
            "INSERT INTO conversations (id, platform, workspace, channel, thread, created_at)
             VALUES (7, 'web', 'local', 'colA', '', 1)",
            "INSERT INTO inbox (id, platform, platform_event_id, conversation_id, payload, status,
                                available_at, received_at)
             VALUES (41, 'web', 'colA:colB:1', 7, '{}', 'done', 1, 1)",
        ] {
            sqlx::query(sql).execute(&old).await.unwrap();
        }
        old.close().await;

        let store = PostgresStore::open(&url).await.unwrap();
        let event = |channel: &str, id: &str| NewEvent {
            platform_event_id: id.into(),
            conversation: ConversationRef::new("web", "local", channel, None),
            user_id: "u".into(),
            payload: "{}".into(),
            text: "again".into(),
            attachments: Vec::new(),
        };
        let again = store
            .insert_event(&event("colA", "colA:colB:1"))
            .await
            .unwrap();
        assert_eq!(
            again,
            Inserted {
                event_id: 41,
                duplicate: true
            }
        );
        let other = store
            .insert_event(&event("colA:colB", "colA:colB:1"))
            .await
            .unwrap();
        assert!(!other.duplicate);
        store.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
