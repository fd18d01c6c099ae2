//! What model calls cost in USD: a built-in price table per model (USD per million tokens for
//! input, output, cache reads and cache writes), overridden or extended by `[prices."<model>"]`
//! in `ecdysis.toml`. A model is priced by its longest matching entry, so
//! `anthropic/claude-sonnet-4-5` also prices `anthropic/claude-sonnet-4-5-20250929`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::tokens::Usage;

/// USD per million tokens of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input read back (Anthropic cache hits, OpenAI `cached_tokens`).
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Input written to the cache (Anthropic `cache_creation_input_tokens`).
    #[serde(default)]
    pub cache_write: Option<f64>,
}

impl Price {
    const fn new(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Self {
        Self {
            input,
            output,
            cache_read: Some(cache_read),
            cache_write: Some(cache_write),
        }
    }

    /// What `usage` costs, in nano-USD (integers add up without rounding drift).
    pub fn nanos(&self, usage: &Usage) -> i64 {
        // USD per million tokens = 1,000 nano-USD per token.
        let per_token =
            |usd_per_million: f64, tokens: i64| usd_per_million * 1_000.0 * tokens as f64;
        let total = per_token(self.input, usage.input_tokens)
            + per_token(self.output, usage.output_tokens)
            + per_token(
                self.cache_read.unwrap_or(self.input),
                usage.cache_read_tokens,
            )
            + per_token(
                self.cache_write.unwrap_or(self.input),
                usage.cache_write_tokens,
            );
        total.round() as i64
    }
}

/// The built-in prices (USD per million tokens: input, output, cache read, cache write), as
/// the providers list them. OpenAI does not charge cache writes apart from input.
const BUILT_IN: &[(&str, Price)] = &[
    (
        "anthropic/claude-opus-4-5",
        Price::new(5.0, 25.0, 0.5, 6.25),
    ),
    (
        "anthropic/claude-opus-4-1",
        Price::new(15.0, 75.0, 1.5, 18.75),
    ),
    (
        "anthropic/claude-opus-4",
        Price::new(15.0, 75.0, 1.5, 18.75),
    ),
    (
        "anthropic/claude-sonnet-4",
        Price::new(3.0, 15.0, 0.3, 3.75),
    ),
    (
        "anthropic/claude-3-7-sonnet",
        Price::new(3.0, 15.0, 0.3, 3.75),
    ),
    (
        "anthropic/claude-haiku-4-5",
        Price::new(1.0, 5.0, 0.1, 1.25),
    ),
    (
        "anthropic/claude-3-5-haiku",
        Price::new(0.8, 4.0, 0.08, 1.0),
    ),
    ("openai/gpt-5", Price::new(1.25, 10.0, 0.125, 1.25)),
    ("openai/gpt-5-mini", Price::new(0.25, 2.0, 0.025, 0.25)),
    ("openai/gpt-5-nano", Price::new(0.05, 0.4, 0.005, 0.05)),
    ("openai/gpt-4.1", Price::new(2.0, 8.0, 0.5, 2.0)),
    ("openai/gpt-4.1-mini", Price::new(0.4, 1.6, 0.1, 0.4)),
    ("openai/gpt-4.1-nano", Price::new(0.1, 0.4, 0.025, 0.1)),
    ("openai/gpt-4o", Price::new(2.5, 10.0, 1.25, 2.5)),
    ("openai/gpt-4o-mini", Price::new(0.15, 0.6, 0.075, 0.15)),
    ("openai/o3", Price::new(2.0, 8.0, 0.5, 2.0)),
    ("openai/o4-mini", Price::new(1.1, 4.4, 0.275, 1.1)),
];

/// Prices by model (`provider/name`, or a prefix of it).
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    entries: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            entries: BUILT_IN
                .iter()
                .map(|(model, price)| (model.to_string(), *price))
                .collect(),
        }
    }
}

impl PriceTable {
    /// The built-in table with the file's `[prices]` entries added or replacing.
    pub fn with_overrides(overrides: BTreeMap<String, Price>) -> Result<Self, ConfigError> {
        let mut table = Self::default();
        for (model, price) in overrides {
            let key = format!("prices.{model}");
            if !model.contains('/') {
                return Err(ConfigError::value(
                    &key,
                    "name the model as `anthropic/<model>` or `openai/<model>`",
                ));
            }
            let all = [
                Some(price.input),
                Some(price.output),
                price.cache_read,
                price.cache_write,
            ];
            if all.iter().flatten().any(|p| !p.is_finite() || *p < 0.0) {
                return Err(ConfigError::value(
                    &key,
                    "prices are USD per million tokens: numbers of 0 or more",
                ));
            }
            table.entries.insert(model, price);
        }
        Ok(table)
    }

    /// The price of a model: its own entry or the longest entry it starts with.
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.entries.get(model) {
            return Some(price);
        }
        self.entries
            .iter()
            .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| price)
    }

    /// What `usage` of `model` costs in nano-USD; 0 for a model without a price.
    pub fn nanos(&self, model: &str, usage: &Usage) -> i64 {
        self.price(model).map(|p| p.nanos(usage)).unwrap_or(0)
    }
}

/// Tokens as budgets count them: everything the provider reports.
pub fn total_tokens(usage: &Usage) -> i64 {
    usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: i64, output: i64, read: i64, write: i64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        }
    }

    #[test]
    fn longest_prefix_wins_and_cache_is_priced_apart() {
        let table = PriceTable::default();
        let sonnet = table.price("anthropic/claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(sonnet.input, 3.0);
        // gpt-4.1-mini is not priced as gpt-4.1.
        assert_eq!(table.price("openai/gpt-4.1-mini").unwrap().input, 0.4);
        assert!(table.price("openai/llama3").is_none());
        // 1M input at $3 + 1M output at $15 + 1M cache reads at $0.30 + 1M writes at $3.75.
        let cost = table.nanos(
            "anthropic/claude-sonnet-4-5",
            &usage(1_000_000, 1_000_000, 1_000_000, 1_000_000),
        );
        assert_eq!(cost, 22_050_000_000);
        assert_eq!(table.nanos("openai/llama3", &usage(10, 10, 0, 0)), 0);
        assert_eq!(total_tokens(&usage(1, 2, 3, 4)), 10);
    }

    #[test]
    fn overrides_replace_and_add() {
        let mut file = BTreeMap::new();
        file.insert(
            "openai/llama3".to_string(),
            Price {
                input: 0.5,
                output: 1.0,
                cache_read: None,
                cache_write: None,
            },
        );
        let table = PriceTable::with_overrides(file).unwrap();
        // Cache reads cost input's price when the entry names none.
        assert_eq!(
            table.nanos("openai/llama3", &usage(0, 0, 2_000_000, 0)),
            1_000_000_000
        );
        let mut bad = BTreeMap::new();
        bad.insert(
            "llama3".to_string(),
            Price {
                input: 1.0,
                output: 1.0,
                cache_read: None,
                cache_write: None,
            },
        );
        let e = PriceTable::with_overrides(bad).unwrap_err().to_string();
        assert!(e.contains("prices.llama3"), "{e}");
    }
}
