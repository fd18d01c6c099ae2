//! The engine: what turns an accepted event into a reply. Chat commands, the tool registry the
//! agent reads, per-channel agent profiles, approvals for tools that need a human's yes, and
//! live replies (answers shown while they are written).
//! (The durable event bus that drives it lives in [`crate::bus`].)

pub mod approvals;
pub mod commands;
pub mod guard;
pub mod live;
pub mod profile;
pub mod progress;
pub mod tools;
