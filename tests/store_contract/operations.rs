//! The contract of what operating ecdysis needs from storage: leader leases (several
//! instances), the admin pages (conversations, inbox, notes, usage) and backups (import).

use super::*;
use ecdysis::storage::store::{ImportedCompaction, ImportedMessage, ImportedNote};

/// Leader leases: one owner at a time, renewable, released, taken over once expired.
pub async fn leases(store: &Fixture) {
    assert!(store.leases().await.unwrap().is_empty());
    assert!(store.try_lead("gateway", "one", 60_000).await.unwrap());
    assert!(!store.try_lead("gateway", "two", 60_000).await.unwrap());
    // Renewing keeps the first acquisition time.
    let before = store.leases().await.unwrap();
    store.advance(5);
    assert!(store.try_lead("gateway", "one", 60_000).await.unwrap());
    let after = store.leases().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].owner, "one");
    assert_eq!(after[0].acquired_at, before[0].acquired_at);
    assert!(after[0].lease_until >= before[0].lease_until);
    // Another name is independent.
    assert!(store.try_lead("socket", "two", 60_000).await.unwrap());
    // Only the holder can release.
    store.release_lead("gateway", "two").await.unwrap();
    assert!(!store.try_lead("gateway", "two", 60_000).await.unwrap());
    store.release_lead("gateway", "one").await.unwrap();
    assert!(store.try_lead("gateway", "two", 60_000).await.unwrap());
    // An expired lease is taken over (and a fresh acquisition time recorded).
    assert!(store.try_lead("short", "one", 1).await.unwrap());
    store.advance(30);
    assert!(store.try_lead("short", "two", 60_000).await.unwrap());
    assert!(!store.try_lead("short", "one", 60_000).await.unwrap());
    let names: Vec<(String, String)> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.name, l.owner))
        .collect();
    assert_eq!(
        names,
        [
            ("gateway".to_string(), "two".to_string()),
            ("short".into(), "two".into()),
            ("socket".into(), "two".into()),
        ]
    );
    for name in ["gateway", "short", "socket"] {
        store.release_lead(name, "two").await.unwrap();
    }
    assert!(store.leases().await.unwrap().is_empty());
}

/// Concurrent contenders: exactly one wins each round.
pub async fn lease_race(stores: Vec<Arc<dyn Store>>) {
    for round in 0..20 {
        let name = format!("race-{round}");
        let attempts = stores.iter().enumerate().flat_map(|(s, store)| {
            let name = name.clone();
            (0..4).map(move |n| {
                let store = store.clone();
                let name = name.clone();
                async move {
                    store
                        .try_lead(&name, &format!("owner-{s}-{n}"), 60_000)
                        .await
                }
            })
        });
        let won = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(won, 1, "round {round}");
    }
}

