//! `local:<dir>`: a sentence-transformers BERT model run in-process (candle + tokenizers), from
//! a directory with `config.json`, `tokenizer.json` and `model.safetensors` — nothing is ever
//! downloaded. Inference runs on tokio's blocking pool, one batch at a time, so async workers
//! never stall and the CPU is not oversubscribed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

use super::bert::{BertConfig, BertEncoder};
use super::{EmbedError, Embedder, check_vectors};

/// Tokens per text when the model directory does not say (`sentence_bert_config.json`).
const DEFAULT_MAX_TOKENS: usize = 256;

/// A BERT sentence-embedding model loaded from a directory.
pub struct LocalEmbedder {
    inner: Arc<Loaded>,
    name: String,
    /// One batch at a time: the model already uses every core it is given.
    permit: Semaphore,
}

struct Loaded {
    tokenizer: Tokenizer,
    encoder: BertEncoder,
}

fn load_error(dir: &Path, problem: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load {
        dir: dir.display().to_string(),
        problem: problem.to_string(),
    }
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(dir.join(file)).map_err(|e| load_error(dir, format!("{file}: {e}")))
}

/// FNV-1a over some bytes, for the model's fingerprint.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `local:<last two path parts>@<fingerprint of config, tokenizer and weights>`: another model
/// in the same place gets another name, so its vectors are made again.
fn model_name(dir: &Path, config: &[u8], tokenizer: &[u8], weights: &[u8]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325;
    hash = fnv1a(hash, config);
    hash = fnv1a(hash, tokenizer);
    hash = fnv1a(hash, &(weights.len() as u64).to_le_bytes());
    // The weights' header names every tensor and where it lies; the tail samples the values.
    hash = fnv1a(hash, &weights[..weights.len().min(64 * 1024)]);
    hash = fnv1a(hash, &weights[weights.len().saturating_sub(64 * 1024)..]);
    let parts: Vec<String> = dir
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let short: Vec<&str> = parts.iter().rev().map(String::as_str).collect();
    format!("local:{}@{:08x}", short.join("/"), hash as u32)
}

fn load_blocking(dir: &Path) -> Result<(Loaded, String), EmbedError> {
    let config_bytes = read(dir, "config.json")?;
    let config: BertConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| load_error(dir, format!("config.json: {e}")))?;
    if let Some(kind) = &config.model_type
        && kind != "bert"
    {
        return Err(load_error(
            dir,
            format!("config.json: model_type `{kind}` is not bert"),
        ));
    }
    let tokenizer_bytes = read(dir, "tokenizer.json")?;
    let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
        .map_err(|e| load_error(dir, format!("tokenizer.json: {e}")))?;
    let max_tokens = std::fs::read(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["max_seq_length"].as_u64())
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_MAX_TOKENS)
        .min(config.max_position_embeddings);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| load_error(dir, format!("tokenizer.json: {e}")))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    let weights = read(dir, "model.safetensors")?;
    let name = model_name(dir, &config_bytes, &tokenizer_bytes, &weights);
    let encoder = BertEncoder::load(weights, config)
        .map_err(|e| load_error(dir, format!("model.safetensors: {e}")))?;
    Ok((Loaded { tokenizer, encoder }, name))
}

impl LocalEmbedder {
    /// Load the model in `dir` (on the blocking pool: it reads ~100 MB).
    pub async fn load(dir: PathBuf) -> Result<Self, EmbedError> {
        let shown = dir.display().to_string();
        let (inner, name) = tokio::task::spawn_blocking(move || load_blocking(&dir))
            .await
            .map_err(|e| EmbedError::Load {
                dir: shown,
                problem: e.to_string(),
            })??;
        Ok(Self {
            inner: Arc::new(inner),
            name,
            permit: Semaphore::new(1),
        })
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.inner.encoder.config.hidden_size
    }
}

impl Loaded {
    fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| EmbedError::Model(format!("tokenizing: {e}")))?;
        let batch = encodings.len();
        let len = encodings.first().map(|e| e.len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * len);
        let mut types = Vec::with_capacity(batch * len);
        let mut mask = Vec::with_capacity(batch * len);
        for e in &encodings {
            if e.len() != len {
                return Err(EmbedError::Model("the batch is not padded evenly".into()));
            }
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        self.encoder
            .embed(ids, types, mask, batch, len)
            .map_err(|e| EmbedError::Model(e.to_string()))
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let _permit = self
            .permit
            .acquire()
            .await
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        let inner = self.inner.clone();
        let owned = texts.to_vec();
        let vectors = tokio::task::spawn_blocking(move || inner.embed(owned))
            .await
            .map_err(|e| EmbedError::Model(e.to_string()))??;
        check_vectors(texts.len(), &vectors, Some(self.dimension()))?;
        Ok(vectors)
    }
}
