//! The vector side of the search: a scan of one channel's vectors, held in memory per
//! channel (least recently used channels dropped past a byte budget) and kept current with
//! the store: new vectors are appended, a deleted one (a new epoch) reloads the channel.
//!
//! A full scan beats an approximate index here: a channel holds thousands of notes, rarely
//! more than a few hundred thousand, and every vector is compared. Vectors are held as `i8`
//! (each scaled so its largest component is ±127, the scale kept beside it): a quarter of
//! the memory and of the bytes a scan reads, with similarities within about 0.01 of the exact
//! ones (the ranking of clearly different notes does not change). A channel larger than the
//! whole budget is scanned page by page from the store instead of cached.

use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ecdysis_chat::ChannelRef;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tracing::{debug, warn};

use crate::storage::store::{ItemRef, Result, SemanticIndex, StoreError, VectorState};

/// Vectors read from the store per query.
const PAGE: i64 = 5_000;

/// Channels with more vectors than this are scanned on the blocking pool, so a long scan
/// never holds up the async workers (below it the hop costs more than the scan).
const BLOCKING_SCAN: usize = 20_000;

/// A vector quantised to `i8`: `value ≈ component × scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub components: Vec<i8>,
    pub scale: f32,
}

impl Quantized {
    pub fn new(vector: &[f32]) -> Self {
        let mut components = Vec::with_capacity(vector.len());
        let scale = quantize_into(vector, &mut components);
        Self { components, scale }
    }
}

/// Append `vector` as `i8` components to `out`; returns the scale (0 for a zero vector).
fn quantize_into(vector: &[f32], out: &mut Vec<i8>) -> f32 {
    let largest = vector
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    if largest == 0.0 {
        out.extend(std::iter::repeat_n(0, vector.len()));
        return 0.0;
    }
    let scale = largest / 127.0;
    out.extend(vector.iter().map(|x| {
        let q = (x / scale).round();
        // In range by construction; NaN (never stored: vectors are checked) becomes 0.
        if q.is_nan() {
            0
        } else {
            q.clamp(-127.0, 127.0) as i8
        }
    }));
    scale
}

/// A channel's vectors as [`VectorCache::load`] left them.
pub(crate) enum Loaded {
    /// The channel has no vectors of the model.
    Empty,
    /// In the cache, held for reading.
    Cached(OwnedRwLockReadGuard<ChannelVectors>),
    /// Past the cache's budget: scanned from the store page by page, up to this state.
    FromStore(VectorState),
}

/// One channel's vectors of one model, laid out flat.
#[derive(Default)]
pub(crate) struct ChannelVectors {
    state: VectorState,
    dim: usize,
    items: Vec<ItemRef>,
    data: Vec<i8>,
    scales: Vec<f32>,
}

