//! Guard rails: who may talk to the bot (allow lists, DM policy and pairing, admins), what it
//! may spend (token and USD budgets per channel, user and workspace), and how fast people may
//! write (token buckets per user and channel).
//!
//! The access policy and rate limits run at intake, as the bus's [`crate::bus::Gate`]
//! ([`gate::IntakeGate`]), before anything is stored; budgets run in the agent before every
//! model call ([`budget::Budgets::check`]); `/pair` is [`pairing::PairCommand`].

pub mod access;
pub mod budget;
pub mod gate;
pub mod pairing;
pub mod prices;
pub mod rate;
pub mod settings;

pub use budget::{BudgetError, Budgets, Exceeded};
pub use gate::IntakeGate;
pub use pairing::PairCommand;
pub use settings::{DmPolicy, GuardSettings};
