//! Wiring the chat platforms into the server: Slack (Events API, Socket Mode, OAuth
//! installations) and Discord (gateway, HTTP interactions), catch-up after downtime, and the
//! long-lived connections that exactly one instance holds under a leader lease. The platform clients themselves are the
//! `adapters/` crates.

pub mod catch_up;
pub mod connections;
pub mod discord;
pub mod leader;
pub mod slack;
pub mod slack_installations;
