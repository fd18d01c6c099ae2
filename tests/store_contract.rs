//! One storage contract for both backends: every case is a test of its own, run once on SQLite
//! (a temp file) and once on PostgreSQL (a fresh schema), so one failure hides no other. The
//! store's clock is injected: leases and retries fall due by moving it, not by sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;
#[path = "store_contract/operations.rs"]
mod operations;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecdysis::storage::store::{
    self, ClaimedEvent, Clock, CompactionStats, Completion, ConversationId, EventId, InboxCounts,
    InboxStatus, MessageId, ModelUsage, NewArtifact, NewCompaction, NewEvent, NewMessage, NewNote,
    NewReply, NoteId, Role, Store, StoredInstallation, UnixMs, Usage,
};
use ecdysis_chat::{ChannelRef, ConversationRef};
use sqlx::{AssertSqlSafe, Connection, Row};

// --- helpers ---------------------------------------------------------------------------------

fn conv(channel: &str, thread: Option<&str>) -> ConversationRef {
    ConversationRef::new("test", "W1", channel, thread.map(str::to_string))
}

fn channel(platform: &str, workspace: &str, channel: &str) -> ChannelRef {
    ChannelRef {
        platform: platform.into(),
        workspace: workspace.into(),
        channel: channel.into(),
    }
}

fn new_event(conversation: &ConversationRef, platform_event_id: &str, text: &str) -> NewEvent {
    NewEvent {
        platform_event_id: platform_event_id.into(),
        conversation: conversation.clone(),
        user_id: "U1".into(),
        payload: format!("{{\"event\":\"{platform_event_id}\"}}"),
        text: text.into(),
        attachments: Vec::new(),
    }
}

fn artifact(id: &str, name: &str) -> NewArtifact {
    NewArtifact {
        id: id.into(),
        blob_key: format!("artifacts/{id}"),
        name: name.into(),
        mime: "image/png".into(),
        size: 1234,
    }
}

fn message(role: Role, text: &str) -> NewMessage {
    NewMessage {
        role,
        text: text.into(),
        meta: None,
        attachments: Vec::new(),
    }
}

fn reply(key: &str) -> NewReply {
    NewReply {
        idempotency_key: key.into(),
        payload: format!("{{\"text\":\"{key}\"}}"),
    }
}

/// One case's store: a fresh database (SQLite file or Postgres schema) and the clock the store
/// times its rows and leases by, which a case moves ahead instead of sleeping.
struct Fixture {
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
    url: String,
    /// Keeps the SQLite file; the Postgres schema is dropped by [`Fixture::finish`].
    _dir: Option<tempfile::TempDir>,
    schema: Option<PgSchema>,
}

impl std::ops::Deref for Fixture {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl Fixture {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir);
        let clock = Arc::new(Clock::default());
        let store = store::open_with_clock(&url, clock.clone()).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        Self {
            store,
            clock,
            url,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// `None` (the case is skipped) without the test server, outside CI.
    async fn postgres() -> Option<Self> {
        let schema = PgSchema::create().await?;
        let url = schema.url();
        let clock = Arc::new(Clock::default());
        let store = store::open_with_clock(&url, clock.clone()).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        Some(Self {
            store,
            clock,
            url,
            _dir: None,
            schema: Some(schema),
        })
    }

    /// Another store on the same database (another instance), on the same clock.
    async fn another(&self) -> Arc<dyn Store> {
        store::open_with_clock(&self.url, self.clock.clone())
            .await
            .unwrap()
    }

    async fn finish(self) {
        if let Some(schema) = self.schema {
            schema.drop().await;
        }
    }

    /// Now, by the store's clock.
    fn now(&self) -> UnixMs {
        UnixMs(self.clock.now())
    }

    /// A lease that outlives the case.
    fn far(&self) -> UnixMs {
        self.now().plus(60_000)
    }

    /// A time already past.
    fn past(&self) -> UnixMs {
        self.now().plus(-1_000)
    }

    /// Move the store's clock ahead (leases and retries fall due without waiting).
    fn advance(&self, ms: i64) {
        self.clock.advance(ms);
    }

    /// Claim at most one event until `until`.
    async fn claim_one(&self, owner: &str, until: UnixMs) -> Option<ClaimedEvent> {
        let mut claimed = self.store.claim_events(owner, until, 1).await.unwrap();
        assert!(claimed.len() <= 1, "asked for one, got {claimed:?}");
        claimed.pop()
    }
}

async fn insert(store: &Fixture, event: &NewEvent) -> EventId {
    let inserted = store.insert_event(event).await.unwrap();
    assert!(!inserted.duplicate, "{} is new", event.platform_event_id);
    inserted.event_id
}

async fn claim(store: &Fixture, owner: &str) -> Option<ClaimedEvent> {
    store.claim_one(owner, store.far()).await
}

async fn claim_some(store: &Fixture, owner: &str) -> ClaimedEvent {
    claim(store, owner)
        .await
        .unwrap_or_else(|| panic!("{owner}: expected a claimable event"))
}

async fn complete(store: &Fixture, event: &ClaimedEvent, owner: &str) {
    assert!(
        store
            .complete_event(event, owner, &Completion::default())
            .await
            .unwrap()
            .is_some(),
        "{owner} completes event {}",
        event.id
    );
}

/// Every inbox case starts and ends with nothing claimable.
async fn assert_nothing_claimable(store: &Fixture, when: &str) {
    let claimed = store.claim_one("probe", store.far()).await;
    assert!(
        claimed.is_none(),
        "{when}: nothing should be claimable, got {claimed:?}"
    );
}

fn ids(items: &[store::OutboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.idempotency_key.as_str()).collect()
}

// --- the contract ----------------------------------------------------------------------------

/// A new store is empty and answers.
async fn empty_store(store: &Fixture) {
    store.ping().await.unwrap();
    assert_eq!(store.open_event_count().await.unwrap(), 0);
    assert_eq!(store.inbox_counts().await.unwrap(), InboxCounts::default());
    assert_nothing_claimable(store, "empty store").await;
}

async fn insert_and_duplicate(store: &Fixture) {
    let c = conv("dup", Some("1700000000.000100"));
    let mut event = new_event(&c, "Ev-dup", "hello there");
    event.attachments = vec![artifact("00000000-0000-4000-8000-0000000000a1", "in.png")];
    let first = store.insert_event(&event).await.unwrap();
    assert!(!first.duplicate);

    // A platform retry of the same event: same id, nothing written.
    let mut retry = event.clone();
    retry.text = "a retry with other text".into();
    retry.attachments = Vec::new();
    let second = store.insert_event(&retry).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.event_id, first.event_id);
    assert_eq!(store.open_event_count().await.unwrap(), 1);

    // The same platform event id on another platform is another event.
    let other_platform = ConversationRef::new("other", "W1", "dup", None);
    let other = store
        .insert_event(&new_event(&other_platform, "Ev-dup", "hi"))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.event_id, first.event_id);

    // The user's message is in the transcript, once, with its attachment.
    let messages = store.messages(&c, MessageId(0), 100).await.unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m.role, Role::User);
    assert_eq!(m.text, "hello there");
    assert_eq!(m.event_id, Some(first.event_id));
    assert!(m.meta.as_deref().unwrap_or_default().contains("U1"));
    assert!(m.created_at > UnixMs(0));
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].id, "00000000-0000-4000-8000-0000000000a1");
    assert_eq!(m.attachments[0].message_id, Some(m.id));
    assert_eq!(store.message_count(&c).await.unwrap(), 1);
    let stored = store
        .artifact("00000000-0000-4000-8000-0000000000a1")
        .await
        .unwrap()
        .expect("the user's attachment is stored");
    assert_eq!(stored.name, "in.png");
    assert_eq!(stored.message_id, Some(m.id));

    // The thread and the channel itself are different conversations.
    assert!(
        store
            .messages(&conv("dup", None), MessageId(0), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.message_count(&conv("dup", None)).await.unwrap(), 0);

    // Drain: both events claimable (different conversations), in arrival order.
    let a = claim_some(store, "w").await;
    assert_eq!(a.id, first.event_id);
    assert_eq!(a.conversation, c);
    assert_eq!(a.payload, event.payload);
    assert_eq!(a.attempts, 1);
    assert!(a.received_at > UnixMs(0));
    let b = claim_some(store, "w").await;
    assert_eq!(b.id, other.event_id);
    assert_eq!(b.conversation, other_platform);
    complete(store, &a, "w").await;
    complete(store, &b, "w").await;
    assert_nothing_claimable(store, "after insert_and_duplicate").await;
}