impl ChannelVectors {
    fn bytes(&self) -> usize {
        self.data.len()
            + self.scales.len() * std::mem::size_of::<f32>()
            + self.items.len() * std::mem::size_of::<ItemRef>()
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
                let scale = quantize_into(&row.vector, &mut self.data);
                self.scales.push(scale);
            }
            self.state.max_seq = self.state.max_seq.max(row.seq);
        }
        skipped
    }

    /// The best `k` vectors for `query`, at least `min` similar, best first: a large
    /// channel's halves are scanned on two cores.
    fn best(&self, query: &Quantized, k: usize, min: f32) -> Vec<Hit> {
        let rows = self.items.len();
        let mut heap = BinaryHeap::with_capacity(k + 1);
        if rows < BLOCKING_SCAN {
            self.scan(0..rows, query, k, min, &mut heap);
            return best(heap);
        }
        let half = rows / 2;
        std::thread::scope(|threads| {
            let other = threads.spawn(|| {
                let mut heap = BinaryHeap::with_capacity(k + 1);
                self.scan(half..rows, query, k, min, &mut heap);
                heap
            });
            self.scan(0..half, query, k, min, &mut heap);
            match other.join() {
                Ok(found) => found.into_iter().for_each(|r| offer(&mut heap, k, r)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        best(heap)
    }

    /// The best `k` of the vectors in `rows` for `query`, at least `min` similar, into
    /// `heap`; with AVX2 when the CPU has it (twice the lanes of the baseline's SSE2).
    fn scan(
        &self,
        rows: Range<usize>,
        query: &Quantized,
        k: usize,
        min: f32,
        heap: &mut BinaryHeap<Ranked>,
    ) {
        if self.dim == 0 || query.components.len() != self.dim || k == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { self.scan_avx2(rows, query, k, min, heap) };
            return;
        }
        self.scan_rows(rows, query, k, min, heap);
    }

    /// [`Self::scan_rows`] compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scan_avx2(
        &self,
        rows: Range<usize>,
        query: &Quantized,
        k: usize,
        min: f32,
        heap: &mut BinaryHeap<Ranked>,
    ) {
        self.scan_rows(rows, query, k, min, heap);
    }

    #[inline(always)]
    fn scan_rows(
        &self,
        rows: Range<usize>,
        query: &Quantized,
        k: usize,
        min: f32,
        heap: &mut BinaryHeap<Ranked>,
    ) {
        let dim = self.dim;
        let data = &self.data[rows.start * dim..rows.end * dim];
        let items = self.items[rows.clone()].iter().zip(&self.scales[rows]);
        for ((item, scale), v) in items.zip(data.chunks_exact(dim)) {
            let s = dot_i8(&query.components, v) as f32 * query.scale * scale;
            if s >= min {
                offer(heap, k, Ranked(s, *item));
            }
        }
    }
}

/// Keep `candidate` in `heap` if it is among the best `k`.
fn offer(heap: &mut BinaryHeap<Ranked>, k: usize, candidate: Ranked) {
    if heap.len() < k {
        heap.push(candidate);
    } else if let Some(worst) = heap.peek()
        && candidate.0 > worst.0
    {
        heap.pop();
        heap.push(candidate);
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

/// The dot product of two `i8` vectors, in 32 lanes the compiler vectorises (each product
/// fits an `i16`: components are within ±127).
#[inline(always)]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 32];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (a32.remainder(), b32.remainder());
    for (x, y) in a32.zip(b32) {
        for i in 0..32 {
            lanes[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    let tail: i32 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    lanes.iter().sum::<i32>() + tail
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
        let loaded = self.load(store, channel, model).await?;
        self.scan(store, channel, model, loaded, query, k, min)
            .await
    }

    /// The channel's vectors brought up to date in the cache, ready for [`Self::scan`]. A
    /// search loads while its query is embedded, so a channel not cached yet costs no extra
    /// wait.
    pub(crate) async fn load(
        &self,
        store: &dyn SemanticIndex,
        channel: &ChannelRef,
        model: &str,
    ) -> Result<Loaded> {
        let state = store.vector_state(channel, model).await?;
        if state.max_seq == 0 {
            return Ok(Loaded::Empty);
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
                return Ok(Loaded::FromStore(state));
            }
            // `max_seq` is what was loaded (maybe newer than `state`).
            current.state.epoch = state.epoch;
            drop(current);
            self.account(&key, bytes);
        }
        Ok(Loaded::Cached(vectors.read_owned().await))
    }

    /// The `k` loaded vectors most similar to `query` (a unit vector), at least `min`
    /// similar, best first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn scan(
        &self,
        store: &dyn SemanticIndex,
        channel: &ChannelRef,
        model: &str,
        loaded: Loaded,
        query: &[f32],
        k: usize,
        min: f32,
    ) -> Result<Vec<Hit>> {
        let current = match loaded {
            Loaded::Empty => return Ok(Vec::new()),
            Loaded::FromStore(state) => {
                return self
                    .scan_store(store, channel, model, query, k, min, state)
                    .await;
            }
            Loaded::Cached(current) => current,
        };
        let rows = current.items.len();
        let query = Quantized::new(query);
        let scan = move || current.best(&query, k, min);
        if rows < BLOCKING_SCAN {
            return Ok(scan());
        }
        match tokio::task::spawn_blocking(scan).await {
            Ok(hits) => Ok(hits),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime is shutting down.
                Err(_) => Err(StoreError::Closed),
            },
        }
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
        let quantized = Quantized::new(query);
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
            page.scan(0..page.items.len(), &quantized, k, min, &mut heap);
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

    fn cached(vectors: &[(i64, &[f32])]) -> ChannelVectors {
        let mut c = ChannelVectors::default();
        let rows = vectors
            .iter()
            .map(|(id, v)| crate::storage::store::ChannelVector {
                seq: *id,
                item: note(*id),
                vector: v.to_vec(),
            })
            .collect();
        assert_eq!(c.append(rows), 0);
        c
    }

    fn hits(c: &ChannelVectors, query: &[f32], k: usize, min: f32) -> Vec<Hit> {
        c.best(&Quantized::new(query), k, min)
    }

    #[test]
    fn quantized_dot_products_are_close_to_the_exact_ones() {
        // Pseudo-random unit vectors of the local model's dimension.
        let mut seed = 12_345u64;
        let mut unit = || {
            let v: Vec<f32> = (0..384)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
        };
        for _ in 0..50 {
            let (a, b) = (unit(), unit());
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let (qa, qb) = (Quantized::new(&a), Quantized::new(&b));
            let approx = dot_i8(&qa.components, &qb.components) as f32 * qa.scale * qb.scale;
            assert!((approx - exact).abs() < 0.01, "{approx} vs {exact}");
            let same = dot_i8(&qa.components, &qa.components) as f32 * qa.scale * qa.scale;
            assert!((same - 1.0).abs() < 0.01, "{same}");
        }
    }

    #[test]
    fn dot_i8_matches_the_plain_sum_past_the_lanes() {
        let a: Vec<i8> = (0..37).map(|i| (i * 7 % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..37).map(|i| (i * 3 % 200 - 100) as i8).collect();
        let plain: i32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| i32::from(*x) * i32::from(*y))
            .sum();
        assert_eq!(dot_i8(&a, &b), plain);
    }

    #[test]
    fn zero_vectors_match_nothing_above_zero() {
        let q = Quantized::new(&[0.0, 0.0]);
        assert_eq!(q.scale, 0.0);
        assert_eq!(q.components, vec![0, 0]);
    }

    #[test]
    fn scan_keeps_the_best_k_above_the_floor() {
        let c = cached(&[
            (1, &[1.0, 0.0]),
            (2, &[0.0, 1.0]),
            (3, &[0.6, 0.8]),
            (4, &[0.8, 0.6]),
        ]);
        let found = hits(&c, &[1.0, 0.0], 2, 0.1);
        assert_eq!(
            found.iter().map(|h| h.item.id).collect::<Vec<_>>(),
            vec![1, 4]
        );
        assert!((found[0].similarity - 1.0).abs() < 0.01);
        assert!((found[1].similarity - 0.8).abs() < 0.01);
        assert_eq!(
            hits(&c, &[1.0, 0.0], 10, 0.7).len(),
            2,
            "0.6 and 0.0 are below the floor"
        );
        assert!(
            hits(&c, &[1.0, 0.0, 0.0], 10, 0.0).is_empty(),
            "a query of another dimension matches nothing"
        );
    }

    #[test]
    fn a_large_channel_scanned_in_halves_finds_the_same_best() {
        // Deterministic vectors in 8 dimensions, more than one core's share.
        let rows = BLOCKING_SCAN + 1_001;
        let vectors: Vec<Vec<f32>> = (0..rows)
            .map(|i| {
                (0..8)
                    .map(|d| ((i * 31 + d * 17) % 97) as f32 - 48.0)
                    .collect()
            })
            .collect();
        let pairs: Vec<(i64, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 + 1, v.as_slice()))
            .collect();
        let c = cached(&pairs);
        let query = Quantized::new(&[0.5, -0.1, 0.3, 0.2, -0.4, 0.1, 0.6, -0.2]);
        let mut heap = BinaryHeap::new();
        c.scan(0..rows, &query, 25, 0.0, &mut heap);
        let whole = best(heap);
        let halves = c.best(&query, 25, 0.0);
        assert_eq!(whole.len(), 25);
        assert_eq!(halves, whole);
    }

    #[test]
    fn vectors_of_another_dimension_are_skipped() {
        let mut c = cached(&[(1, &[1.0, 0.0])]);
        let skipped = c.append(vec![crate::storage::store::ChannelVector {
            seq: 2,
            item: note(2),
            vector: vec![1.0, 0.0, 0.0],
        }]);
        assert_eq!(skipped, 1);
        assert_eq!(c.items.len(), 1);
        assert_eq!(c.state.max_seq, 2, "a skipped row still counts as loaded");
        assert_eq!(c.bytes(), 2 + 4 + std::mem::size_of::<ItemRef>());
    }
}
