//! Hybrid memory search: full-text candidates (notes, and compacted history when embeddings
//! are on) and vector candidates fused by reciprocal rank, with a mild preference for recent
//! rows, deduplicated, always within one channel. With embeddings off it is exactly the notes'
//! full-text search. A failing embedder never fails a search: it falls back to full text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::ChannelRef;
use tracing::warn;

use super::Embedder;
use super::cache::VectorCache;
use super::indexer::Indexer;
use crate::storage::store::{
    ItemKind, ItemRef, ItemSource, MemoryItem, Note, Result, Store, UnixMs,
};

/// Candidates taken from each ranking before fusion.
const CANDIDATES: usize = 40;
/// Reciprocal rank fusion's constant: a candidate at rank r adds 1 / (RRF_K + r).
const RRF_K: f64 = 60.0;
/// How much a brand-new row is preferred over an old one (at most +10%), halving every
/// [`RECENCY_HALF_LIFE_DAYS`].
const RECENCY_WEIGHT: f64 = 0.1;
const RECENCY_HALF_LIFE_DAYS: f64 = 30.0;
/// The longest a query embedding may take before the search goes on with full text alone.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of a message embedded as a query.
const QUERY_CHARS: usize = 2_000;

/// A search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Recalled {
    pub item: MemoryItem,
    /// Found by full text.
    pub by_words: bool,
    /// Found by meaning (its cosine similarity).
    pub similarity: Option<f32>,
    /// The fused score (higher is better).
    pub score: f64,
}

impl Recalled {
    pub fn by_meaning(&self) -> bool {
        self.similarity.is_some()
    }

    /// The note id, for notes.
    pub fn note_id(&self) -> Option<i64> {
        (self.item.item.kind == ItemKind::Note).then_some(self.item.item.id)
    }

    /// As a note (notes only).
    pub fn as_note(&self) -> Option<Note> {
        match &self.item.source {
            ItemSource::Note { created_by } => Some(Note {
                id: crate::storage::store::NoteId(self.item.item.id),
                text: self.item.text.clone(),
                created_by: created_by.clone(),
                created_at: self.item.created_at,
            }),
            _ => None,
        }
    }
}

/// Semantic search settings and state (present when an embedder is configured).
struct Semantic {
    embedder: Arc<dyn Embedder>,
    cache: VectorCache,
    min_similarity: f32,
    indexer: Option<Arc<Indexer>>,
}

/// The memory search every caller uses (`/recall`, `memory_search`, each turn's notes).
#[derive(Clone)]
pub struct MemorySearch {
    store: Arc<dyn Store>,
    semantic: Option<Arc<Semantic>>,
}

fn note_item(note: Note) -> MemoryItem {
    MemoryItem {
        item: ItemRef {
            kind: ItemKind::Note,
            id: note.id.0,
        },
        text: note.text,
        source: ItemSource::Note {
            created_by: note.created_by,
        },
        created_at: note.created_at,
    }
}

/// `1 + RECENCY_WEIGHT · ½^(age / half-life)`.
fn recency(created_at: UnixMs, now: i64) -> f64 {
    let days = ((now - created_at.0).max(0) as f64) / 86_400_000.0;
    1.0 + RECENCY_WEIGHT * 0.5f64.powf(days / RECENCY_HALF_LIFE_DAYS)
}