/// The admin pages' reads and writes.
pub async fn admin(store: &Fixture) {
    let a = conv("ops-a", None);
    let b = conv("ops-b", Some("t1"));
    insert(store, &new_event(&a, "Ev-ops-1", "hello from a")).await;
    let done = claim_some(store, "w").await;
    complete(store, &done, "w").await;
    store.advance(5);
    let failing = insert(store, &new_event(&b, "Ev-ops-2", "this one fails")).await;
    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, failing);
    assert!(store.fail_event(&claimed, "w", "boom", None).await.unwrap());

    // Conversations, the most recently active first; per channel.
    let all = store.conversations(None, 1000).await.unwrap();
    let position = |c: &ConversationRef| all.iter().position(|i| &i.conversation == c);
    let (pa, pb) = (position(&a).unwrap(), position(&b).unwrap());
    assert!(pb < pa, "ops-b is newer: {all:?}");
    assert_eq!(all[pa].messages, 1);
    assert!(all[pa].last_message_at.is_some());
    let only_b = store
        .conversations(Some(&b.channel_ref()), 10)
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].conversation, b);
    assert_eq!(
        store.conversation_by_id(only_b[0].id).await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.conversation_by_id(ConversationId(-1)).await.unwrap(),
        None
    );
    assert_eq!(store.conversations(None, 1).await.unwrap().len(), 1);

    // The inbox by state, with the user's text; a failed event can be retried once.
    let failed = store.inbox_events(InboxStatus::Failed, 100).await.unwrap();
    let row = failed.iter().find(|e| e.id == failing).unwrap();
    assert_eq!(row.conversation, b);
    assert_eq!(row.platform_event_id, "Ev-ops-2");
    assert_eq!(row.error.as_deref(), Some("boom"));
    assert_eq!(row.text.as_deref(), Some("this one fails"));
    assert!(
        store
            .inbox_events(InboxStatus::Done, 100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.platform_event_id == "Ev-ops-1")
    );
    let open_before = store.open_event_count().await.unwrap();
    let again = store.retry_event(failing).await.unwrap().unwrap();
    assert!(again > failing);
    assert_eq!(store.retry_event(failing).await.unwrap(), None, "once");
    assert_eq!(store.retry_event(again).await.unwrap(), None, "not failed");
    assert!(
        !store
            .inbox_events(InboxStatus::Failed, 100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.id == failing)
    );
    assert_eq!(store.open_event_count().await.unwrap(), open_before + 1);
    let rerun = claim_some(store, "w").await;
    assert_eq!(rerun.id, again);
    assert_eq!(rerun.attempts, 1);
    assert_eq!(rerun.payload, "{\"event\":\"Ev-ops-2\"}");
    assert_eq!(rerun.conversation, b);
    complete(store, &rerun, "w").await;
    assert_nothing_claimable(store, "after the retry").await;
    let platforms = store.last_event_at().await.unwrap();
    assert!(
        platforms
            .iter()
            .any(|(p, at)| p == "test" && *at > UnixMs(0))
    );

    // Notes: by channel, by id, edited (search follows) and deleted.
    let ops = channel("test", "W1", "ops-notes");
    let id = store
        .remember(&NewNote {
            channel: ops.clone(),
            text: "the staging password rotates on mondays".into(),
            created_by: "U1".into(),
            source: Some("ops:1".into()),
        })
        .await
        .unwrap();
    let channels = store.note_channels().await.unwrap();
    let entry = channels.iter().find(|c| c.channel == ops).unwrap();
    assert_eq!(entry.notes, 1);
    let note = store.note(id).await.unwrap().unwrap();
    assert_eq!(note.channel, ops);
    assert_eq!(note.source.as_deref(), Some("ops:1"));
    assert_eq!(store.channel_notes(&ops).await.unwrap(), [note]);
    assert!(
        store
            .update_note(id, "the staging password rotates on fridays")
            .await
            .unwrap()
    );
    assert!(!store.update_note(NoteId(-5), "nothing").await.unwrap());
    assert_eq!(store.recall(&ops, "fridays", 5).await.unwrap().len(), 1);
    assert!(store.recall(&ops, "mondays", 5).await.unwrap().is_empty());
    assert!(store.delete_note(id).await.unwrap());
    assert!(!store.delete_note(id).await.unwrap());
    assert!(store.recall(&ops, "fridays", 5).await.unwrap().is_empty());
    assert_eq!(store.note(id).await.unwrap(), None);

    // Usage across channels, per model.
    let u = conv("ops-usage", None);
    let tokens = Usage {
        input_tokens: 100_000,
        output_tokens: 5,
        cache_read_tokens: 1,
        cache_write_tokens: 2,
    };
    store.record_usage(&u, "model-z", &tokens).await.unwrap();
    store.record_usage(&u, "model-z", &tokens).await.unwrap();
    let usage = store.usage_by_channel().await.unwrap();
    let row = usage
        .iter()
        .find(|r| r.channel == u.channel_ref() && r.model == "model-z")
        .unwrap();
    assert_eq!(row.calls, 2);
    assert_eq!(row.usage.input_tokens, 200_000);
    assert_eq!(row.usage.cache_write_tokens, 4);
    assert_eq!(
        (&usage[0].channel, usage[0].model.as_str()),
        (&u.channel_ref(), "model-z"),
        "the heaviest first"
    );
}

