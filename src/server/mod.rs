//! The running server: [`app`] builds everything and the HTTP router, the [`listener`] serves
//! it, [`admin`] is the operator's web UI, [`doctor`] checks a deployment, [`metrics`] exports
//! Prometheus text, and [`instance_lock`] keeps SQLite mode to one instance.

pub mod admin;
pub mod app;
pub mod doctor;
pub mod instance_lock;
pub mod listener;
pub mod metrics;
pub mod telemetry;
