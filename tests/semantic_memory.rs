//! The semantic-memory contract, on SQLite and PostgreSQL alike, with a deterministic fake
//! embedder (concept words share dimensions, so a paraphrase is near and other text is far):
//! what is queued, embedded, searched and dropped, per channel, across model changes,
//! restarts and a failing embedder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis::embeddings::indexer::Pass;
use ecdysis::embeddings::{EmbedError, Embedder, Indexer, MemorySearch, Recalled};
use ecdysis::storage::store::{
    self, Clock, ItemKind, ItemSource, MessageId, NewCompaction, NewMessage, NewNote, NoteId, Role,
    Store,
};
use ecdysis_chat::{ChannelRef, ConversationRef};

/// Words that mean the same thing share one dimension; every other word hashes into the rest.
const CONCEPTS: &[&[&str]] = &[
    &["ship", "release", "deploy", "launch", "train"],
    &["thursday", "thursdays", "weekly", "week"],
    &["database", "postgres", "db", "sql"],
    &["password", "credential", "secret", "login"],
    &["lunch", "food", "eat", "pizza"],
];
const DIM: usize = 64;

struct FakeEmbedder {
    name: String,
    failing: AtomicBool,
    calls: AtomicUsize,
}

impl FakeEmbedder {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            failing: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        })
    }
}

fn fake_vector(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIM];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
    {
        // A concept weighs more than any other word: meaning dominates.
        let (slot, weight) = match CONCEPTS.iter().position(|c| c.contains(&word.as_str())) {
            Some(concept) => (concept, 3.0),
            None => (
                CONCEPTS.len()
                    + (word
                        .bytes()
                        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
                        as usize)
                        % (DIM - CONCEPTS.len()),
                1.0,
            ),
        };
        v[slot] += weight;
    }
    ecdysis::embeddings::normalize(&mut v);
    v
}

#[async_trait]
impl Embedder for FakeEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(EmbedError::Status {
                status: 500,
                body: "the fake is down".into(),
            });
        }
        Ok(texts.iter().map(|t| fake_vector(t)).collect())
    }
}

fn channel(name: &str) -> ChannelRef {
    ChannelRef {
        platform: "test".into(),
        workspace: "W1".into(),
        channel: name.into(),
    }
}

fn note(channel_name: &str, text: &str) -> NewNote {
    NewNote {
        channel: channel(channel_name),
        text: text.into(),
        created_by: "U1".into(),
        source: None,
    }
}

struct Setup {
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
    embedder: Arc<FakeEmbedder>,
    indexer: Arc<Indexer>,
    search: MemorySearch,
}

fn setup_with(store: Arc<dyn Store>, clock: Arc<Clock>, model: &str) -> Setup {
    let embedder = FakeEmbedder::new(model);
    let indexer = Arc::new(
        Indexer::new(store.clone(), embedder.clone(), 4).with_backoff(Duration::from_secs(10)),
    );
    let search = MemorySearch::hybrid(
        store.clone(),
        embedder.clone(),
        0.3,
        64 * 1024 * 1024,
        Some(indexer.clone()),
    );
    Setup {
        store,
        clock,
        embedder,
        indexer,
        search,
    }
}

async fn drain(indexer: &Indexer) -> usize {
    indexer.drain(|_| {}).await.unwrap()
}

fn ids(found: &[Recalled]) -> Vec<(ItemKind, i64)> {
    found
        .iter()
        .map(|r| (r.item.item.kind, r.item.item.id))
        .collect()
}

/// A note is found by words at once and by meaning once embedded; never in another channel.
async fn found_by_words_at_once_and_by_meaning_after_indexing(s: &Setup) {
    let release = s
        .store
        .remember(&note("eng", "The release train leaves on Thursdays"))
        .await
        .unwrap();
    let lunch = s
        .store
        .remember(&note("eng", "Friday lunch is pizza"))
        .await
        .unwrap();
    let other = s
        .store
        .remember(&note("ops", "We deploy every week"))
        .await
        .unwrap();

    // By words, before any embedding.
    let found = s
        .search
        .search(&channel("eng"), "release", 10)
        .await
        .unwrap();
    assert_eq!(ids(&found), vec![(ItemKind::Note, release.0)]);
    assert!(found[0].by_words && !found[0].by_meaning());
    // Not yet by meaning.
    let found = s
        .search
        .search(&channel("eng"), "when do we ship weekly", 10)
        .await
        .unwrap();
    assert!(found.is_empty(), "nothing is embedded yet: {found:?}");

    assert_eq!(drain(&s.indexer).await, 3);
    let found = s
        .search
        .search(&channel("eng"), "when do we ship weekly", 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&found),
        vec![(ItemKind::Note, release.0)],
        "by meaning, in this channel only (not #{other} of ops, not the lunch note #{lunch})"
    );
    assert!(found[0].by_meaning() && !found[0].by_words);
    let status = s.store.index_status(s.embedder.model()).await.unwrap();
    assert_eq!((status.waiting, status.vectors), (0, 3));
}

