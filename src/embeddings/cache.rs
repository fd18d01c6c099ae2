//! The vector side of the search: an exact scan of one channel's vectors, held in memory per
//! channel (least recently used channels dropped past a byte budget) and kept current with
//! the store: new vectors are appended, a deleted one (a new epoch) reloads the channel.
//!
//! Exact beats approximate here: a channel holds thousands of notes, rarely more than a few
//! hundred thousand, and a scan of 100,000 384-dimension vectors takes milliseconds. A channel
//! larger than the whole budget is scanned page by page from the store instead of cached.

use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ecdysis_chat::ChannelRef;
use tokio::sync::RwLock;
use tracing::{debug, warn};

use crate::storage::store::{ItemRef, Result, SemanticIndex, VectorState};

/// Vectors read from the store per query.
const PAGE: i64 = 5_000;

/// One channel's vectors of one model, laid out flat.
#[derive(Default)]
struct ChannelVectors {
    state: VectorState,
    dim: usize,
    items: Vec<ItemRef>,
    data: Vec<f32>,
}

impl ChannelVectors {
    fn bytes(&self) -> usize {
        self.data.len() * 4 + self.items.len() * std::mem::size_of::<ItemRef>()
    }

    /// Append vectors, skipping (and counting) any whose dimension is not the channel's.
    fn append(&mut self, rows: Vec<crate::storage::store::ChannelVector>) -> usize {
        let mut skipped = 0;
        for row in rows {
            if self.dim == 0 {
                self.dim = row.vector.len();
            }
            if row.vector.len() != self.dim {
                skipped += 1;
            } else {
                self.items.push(row.item);
                self.data.extend_from_slice(&row.vector);
            }
            self.state.max_seq = self.state.max_seq.max(row.seq);
        }
        skipped
    }
}

struct Entry {
    vectors: Arc<RwLock<ChannelVectors>>,
    bytes: usize,
    used: u64,
}

/// The per-channel vector cache. Cheap to clone.
#[derive(Clone)]
pub struct VectorCache {
    entries: Arc<std::sync::Mutex<HashMap<(ChannelRef, String), Entry>>>,
    budget: usize,
    clock: Arc<AtomicU64>,
}

/// A hit: the item and its cosine similarity to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub item: ItemRef,
    pub similarity: f32,
}

/// Min-heap order on similarity, for keeping the best `k`.
#[derive(PartialEq)]
struct Ranked(f32, ItemRef);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the worst kept hit.
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// The dot product (cosine similarity of unit vectors), in eight lanes the compiler vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The best `k` of `vectors` (flat, `dim` each) for `query`, at least `min` similar.
fn scan(
    query: &[f32],
    dim: usize,
    items: &[ItemRef],
    data: &[f32],
    k: usize,
    min: f32,
    heap: &mut BinaryHeap<Ranked>,
) {
    if dim == 0 || query.len() != dim || k == 0 {
        return;
    }
    for (item, v) in items.iter().zip(data.chunks_exact(dim)) {
        let s = dot(query, v);
        if s < min {
            continue;
        }
        if heap.len() < k {
            heap.push(Ranked(s, *item));
        } else if let Some(worst) = heap.peek()
            && s > worst.0
        {
            heap.pop();
            heap.push(Ranked(s, *item));
        }
    }
}

fn best(heap: BinaryHeap<Ranked>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = heap
        .into_iter()
        .map(|Ranked(similarity, item)| Hit { item, similarity })
        .collect();
    hits.sort_by(|a, b| {
        b.similarity
            .total_cmp(&a.similarity)
            .then_with(|| b.item.cmp(&a.item))
    });
    hits
}

