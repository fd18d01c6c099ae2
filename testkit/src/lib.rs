//! In-process fakes of the services ecdysis talks to, at the HTTP/websocket level, so tests and
//! benchmarks drive the real client code without leaving loopback.

pub mod discord;
pub mod llm;
pub mod slack;
