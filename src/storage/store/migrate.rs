//! The schema migrations: one set per backend (`migrations/sqlite`, `migrations/postgres`), the
//! same versions with the same meaning, compiled into the binary.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The migrations of one backend directory: (version, description, file, runs outside sqlx's
/// transaction).
macro_rules! migrations {
    ($dir:literal: $(($version:literal, $description:literal, $file:literal, $no_tx:literal)),* $(,)?) => {
        Migrator::with_migrations(vec![$(
            Migration::new(
                $version,
                $description.into(),
                MigrationType::Simple,
                include_str!(concat!("../../../migrations/", $dir, "/", $file)).into_sql_str(),
                $no_tx,
            ),
        )*])
    };
}

pub(crate) fn sqlite() -> Migrator {
    migrations!("sqlite":
        (1, "init", "0001_init.sql", false),
        (2, "compaction", "0002_compaction.sql", false),
        (3, "installations", "0003_installations.sql", false),
        (4, "leases", "0004_leases.sql", false),
        // Rebuilds `inbox` with foreign keys off, in a transaction of its own.
        (5, "event key", "0005_event_key.sql", true),
        (6, "conversation heads", "0006_conversation_heads.sql", false),
        (10, "schedules", "0010_schedules.sql", false),
        (12, "guards", "0012_guards.sql", false),
        (14, "media", "0014_media.sql", false),
        (16, "semantic memory", "0016_semantic_memory.sql", false),
        (17, "channel search", "0017_channel_search.sql", false),
        (18, "catch-up", "0018_catch_up.sql", false),
        (19, "lean writes", "0019_lean_writes.sql", false),
    )
}

