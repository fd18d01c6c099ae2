//! In-process fakes of the services ecdysis talks to, at the HTTP/websocket level, so tests and
//! benchmarks drive the real client code without leaving loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

pub mod discord;
pub mod llm;
pub mod prerequisite;
pub mod slack;
