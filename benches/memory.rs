//! Semantic memory benchmark (SQLite): embedding throughput of the local model, `/recall`
//! latency (the hybrid search: query embedding, full text, vector scan, fusion) over 100,000
//! notes in one channel and over 1,000,000 notes across 1,000 channels, the memory the vector
//! cache takes, and recall@5 of hybrid and full-text search on the labelled set.
//!
//! Run: `cargo bench --bench memory` with `ECDYSIS_TEST_EMBED_MODEL` naming the
//! all-MiniLM-L6-v2 directory (`source .ci/services.sh` exports it). The large sets get random
//! unit vectors written straight into the database (a scan costs the same whatever the
//! numbers); queries are embedded by the real model. `ECDYSIS_BENCH_MEMORY_SCALE=0.1` runs
//! a tenth of the sizes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a broken setup fails loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecdysis::embeddings::local::LocalEmbedder;
use ecdysis::embeddings::{Embedder, Indexer, MemorySearch};
use ecdysis::storage::store::{self, NewNote, Store, encode_vector};
use ecdysis_chat::ChannelRef;
use sqlx::Connection;

const DIM: usize = 384;
const QUERIES: usize = 200;

fn channel(name: &str) -> ChannelRef {
    ChannelRef {
        platform: "bench".into(),
        workspace: "W".into(),
        channel: name.into(),
    }
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit_vector(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| (self.next() % 20_000) as f32 / 10_000.0 - 1.0)
            .collect();
        ecdysis::embeddings::normalize(&mut v);
        v
    }
}

/// Pseudo-words: a vocabulary of 5,000 for note texts.
fn vocabulary() -> Vec<String> {
    let syllables = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "da", "so", "fu", "gi", "ha", "jo",
        "be", "cu", "wy", "xe", "qo",
    ];
    let mut words = Vec::new();
    for a in syllables {
        for b in syllables {
            for c in syllables {
                words.push(format!("{a}{b}{c}"));
                if words.len() == 5_000 {
                    return words;
                }
            }
        }
    }
    words
}

