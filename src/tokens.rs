//! Token counts of one model call: what a provider reports, the store records, and budgets,
//! prices and metrics count. A leaf module, so providers and the store both use it without
//! either importing the other.

use serde::Serialize;

/// One LLM call's token usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}
