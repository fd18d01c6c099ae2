//! The `[embeddings]` settings (`ECDYSIS_EMBEDDINGS` and friends), validated: which embedder,
//! where it is, and the limits of the indexer and the search.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::{ConfigError, ProviderKeys};

/// `[embeddings]` as written in the file (every key also comes from the environment).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsFile {
    /// `openai/<model>`, `local:<dir>` or `off`.
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub batch_size: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub max_retries: Option<i64>,
    /// A number from -1 to 1, as text (the environment has no float kind).
    pub min_similarity: Option<toml::Value>,
    pub cache_mb: Option<i64>,
}

/// Which embedder makes the vectors.
#[derive(Clone, PartialEq, Eq)]
pub enum EmbedderSpec {
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    OpenAi {
        model: String,
        /// Ends without a slash; `/embeddings` is appended.
        base_url: String,
        api_key: Option<String>,
    },
    /// A sentence-transformers BERT model directory, run in-process.
    Local { dir: PathBuf },
}

impl std::fmt::Debug for EmbedderSpec {
    // The API key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbedderSpec::OpenAi {
                model, base_url, ..
            } => write!(f, "openai/{model} at {base_url}"),
            EmbedderSpec::Local { dir } => write!(f, "local:{}", dir.display()),
        }
    }
}

/// The validated settings; `None` in [`crate::config::Config::embeddings`] when off.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsSettings {
    pub embedder: EmbedderSpec,
    /// Texts per embedding request (and per indexer batch).
    pub batch_size: usize,
    /// One embedding request's time limit.
    pub timeout: Duration,
    /// Retries of one request on 429, 5xx and time-outs before the batch waits for later.
    pub max_retries: u32,
    /// A vector hit below this cosine similarity is not a match.
    pub min_similarity: f32,
    /// Memory for cached channel vectors.
    pub cache_bytes: usize,
}

const DEFAULT_BATCH: i64 = 32;
const DEFAULT_TIMEOUT_SECONDS: i64 = 30;
const DEFAULT_RETRIES: i64 = 2;
const DEFAULT_MIN_SIMILARITY: f32 = 0.25;
const DEFAULT_CACHE_MB: i64 = 512;

fn positive(key: &str, value: Option<i64>, default: i64) -> Result<i64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v > 0 => Ok(v),
        Some(v) => Err(ConfigError::value(
            key,
            format!("{v} must be greater than 0"),
        )),
    }
}

fn similarity(value: Option<&toml::Value>) -> Result<f32, ConfigError> {
    let key = "embeddings.min_similarity";
    let number = match value {
        None => return Ok(DEFAULT_MIN_SIMILARITY),
        Some(toml::Value::Float(f)) => *f,
        Some(toml::Value::Integer(i)) => *i as f64,
        Some(toml::Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| ConfigError::value(key, format!("`{s}` is not a number")))?,
        Some(other) => {
            return Err(ConfigError::value(
                key,
                format!("{other:?} is not a number"),
            ));
        }
    };
    if !(-1.0..=1.0).contains(&number) {
        return Err(ConfigError::value(
            key,
            format!("{number} is not between -1 and 1"),
        ));
    }
    Ok(number as f32)
}

