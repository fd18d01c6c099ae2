//! MCP servers as tools (`[[mcp]]` in `ecdysis.toml`).
//!
//! [`McpHub`] starts one background task per configured server ([`client`]): nothing waits for
//! a server, so a slow or broken one never delays start-up or `/readyz`, and a dead one is
//! restarted with backoff. Each listed tool is offered to the model as `<server>__<tool>`
//! ([`tools`]) in the channels the server's `channels` name; profiles narrow that further (see
//! [`crate::engine::profile`]). `/status`, `ecdysis doctor` and the admin page show which server is down
//! and why. A server with `sandbox = true` runs in the sandbox of each channel that calls it.

pub mod client;
pub mod config;
pub mod tools;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecdysis_chat::ConversationRef;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use client::{Health, ServerStatus};
pub use config::McpServerConfig;

use crate::engine::approvals::Approvals;
use crate::engine::tools::{SourcedTool, ToolSource};
use crate::sandbox::Runner;
use client::Server;

/// Every configured MCP server; cheap to clone.
#[derive(Clone)]
pub struct McpHub {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<Arc<Server>>,
    /// Servers whose configuration could not be used at all (a TLS setup failure), and why.
    broken: Vec<ServerStatus>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl McpHub {
    /// Start every server in the background (needs a Tokio runtime). Their env values and
    /// headers are registered as secrets with [`crate::redact::global`] first.
    pub fn start(
        configs: &[McpServerConfig],
        approvals: Option<Arc<Approvals>>,
        sandbox: Option<Arc<Runner>>,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        let mut servers = Vec::with_capacity(configs.len());
        let mut broken = Vec::new();
        let mut tasks = Vec::with_capacity(configs.len());
        for config in configs {
            for secret in config.transport.secrets() {
                crate::redact::global().add_secret(&secret);
            }
            match Server::new(config.clone(), approvals.clone(), sandbox.clone()) {
                Ok(server) => {
                    tasks.push(tokio::spawn(server.clone().supervise(shutdown.subscribe())));
                    servers.push(server);
                }
                Err(error) => {
                    let reason = error.to_string();
                    warn!(server = %config.name, %reason, "MCP server cannot be used");
                    broken.push(ServerStatus {
                        name: config.name.clone(),
                        transport: config.transport.describe(),
                        health: Health::Down { reason },
                        restarts: 0,
                    });
                }
            }
        }
        if !configs.is_empty() {
            info!(
                servers = configs.len(),
                "MCP servers are starting in the background"
            );
        }
        Self {
            inner: Arc::new(Inner {
                servers,
                broken,
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// A hub without servers.
    pub fn empty() -> Self {
        Self::start(&[], None, None)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.servers.is_empty() && self.inner.broken.is_empty()
    }

    /// Every server's state, in configuration order.
    pub fn status(&self) -> Vec<ServerStatus> {
        let mut out: Vec<ServerStatus> = self.inner.servers.iter().map(|s| s.status()).collect();
        out.extend(self.inner.broken.iter().cloned());
        out
    }

    /// Wait until every server is up or has failed at least once (for `doctor`, tests and
    /// benchmarks), at most `timeout`. True when none is still starting.
    pub async fn settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let starting = self
                .status()
                .iter()
                .any(|s| s.health == Health::Starting && s.restarts == 0);
            if !starting {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the named server is up, at most `timeout`.
    pub async fn wait_up(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .status()
                .iter()
                .any(|s| s.name == name && matches!(s.health, Health::Up { .. }))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop every server (stdio children are killed) and wait for their tasks, at most 10 s.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl ToolSource for McpHub {
    fn tools_for(&self, conversation: &ConversationRef) -> Vec<SourcedTool> {
        let mut out = Vec::new();
        for server in &self.inner.servers {
            if !server
                .config
                .channels
                .iter()
                .any(|c| c.matches(conversation))
            {
                continue;
            }
            for tool in server.tools().iter() {
                out.push(SourcedTool {
                    group: server.name().to_string(),
                    tool: tool.clone(),
                });
            }
        }
        out
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the servers' tasks (their children are killed on drop).
        let _ = self.shutdown.send(true);
    }
}