/// The text as compared for duplicates: lower case, single spaces.
fn dedupe_key(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fuse rankings (each best first) by reciprocal rank, weight by recency, merge duplicates,
/// and keep the best `limit`.
pub fn fuse(
    word_lists: Vec<Vec<MemoryItem>>,
    meaning: Vec<(MemoryItem, f32)>,
    now: i64,
    limit: usize,
) -> Vec<Recalled> {
    let mut found: HashMap<ItemRef, Recalled> = HashMap::new();
    for list in word_lists {
        for (rank, item) in list.into_iter().enumerate() {
            let add = 1.0 / (RRF_K + rank as f64 + 1.0);
            found
                .entry(item.item)
                .and_modify(|r| {
                    r.by_words = true;
                    r.score += add;
                })
                .or_insert(Recalled {
                    item,
                    by_words: true,
                    similarity: None,
                    score: add,
                });
        }
    }
    for (rank, (item, similarity)) in meaning.into_iter().enumerate() {
        let add = 1.0 / (RRF_K + rank as f64 + 1.0);
        found
            .entry(item.item)
            .and_modify(|r| {
                r.similarity = Some(similarity);
                r.score += add;
            })
            .or_insert(Recalled {
                item,
                by_words: false,
                similarity: Some(similarity),
                score: add,
            });
    }
    let mut ranked: Vec<Recalled> = found
        .into_values()
        .map(|mut r| {
            r.score *= recency(r.item.created_at, now);
            r
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| b.item.created_at.cmp(&a.item.created_at))
            .then_with(|| a.item.item.cmp(&b.item.item))
    });
    // The same text twice (a note saved again, a summary repeating a turn): keep the best.
    let mut seen = std::collections::HashSet::new();
    ranked.retain(|r| seen.insert(dedupe_key(&r.item.text)));
    ranked.truncate(limit);
    ranked
}

