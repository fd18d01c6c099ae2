//! Semantic memory: embedders that turn text into vectors, the indexer that embeds notes and
//! compacted history off the hot path, and the hybrid search (full text and meaning, fused)
//! behind `/recall`, `memory_search` and the notes put into each turn.
//!
//! `ECDYSIS_EMBEDDINGS` picks the embedder: `openai/<model>` ([`openai`]), `local:<dir>`
//! ([`local`], a sentence-transformers BERT model run in-process), or `off` (full text only).

use std::sync::Arc;

use async_trait::async_trait;

pub mod bert;
pub mod cache;
pub mod chunks;
pub mod config;
pub mod indexer;
pub mod local;
pub mod openai;
pub mod recall;

pub use config::{EmbedderSpec, EmbeddingsFile, EmbeddingsSettings};
pub use indexer::Indexer;
pub use recall::{MemorySearch, Recalled};

/// Why texts could not be embedded. Every variant leaves the rows queued for a later try.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("the embeddings endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the embeddings request failed: {0}")]
    Request(String),
    #[error("the embeddings request took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("the embeddings answer is not what was asked for: {0}")]
    BadAnswer(String),
    #[error("the local model failed: {0}")]
    Model(String),
    #[error("cannot load the model in {dir}: {problem}")]
    Load { dir: String, problem: String },
}

/// Turns texts into vectors, one per text, in order, all of the same dimension.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The name stored with every vector (`openai/<model>`, `local:<name>@<fingerprint>`): a
    /// vector of another name is from another model and is made again.
    fn model(&self) -> &str;

    /// Embed a batch of texts.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Check an embedder's answer: one finite vector per text, all of one non-zero dimension
/// (`expected`, when known). A wrong answer fails the whole batch.
pub fn check_vectors(
    texts: usize,
    vectors: &[Vec<f32>],
    expected: Option<usize>,
) -> Result<(), EmbedError> {
    if vectors.len() != texts {
        return Err(EmbedError::BadAnswer(format!(
            "{} vectors for {texts} texts",
            vectors.len()
        )));
    }
    let dim = expected
        .or_else(|| vectors.first().map(Vec::len))
        .unwrap_or(0);
    for (i, v) in vectors.iter().enumerate() {
        if v.is_empty() || v.len() != dim {
            return Err(EmbedError::BadAnswer(format!(
                "vector {i} has dimension {}, expected {dim}",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::BadAnswer(format!(
                "vector {i} holds NaN or infinity"
            )));
        }
    }
    Ok(())
}

/// Scale a vector to length 1 (cosine similarity is then a dot product); a zero vector stays.
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x /= norm;
        }
    }
}

/// The embedder the settings name (loading a local model reads it from disk).
pub async fn open(settings: &EmbeddingsSettings) -> Result<Arc<dyn Embedder>, EmbedError> {
    Ok(match &settings.embedder {
        EmbedderSpec::OpenAi {
            model,
            base_url,
            api_key,
        } => Arc::new(openai::OpenAiEmbedder::new(
            model,
            base_url,
            api_key.clone(),
            settings.timeout,
            settings.max_retries,
        )?),
        EmbedderSpec::Local { dir } => Arc::new(local::LocalEmbedder::load(dir.clone()).await?),
    })
}

/// The memory search a configuration asks for, and the indexer that feeds it (not started):
/// full text only when embeddings are off.
pub async fn setup(
    config: &crate::config::Config,
    store: Arc<dyn crate::storage::store::Store>,
) -> Result<(MemorySearch, Option<Arc<Indexer>>), EmbedError> {
    let Some(settings) = &config.embeddings else {
        return Ok((MemorySearch::full_text(store), None));
    };
    let embedder = open(settings).await?;
    let indexer = Arc::new(Indexer::new(
        store.clone(),
        embedder.clone(),
        settings.batch_size,
    ));
    let search = MemorySearch::hybrid(
        store,
        embedder,
        settings.min_similarity,
        settings.cache_bytes,
        Some(indexer.clone()),
    );
    Ok((search, Some(indexer)))
}

/// What `ecdysis memory reindex` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reindexed {
    /// Rows queued (every note and chunk).
    pub queued: i64,
    /// Rows embedded now.
    pub embedded: usize,
    /// Rows still waiting (their batch failed; the server retries them).
    pub waiting: i64,
}

/// Embed every note and chunk again with the configured model, now (`ecdysis memory
/// reindex`); `progress` hears the running count.
pub async fn reindex(
    config: &crate::config::Config,
    store: Arc<dyn crate::storage::store::Store>,
    progress: impl FnMut(usize),
) -> Result<Reindexed, ReindexError> {
    let settings = config.embeddings.as_ref().ok_or(ReindexError::Off)?;
    let embedder = open(settings).await?;
    let indexer = Indexer::new(store.clone(), embedder, settings.batch_size);
    let queued = store.queue_all().await?;
    let embedded = indexer.drain(progress).await?;
    let waiting = store.index_status(indexer.model()).await?.waiting;
    Ok(Reindexed {
        queued,
        embedded,
        waiting,
    })
}

/// Why a reindex could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("semantic memory is off: set ECDYSIS_EMBEDDINGS (openai/<model> or local:<dir>)")]
    Off,
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] crate::storage::store::StoreError),
}

/// `doctor`'s check: one test embedding, and the queue.
pub struct Probe {
    pub model: String,
    pub dimension: usize,
    pub took: std::time::Duration,
}

/// Embed a test sentence with the configured embedder.
pub async fn probe(settings: &EmbeddingsSettings) -> Result<Probe, EmbedError> {
    let started = std::time::Instant::now();
    let embedder = open(settings).await?;
    let vectors = tokio::time::timeout(
        settings.timeout + std::time::Duration::from_secs(5),
        embedder.embed(&["ecdysis doctor: a test embedding".to_string()]),
    )
    .await
    .map_err(|_| EmbedError::Timeout(settings.timeout))??;
    check_vectors(1, &vectors, None)?;
    Ok(Probe {
        model: embedder.model().to_string(),
        dimension: vectors[0].len(),
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        assert!(check_vectors(2, &[vec![1.0], vec![0.5]], None).is_ok());
        assert!(check_vectors(2, &[vec![1.0]], None).is_err());
        assert!(check_vectors(2, &[vec![1.0], vec![0.5, 1.0]], None).is_err());
        assert!(check_vectors(1, &[vec![1.0, 2.0]], Some(3)).is_err());
        assert!(check_vectors(1, &[vec![f32::NAN]], None).is_err());
        assert!(check_vectors(1, &[vec![]], None).is_err());
    }

    #[test]
    fn normalized_vectors_have_length_one() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
