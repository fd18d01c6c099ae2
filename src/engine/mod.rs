//! The engine: what turns an accepted event into a reply. Chat commands, the tool registry the
//! agent reads, per-channel agent profiles, and approvals for tools that need a human's yes.
//! (The durable event bus that drives it lives in [`crate::bus`].)

pub mod approvals;
pub mod commands;
pub mod profile;
pub mod tools;