/// Changing a note's text drops its vector and embeds the new text; forgetting drops it.
async fn edits_and_deletes_follow(s: &Setup) {
    let id = s
        .store
        .remember(&note("edit", "The database is Postgres"))
        .await
        .unwrap();
    drain(&s.indexer).await;
    let by_meaning = |q: &'static str| async move {
        s.search
            .search(&channel("edit"), q, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.by_meaning())
            .map(|r| r.item.item.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(by_meaning("which sql server").await, vec![id.0]);
    assert!(s.store.update_note(id, "Lunch is pizza").await.unwrap());
    assert!(
        by_meaning("which sql server").await.is_empty(),
        "the old text's vector is gone with the edit"
    );
    drain(&s.indexer).await;
    assert_eq!(by_meaning("what food to eat").await, vec![id.0]);
    assert!(s.store.forget(&channel("edit"), id).await.unwrap());
    assert!(by_meaning("what food to eat").await.is_empty());
    let status = s.store.index_status(s.embedder.model()).await.unwrap();
    assert_eq!(status.waiting, 0, "a forgotten note leaves nothing queued");
}

/// Compactions are cut into summary and transcript chunks, found by words and by meaning.
async fn compacted_history_is_searchable(s: &Setup) {
    let conversation = ConversationRef::new("test", "W1", "hist", Some("t1".into()));
    let rows: Vec<NewMessage> = [
        (Role::User, "Which credential do I use for staging?"),
        (Role::Assistant, "Use the vault entry called staging-admin."),
        (Role::User, "Thanks, and the launch date?"),
        (Role::Assistant, "It goes out on Thursday."),
    ]
    .into_iter()
    .map(|(role, text)| NewMessage {
        role,
        text: text.into(),
        meta: None,
        attachments: Vec::new(),
    })
    .collect();
    let written: Vec<MessageId> = s
        .store
        .append_messages(&conversation, None, &rows)
        .await
        .unwrap();
    let (first, last) = (written[0], written[written.len() - 1]);
    s.store
        .compact(
            &conversation,
            &NewCompaction {
                event_id: None,
                first_message_id: first,
                last_message_id: last,
                summary: "The team discussed the staging vault entry and the Thursday launch."
                    .into(),
                archive_key: "archives/hist/1.jsonl".into(),
            },
        )
        .await
        .unwrap();
    let pass: Pass = s.indexer.run_once().await.unwrap();
    assert_eq!(pass.chunked, 1);
    drain(&s.indexer).await;
    let found = s
        .search
        .search(&channel("hist"), "vault", 10)
        .await
        .unwrap();
    assert!(
        found
            .iter()
            .any(|r| r.by_words && r.item.source == ItemSource::Transcript),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|r| r.by_words && r.item.source == ItemSource::Summary),
        "{found:?}"
    );
    let found = s
        .search
        .search(&channel("hist"), "which secret for login", 10)
        .await
        .unwrap();
    assert!(
        found
            .iter()
            .any(|r| r.by_meaning() && r.item.text.contains("staging-admin")),
        "{found:?}"
    );
    assert!(
        s.search
            .search(&channel("eng"), "vault staging", 10)
            .await
            .unwrap()
            .iter()
            .all(|r| !r.item.text.contains("vault")),
        "another channel's history is never found"
    );
    // Chunking again adds nothing.
    assert_eq!(s.indexer.run_once().await.unwrap().chunked, 0);
}

