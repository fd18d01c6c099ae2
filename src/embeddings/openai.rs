//! `openai/<model>`: an OpenAI-compatible `POST {base}/embeddings` (OpenAI, Azure-style
//! gateways, Ollama, vLLM, LiteLLM), one request per batch, retried on 429, 5xx and time-outs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::{EmbedError, Embedder, check_vectors, normalize};
use crate::agent::retry::RetryPolicy;

/// The longest error body kept for a message.
const BODY_CHARS: usize = 300;

/// An OpenAI-compatible embeddings endpoint.
pub struct OpenAiEmbedder {
    http: reqwest::Client,
    url: String,
    /// The model name sent to the API.
    api_model: String,
    /// `openai/<model>`: the name stored with the vectors.
    label: String,
    api_key: Option<String>,
    policy: RetryPolicy,
    /// The dimension of the first answer: every later one must match it.
    dim: AtomicUsize,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

impl OpenAiEmbedder {
    pub fn new(
        model: &str,
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<Self, EmbedError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| EmbedError::Request(e.to_string()))?;
        let mut policy = RetryPolicy::new(max_retries, timeout);
        policy.base_delay = Duration::from_millis(250);
        policy.max_delay = Duration::from_secs(10);
        Ok(Self {
            http,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
            api_model: model.to_string(),
            label: format!("openai/{model}"),
            api_key,
            policy,
            dim: AtomicUsize::new(0),
        })
    }

    /// One request: the vectors, or an error and whether it is worth retrying (with the
    /// server's `retry-after`).
    async fn request(
        &self,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, (EmbedError, bool, Option<Duration>)> {
        let mut request = self.http.post(&self.url).json(&json!({
            "model": self.api_model,
            "input": texts,
            "encoding_format": "float",
        }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err((EmbedError::Timeout(self.policy.request_timeout), true, None));
            }
            Err(e) => return Err((EmbedError::Request(e.without_url().to_string()), true, None)),
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = ecdysis_chat::request::retry_after(response.headers());
            let body: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(BODY_CHARS)
                .collect();
            let retry = status.as_u16() == 429 || status.is_server_error();
            return Err((
                EmbedError::Status {
                    status: status.as_u16(),
                    body,
                },
                retry,
                retry_after,
            ));
        }
        let answer: Answer = match response.json().await {
            Ok(a) => a,
            Err(e) if e.is_timeout() => {
                return Err((EmbedError::Timeout(self.policy.request_timeout), true, None));
            }
            Err(e) => {
                return Err((
                    EmbedError::BadAnswer(format!("not an embeddings answer ({e})")),
                    false,
                    None,
                ));
            }
        };
        let mut data = answer.data;
        // Answers carry each vector's input index; keep input order.
        if data.iter().all(|d| d.index.is_some()) {
            data.sort_by_key(|d| d.index);
        }
        Ok(data.into_iter().map(|d| d.embedding).collect())
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.label
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut retry = 0;
        let mut vectors = loop {
            match self.request(texts).await {
                Ok(v) => break v,
                Err((error, retryable, after)) if retryable && retry < self.policy.max_retries => {
                    let pause = self.policy.delay(retry, after);
                    warn!(model = %self.label, %error, retry = retry + 1, ?pause, "embedding request failed; retrying");
                    tokio::time::sleep(pause).await;
                    retry += 1;
                }
                Err((error, _, _)) => return Err(error),
            }
        };
        let known = self.dim.load(Ordering::Relaxed);
        check_vectors(texts.len(), &vectors, (known > 0).then_some(known))?;
        if known == 0
            && let Some(first) = vectors.first()
        {
            self.dim.store(first.len(), Ordering::Relaxed);
        }
        for v in &mut vectors {
            normalize(v);
        }
        Ok(vectors)
    }
}
