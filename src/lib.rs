//! ecdysis: a self-hosted AI agent for Slack and Discord.
//!
//! The library holds the core (configuration, storage, blob store, the durable event bus, the
//! command handlers and the HTTP server); `src/main.rs` is the `ecdysis` command line.

pub mod admin;
pub mod agent;
pub mod app;
pub mod approvals;
pub mod backup;
pub mod blob;
pub mod browser;
pub mod bus;
pub mod commands;
pub mod config;
pub mod connections;
pub mod discord;
pub mod doctor;
pub mod instance_lock;
pub mod leader;
pub mod mcp;
pub mod media;
pub mod listener;
pub mod metrics;
pub mod redact;
pub mod private_files;
pub mod profile;
pub mod sandbox;
pub mod secret_box;
pub mod slack;
pub mod slack_installations;
pub mod store;
pub mod tools;
pub mod web_search;