pub(crate) fn postgres() -> Migrator {
    migrations!("postgres":
        (1, "init", "0001_init.sql", false),
        (2, "compaction", "0002_compaction.sql", false),
        (3, "installations", "0003_installations.sql", false),
        (4, "leases", "0004_leases.sql", false),
        (5, "event key", "0005_event_key.sql", false),
        (6, "conversation heads", "0006_conversation_heads.sql", false),
        (10, "schedules", "0010_schedules.sql", false),
        (12, "guards", "0012_guards.sql", false),
        (14, "media", "0014_media.sql", false),
        (16, "semantic memory", "0016_semantic_memory.sql", false),
        (17, "channel search", "0017_channel_search.sql", false),
        (18, "catch-up", "0018_catch_up.sql", false),
        (19, "lean writes", "0019_lean_writes.sql", false),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ecdysis_chat::{ChannelRef, ConversationRef};

    use super::super::db::testing::open_at;
    use super::super::{
        Clock, EventId, Inbox, Inserted, Memory, MessageId, NewEvent, NoteId, SemanticIndex,
        SqlStore, Transcript,
    };

    fn event(channel: &str, id: &str) -> NewEvent {
        NewEvent {
            platform_event_id: id.into(),
            conversation: ConversationRef::new("web", "local", channel, None),
            user_id: "u".into(),
            payload: "{}".into(),
            text: "again".into(),
            attachments: Vec::new(),
        }
    }

    /// Migration 5 changes the inbox's dedupe key to (conversation, platform event id): events
    /// stored before it keep their ids and the rows that point at them, and are still
    /// recognised.
    async fn event_key_migration_keeps_stored_events(url: &str) {
        let old = open_at(url, 4).await;
        old.exec(
            "INSERT INTO conversations (id, platform, workspace, channel, thread, created_at)
             VALUES (7, 'web', 'local', 'colA', '', 1)",
        )
        .await;
        old.exec(
            "INSERT INTO inbox (id, platform, platform_event_id, conversation_id, payload, status,
                                available_at, received_at)
             VALUES (41, 'web', 'colA:colB:1', 7, '{}', 'done', 1, 1)",
        )
        .await;
        old.exec(
            "INSERT INTO messages (conversation_id, event_id, role, text, created_at)
             VALUES (7, 41, 'user', 'stored before', 1)",
        )
        .await;
        old.exec(
            "INSERT INTO outbox (idempotency_key, event_id, conversation_id, payload, created_at)
             VALUES ('41:0', 41, 7, '{}', 1)",
        )
        .await;
        old.close().await;

        let store = SqlStore::open(url, Arc::new(Clock::default()))
            .await
            .unwrap();
        let again = store
            .insert_event(&event("colA", "colA:colB:1"))
            .await
            .unwrap();
        assert_eq!(
            again,
            Inserted {
                event_id: EventId(41),
                duplicate: true
            }
        );
        let other = store
            .insert_event(&event("colA:colB", "colA:colB:1"))
            .await
            .unwrap();
        assert!(!other.duplicate);
        let messages = store
            .messages(
                &ConversationRef::new("web", "local", "colA", None),
                MessageId(0),
                10,
            )
            .await
            .unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].event_id, Some(EventId(41)));
        store.db.close().await;
    }

    #[tokio::test]
    async fn event_key_migration_keeps_stored_events_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db", dir.path().display());
        event_key_migration_keeps_stored_events(&url).await;
        // The rebuild turned foreign keys off for itself only, and broke no reference.
        let store = SqlStore::open(&url, Arc::new(Clock::default()))
            .await
            .unwrap();
        let (broken, on) = store.db.sqlite_integrity().await;
        assert_eq!(broken, 0, "every row still points at its event");
        assert!(on, "foreign keys are on again after the rebuild");
    }

    #[tokio::test]
    async fn event_key_migration_keeps_stored_events_postgres() {
        let Some(url) = super::super::db::testing::fresh_postgres().await else {
            return;
        };
        event_key_migration_keeps_stored_events(&url).await;
    }

    fn web_channel(channel: &str) -> ChannelRef {
        ChannelRef {
            platform: "web".into(),
            workspace: "local".into(),
            channel: channel.into(),
        }
    }

    /// Migration 17 indexes each note's and chunk's channel for full-text search: rows written
    /// before it are found afterwards, in their own channel only, and later edits and deletes
    /// keep the index right.
    #[tokio::test]
    async fn channel_search_migration_indexes_stored_rows_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db", dir.path().display());
        let old = open_at(&url, 16).await;
        old.exec(
            "INSERT INTO memory_notes (id, platform, workspace, channel, text, created_by,
                                       created_at)
             VALUES (1, 'web', 'local', 'a', 'the kettle is in the attic', 'u', 1),
                    (2, 'web', 'local', 'b', 'another kettle', 'u', 2)",
        )
        .await;
        old.exec(
            "INSERT INTO conversations (id, platform, workspace, channel, thread, created_at)
             VALUES (7, 'web', 'local', 'a', '', 1)",
        )
        .await;
        old.exec(
            "INSERT INTO messages (id, conversation_id, role, text, created_at)
             VALUES (9, 7, 'summary', 'summary', 1)",
        )
        .await;
        old.exec(
            "INSERT INTO compactions (id, conversation_id, summary_message_id, first_message_id,
                                      last_message_id, message_count, archive_key, created_at)
             VALUES (3, 7, 9, 1, 8, 8, 'k', 1)",
        )
        .await;
        old.exec(
            "INSERT INTO memory_chunks (platform, workspace, channel, compaction_id, kind, seq,
                                        text, created_at)
             VALUES ('web', 'local', 'a', 3, 'summary', 0, 'we carried the kettle upstairs', 1)",
        )
        .await;
        old.close().await;

        let store = SqlStore::open(&url, Arc::new(Clock::default()))
            .await
            .unwrap();
        let (a, b) = (web_channel("a"), web_channel("b"));
        let ids = |notes: Vec<super::super::Note>| notes.iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.recall(&a, "kettle", 10).await.unwrap()),
            [NoteId(1)]
        );
        assert_eq!(
            ids(store.recall(&b, "kettle", 10).await.unwrap()),
            [NoteId(2)]
        );
        let chunks = store.recall_chunks(&a, "kettle", 10).await.unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "we carried the kettle upstairs");
        assert!(
            store
                .recall_chunks(&b, "kettle", 10)
                .await
                .unwrap()
                .is_empty()
        );

        assert!(
            store
                .update_note(NoteId(1), "the lamp is in the attic")
                .await
                .unwrap()
        );
        assert!(store.recall(&a, "kettle", 10).await.unwrap().is_empty());
        assert_eq!(
            ids(store.recall(&a, "lamp", 10).await.unwrap()),
            [NoteId(1)]
        );
        assert!(store.delete_note(NoteId(2)).await.unwrap());
        assert!(store.recall(&b, "kettle", 10).await.unwrap().is_empty());
        let (broken, _) = store.db.sqlite_integrity().await;
        assert_eq!(broken, 0);
        store.db.close().await;
    }
}