/// Issue 19, finding 7: the dedupe key is (conversation, platform event id), not one joined
/// string. The web chat's ids read `{conversation}:{client id}`, so `colA` with id `colB:1` and
/// `colA:colB` with id `1` both read `colA:colB:1`: two events, not a retry.
async fn event_key_is_per_conversation(store: &Fixture) {
    let col_a = ConversationRef::new("web", "local", "colA", None);
    let col_a_b = ConversationRef::new("web", "local", "colA:colB", None);
    let first = insert(store, &new_event(&col_a, "colA:colB:1", "first")).await;
    let second = store
        .insert_event(&new_event(&col_a_b, "colA:colB:1", "second"))
        .await
        .unwrap();
    assert!(
        !second.duplicate,
        "another conversation's event is no retry"
    );
    assert_ne!(second.event_id, first);
    // A true retry (same conversation, same id) is still recognised.
    let retry = store
        .insert_event(&new_event(&col_a_b, "colA:colB:1", "second again"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.event_id, second.event_id);
    assert_eq!(store.message_count(&col_a).await.unwrap(), 1);
    assert_eq!(store.message_count(&col_a_b).await.unwrap(), 1);
    let texts: Vec<String> = store
        .messages(&col_a_b, MessageId(0), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["second"]);

    let a = claim_some(store, "w").await;
    let b = claim_some(store, "w").await;
    assert_eq!((a.id, b.id), (first, second.event_id));
    complete(store, &a, "w").await;
    complete(store, &b, "w").await;
    assert_nothing_claimable(store, "after event_key_is_per_conversation").await;
}

async fn claim_order(store: &Fixture) {
    let conv_a = conv("order-a", Some("t1"));
    let conv_b = conv("order-b", None);
    let a1 = insert(store, &new_event(&conv_a, "Ev-a1", "a1")).await;
    let a2 = insert(store, &new_event(&conv_a, "Ev-a2", "a2")).await;
    let b1 = insert(store, &new_event(&conv_b, "Ev-b1", "b1")).await;
    assert!(a1 < a2 && a2 < b1);

    let first = claim_some(store, "w1").await;
    assert_eq!(first.id, a1);
    assert_eq!(first.conversation, conv_a);
    let second = claim_some(store, "w2").await;
    assert_eq!(second.id, b1, "A2 waits while A1 is leased");
    assert_eq!(second.conversation, conv_b);
    assert_ne!(first.conversation_id, second.conversation_id);
    assert!(
        claim(store, "w3").await.is_none(),
        "A2 is blocked behind the leased A1"
    );

    complete(store, &first, "w1").await;
    let third = claim_some(store, "w3").await;
    assert_eq!(third.id, a2);
    assert_eq!(third.conversation_id, first.conversation_id);
    assert_eq!(third.conversation, conv_a);
    assert_eq!(third.attempts, 1);
    assert_eq!(third.payload, "{\"event\":\"Ev-a2\"}");

    complete(store, &second, "w2").await;
    complete(store, &third, "w3").await;
    assert_nothing_claimable(store, "after claim_order").await;
}

async fn expired_lease(store: &Fixture) {
    let c = conv("expired", None);
    let e = insert(store, &new_event(&c, "Ev-exp", "expire me")).await;
    let old = store.claim_one("old", store.past()).await.unwrap();
    assert_eq!((old.id, old.attempts), (e, 1));

    let new = claim_some(store, "new").await;
    assert_eq!(
        (new.id, new.attempts),
        (e, 2),
        "an expired lease is re-claimed"
    );

    // The old owner lost the event: it can neither renew, complete nor fail it.
    assert!(!store.renew_lease(e, "old", store.far()).await.unwrap());
    let done = Completion {
        messages: vec![message(Role::Assistant, "stale answer")],
        replies: vec![reply("exp:stale")],
        error: None,
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&old, "old", &done)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.message_count(&c).await.unwrap(), 1);
    assert!(
        store
            .claim_replies(Some(e), store.far(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.fail_event(&old, "old", "stale", None).await.unwrap());
    assert_eq!(store.inbox_counts().await.unwrap().leased, 1);
    assert!(store.renew_lease(e, "new", store.far()).await.unwrap());

    assert!(
        store
            .complete_event(&new, "new", &Completion::default())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .complete_event(&new, "new", &Completion::default())
            .await
            .unwrap()
            .is_none(),
        "a done event cannot be completed twice"
    );
    assert_nothing_claimable(store, "after expired_lease").await;
}

async fn renew_and_release(store: &Fixture) {
    let r = insert(store, &new_event(&conv("release-r", None), "Ev-r", "r")).await;
    let s = insert(store, &new_event(&conv("release-s", None), "Ev-s", "s")).await;

    let claimed = claim_some(store, "w1").await;
    assert_eq!(claimed.id, r);
    assert!(
        store
            .renew_lease(r, "w1", store.far().plus(1_000))
            .await
            .unwrap()
    );
    assert!(!store.renew_lease(r, "w2", store.far()).await.unwrap());
    // A renewed lease that is short expires again: renew_lease really moves lease_until.
    assert!(store.renew_lease(r, "w1", store.past()).await.unwrap());
    let again = claim_some(store, "w2").await;
    assert_eq!((again.id, again.attempts), (r, 2));
    assert!(!store.renew_lease(r, "w1", store.far()).await.unwrap());

    let s_claim = claim_some(store, "w3").await;
    assert_eq!(s_claim.id, s);
    assert!(claim(store, "w4").await.is_none());

    // Graceful shutdown of w2: only its lease goes.
    assert_eq!(store.release_leases("w2").await.unwrap(), 1);
    assert_eq!(store.release_leases("w2").await.unwrap(), 0);
    assert!(!store.renew_lease(r, "w2", store.far()).await.unwrap());
    let r3 = claim_some(store, "w4").await;
    assert_eq!((r3.id, r3.attempts), (r, 3));
    assert!(claim(store, "w5").await.is_none());

    // Start-up after a crash: every lease goes.
    assert_eq!(store.release_all_leases().await.unwrap(), 2);
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.leased), (2, 0));
    assert!(!store.renew_lease(r, "w4", store.far()).await.unwrap());
    let x = claim_some(store, "x").await;
    let y = claim_some(store, "y").await;
    assert_eq!((x.id, x.attempts), (r, 4));
    assert_eq!((y.id, y.attempts), (s, 2));
    complete(store, &x, "x").await;
    complete(store, &y, "y").await;
    assert!(!store.renew_lease(r, "x", store.far()).await.unwrap());
    assert_eq!(store.release_leases("x").await.unwrap(), 0);
    assert_eq!(store.release_all_leases().await.unwrap(), 0);
    assert_nothing_claimable(store, "after renew_and_release").await;
}

