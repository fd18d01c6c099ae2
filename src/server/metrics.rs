//! Prometheus metrics of the bus and the server, rendered as text for `GET /metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric ecdysis exports.
pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_duplicate: Counter,
    pub events_processed: Counter,
    pub events_failed: Counter,
    pub events_retried: Counter,
    pub replies_sent: Counter,
    pub reply_failures: Counter,
    /// Seconds from an event's acceptance to its reply being stored.
    pub processing_seconds: Histogram,
    /// Events accepted and not yet finished.
    pub queue_depth: Gauge<i64, AtomicI64>,
    /// Model tokens and cost by model and channel.
    pub usage: UsageMetrics,
    /// Events the guard rails turned away, by reason.
    pub refused: Family<ReasonLabels, Counter>,
}

/// Labels of the model usage counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    pub model: String,
    pub channel: String,
    /// `input`, `output`, `cache_read` or `cache_write`.
    pub kind: String,
}

/// Labels of the cost counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub model: String,
    pub channel: String,
}

/// Labels of the refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Model tokens by kind (cache reads and writes apart, so a cache that stopped hitting shows)
/// and cost in USD, by model and channel. Cheap to clone (the families are shared).
#[derive(Clone, Debug, Default)]
pub struct UsageMetrics {
    tokens: Family<UsageLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
}

impl UsageMetrics {
    /// Count one model call.
    pub fn add(&self, model: &str, channel: &str, usage: &crate::tokens::Usage, cost_usd: f64) {
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            self.tokens
                .get_or_create(&UsageLabels {
                    model: model.to_string(),
                    channel: channel.to_string(),
                    kind: kind.to_string(),
                })
                .inc_by(n.max(0) as u64);
        }
        self.cost
            .get_or_create(&CostLabels {
                model: model.to_string(),
                channel: channel.to_string(),
            })
            .inc_by(cost_usd.max(0.0));
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ecdysis");
        let events_received = Counter::default();
        let events_duplicate = Counter::default();
        let events_processed = Counter::default();
        let events_failed = Counter::default();
        let events_retried = Counter::default();
        let replies_sent = Counter::default();
        let reply_failures = Counter::default();
        let processing_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0,
        ]);
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "events_received",
            "Events accepted into the inbox",
            events_received.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events dropped as duplicates of an accepted event",
            events_duplicate.clone(),
        );
        registry.register(
            "events_processed",
            "Events processed to completion",
            events_processed.clone(),
        );
        registry.register(
            "events_failed",
            "Events that failed after their last attempt",
            events_failed.clone(),
        );
        registry.register(
            "events_retried",
            "Event attempts that failed and were scheduled again",
            events_retried.clone(),
        );
        registry.register("replies_sent", "Replies delivered", replies_sent.clone());
        registry.register(
            "reply_failures",
            "Reply deliveries that failed",
            reply_failures.clone(),
        );
        registry.register(
            "event_processing_seconds",
            "Time from accepting an event to storing its reply",
            processing_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Events accepted and not yet finished",
            queue_depth.clone(),
        );
        let usage = UsageMetrics::default();
        registry.register(
            "llm_tokens",
            "Model tokens as the providers report them, by model, channel and kind (input, output, cache_read, cache_write)",
            usage.tokens.clone(),
        );
        registry.register(
            "llm_cost_usd",
            "Model cost in USD from the price table, by model and channel",
            usage.cost.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "events_refused",
            "Events the guard rails turned away, by reason (user, channel, dm, pairing, rate)",
            refused.clone(),
        );
        Self {
            registry,
            usage,
            refused,
            events_received,
            events_duplicate,
            events_processed,
            events_failed,
            events_retried,
            replies_sent,
            reply_failures,
            processing_seconds,
            queue_depth,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