/// A failing embedder: full text still answers, the rows stay queued with the error, and are
/// embedded once it recovers and their retry is due.
async fn failing_embedder_keeps_rows_queued(s: &Setup) {
    s.embedder.failing.store(true, Ordering::Relaxed);
    let id = s
        .store
        .remember(&note("fail", "Deploy freeze starts Thursday"))
        .await
        .unwrap();
    let pass = s.indexer.run_once().await.unwrap();
    assert_eq!(pass.failed, 1);
    let found = s
        .search
        .search(&channel("fail"), "freeze", 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&found),
        vec![(ItemKind::Note, id.0)],
        "full text still works"
    );
    let status = s.store.index_status(s.embedder.model()).await.unwrap();
    assert_eq!((status.waiting, status.failing), (1, 1));
    assert!(status.last_error.unwrap().contains("500"));
    // Recovered, but the retry is not due yet.
    s.embedder.failing.store(false, Ordering::Relaxed);
    assert_eq!(s.indexer.run_once().await.unwrap(), Pass::default());
    s.clock.advance(11_000);
    assert_eq!(s.indexer.run_once().await.unwrap().embedded, 1);
    let found = s
        .search
        .search(&channel("fail"), "when do we launch", 10)
        .await
        .unwrap();
    assert_eq!(ids(&found), vec![(ItemKind::Note, id.0)]);
}

async fn contract(store: Arc<dyn Store>, clock: Arc<Clock>) {
    let s = setup_with(store.clone(), clock.clone(), "fake/a");
    found_by_words_at_once_and_by_meaning_after_indexing(&s).await;
    edits_and_deletes_follow(&s).await;
    compacted_history_is_searchable(&s).await;
    failing_embedder_keeps_rows_queued(&s).await;

    // Another model: everything is queued again and re-embedded; the old vectors go.
    let b = setup_with(store.clone(), clock.clone(), "fake/b");
    let total = b.store.index_status("fake/a").await.unwrap().vectors;
    assert!(total > 0);
    assert_eq!(b.indexer.queue_missing().await.unwrap(), total);
    assert_eq!(drain(&b.indexer).await as i64, total);
    assert_eq!(b.store.index_status("fake/a").await.unwrap().vectors, 0);
    assert_eq!(b.store.index_status("fake/b").await.unwrap().vectors, total);
    let found = b
        .search
        .search(&channel("eng"), "when do we ship weekly", 10)
        .await
        .unwrap();
    assert!(found.iter().any(|r| r.by_meaning()));
    // A reindex queues everything again; nothing is lost or doubled.
    assert_eq!(b.store.queue_all().await.unwrap(), total);
    assert_eq!(drain(&b.indexer).await as i64, total);
    assert_eq!(b.store.index_status("fake/b").await.unwrap().vectors, total);
}

#[tokio::test]
async fn contract_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::default());
    let store = store::open_with_clock(
        &format!("sqlite://{}/s.db", dir.path().display()),
        clock.clone(),
    )
    .await
    .unwrap();
    contract(store, clock).await;
}

#[tokio::test]
async fn contract_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres(&url).await;
    let clock = Arc::new(Clock::default());
    let store = store::open_with_clock(&url, clock.clone()).await.unwrap();
    contract(store, clock).await;
}

/// The queue is in the database: notes written while no indexer ran are embedded after a
/// restart, including notes from before semantic memory existed (migration 16 queues them).
#[tokio::test]
async fn queue_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/r.db", dir.path().display());
    let first = store::open(&url).await.unwrap();
    let id = first
        .remember(&note("r", "The release train leaves on Thursdays"))
        .await
        .unwrap();
    drop(first);
    let store = store::open(&url).await.unwrap();
    let s = setup_with(store, Arc::new(Clock::default()), "fake/a");
    assert_eq!(drain(&s.indexer).await, 1);
    let found = s
        .search
        .search(&channel("r"), "ship weekly", 5)
        .await
        .unwrap();
    assert_eq!(found[0].note_id(), Some(id.0));
    let _ = NoteId(0);
}

/// With embeddings off, search is the notes' full-text search, unchanged.
#[tokio::test]
async fn off_is_full_text_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&format!("sqlite://{}/o.db", dir.path().display()))
        .await
        .unwrap();
    store
        .remember(&note("o", "The release train leaves on Thursdays"))
        .await
        .unwrap();
    let search = MemorySearch::full_text(store.clone());
    assert!(search.model().is_none());
    let by_words = search.search(&channel("o"), "train", 5).await.unwrap();
    assert_eq!(by_words.len(), 1);
    assert!(
        search
            .search(&channel("o"), "when do we ship", 5)
            .await
            .unwrap()
            .is_empty()
    );
    let old = store.recall(&channel("o"), "train", 5).await.unwrap();
    assert_eq!(by_words[0].note_id(), Some(old[0].id.0));
}
