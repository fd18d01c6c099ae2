//! Calling the model reliably: retries with exponential backoff and jitter on 429/5xx/overload
//! (honouring `retry-after`), then the fallback models in order, all inside the turn's deadline.

use std::time::{Duration, Instant};

use ecdysis_chat::backoff::Backoff;
use tracing::{info, warn};

use super::provider::{ChatRequest, ChatResponse, Model, ProviderError, TextSink};

/// How hard to try one model.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The longest one request may take.
    pub request_timeout: Duration,
    /// The first backoff; it doubles each retry.
    pub base_delay: Duration,
    /// The longest backoff (and the longest `retry-after` honoured).
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, request_timeout: Duration) -> Self {
        Self {
            max_retries,
            request_timeout,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }

    /// The pause before retry number `retry` (0-based): the server's `retry-after` when given,
    /// else `base * 2^retry` with jitter (between half and all of it), capped at `max_delay`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_delay);
        }
        Backoff::new(self.base_delay, self.max_delay)
            .with_jitter()
            .delay(retry.saturating_add(1))
    }
}

/// The model that answered and its answer.
#[derive(Debug)]
pub struct Answered {
    pub model_index: usize,
    pub response: ChatResponse,
    /// Time spent waiting for the model (requests and backoff), for the overhead measurement.
    pub waited: Duration,
}

/// Why no model answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{model}: {error} (after {attempts} attempt{})", if *attempts == 1 { "" } else { "s" })]
    Failed {
        model: String,
        error: ProviderError,
        attempts: u32,
    },
    #[error("the turn's time limit ran out while waiting for the model ({last})")]
    OutOfTime { last: String },
}

/// Try `models` in order (the first is the configured model, the rest its fallbacks). With a
/// `sink` the answer is streamed into it; the text of a failed attempt is taken back
/// ([`TextSink::restart`]) before the next one.
pub async fn call(
    models: &[Model],
    request: &ChatRequest,
    policy: &RetryPolicy,
    deadline: Instant,
    sink: Option<&dyn TextSink>,
) -> Result<Answered, CallError> {
    let started = Instant::now();
    let mut last: Option<CallError> = None;
    for (index, model) in models.iter().enumerate() {
        if index > 0 {
            info!(model = %model.spec, "trying the fallback model");
        }
        let mut retry = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < Duration::from_millis(50) {
                return Err(CallError::OutOfTime {
                    last: last
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "no answer yet".into()),
                });
            }
            let timeout = policy.request_timeout.min(remaining);
            let attempt = match sink {
                Some(sink) => {
                    model
                        .api
                        .stream(&model.spec.name, request, timeout, sink)
                        .await
                }
                None => model.api.complete(&model.spec.name, request, timeout).await,
            };
            match attempt {
                Ok(response) => {
                    return Ok(Answered {
                        model_index: index,
                        response,
                        waited: started.elapsed(),
                    });
                }
                Err(error) => {
                    if let Some(sink) = sink {
                        sink.restart();
                    }
                    let attempts = retry + 1;
                    let retryable = error.retryable();
                    let fallback = error.try_fallback();
                    let delay = policy.delay(retry, error.retry_after());
                    warn!(model = %model.spec, attempt = attempts, error = %error, "model call failed");
                    let failed = CallError::Failed {
                        model: model.spec.to_string(),
                        error,
                        attempts,
                    };
                    let now = Instant::now();
                    if now + Duration::from_millis(50) >= deadline {
                        return Err(CallError::OutOfTime {
                            last: failed.to_string(),
                        });
                    }
                    let fits = now + delay + Duration::from_millis(50) < deadline;
                    if retryable && retry < policy.max_retries && fits {
                        tokio::time::sleep(delay).await;
                        retry += 1;
                        last = Some(failed);
                        continue;
                    }
                    if fallback {
                        last = Some(failed);
                        break;
                    }
                    return Err(failed);
                }
            }
        }
    }
    Err(last.unwrap_or(CallError::OutOfTime {
        last: "no model is configured".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = RetryPolicy::new(4, Duration::from_secs(60));
        for retry in 0..4 {
            let full = Duration::from_millis(500 * (1 << retry));
            let d = policy.delay(retry, None);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
        assert!(policy.delay(30, None) <= Duration::from_secs(30));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let policy = RetryPolicy::new(4, Duration::from_secs(60));
        assert_eq!(
            policy.delay(3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }
}