impl MemorySearch {
    /// Full text only (`ECDYSIS_EMBEDDINGS=off`).
    pub fn full_text(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            semantic: None,
        }
    }

    /// Full text and meaning, with `embedder` for queries and a vector cache of `cache_bytes`.
    pub fn hybrid(
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        min_similarity: f32,
        cache_bytes: usize,
        indexer: Option<Arc<Indexer>>,
    ) -> Self {
        Self {
            store,
            semantic: Some(Arc::new(Semantic {
                embedder,
                cache: VectorCache::new(cache_bytes),
                min_similarity,
                indexer,
            })),
        }
    }

    /// The embedding model, when search is hybrid.
    pub fn model(&self) -> Option<&str> {
        self.semantic.as_ref().map(|s| s.embedder.model())
    }

    /// Bytes of vectors cached now.
    pub fn cache_bytes(&self) -> usize {
        self.semantic.as_ref().map_or(0, |s| s.cache.bytes())
    }

    /// Tell the indexer that a note was written (it looks for work at once).
    pub fn note_written(&self) {
        if let Some(indexer) = self.semantic.as_ref().and_then(|s| s.indexer.as_ref()) {
            indexer.wake();
        }
    }

    /// The channel's memory best matching `query`, at most `limit`.
    pub async fn search(
        &self,
        channel: &ChannelRef,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Recalled>> {
        self.search_with(channel, query, query, limit).await
    }

    /// Like [`MemorySearch::search`], with different texts for the full-text side (`words`:
    /// e.g. a message's significant words) and the meaning side (`meaning`: the message).
    pub async fn search_with(
        &self,
        channel: &ChannelRef,
        words: &str,
        meaning: &str,
        limit: usize,
    ) -> Result<Vec<Recalled>> {
        let now = crate::storage::store::now_ms();
        let Some(semantic) = &self.semantic else {
            if words.trim().is_empty() {
                return Ok(Vec::new());
            }
            let notes = self.store.recall(channel, words, limit as i64).await?;
            let count = notes.len();
            // Full text alone keeps the store's order (as before embeddings existed).
            return Ok(notes
                .into_iter()
                .enumerate()
                .map(|(rank, note)| Recalled {
                    item: note_item(note),
                    by_words: true,
                    similarity: None,
                    score: (count - rank) as f64,
                })
                .collect());
        };
        let texts = async {
            if words.trim().is_empty() {
                return Ok::<_, crate::storage::store::StoreError>((Vec::new(), Vec::new()));
            }
            let notes = self.store.recall(channel, words, CANDIDATES as i64).await?;
            let chunks = self
                .store
                .recall_chunks(channel, words, CANDIDATES as i64)
                .await?;
            Ok((notes, chunks))
        };
        let meaning = self.by_meaning(semantic, channel, meaning);
        let (texts, meaning) = tokio::join!(texts, meaning);
        let (notes, chunks) = texts?;
        let meaning = meaning?;
        let word_lists = vec![notes.into_iter().map(note_item).collect(), chunks];
        Ok(fuse(word_lists, meaning, now, limit))
    }

    /// Vector candidates with their rows, best first; empty when the query cannot be embedded
    /// (logged).
    async fn by_meaning(
        &self,
        semantic: &Semantic,
        channel: &ChannelRef,
        text: &str,
    ) -> Result<Vec<(MemoryItem, f32)>> {
        let text: String = text.trim().chars().take(QUERY_CHARS).collect();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let model = semantic.embedder.model();
        let embedded = tokio::time::timeout(
            QUERY_TIMEOUT,
            semantic.embedder.embed(std::slice::from_ref(&text)),
        );
        // The channel's vectors load (when not cached) while the query is embedded.
        let loading = semantic.cache.load(self.store.as_ref(), channel, model);
        let (embedded, loaded) = tokio::join!(embedded, loading);
        let loaded = loaded?;
        let query = match embedded {
            Ok(Ok(mut v)) if v.len() == 1 => v.remove(0),
            Ok(Ok(v)) => {
                warn!(
                    model,
                    vectors = v.len(),
                    "the embedder answered a query with the wrong number of vectors; searching by full text only"
                );
                return Ok(Vec::new());
            }
            Ok(Err(error)) => {
                warn!(model, %error, "cannot embed the query; searching by full text only");
                return Ok(Vec::new());
            }
            Err(_) => {
                warn!(model, timeout = ?QUERY_TIMEOUT, "embedding the query timed out; searching by full text only");
                return Ok(Vec::new());
            }
        };
        let hits = semantic
            .cache
            .scan(
                self.store.as_ref(),
                channel,
                model,
                loaded,
                &query,
                CANDIDATES,
                semantic.min_similarity,
            )
            .await?;
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<ItemRef> = hits.iter().map(|h| h.item).collect();
        // Rows of this channel only: a vector can never bring in another channel's text.
        let mut rows: HashMap<ItemRef, MemoryItem> = self
            .store
            .memory_items(channel, &refs)
            .await?
            .into_iter()
            .map(|item| (item.item, item))
            .collect();
        Ok(hits
            .into_iter()
            .filter_map(|h| rows.remove(&h.item).map(|row| (row, h.similarity)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: ItemKind, id: i64, text: &str, created_at: i64) -> MemoryItem {
        MemoryItem {
            item: ItemRef { kind, id },
            text: text.into(),
            source: match kind {
                ItemKind::Note => ItemSource::Note {
                    created_by: "u".into(),
                },
                ItemKind::Chunk => ItemSource::Summary,
            },
            created_at: UnixMs(created_at),
        }
    }

    #[test]
    fn both_rankings_beat_one() {
        let day = 86_400_000;
        let now = 100 * day;
        let a = item(ItemKind::Note, 1, "alpha", now);
        let b = item(ItemKind::Note, 2, "beta", now);
        let c = item(ItemKind::Chunk, 3, "gamma", now);
        let fused = fuse(
            vec![vec![a.clone(), b.clone()], vec![c.clone()]],
            vec![(b.clone(), 0.8), (a.clone(), 0.5)],
            now,
            10,
        );
        let order: Vec<i64> = fused.iter().map(|r| r.item.item.id).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(fused[0].by_words && fused[0].by_meaning());
        assert!(fused[2].by_words && !fused[2].by_meaning());
    }

    #[test]
    fn recency_breaks_near_ties_and_duplicates_merge() {
        let day = 86_400_000;
        let now = 400 * day;
        let old = item(ItemKind::Note, 1, "Release on Thursday", 0);
        let new = item(ItemKind::Note, 2, "release  on thursday", now);
        let other = item(ItemKind::Note, 3, "something else", now);
        // `old` ranks first by meaning, `new` second: recency lifts `new` above it.
        let fused = fuse(
            Vec::new(),
            vec![(old, 0.9), (new, 0.89), (other, 0.5)],
            now,
            10,
        );
        let order: Vec<i64> = fused.iter().map(|r| r.item.item.id).collect();
        assert_eq!(
            order,
            vec![2, 3],
            "the same text is kept once, the newer copy"
        );
    }

    #[test]
    fn limit_applies_after_fusion() {
        let items: Vec<MemoryItem> = (0..20)
            .map(|i| item(ItemKind::Note, i, &format!("note {i}"), 0))
            .collect();
        assert_eq!(fuse(vec![items], Vec::new(), 0, 5).len(), 5);
    }
}