async fn complete_writes(store: &Fixture) {
    let c = conv("complete", Some("th"));
    let e = insert(store, &new_event(&c, "Ev-c1", "draw me a cat")).await;
    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, e);

    // Ids chosen so that their text order is the reverse of the attachment order.
    let shot = "ffffffff-0000-4000-8000-000000000001";
    let video = "00000000-0000-4000-8000-000000000002";
    let done = Completion {
        messages: vec![
            NewMessage {
                role: Role::Tool,
                text: "browser_screenshot".into(),
                meta: Some("{\"tool\":\"browser_screenshot\"}".into()),
                attachments: Vec::new(),
            },
            NewMessage {
                role: Role::Assistant,
                text: "here you go".into(),
                meta: None,
                attachments: vec![artifact(shot, "shot.png"), artifact(video, "cat.mp4")],
            },
        ],
        replies: vec![reply("c1:0"), reply("c1:1")],
        error: None,
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&claimed, "w", &done)
            .await
            .unwrap()
            .is_some()
    );

    let messages = store.messages(&c, MessageId(0), 100).await.unwrap();
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Tool, Role::Assistant]);
    assert!(messages.iter().all(|m| m.event_id == Some(e)));
    assert_eq!(
        messages[1].meta.as_deref(),
        Some("{\"tool\":\"browser_screenshot\"}")
    );
    assert!(messages[1].attachments.is_empty());
    let assistant = &messages[2];
    assert_eq!(assistant.text, "here you go");
    assert_eq!(assistant.meta, None);
    let attached: Vec<&str> = assistant
        .attachments
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(attached, [shot, video], "attachments keep their order");

    let stored = store.artifact(video).await.unwrap().expect("artifact row");
    assert_eq!(stored, assistant.attachments[1]);
    assert_eq!(stored.conversation_id, claimed.conversation_id);
    assert_eq!(stored.message_id, Some(assistant.id));
    assert_eq!(stored.blob_key, format!("artifacts/{video}"));
    assert_eq!(
        (stored.name.as_str(), stored.mime.as_str(), stored.size),
        ("cat.mp4", "image/png", 1234)
    );
    assert!(stored.created_at > UnixMs(0));
    assert_eq!(store.artifact("no-such-artifact").await.unwrap(), None);

    // The replies are in the outbox, oldest first.
    let items = store.claim_replies(Some(e), store.far(), 10).await.unwrap();
    assert_eq!(ids(&items), ["c1:0", "c1:1"]);
    for item in &items {
        assert_eq!(item.event_id, e);
        assert_eq!(item.conversation, c);
        assert_eq!(item.attempts, 1);
        assert_eq!(
            item.payload,
            format!("{{\"text\":\"{}\"}}", item.idempotency_key)
        );
    }

    // Idempotency: a key seen before is not written again.
    let e2 = insert(store, &new_event(&c, "Ev-c2", "again")).await;
    let claimed2 = claim_some(store, "w").await;
    assert_eq!(claimed2.id, e2);
    let done2 = Completion {
        messages: vec![message(Role::Assistant, "second answer")],
        replies: vec![reply("c1:0"), reply("c2:0"), reply("c2:0")],
        error: None,
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&claimed2, "w", &done2)
            .await
            .unwrap()
            .is_some()
    );
    let items2 = store
        .claim_replies(Some(e2), store.far(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&items2), ["c2:0"]);
    assert_eq!(store.message_count(&c).await.unwrap(), 5);

    for item in items.iter().chain(&items2) {
        store.mark_reply_sent(item.id, Some("pm")).await.unwrap();
    }
    assert!(
        store
            .claim_replies(None, store.past(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_nothing_claimable(store, "after complete_writes").await;
}

/// A completion may write its replies already claimed for delivery: they come back from
/// `complete_event` and the sweep does not see them until that claim expires.
async fn preclaimed_replies(store: &Fixture) {
    let c = conv("preclaimed", None);
    let e = insert(store, &new_event(&c, "Ev-pre", "hi")).await;
    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, e);
    let done = Completion {
        messages: vec![message(Role::Assistant, "hello")],
        replies: vec![reply("pre:0"), reply("pre:1")],
        error: None,
        reply_lease_until: Some(store.far()),
        claim_next_until: None,
    };
    let written = store
        .complete_event(&claimed, "w", &done)
        .await
        .unwrap()
        .unwrap()
        .replies;
    assert_eq!(ids(&written), ["pre:0", "pre:1"]);
    assert!(
        written
            .iter()
            .all(|item| item.event_id == e && item.attempts == 1)
    );
    assert_eq!(written[0].conversation, c);
    assert!(
        store
            .claim_replies(None, store.far(), 10)
            .await
            .unwrap()
            .is_empty(),
        "a pre-claimed reply was handed out twice"
    );
    for item in &written {
        store.mark_reply_sent(item.id, Some("m1")).await.unwrap();
    }
    // Written again (a re-run): the idempotency keys hold, nothing new to deliver.
    let e2 = insert(store, &new_event(&c, "Ev-pre2", "again")).await;
    let claimed2 = claim_some(store, "w").await;
    assert_eq!(claimed2.id, e2);
    let again = Completion {
        replies: vec![reply("pre:0")],
        reply_lease_until: Some(store.far()),
        ..Completion::default()
    };
    let written = store
        .complete_event(&claimed2, "w", &again)
        .await
        .unwrap()
        .unwrap()
        .replies;
    assert!(written.is_empty(), "an existing key was written twice");
}

async fn outbox(store: &Fixture) {
    let c = conv("outbox", None);
    let o1 = insert(store, &new_event(&c, "Ev-o1", "o1")).await;
    let claimed = claim_some(store, "w").await;
    let done = Completion {
        messages: Vec::new(),
        replies: vec![reply("o1:0"), reply("o1:1"), reply("o1:2")],
        error: None,
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&claimed, "w", &done)
            .await
            .unwrap()
            .is_some()
    );
    let o2 = insert(store, &new_event(&c, "Ev-o2", "o2")).await;
    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, o2);
    let done = Completion {
        messages: Vec::new(),
        replies: vec![reply("o2:0")],
        error: None,
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&claimed, "w", &done)
            .await
            .unwrap()
            .is_some()
    );

    // The event filter.
    let mine = store
        .claim_replies(Some(o2), store.far(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&mine), ["o2:0"]);
    store
        .mark_reply_sent(mine[0].id, Some("pm-o2"))
        .await
        .unwrap();

    // Oldest first, at most `limit`; a leased reply is not claimed again.
    let batch = store.claim_replies(None, store.far(), 2).await.unwrap();
    assert_eq!(ids(&batch), ["o1:0", "o1:1"]);
    assert!(batch.iter().all(|i| i.event_id == o1 && i.attempts == 1));
    let rest = store.claim_replies(None, store.far(), 10).await.unwrap();
    assert_eq!(ids(&rest), ["o1:2"]);
    assert!(
        store
            .claim_replies(None, store.far(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_replies(Some(o1), store.far(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Start-up: reply leases go too; an expired reply lease is claimable again.
    store.release_all_leases().await.unwrap();
    let all = store.claim_replies(None, store.past(), 10).await.unwrap();
    assert_eq!(ids(&all), ["o1:0", "o1:1", "o1:2"]);
    assert!(all.iter().all(|i| i.attempts == 2));
    let all = store
        .claim_replies(Some(o1), store.far(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&all), ["o1:0", "o1:1", "o1:2"]);
    assert!(all.iter().all(|i| i.attempts == 3));
    let (k0, k1, k2) = (all[0].id, all[1].id, all[2].id);

    // Delivered: never again.
    store.mark_reply_sent(k0, Some("pm-1")).await.unwrap();
    // Failed with a retry that is due: claimable again.
    store
        .mark_reply_failed(k1, "rate limited", Some(store.past()))
        .await
        .unwrap();
    let retried = store.claim_replies(None, store.far(), 10).await.unwrap();
    assert_eq!(ids(&retried), ["o1:1"]);
    assert_eq!(retried[0].attempts, 4);
    // Failed with a retry later: not before then.
    store
        .mark_reply_failed(k1, "rate limited", Some(store.far()))
        .await
        .unwrap();
    assert!(
        store
            .claim_replies(None, store.past(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Given up: never again.
    store.mark_reply_failed(k1, "gone", None).await.unwrap();
    store.mark_reply_failed(k2, "gone", None).await.unwrap();
    store.release_all_leases().await.unwrap();
    assert!(
        store
            .claim_replies(None, store.past(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_nothing_claimable(store, "after outbox").await;
}

/// A completion that asks for it also claims its conversation's next event, for the same
/// owner, and nothing of another conversation.
async fn completion_claims_next(store: &Fixture) {
    let a = conv("next-a", None);
    let b = conv("next-b", None);
    let a1 = insert(store, &new_event(&a, "Ev-na1", "a1")).await;
    let a2 = insert(store, &new_event(&a, "Ev-na2", "a2")).await;
    let b1 = insert(store, &new_event(&b, "Ev-nb1", "b1")).await;
    let go_on = Completion {
        claim_next_until: Some(store.far()),
        ..Completion::default()
    };

    let first = claim_some(store, "w").await;
    assert_eq!(first.id, a1);
    let done = store
        .complete_event(&first, "w", &go_on)
        .await
        .unwrap()
        .unwrap();
    let next = done.next.expect("A2 is claimed with A1's completion");
    assert_eq!(
        (next.id, next.conversation_id, next.attempts),
        (a2, first.conversation_id, 1)
    );
    assert_eq!(next.conversation, a);
    assert_eq!(next.payload, "{\"event\":\"Ev-na2\"}");
    // A2 is w's: the dispatcher hands out B1 only, and w holds A2's lease.
    let other = claim_some(store, "x").await;
    assert_eq!(other.id, b1);
    assert!(claim(store, "x").await.is_none());
    assert!(store.renew_lease(a2, "w", store.far()).await.unwrap());
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.leased), (0, 2));

    // Nothing waits behind A2: its completion claims nothing (B1 is another conversation's).
    let done = store
        .complete_event(&next, "w", &go_on)
        .await
        .unwrap()
        .unwrap();
    assert!(done.next.is_none(), "{:?}", done.next);
    // Without the ask, the next event stays for the dispatcher.
    let a3 = insert(store, &new_event(&a, "Ev-na3", "a3")).await;
    let a4 = insert(store, &new_event(&a, "Ev-na4", "a4")).await;
    let third = claim_some(store, "w").await;
    assert_eq!(third.id, a3);
    let done = store
        .complete_event(&third, "w", &Completion::default())
        .await
        .unwrap()
        .unwrap();
    assert!(done.next.is_none());
    let fourth = claim_some(store, "w").await;
    assert_eq!(fourth.id, a4);
    complete(store, &fourth, "w").await;
    complete(store, &other, "x").await;
    assert_nothing_claimable(store, "after the chain").await;
}

async fn fail_event(store: &Fixture) {
    let conv_f = conv("fail-f", None);
    let conv_g = conv("fail-g", None);
    let f1 = insert(store, &new_event(&conv_f, "Ev-f1", "f1")).await;
    let f2 = insert(store, &new_event(&conv_f, "Ev-f2", "f2")).await;
    let g1 = insert(store, &new_event(&conv_g, "Ev-g1", "g1")).await;
    let before = store.inbox_counts().await.unwrap();

    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, f1);
    // A worker that does not hold the lease changes nothing.
    assert!(
        !store
            .fail_event(&claimed, "other", "nope", None)
            .await
            .unwrap()
    );
    assert_eq!(store.inbox_counts().await.unwrap().failed, before.failed);

    // Retry later: pending again, not claimable before retry_at, and F2 still waits behind it.
    let retry_at = store.now().plus(700);
    store
        .fail_event(&claimed, "w", "transient", Some(retry_at))
        .await
        .unwrap();
    assert!(!store.renew_lease(f1, "w", store.far()).await.unwrap());
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.leased), (3, 0));
    assert_eq!(store.open_event_count().await.unwrap(), 3);
    let g = claim_some(store, "w").await;
    assert_eq!(g.id, g1, "F1 is not due yet and F2 waits behind it");
    complete(store, &g, "w").await;
    assert!(claim(store, "w").await.is_none());

    store.advance(700);
    let retried = claim_some(store, "w").await;
    assert_eq!((retried.id, retried.attempts), (f1, 2));

    // No retry: failed for good, and the conversation moves on.
    assert!(
        store
            .fail_event(&retried, "w", "fatal", None)
            .await
            .unwrap()
    );
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(counts.failed, before.failed + 1);
    assert_eq!(counts.done, before.done + 1);
    let next = claim_some(store, "w").await;
    assert_eq!((next.id, next.attempts), (f2, 1));
    assert!(
        store
            .complete_event(&retried, "w", &Completion::default())
            .await
            .unwrap()
            .is_none(),
        "a failed event cannot be completed"
    );
    complete(store, &next, "w").await;
    assert_eq!(store.open_event_count().await.unwrap(), 0);
    assert_nothing_claimable(store, "after fail_event").await;
}

async fn complete_with_error(store: &Fixture) {
    let c = conv("complete-error", None);
    let h1 = insert(store, &new_event(&c, "Ev-h1", "h1")).await;
    let h2 = insert(store, &new_event(&c, "Ev-h2", "h2")).await;
    let before = store.inbox_counts().await.unwrap();
    let claimed = claim_some(store, "w").await;
    assert_eq!(claimed.id, h1);
    let done = Completion {
        messages: vec![message(Role::Assistant, "sorry, the model is unavailable")],
        replies: vec![reply("h1:0")],
        error: Some("model unavailable".into()),
        reply_lease_until: None,
        claim_next_until: None,
    };
    assert!(
        store
            .complete_event(&claimed, "w", &done)
            .await
            .unwrap()
            .is_some()
    );
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(counts.failed, before.failed + 1);
    assert_eq!(counts.done, before.done);
    assert_eq!(counts.pending, before.pending - 1);
    assert_eq!(counts.leased, 0);
    assert_eq!(store.message_count(&c).await.unwrap(), 3);

    // The replies telling the user are delivered all the same, and the conversation moves on.
    let items = store
        .claim_replies(Some(h1), store.far(), 10)
        .await
        .unwrap();
    assert_eq!(ids(&items), ["h1:0"]);
    store.mark_reply_sent(items[0].id, None).await.unwrap();
    assert!(
        store
            .complete_event(&claimed, "w", &Completion::default())
            .await
            .unwrap()
            .is_none()
    );
    let next = claim_some(store, "w").await;
    assert_eq!(next.id, h2);
    complete(store, &next, "w").await;
    assert_nothing_claimable(store, "after complete_with_error").await;
}

async fn counts(store: &Fixture) {
    let base = store.inbox_counts().await.unwrap();
    assert_eq!(store.open_event_count().await.unwrap(), 0);
    assert_eq!(base.pending + base.leased, 0);

    insert(store, &new_event(&conv("count-p", None), "Ev-p1", "p1")).await;
    insert(store, &new_event(&conv("count-q", None), "Ev-q1", "q1")).await;
    insert(store, &new_event(&conv("count-q", None), "Ev-q2", "q2")).await;
    assert_eq!(store.open_event_count().await.unwrap(), 3);
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(
        counts,
        InboxCounts {
            pending: 3,
            ..base.clone()
        }
    );

    let p = claim_some(store, "w").await;
    let q = claim_some(store, "w").await;
    assert_eq!(store.open_event_count().await.unwrap(), 3);
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.leased), (1, 2));

    complete(store, &p, "w").await;
    assert!(store.fail_event(&q, "w", "bad", None).await.unwrap());
    let q2 = claim_some(store, "w").await;
    complete(store, &q2, "w").await;
    assert_eq!(store.open_event_count().await.unwrap(), 0);
    assert_eq!(
        store.inbox_counts().await.unwrap(),
        InboxCounts {
            pending: 0,
            leased: 0,
            done: base.done + 2,
            failed: base.failed + 1,
        }
    );
    assert_nothing_claimable(store, "after counts").await;
}

async fn transcript(store: &Fixture) {
    let c = conv("transcript", Some("t"));
    let e = insert(store, &new_event(&c, "Ev-t1", "first")).await;
    let turns = vec![
        NewMessage {
            meta: Some("{\"tool\":\"run_command\",\"args\":{\"cmd\":\"ls\"}}".into()),
            ..message(Role::Tool, "run_command")
        },
        NewMessage {
            attachments: vec![artifact("00000000-0000-4000-8000-0000000000f1", "out.txt")],
            ..message(Role::Tool, "result")
        },
        message(Role::Summary, "summary of older turns"),
        message(Role::Assistant, "done"),
    ];
    let appended = store.append_messages(&c, Some(e), &turns).await.unwrap();
    assert_eq!(appended.len(), 4);
    assert!(appended.windows(2).all(|w| w[0] < w[1]));
    let more = store
        .append_messages(&c, None, &[message(Role::User, "later")])
        .await
        .unwrap();
    assert!(more[0] > appended[3]);
    assert!(
        store
            .append_messages(&c, None, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.message_count(&c).await.unwrap(), 6);

    let all = store.messages(&c, MessageId(0), 100).await.unwrap();
    let all_ids: Vec<MessageId> = all.iter().map(|m| m.id).collect();
    assert_eq!(&all_ids[1..5], &appended[..]);
    assert_eq!(all_ids[5], more[0]);
    assert_eq!(all[1].meta, turns[0].meta);
    assert_eq!(all[2].attachments.len(), 1);
    assert_eq!(all[2].attachments[0].name, "out.txt");
    assert_eq!(all[3].role, Role::Summary);
    assert_eq!(all[4].event_id, Some(e));
    assert_eq!(all[5].event_id, None);

    // Paging.
    let page1 = store.messages(&c, MessageId(0), 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|m| m.id).collect::<Vec<_>>(),
        &all_ids[..2]
    );
    let page2 = store.messages(&c, page1[1].id, 2).await.unwrap();
    assert_eq!(
        page2.iter().map(|m| m.id).collect::<Vec<_>>(),
        &all_ids[2..4]
    );
    assert_eq!(page2[0].attachments.len(), 1, "attachments on a later page");
    let page3 = store.messages(&c, page2[1].id, 10).await.unwrap();
    assert_eq!(
        page3.iter().map(|m| m.id).collect::<Vec<_>>(),
        &all_ids[4..]
    );
    assert!(store.messages(&c, all_ids[5], 10).await.unwrap().is_empty());

    // The last messages, in order.
    let recent = store.recent_messages(&c, 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|m| m.id).collect::<Vec<_>>(),
        &all_ids[3..]
    );
    let recent = store.recent_messages(&c, 100).await.unwrap();
    assert_eq!(recent.iter().map(|m| m.id).collect::<Vec<_>>(), all_ids);
    assert_eq!(recent[2].attachments.len(), 1);

    // Unknown conversations are empty.
    let unknown = conv("transcript", Some("nope"));
    assert!(
        store
            .messages(&unknown, MessageId(0), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .recent_messages(&unknown, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.message_count(&unknown).await.unwrap(), 0);

    // Appending creates the conversation.
    let fresh = conv("transcript-new", None);
    store
        .append_messages(&fresh, None, &[message(Role::Assistant, "hi")])
        .await
        .unwrap();
    assert_eq!(store.message_count(&fresh).await.unwrap(), 1);

    let claimed = claim_some(store, "w").await;
    complete(store, &claimed, "w").await;
    assert_nothing_claimable(store, "after transcript").await;
}

async fn record_turn(store: &Fixture) {
    let c = conv("turn", Some("t"));
    let e = insert(store, &new_event(&c, "Ev-turn-1", "use the tools")).await;
    // Nothing to record writes nothing.
    store
        .record_turn(&c, Some(e), "U1", &[], &[])
        .await
        .unwrap();
    assert_eq!(store.message_count(&c).await.unwrap(), 1);
    let usage = |n| Usage {
        input_tokens: n,
        output_tokens: 1,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
    };
    store
        .record_turn(
            &c,
            Some(e),
            "U1",
            &[
                message(Role::Tool, "memory_save {}"),
                message(Role::Tool, "memory_save → Saved as #1."),
            ],
            &[
                ("anthropic/a".to_string(), usage(10)),
                ("anthropic/a".to_string(), usage(20)),
                ("openai/b".to_string(), usage(5)),
            ],
        )
        .await
        .unwrap();
    let rows = store.messages(&c, MessageId(0), 10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].text, "memory_save {}");
    assert_eq!(rows[2].event_id, Some(e));
    let totals = store
        .channel_usage(&channel("test", "W1", "turn"))
        .await
        .unwrap();
    assert_eq!(totals.len(), 2);
    assert_eq!(
        (totals[0].model.as_str(), totals[0].calls),
        ("anthropic/a", 2)
    );
    assert_eq!(totals[0].usage.input_tokens, 30);
    assert_eq!((totals[1].model.as_str(), totals[1].calls), ("openai/b", 1));

    let claimed = claim_some(store, "w").await;
    complete(store, &claimed, "w").await;
    assert_nothing_claimable(store, "after record_turn").await;
}

async fn compaction(store: &Fixture) {
    let c = conv("compaction", Some("t"));
    let empty = store.context_messages(&c, 100).await.unwrap();
    assert!(empty.summary.is_none() && empty.messages.is_empty());
    let e1 = insert(store, &new_event(&c, "Ev-compact-1", "first question")).await;
    let tool_meta = "{\"type\":\"tool_result\",\"results\":[]}".to_string();
    let first = store
        .append_messages(
            &c,
            Some(e1),
            &[
                NewMessage {
                    meta: Some(tool_meta.clone()),
                    ..message(Role::Tool, "memory_search → nothing")
                },
                message(Role::Assistant, "first answer"),
            ],
        )
        .await
        .unwrap();
    let later = store
        .append_messages(
            &c,
            None,
            &[
                message(Role::User, "second question"),
                message(Role::Assistant, "second answer"),
            ],
        )
        .await
        .unwrap();
    let window = store.context_messages(&c, 100).await.unwrap();
    assert!(window.summary.is_none());
    let texts: Vec<&str> = window.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "first question",
            "memory_search → nothing",
            "first answer",
            "second question",
            "second answer"
        ]
    );
    let newest = store.context_messages(&c, 2).await.unwrap();
    assert_eq!(newest.messages.len(), 2);
    assert_eq!(newest.messages[0].text, "second question");
    let first_id = window.messages[0].id;

    // Compact the first turn: one transaction marks it, adds the summary and the compaction row.
    let done = store
        .compact(
            &c,
            &NewCompaction {
                event_id: Some(e1),
                first_message_id: first_id,
                last_message_id: first[1],
                summary: "they asked a first question".into(),
                archive_key: "transcripts/test/a.jsonl".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.message_count, 3);
    assert_eq!(
        (done.first_message_id, done.last_message_id),
        (first_id, first[1])
    );
    assert_eq!(done.archive_key, "transcripts/test/a.jsonl");
    let window = store.context_messages(&c, 100).await.unwrap();
    let (summary, latest) = window.summary.clone().unwrap();
    assert_eq!(latest, done);
    assert_eq!(summary.id, done.summary_message_id);
    assert_eq!(summary.role, Role::Summary);
    assert_eq!(summary.text, "they asked a first question");
    assert!(summary.meta.unwrap().contains("transcripts/test/a.jsonl"));
    assert_eq!(
        window.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        later
    );
    // Nothing is deleted: the rows stay (the tool row's bulky detail moved to the archive).
    let all = store.messages(&c, MessageId(0), 100).await.unwrap();
    assert_eq!(all.len(), 6);
    let tool = all.iter().find(|m| m.role == Role::Tool).unwrap();
    assert_eq!(tool.meta, None);
    assert_eq!(tool.text, "memory_search → nothing");
    assert!(all[0].meta.is_some(), "user rows keep their meta");

    // A second compaction folds the first summary in.
    let next = store
        .append_messages(&c, None, &[message(Role::User, "third question")])
        .await
        .unwrap();
    let again = store
        .compact(
            &c,
            &NewCompaction {
                event_id: None,
                first_message_id: later[0],
                last_message_id: later[1],
                summary: "two questions so far".into(),
                archive_key: "transcripts/test/b.jsonl".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.message_count, 2);
    let window = store.context_messages(&c, 100).await.unwrap();
    assert_eq!(window.summary.unwrap().0.text, "two questions so far");
    assert_eq!(
        window.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        next
    );
    assert_eq!(
        store.compactions(&c).await.unwrap(),
        vec![done, again.clone()]
    );
    let stats = store.compaction_stats(&c.channel_ref()).await.unwrap();
    assert_eq!((stats.count, stats.messages), (2, 5));
    assert_eq!(stats.last_at, Some(again.created_at));
    let none = store
        .compaction_stats(&channel("test", "W1", "never-compacted"))
        .await
        .unwrap();
    assert_eq!(none, CompactionStats::default());
    assert!(
        store
            .compactions(&conv("compaction", Some("other")))
            .await
            .unwrap()
            .is_empty()
    );

    let claimed = claim_some(store, "w").await;
    complete(store, &claimed, "w").await;
    assert_nothing_claimable(store, "after compaction").await;
}

async fn memory(store: &Fixture) {
    let a = channel("test", "W1", "mem-a");
    let b = channel("test", "W1", "mem-b");
    let other_workspace = channel("test", "W2", "mem-a");
    let other_platform = channel("other", "W1", "mem-a");
    let note = |channel: &ChannelRef, text: &str, source: Option<&str>| NewNote {
        channel: channel.clone(),
        text: text.into(),
        created_by: "U1".into(),
        source: source.map(str::to_string),
    };
    let recall_ids = |channel: ChannelRef, query: &'static str| async move {
        store
            .recall(&channel, query, 10)
            .await
            .unwrap()
            .iter()
            .map(|n| n.id)
            .collect::<Vec<_>>()
    };

    assert_eq!(store.note_count(&a).await.unwrap(), 0);
    assert!(store.notes(&a, 10).await.unwrap().is_empty());
    assert!(store.recall(&a, "cat", 10).await.unwrap().is_empty());

    let cat = store
        .remember(&note(&a, "The cat sleeps on the red sofa", None))
        .await
        .unwrap();
    let deploy = store
        .remember(&note(&a, "Deploy with fly deploy on Fridays", None))
        .await
        .unwrap();
    let b_cat = store
        .remember(&note(&b, "a cat lives in channel b", None))
        .await
        .unwrap();
    let w_cat = store
        .remember(&note(&other_workspace, "a cat of another workspace", None))
        .await
        .unwrap();
    let p_cat = store
        .remember(&note(&other_platform, "a cat of another platform", None))
        .await
        .unwrap();
    assert!(cat < deploy);

    // Any word, with stemming, scoped to the channel.
    assert_eq!(recall_ids(a.clone(), "cats").await, [cat]);
    assert_eq!(recall_ids(a.clone(), "CAT").await, [cat]);
    assert_eq!(recall_ids(a.clone(), "deploying").await, [deploy]);
    let mut both = recall_ids(a.clone(), "sofa, fridays?").await;
    both.sort();
    assert_eq!(both, [cat, deploy]);
    assert!(recall_ids(a.clone(), "zebra").await.is_empty());
    assert!(recall_ids(a.clone(), " -- !? ").await.is_empty());
    assert_eq!(recall_ids(b.clone(), "cats").await, [b_cat]);
    assert!(recall_ids(b.clone(), "sofa").await.is_empty());
    assert_eq!(recall_ids(other_workspace.clone(), "cat").await, [w_cat]);
    assert_eq!(recall_ids(other_platform.clone(), "cat").await, [p_cat]);
    // A channel id of any characters (quotes, colons, spaces, non-ASCII) is searched within
    // itself, and its words never show up in another channel.
    let odd = channel("test", "W1", "mem \"odd\": ü AND x");
    let odd_cat = store
        .remember(&note(&odd, "an unusual cat", None))
        .await
        .unwrap();
    assert_eq!(recall_ids(odd.clone(), "cat").await, [odd_cat]);
    assert!(recall_ids(a.clone(), "unusual").await.is_empty());
    assert!(
        recall_ids(channel("test", "W1", "mem"), "unusual")
            .await
            .is_empty()
    );
    // Query syntax is never interpreted.
    assert_eq!(
        recall_ids(a.clone(), "cat & !sofa | (zebra:*)").await,
        [cat]
    );
    assert_eq!(recall_ids(a.clone(), "\"cat\" OR NOT sofa*").await, [cat]);

    // Best first: the note matching more of the words ranks higher; `limit` holds.
    let alpha_beta = store.remember(&note(&a, "alpha beta", None)).await.unwrap();
    let alpha_gamma = store
        .remember(&note(&a, "alpha gamma", None))
        .await
        .unwrap();
    assert_eq!(
        recall_ids(a.clone(), "beta alpha").await,
        [alpha_beta, alpha_gamma]
    );
    assert_eq!(recall_ids(a.clone(), "gamma alpha").await[0], alpha_gamma);
    assert_eq!(store.recall(&a, "alpha", 1).await.unwrap().len(), 1);

    let recalled = store.recall(&a, "sofa", 10).await.unwrap();
    assert_eq!(recalled[0].text, "The cat sleeps on the red sofa");
    assert_eq!(recalled[0].created_by, "U1");
    assert!(recalled[0].created_at > UnixMs(0));

    // Newest first.
    let notes = store.notes(&a, 10).await.unwrap();
    assert_eq!(
        notes.iter().map(|n| n.id).collect::<Vec<_>>(),
        [alpha_gamma, alpha_beta, deploy, cat]
    );
    assert_eq!(store.notes(&a, 1).await.unwrap()[0].id, alpha_gamma);
    assert_eq!(store.note_count(&a).await.unwrap(), 4);
    assert_eq!(store.note_count(&b).await.unwrap(), 1);

    // Forget: only in the note's own channel.
    assert!(!store.forget(&b, cat).await.unwrap());
    assert!(!store.forget(&other_workspace, cat).await.unwrap());
    assert!(!store.forget(&other_platform, cat).await.unwrap());
    assert_eq!(store.note_count(&a).await.unwrap(), 4);
    assert_eq!(recall_ids(a.clone(), "cat").await, [cat]);
    assert!(store.forget(&a, cat).await.unwrap());
    assert!(!store.forget(&a, cat).await.unwrap());
    assert!(recall_ids(a.clone(), "cats sofa").await.is_empty());
    assert_eq!(store.note_count(&a).await.unwrap(), 3);
    assert_eq!(recall_ids(b.clone(), "cat").await, [b_cat]);

    // The same source twice: one note.
    let first = store
        .remember(&note(&a, "from a file", Some("file:notes.md#1")))
        .await
        .unwrap();
    let second = store
        .remember(&note(&a, "from a file, re-read", Some("file:notes.md#1")))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(store.note_count(&a).await.unwrap(), 4);
    let other_source = store
        .remember(&note(&a, "from a file", Some("file:notes.md#2")))
        .await
        .unwrap();
    assert_ne!(other_source, first);
    assert_eq!(store.note_count(&a).await.unwrap(), 5);
    assert_eq!(recall_ids(a.clone(), "file").await.len(), 2);
}

async fn usage(store: &Fixture) {
    let u = channel("test", "W1", "usage");
    let in_thread = conv("usage", Some("t1"));
    let in_channel = conv("usage", None);
    let elsewhere = conv("usage-other", None);
    let other_workspace = ConversationRef::new("test", "W2", "usage", None);

    assert!(store.channel_usage(&u).await.unwrap().is_empty());
    let usage = |i, o, r, w| Usage {
        input_tokens: i,
        output_tokens: o,
        cache_read_tokens: r,
        cache_write_tokens: w,
    };
    store
        .record_usage(&in_thread, "model-b", &usage(10, 20, 3, 4))
        .await
        .unwrap();
    store
        .record_usage(&in_channel, "model-b", &usage(1, 2, 0, 0))
        .await
        .unwrap();
    store
        .record_usage(&in_thread, "model-a", &usage(7, 8, 0, 1))
        .await
        .unwrap();
    store
        .record_usage(&elsewhere, "model-a", &usage(1000, 1000, 0, 0))
        .await
        .unwrap();
    store
        .record_usage(&other_workspace, "model-a", &usage(500, 500, 0, 0))
        .await
        .unwrap();

    assert_eq!(
        store.channel_usage(&u).await.unwrap(),
        [
            ModelUsage {
                model: "model-a".into(),
                calls: 1,
                usage: usage(7, 8, 0, 1),
            },
            ModelUsage {
                model: "model-b".into(),
                calls: 2,
                usage: usage(11, 22, 3, 4),
            },
        ]
    );
    assert_eq!(
        store.channel_usage(&elsewhere.channel_ref()).await.unwrap(),
        [ModelUsage {
            model: "model-a".into(),
            calls: 1,
            usage: usage(1000, 1000, 0, 0),
        }]
    );
    assert!(
        store
            .channel_usage(&channel("test", "W1", "nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn installations(store: &Fixture) {
    let install = |team: &str, token: &str| StoredInstallation {
        platform: "slack".into(),
        team_id: team.into(),
        team_name: format!("Team {team}"),
        bot_user_id: "UBOT".into(),
        app_id: "A1".into(),
        scopes: "chat:write".into(),
        installed_by: "U1".into(),
        token_ciphertext: token.into(),
        installed_at: UnixMs(0),
        updated_at: UnixMs(0),
    };
    assert!(store.installation("slack", "T1").await.unwrap().is_none());
    store
        .save_installation(&install("T1", "sealed-1"))
        .await
        .unwrap();
    store
        .save_installation(&install("T2", "sealed-2"))
        .await
        .unwrap();
    let got = store.installation("slack", "T1").await.unwrap().unwrap();
    assert_eq!(got.token_ciphertext, "sealed-1");
    assert_eq!(got.team_name, "Team T1");
    assert!(got.installed_at > UnixMs(0) && got.updated_at >= got.installed_at);
    assert!(
        store.installation("discord", "T1").await.unwrap().is_none(),
        "installations are per platform"
    );
    // A re-install replaces the token and keeps the first install time.
    store
        .save_installation(&install("T1", "sealed-1b"))
        .await
        .unwrap();
    let again = store.installation("slack", "T1").await.unwrap().unwrap();
    assert_eq!(again.token_ciphertext, "sealed-1b");
    assert_eq!(again.installed_at, got.installed_at);
    assert!(store.remove_installation("slack", "T1").await.unwrap());
    assert!(!store.remove_installation("slack", "T1").await.unwrap());
    assert!(store.installation("slack", "T1").await.unwrap().is_none());
    assert!(store.installation("slack", "T2").await.unwrap().is_some());

    // OAuth states: single use, and expired ones do not count.
    let now = store.now();
    store
        .put_oauth_state("s-good", now.plus(60_000))
        .await
        .unwrap();
    store.put_oauth_state("s-old", now.plus(-1)).await.unwrap();
    assert!(!store.take_oauth_state("s-unknown", now).await.unwrap());
    assert!(store.take_oauth_state("s-good", now).await.unwrap());
    assert!(
        !store.take_oauth_state("s-good", now).await.unwrap(),
        "used up"
    );
    assert!(
        !store.take_oauth_state("s-old", now).await.unwrap(),
        "expired"
    );
    assert!(
        store
            .put_oauth_state("s-good", now.plus(60_000))
            .await
            .is_ok(),
        "a used state's row is gone"
    );
}

/// Live messages: stored by event and piece, replaced in place, never delivered as replies.
async fn live_messages(store: &Fixture) {
    let c = conv("live", None);
    let e = insert(store, &new_event(&c, "Ev-live", "live")).await;
    assert!(store.live_messages(e).await.unwrap().is_empty());
    store
        .save_live_message(e, 1, r#"{"ts":"2"}"#)
        .await
        .unwrap();
    store
        .save_live_message(e, 0, r#"{"ts":"1"}"#)
        .await
        .unwrap();
    store
        .save_live_message(e, 0, r#"{"ts":"1","mode":"edit"}"#)
        .await
        .unwrap();
    assert_eq!(
        store.live_messages(e).await.unwrap(),
        vec![
            (0, r#"{"ts":"1","mode":"edit"}"#.to_string()),
            (1, r#"{"ts":"2"}"#.to_string())
        ]
    );
    assert!(
        store
            .claim_replies(Some(e), store.far(), 10)
            .await
            .unwrap()
            .is_empty(),
        "a live message is not a reply to deliver"
    );
    // Another event's messages are its own; an unknown event gets nothing written.
    let other = insert(store, &new_event(&c, "Ev-live-2", "live 2")).await;
    assert!(store.live_messages(other).await.unwrap().is_empty());
    let unknown = EventId(other.0 + 1_000_000);
    store.save_live_message(unknown, 0, "{}").await.unwrap();
    assert!(store.live_messages(unknown).await.unwrap().is_empty());
}

/// Several instances (stores) with several workers each drain many conversations: every event is
/// claimed exactly once, one worker at a time per conversation, in arrival order.
async fn concurrent_claims(store: &Fixture) {
    let stores = instances(store).await;
    const CONVERSATIONS: usize = 6;
    const PER_CONVERSATION: usize = 8;
    let mut expected: BTreeMap<i64, Vec<EventId>> = BTreeMap::new();
    for n in 0..PER_CONVERSATION {
        for c in 0..CONVERSATIONS {
            let conversation = conv(&format!("busy-{c}"), None);
            let id = insert(
                store,
                &new_event(&conversation, &format!("Ev-busy-{c}-{n}"), "x"),
            )
            .await;
            expected.entry(c as i64).or_default().push(id);
        }
    }

    let active: Arc<Mutex<HashSet<ConversationId>>> = Arc::default();
    let seen: Arc<Mutex<BTreeMap<ConversationId, Vec<EventId>>>> = Arc::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut workers = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..4 {
            let (store, active, seen) = (store.clone(), active.clone(), seen.clone());
            let owner = format!("store{s}-worker{w}");
            workers.push(tokio::spawn(async move {
                // Workers claim one, two or three events at a time.
                let limit = 1 + w % 3;
                let mut batch: Vec<ClaimedEvent> = Vec::new();
                loop {
                    if batch.is_empty() {
                        batch = store
                            .claim_events(&owner, UnixMs::now().plus(60_000), limit)
                            .await
                            .unwrap();
                        assert!(batch.len() <= limit, "{owner}: {batch:?}");
                        batch.reverse();
                    }
                    let Some(event) = batch.pop() else {
                        if store.open_event_count().await.unwrap() == 0 {
                            return;
                        }
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "{owner}: events left unclaimable"
                        );
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    assert_eq!(
                        event.attempts, 1,
                        "{owner}: event {} claimed twice",
                        event.id
                    );
                    assert!(
                        active.lock().unwrap().insert(event.conversation_id),
                        "{owner}: two workers in conversation {}",
                        event.conversation_id
                    );
                    seen.lock()
                        .unwrap()
                        .entry(event.conversation_id)
                        .or_default()
                        .push(event.id);
                    tokio::task::yield_now().await;
                    active.lock().unwrap().remove(&event.conversation_id);
                    assert!(
                        store
                            .complete_event(&event, &owner, &Completion::default())
                            .await
                            .unwrap()
                            .is_some()
                    );
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut got: Vec<Vec<EventId>> = seen.values().cloned().collect();
    let mut want: Vec<Vec<EventId>> = expected.into_values().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every event once, in order per conversation");
}

/// The stores that play several instances: one SQLite store (one process owns the file), or
/// two stores on one Postgres schema.
async fn instances(store: &Fixture) -> Vec<Arc<dyn Store>> {
    match store.backend() {
        "sqlite" => vec![store.store.clone(), store.store.clone()],
        _ => vec![store.store.clone(), store.another().await],
    }
}

async fn lease_race(store: &Fixture) {
    operations::lease_race(instances(store).await).await;
}

/// A claim of several events takes one head per conversation, oldest first, and leaves each
/// conversation's later events waiting.
async fn claim_many(store: &Fixture) {
    let a = conv("many-a", None);
    let b = conv("many-b", None);
    let c = conv("many-c", Some("t"));
    let a1 = insert(store, &new_event(&a, "Ev-ma1", "a1")).await;
    let a2 = insert(store, &new_event(&a, "Ev-ma2", "a2")).await;
    let b1 = insert(store, &new_event(&b, "Ev-mb1", "b1")).await;
    let c1 = insert(store, &new_event(&c, "Ev-mc1", "c1")).await;
    let claimed = store.claim_events("w", store.far(), 10).await.unwrap();
    let got: Vec<EventId> = claimed.iter().map(|e| e.id).collect();
    assert_eq!(got, [a1, b1, c1], "one head per conversation, in id order");
    assert_eq!(claimed[2].conversation, c);
    assert!(claimed.iter().all(|e| e.attempts == 1));
    assert!(
        store
            .claim_events("w", store.far(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_events("w", store.far(), 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Finishing A1 makes A2 the head; a limit smaller than the work takes the oldest.
    complete(store, &claimed[0], "w").await;
    let d = conv("many-d", None);
    let d1 = insert(store, &new_event(&d, "Ev-md1", "d1")).await;
    let next = store.claim_events("w", store.far(), 1).await.unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), [a2]);
    let next2 = store.claim_events("w", store.far(), 5).await.unwrap();
    assert_eq!(next2.iter().map(|e| e.id).collect::<Vec<_>>(), [d1]);
    for event in claimed[1..].iter().chain(&next).chain(&next2) {
        complete(store, event, "w").await;
    }
    assert_nothing_claimable(store, "after claim_many").await;
}

/// What one store wrote, a store opened again on the same database finds.
async fn reopen_keeps_data(store: &Fixture) {
    let c = conv("reopen", None);
    insert(store, &new_event(&c, "Ev-reopen", "persist me")).await;
    let again = store.another().await;
    assert_eq!(again.message_count(&c).await.unwrap(), 1);
    assert_eq!(again.open_event_count().await.unwrap(), 1);
    let claimed = again.claim_events("w", store.far(), 5).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].conversation, c);
}

/// Catch-up's question: which conversations of a platform were heard from since a time, each
/// with its newest platform event (scheduled runs do not count), most recent first.
async fn last_heard(store: &Fixture) {
    let old = conv("old", None);
    insert(store, &new_event(&old, "m-old", "long ago")).await;
    store.advance(10_000);
    let since = store.now();
    let thread = conv("C1", Some("100.1"));
    let dm = conv("D1", None);
    insert(store, &new_event(&thread, "m-1", "first")).await;
    store.advance(5);
    insert(store, &new_event(&dm, "m-2", "a DM")).await;
    store.advance(5);
    insert(store, &new_event(&thread, "m-3", "second")).await;
    store.advance(5);
    insert(store, &new_event(&thread, "schedule:7:123", "a reminder")).await;
    let elsewhere = ConversationRef::new("other", "W1", "C1", None);
    insert(store, &new_event(&elsewhere, "m-4", "another platform")).await;

    let heard = store.last_heard("test", since, 10).await.unwrap();
    let got: Vec<(&ConversationRef, &str)> = heard
        .iter()
        .map(|h| (&h.conversation, h.platform_event_id.as_str()))
        .collect();
    assert_eq!(got, vec![(&thread, "m-3"), (&dm, "m-2")]);
    assert_eq!(heard[0].payload, "{\"event\":\"m-3\"}");
    assert!(
        heard[0].received_at.since(since) >= 10,
        "moved 10 ms (and real time) ahead"
    );
    let newest = store.last_heard("test", since, 1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].platform_event_id, "m-3");
    let all = store.last_heard("test", UnixMs(0), 10).await.unwrap();
    assert_eq!(
        all.len(),
        3,
        "the old conversation counts from an earlier time"
    );
}

/// Firing a due time moves the job and queues its event in one step, once: a second fire of
/// the same due time (another instance, a retry) writes nothing, and of two racing fires one
/// wins.
async fn fire_schedule(store: &Fixture) {
    let c = conv("C-jobs", None);
    let due = store.now().plus(1_000);
    let job = |text: &str| store::NewSchedule {
        conversation: c.clone(),
        created_by: "U1".into(),
        kind: store::JobKind::Post,
        text: text.into(),
        spec: "{}".into(),
        description: "once".into(),
        timezone: "UTC".into(),
        route: "{}".into(),
        next_due_at: due,
        max_runs: None,
        import_key: None,
    };
    let created = |c: store::Created| match c {
        store::Created::Stored(id) => id,
        other => panic!("not stored: {other:?}"),
    };
    let once = created(store.create_schedule(&job("one"), 10).await.unwrap());
    let step = store::Step {
        from: due,
        due,
        kind: store::StepKind::Ran,
        next_due_at: None,
        note: None,
    };
    let event = new_event(&c, &format!("schedule:{once}:{due}"), "[job] one");
    let fired = store.fire_schedule(once, &step, &event).await.unwrap();
    assert!(
        fired.is_some_and(|f| !f.duplicate),
        "the first fire queues the event"
    );
    let stored = store.schedule(once).await.unwrap().unwrap();
    assert_eq!(stored.status, store::JobStatus::Done);
    assert_eq!(
        (stored.runs, stored.next_due_at, stored.last_run_at),
        (1, None, Some(due))
    );
    assert_eq!(store.open_event_count().await.unwrap(), 1);
    assert_eq!(
        store.message_count(&c).await.unwrap(),
        1,
        "with its transcript line"
    );

    let again = store.fire_schedule(once, &step, &event).await.unwrap();
    assert!(again.is_none(), "the job had moved on");
    assert_eq!(
        store.open_event_count().await.unwrap(),
        1,
        "nothing more was written"
    );

    let raced = created(store.create_schedule(&job("two"), 10).await.unwrap());
    let event = new_event(&c, &format!("schedule:{raced}:{due}"), "[job] two");
    let other = store.another().await;
    let (a, b) = tokio::join!(
        store.fire_schedule(raced, &step, &event),
        other.fire_schedule(raced, &step, &event),
    );
    let wins = [a.unwrap(), b.unwrap()]
        .iter()
        .filter(|f| f.is_some())
        .count();
    assert_eq!(wins, 1, "one of two racing fires wins");
    assert_eq!(store.open_event_count().await.unwrap(), 2);
    assert!(
        store
            .due_schedules(store.far(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Each case runs on its own fresh database, once per backend: `sqlite::case` and
/// `postgres::case` (skipped without the test server, outside CI).
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = super::Fixture::sqlite().await;
                    super::$case(&store).await;
                    store.finish().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = super::Fixture::postgres().await else {
                        return;
                    };
                    super::$case(&store).await;
                    store.finish().await;
                }
            )*
        }
    };
}

contract!(
    empty_store,
    insert_and_duplicate,
    event_key_is_per_conversation,
    claim_order,
    claim_many,
    expired_lease,
    renew_and_release,
    complete_writes,
    preclaimed_replies,
    outbox,
    completion_claims_next,
    fail_event,
    complete_with_error,
    counts,
    transcript,
    memory,
    usage,
    compaction,
    record_turn,
    installations,
    live_messages,
    reopen_keeps_data,
    concurrent_claims,
    lease_race,
    leases,
    admin,
    imports,
    last_heard,
    fire_schedule,
);

use operations::{admin, imports, leases};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/t.db", dir.path().display())
}

// --- PostgreSQL ------------------------------------------------------------------------------

/// A fresh schema on the test server, dropped at the end: runs never see each other's rows.
struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    async fn create() -> Option<Self> {
        let base = common::postgres_url()?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(Self { base, name })
    }

    /// The store URL: the base URL with this schema as the search path.
    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    /// The tables of the schema (checks that the store really migrated into it).
    async fn tables(&self) -> Vec<String> {
        let mut conn = sqlx::PgConnection::connect(&self.base).await.unwrap();
        sqlx::query(
            "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
    }

    async fn drop(self) {
        let mut conn = sqlx::PgConnection::connect(&self.base).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// The store migrates into its own schema (the search path of its URL), not `public`.
#[tokio::test]
async fn postgres_migrates_into_its_schema() {
    let Some(store) = Fixture::postgres().await else {
        return;
    };
    let Some(schema) = &store.schema else {
        unreachable!("a Postgres fixture has a schema");
    };
    let tables = schema.tables().await;
    for table in [
        "conversations",
        "inbox",
        "messages",
        "artifacts",
        "outbox",
        "memory_notes",
        "llm_usage",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    store.finish().await;
}

async fn open_error(url: &str) -> String {
    match store::open(url).await {
        Ok(_) => panic!("{url} should not open"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn postgres_open_error_hides_the_password() {
    // A URL that does not parse: nothing of it is shown.
    let error = open_error("postgres://ecdysis:hunter2secret@127.0.0.1:notaport/db").await;
    assert!(!error.contains("hunter2secret"), "{error}");

    // The server refuses (no such database, or a wrong password): the password is hidden.
    let Some(base) = common::postgres_url() else {
        return;
    };
    let mut url = url::Url::parse(&base).unwrap();
    url.set_password(Some("hunter2secret")).unwrap();
    url.set_path("/no_such_database_for_ecdysis");
    let error = open_error(url.as_str()).await;
    assert!(!error.contains("hunter2secret"), "{error}");
    assert!(error.contains("no_such_database_for_ecdysis"), "{error}");
}