/// Imports keep times and are idempotent.
pub async fn imports(store: &Fixture) {
    let ch = channel("test", "W1", "imported");
    let note = ImportedNote {
        channel: ch.clone(),
        text: "imported knowledge".into(),
        created_by: "U9".into(),
        source: "event:77".into(),
        created_at: UnixMs(1_000),
    };
    let (id, written) = store.import_note(&note).await.unwrap();
    assert!(written);
    assert_eq!(store.import_note(&note).await.unwrap(), (id, false));
    let mut renamed = note.clone();
    renamed.source = "import:elsewhere".into();
    assert_eq!(store.import_note(&renamed).await.unwrap(), (id, false));
    let notes = store.channel_notes(&ch).await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].created_at, UnixMs(1_000));
    assert_eq!(store.recall(&ch, "knowledge", 5).await.unwrap().len(), 1);

    let c = ConversationRef::new("test", "W1", "imported", Some("th".into()));
    let message = |key: &str, role: Role, text: &str, at: i64| ImportedMessage {
        created_at: UnixMs(at),
        import_key: key.into(),
        role,
        text: text.into(),
        meta: None,
        attachments: Vec::new(),
    };
    let mut first = message("k:1", Role::User, "old question", 2_000);
    first.attachments = vec![artifact("import-art-1", "shot.png")];
    let (m1, w1) = store.import_message(&c, &first).await.unwrap();
    let (m2, _) = store
        .import_message(&c, &message("k:2", Role::Assistant, "old answer", 2_001))
        .await
        .unwrap();
    let (summary, _) = store
        .import_message(&c, &message("k:3", Role::Summary, "they talked", 2_002))
        .await
        .unwrap();
    let (m4, _) = store
        .import_message(&c, &message("k:4", Role::User, "newer", 2_003))
        .await
        .unwrap();
    assert!(w1 && m1 < m2 && m2 < summary && summary < m4);
    assert_eq!(store.import_message(&c, &first).await.unwrap(), (m1, false));
    // The same message under another key (an export of an export) is not written again.
    let mut again = first.clone();
    again.import_key = "k:other".into();
    assert_eq!(store.import_message(&c, &again).await.unwrap(), (m1, false));
    // Nor a message the conversation already has from its own history.
    let original = conv("imported-own", None);
    insert(store, &new_event(&original, "Ev-own", "said here first")).await;
    let own = store.messages(&original, MessageId(0), 10).await.unwrap();
    let copy = ImportedMessage {
        import_key: "k:own".into(),
        role: Role::User,
        text: "said here first".into(),
        meta: None,
        created_at: own[0].created_at,
        attachments: Vec::new(),
    };
    assert_eq!(
        store.import_message(&original, &copy).await.unwrap(),
        (own[0].id, false)
    );
    let claimed = claim_some(store, "w").await;
    complete(store, &claimed, "w").await;
    let messages = store.messages(&c, MessageId(0), 100).await.unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0].created_at, UnixMs(2_000));
    assert_eq!(messages[0].attachments.len(), 1);
    assert_eq!(messages[0].attachments[0].id, "import-art-1");

    let compaction = ImportedCompaction {
        summary_message_id: summary,
        first_message_id: m1,
        last_message_id: m2,
        message_count: 2,
        archive_key: "transcripts/imported/1.jsonl".into(),
        created_at: UnixMs(2_002),
    };
    assert!(store.import_compaction(&c, &compaction).await.unwrap());
    assert!(!store.import_compaction(&c, &compaction).await.unwrap());
    let compactions = store.compactions(&c).await.unwrap();
    assert_eq!(compactions.len(), 1);
    assert_eq!(compactions[0].summary_message_id, summary);
    let context = store.context_messages(&c, 10).await.unwrap();
    let (summary_message, _) = context.summary.unwrap();
    assert_eq!(summary_message.text, "they talked");
    assert_eq!(
        context.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [m4]
    );
}