impl VectorCache {
    /// A cache that keeps at most `budget` bytes of vectors.
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Arc::default(),
            budget,
            clock: Arc::default(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().values().map(|e| e.bytes).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ChannelRef, String), Entry>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `k` vectors of the channel most similar to `query` (a unit vector), at least
    /// `min` similar, best first.
    pub async fn search(
        &self,
        store: &dyn SemanticIndex,
        channel: &ChannelRef,
        model: &str,
        query: &[f32],
        k: usize,
        min: f32,
    ) -> Result<Vec<Hit>> {
        let state = store.vector_state(channel, model).await?;
        if state.max_seq == 0 {
            return Ok(Vec::new());
        }
        let key = (channel.clone(), model.to_string());
        let vectors = {
            let mut entries = self.lock();
            let used = self.clock.fetch_add(1, Ordering::Relaxed);
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                vectors: Arc::default(),
                bytes: 0,
                used,
            });
            entry.used = used;
            entry.vectors.clone()
        };
        // Bring the channel up to date (one loader at a time; readers wait for it).
        let behind = |have: &VectorState| have.epoch != state.epoch || have.max_seq < state.max_seq;
        let stale = behind(&vectors.read().await.state);
        if stale {
            let mut current = vectors.write().await;
            if current.state.epoch != state.epoch {
                *current = ChannelVectors {
                    state: VectorState {
                        max_seq: 0,
                        epoch: state.epoch,
                    },
                    ..Default::default()
                };
            }
            let mut skipped = 0;
            while current.state.max_seq < state.max_seq {
                let rows = store
                    .channel_vectors(channel, model, current.state.max_seq, PAGE)
                    .await?;
                if rows.is_empty() {
                    break;
                }
                skipped += current.append(rows);
                if current.bytes() > self.budget {
                    break;
                }
            }
            if skipped > 0 {
                warn!(
                    ?channel,
                    model,
                    skipped,
                    "vectors of another dimension than the channel's are ignored; `ecdysis memory reindex` makes them again"
                );
            }
            let bytes = current.bytes();
            if bytes > self.budget {
                // Too big to keep: scan it from the store this time.
                drop(current);
                self.lock().remove(&key);
                debug!(
                    ?channel,
                    bytes,
                    budget = self.budget,
                    "channel vectors exceed the cache budget; scanning from the store"
                );
                return self
                    .scan_store(store, channel, model, query, k, min, state)
                    .await;
            }
            // `max_seq` is what was loaded (maybe newer than `state`).
            current.state.epoch = state.epoch;
            drop(current);
            self.account(&key, bytes);
        }
        let current = vectors.read().await;
        let mut heap = BinaryHeap::with_capacity(k + 1);
        scan(
            query,
            current.dim,
            &current.items,
            &current.data,
            k,
            min,
            &mut heap,
        );
        Ok(best(heap))
    }

    /// Record an entry's size and drop the least recently used others past the budget.
    fn account(&self, key: &(ChannelRef, String), bytes: usize) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.bytes = bytes;
        }
        let mut total: usize = entries.values().map(|e| e.bytes).sum();
        while total > self.budget {
            let Some(oldest) = entries
                .iter()
                .filter(|(k, _)| *k != key)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = entries.remove(&oldest) {
                total -= gone.bytes;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn scan_store(
        &self,
        store: &dyn SemanticIndex,
        channel: &ChannelRef,
        model: &str,
        query: &[f32],
        k: usize,
        min: f32,
        state: VectorState,
    ) -> Result<Vec<Hit>> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        let mut after = 0;
        while after < state.max_seq {
            let rows = store.channel_vectors(channel, model, after, PAGE).await?;
            if rows.is_empty() {
                break;
            }
            let mut page = ChannelVectors {
                dim: query.len(),
                ..Default::default()
            };
            page.append(rows);
            after = page.state.max_seq;
            scan(query, page.dim, &page.items, &page.data, k, min, &mut heap);
        }
        Ok(best(heap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::ItemKind;

    fn note(id: i64) -> ItemRef {
        ItemRef {
            kind: ItemKind::Note,
            id,
        }
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.05).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }

    #[test]
    fn scan_keeps_the_best_k_above_the_floor() {
        let items = vec![note(1), note(2), note(3), note(4)];
        let data = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.8, 0.6];
        let mut heap = BinaryHeap::new();
        scan(&[1.0, 0.0], 2, &items, &data, 2, 0.1, &mut heap);
        let hits = best(heap);
        assert_eq!(
            hits.iter().map(|h| h.item.id).collect::<Vec<_>>(),
            vec![1, 4]
        );
        let mut heap = BinaryHeap::new();
        scan(&[1.0, 0.0], 2, &items, &data, 10, 0.7, &mut heap);
        assert_eq!(best(heap).len(), 2, "0.6 and 0.0 are below the floor");
        let mut heap = BinaryHeap::new();
        scan(&[1.0, 0.0, 0.0], 2, &items, &data, 10, 0.0, &mut heap);
        assert!(
            heap.is_empty(),
            "a query of another dimension matches nothing"
        );
    }
}