fn note_text(rng: &mut Rng, words: &[String]) -> String {
    let n = 8 + rng.below(8);
    (0..n)
        .map(|_| words[rng.below(words.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Write `per_channel` notes into each of `channels`, with random vectors of `model`, in big
/// transactions straight through SQL (the store's triggers keep full text in step).
async fn fill(url: &str, model: &str, channels: usize, per_channel: usize, rng: &mut Rng) {
    let words = vocabulary();
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let started = Instant::now();
    let mut id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM memory_notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for c in 0..channels {
        let name = format!("c{c}");
        let mut tx = conn.begin().await.unwrap();
        for _ in 0..per_channel {
            id += 1;
            sqlx::query(
                "INSERT INTO memory_notes (id, platform, workspace, channel, text, created_by,
                                           created_at)
                 VALUES ($1, 'bench', 'W', $2, $3, 'U', $4)",
            )
            .bind(id)
            .bind(&name)
            .bind(note_text(rng, &words))
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO memory_vectors (item_kind, item_id, platform, workspace, channel,
                                             model, dim, vector, created_at)
                 VALUES ('note', $1, 'bench', 'W', $2, $3, $4, $5, $1)",
            )
            .bind(id)
            .bind(&name)
            .bind(model)
            .bind(DIM as i32)
            .bind(encode_vector(&rng.unit_vector()))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        sqlx::query("DELETE FROM memory_embed_queue")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        if channels > 10 && c % (channels / 10) == 0 {
            eprintln!("  … {} notes", (c + 1) * per_channel);
        }
    }
    eprintln!(
        "  wrote {} notes with vectors in {:.1} s",
        channels * per_channel,
        started.elapsed().as_secs_f64()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// `/recall` latencies over `queries` (channel, text), after one warm-up round.
async fn recall_latency(
    search: &MemorySearch,
    queries: &[(String, String)],
    warm: bool,
) -> (f64, f64, f64) {
    if warm {
        for (ch, q) in queries.iter().take(3) {
            search.search(&channel(ch), q, 10).await.unwrap();
        }
    }
    let mut took = Vec::with_capacity(queries.len());
    for (ch, q) in queries {
        let started = Instant::now();
        let found = search.search(&channel(ch), q, 10).await.unwrap();
        took.push(started.elapsed());
        std::hint::black_box(found);
    }
    took.sort();
    (
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&took, 1.0),
    )
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(dir) = std::env::var("ECDYSIS_TEST_EMBED_MODEL") else {
        eprintln!(
            "ECDYSIS_TEST_EMBED_MODEL is not set (source .ci/services.sh): no model to bench"
        );
        return;
    };
    let scale: f64 = std::env::var("ECDYSIS_BENCH_MEMORY_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    println!("memory bench (load average {})", load());
    let embedder = Arc::new(LocalEmbedder::load(PathBuf::from(&dir)).await.unwrap());
    let model = embedder.model().to_string();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words = vocabulary();

    // 1. Embedding throughput: the indexer over 512 notes in batches of 32.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/throughput.db", tmp.path().display());
    let store: Arc<dyn Store> = store::open(&url).await.unwrap();
    let sentences = [
        "The release train leaves on Thursdays after the QA sign-off.",
        "Staging database credentials live in the vault under staging-admin.",
        "Remember to rotate the API keys for the payment provider every quarter.",
        "Lunch is catered on Wednesdays; vegetarian options are on the left.",
    ];
    for i in 0..512 {
        store
            .remember(&NewNote {
                channel: channel("t"),
                text: format!("{} (note {i})", sentences[i % sentences.len()]),
                created_by: "U".into(),
                source: None,
            })
            .await
            .unwrap();
    }
    let indexer = Indexer::new(store.clone(), embedder.clone(), 32);
    let started = Instant::now();
    let n = indexer.drain(|_| {}).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedding throughput (local all-MiniLM-L6-v2, batches of 32, queue → vectors stored): {n} notes in {secs:.2} s = {:.0} notes/s",
        n as f64 / secs
    );
    let started = Instant::now();
    for _ in 0..50 {
        embedder
            .embed(&["when do we ship the next release?".to_string()])
            .await
            .unwrap();
    }
    println!(
        "one query embedding: {:.1} ms on average",
        started.elapsed().as_secs_f64() * 1000.0 / 50.0
    );

    // 2. Recall@5 on the labelled set.
    let text = include_str!("../tests/fixtures/semantic_recall.tsv");
    let pairs: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    let url = format!("sqlite://{}/labelled.db", tmp.path().display());
    let store: Arc<dyn Store> = store::open(&url).await.unwrap();
    let mut ids = Vec::new();
    for p in &pairs {
        ids.push(
            store
                .remember(&NewNote {
                    channel: channel(p[0]),
                    text: p[1].into(),
                    created_by: "U".into(),
                    source: None,
                })
                .await
                .unwrap()
                .0,
        );
    }
    Indexer::new(store.clone(), embedder.clone(), 32)
        .drain(|_| {})
        .await
        .unwrap();
    let hybrid = MemorySearch::hybrid(store.clone(), embedder.clone(), 0.25, 64 << 20, None);
    let full_text = MemorySearch::full_text(store.clone());
    let (mut h, mut f) = (0, 0);
    for (p, id) in pairs.iter().zip(&ids) {
        let hit = |found: Vec<ecdysis::embeddings::Recalled>| {
            found.iter().any(|r| r.note_id() == Some(*id)) as usize
        };
        h += hit(hybrid.search(&channel(p[0]), p[2], 5).await.unwrap());
        f += hit(full_text.search(&channel(p[0]), p[2], 5).await.unwrap());
    }
    println!(
        "recall@5 on {} labelled pairs: hybrid {:.3}, full text {:.3}",
        pairs.len(),
        h as f64 / pairs.len() as f64,
        f as f64 / pairs.len() as f64
    );

    // 3. /recall latency over 100,000 notes in one channel.
    let big = ((100_000.0 * scale) as usize).max(1_000);
    let url = format!("sqlite://{}/one.db", tmp.path().display());
    drop(store::open(&url).await.unwrap());
    eprintln!("writing {big} notes into one channel…");
    fill(&url, &model, 1, big, &mut rng).await;
    let store: Arc<dyn Store> = store::open(&url).await.unwrap();
    let search = MemorySearch::hybrid(store.clone(), embedder.clone(), 0.0, 512 << 20, None);
    let queries: Vec<(String, String)> = (0..QUERIES)
        .map(|_| {
            let q = (0..4)
                .map(|_| words[rng.below(words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            ("c0".to_string(), q)
        })
        .collect();
    let rss_before = rss_mb();
    let started = Instant::now();
    search
        .search(&channel("c0"), "first query loads the channel", 10)
        .await
        .unwrap();
    let cold = started.elapsed();
    let (p50, p99, max) = recall_latency(&search, &queries, true).await;
    println!(
        "/recall over {big} notes in one channel: cold (loads the channel's vectors) {:.0} ms; warm p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({QUERIES} queries)",
        cold.as_secs_f64() * 1000.0
    );
    // Where the time goes: the full-text side alone, and the query embedding alone.
    let words_only = MemorySearch::full_text(store.clone());
    let (w50, w99, _) = recall_latency(&words_only, &queries, true).await;
    let mut embeds = Vec::with_capacity(QUERIES);
    for (_, q) in &queries {
        let started = Instant::now();
        embedder.embed(std::slice::from_ref(q)).await.unwrap();
        embeds.push(started.elapsed());
    }
    embeds.sort();
    println!(
        "  of which: full text alone p50 {w50:.1} ms, p99 {w99:.1} ms; query embedding alone p50 {:.1} ms, p99 {:.1} ms",
        percentile(&embeds, 0.5),
        percentile(&embeds, 0.99)
    );
    println!(
        "vector cache for that channel: {:.1} MB (process RSS grew {:.0} MB)",
        search.cache_bytes() as f64 / 1048576.0,
        rss_mb() - rss_before
    );
    drop(search);
    drop(store);

    // 4. /recall latency over 1,000,000 notes across 1,000 channels (random channels: with the
    // default 512 MB cache about a third of the channels stay cached, the rest load on use).
    let channels = ((1_000.0 * scale) as usize).max(10);
    let url = format!("sqlite://{}/many.db", tmp.path().display());
    drop(store::open(&url).await.unwrap());
    eprintln!(
        "writing {} notes across {channels} channels…",
        channels * 1_000
    );
    fill(&url, &model, channels, 1_000, &mut rng).await;
    let store: Arc<dyn Store> = store::open(&url).await.unwrap();
    let search = MemorySearch::hybrid(store.clone(), embedder.clone(), 0.0, 512 << 20, None);
    let queries: Vec<(String, String)> = (0..QUERIES * 5)
        .map(|_| {
            let q = (0..4)
                .map(|_| words[rng.below(words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            (format!("c{}", rng.below(channels)), q)
        })
        .collect();
    let rss_before = rss_mb();
    let (p50, p99, max) = recall_latency(&search, &queries, false).await;
    println!(
        "/recall over {} notes across {channels} channels (random channel per query, cold loads included): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} queries)",
        channels * 1_000,
        queries.len()
    );
    let (p50, p99, max) = recall_latency(&search, &queries, false).await;
    println!(
        "  same queries again (cache warm where it fits): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    println!(
        "vector cache: {:.1} MB held (budget 512 MB; process RSS grew {:.0} MB)",
        search.cache_bytes() as f64 / 1048576.0,
        rss_mb() - rss_before
    );
    println!("load average after: {}", load());
}