/// Validate `[embeddings]`; `openai` gives the base URL and key when the section has none.
pub fn settings(
    file: EmbeddingsFile,
    openai: &ProviderKeys,
) -> Result<Option<EmbeddingsSettings>, ConfigError> {
    let key = "embeddings.model";
    let text = file.model.as_deref().map(str::trim).unwrap_or("off");
    let embedder = if text.is_empty() || text == "off" {
        return Ok(None);
    } else if let Some(model) = text.strip_prefix("openai/") {
        if model.trim().is_empty() {
            return Err(ConfigError::value(key, "`openai/` needs a model name"));
        }
        let base = file
            .base_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| openai.base_url.clone())
            .unwrap_or_else(|| "https://api.openai.com/v1".into());
        let url_key = "embeddings.base_url";
        let url = Url::parse(base.trim())
            .map_err(|e| ConfigError::value(url_key, format!("`{base}` is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::value(
                url_key,
                format!("`{base}` must be an http:// or https:// URL"),
            ));
        }
        EmbedderSpec::OpenAi {
            model: model.trim().to_string(),
            base_url: base.trim().trim_end_matches('/').to_string(),
            api_key: file
                .api_key
                .clone()
                .filter(|k| !k.is_empty())
                .or_else(|| openai.api_key.clone()),
        }
    } else if let Some(dir) = text.strip_prefix("local:") {
        if dir.trim().is_empty() {
            return Err(ConfigError::value(
                key,
                "`local:` needs a model directory (with config.json, tokenizer.json, model.safetensors)",
            ));
        }
        EmbedderSpec::Local {
            dir: PathBuf::from(dir.trim()),
        }
    } else {
        return Err(ConfigError::value(
            key,
            format!("`{text}` is not one of off, openai/<model>, local:<dir>"),
        ));
    };
    Ok(Some(EmbeddingsSettings {
        embedder,
        batch_size: positive("embeddings.batch_size", file.batch_size, DEFAULT_BATCH)? as usize,
        timeout: Duration::from_secs(positive(
            "embeddings.timeout_seconds",
            file.timeout_seconds,
            DEFAULT_TIMEOUT_SECONDS,
        )? as u64),
        max_retries: match file.max_retries {
            None => DEFAULT_RETRIES as u32,
            Some(n) if (0..=10).contains(&n) => n as u32,
            Some(n) => {
                return Err(ConfigError::value(
                    "embeddings.max_retries",
                    format!("{n} is not between 0 and 10"),
                ));
            }
        },
        min_similarity: similarity(file.min_similarity.as_ref())?,
        cache_bytes: positive("embeddings.cache_mb", file.cache_mb, DEFAULT_CACHE_MB)? as usize
            * 1024
            * 1024,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(model: &str) -> EmbeddingsFile {
        EmbeddingsFile {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    #[test]
    fn off_by_default() {
        let keys = ProviderKeys::default();
        assert_eq!(settings(EmbeddingsFile::default(), &keys).unwrap(), None);
        assert_eq!(settings(file("off"), &keys).unwrap(), None);
    }

    #[test]
    fn openai_falls_back_to_the_chat_provider() {
        let keys = ProviderKeys {
            api_key: Some("sk-chat".into()),
            base_url: Some("http://127.0.0.1:9/v1/".into()),
        };
        let s = settings(file("openai/text-embedding-3-small"), &keys)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.embedder,
            EmbedderSpec::OpenAi {
                model: "text-embedding-3-small".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key: Some("sk-chat".into()),
            }
        );
        let mut own = file("openai/m");
        own.base_url = Some("https://embed.example/v1".into());
        own.api_key = Some("sk-embed".into());
        let s = settings(own, &keys).unwrap().unwrap();
        assert!(matches!(
            s.embedder,
            EmbedderSpec::OpenAi { ref base_url, ref api_key, .. }
                if base_url == "https://embed.example/v1" && api_key.as_deref() == Some("sk-embed")
        ));
        assert!(!format!("{:?}", s.embedder).contains("sk-embed"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let keys = ProviderKeys::default();
        for (f, key) in [
            (file("bert"), "embeddings.model"),
            (file("local:"), "embeddings.model"),
            (file("openai/"), "embeddings.model"),
            (
                EmbeddingsFile {
                    base_url: Some("ftp://x".into()),
                    ..file("openai/m")
                },
                "embeddings.base_url",
            ),
            (
                EmbeddingsFile {
                    min_similarity: Some(toml::Value::String("2".into())),
                    ..file("local:/m")
                },
                "embeddings.min_similarity",
            ),
            (
                EmbeddingsFile {
                    batch_size: Some(0),
                    ..file("local:/m")
                },
                "embeddings.batch_size",
            ),
        ] {
            let e = settings(f, &keys).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let s = settings(
            EmbeddingsFile {
                min_similarity: Some(toml::Value::String("0.4".into())),
                ..file("local:/m")
            },
            &keys,
        )
        .unwrap()
        .unwrap();
        assert!((s.min_similarity - 0.4).abs() < 1e-6);
    }
}
