//! ecdysis: a self-hosted AI agent for Slack and Discord.
//!
//! The library holds the core (configuration, storage, blob store, the durable event bus, the
//! command handlers and the HTTP server); `src/main.rs` is the `ecdysis` command line.

pub mod agent;
pub mod browser;
pub mod bus;
pub mod config;
pub mod embeddings;
pub mod engine;
pub mod mcp;
pub mod media;
pub mod platforms;
pub mod redact;
pub mod sandbox;
pub mod schedule;
pub mod server;
pub mod storage;
pub mod tokens;
