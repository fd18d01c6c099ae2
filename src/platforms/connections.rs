//! The long-lived platform connections that exactly one instance may hold: the Discord gateway
//! and Slack Socket Mode (two holders would each receive every event).
//!
//! With SQLite (one instance by construction) they start directly. With Postgres (any number
//! of instances) each runs under a leader lease ([`crate::platforms::leader`]): one instance holds it, and
//! when that instance dies another takes over within `ECDYSIS_LEADER_LEASE_SECONDS` (plus a
//! third of it). HTTP transports (Slack Events API, Discord HTTP interactions) need no lease:
//! every instance serves them.

use std::sync::Arc;
use std::time::Duration;

use ecdysis_discord::{Discord, GatewayHandle};
use ecdysis_slack::{Slack, SocketMode};
use tracing::error;

use crate::config::Config;
use crate::platforms::leader::{LeaderHandle, Leadership, Term, instance_id};
use crate::storage::store::Store;

/// The lease that guards the Discord gateway.
pub const DISCORD_GATEWAY: &str = "discord-gateway";
/// The lease that guards the Slack Socket Mode connection.
pub const SLACK_SOCKET_MODE: &str = "slack-socket-mode";

/// The running connections (direct or under leases).
pub struct Connections {
    gateway: Option<GatewayHandle>,
    socket: Option<SocketMode>,
    leaders: Vec<LeaderHandle>,
}

impl Connections {
    /// Start what the configuration asks for, for the adapters built from it.
    pub async fn start(
        config: &Arc<Config>,
        store: &Arc<dyn Store>,
        discord: Option<&Discord>,
        slack: Option<&Slack>,
    ) -> anyhow::Result<Self> {
        // Over HTTP (no socket whose `hello` would start it), catch up once on start; every
        // instance may: the inbox drops what another one already took.
        if let Some(slack) = slack.filter(|s| !s.socket_mode()) {
            slack.spawn_catch_up();
        }
        if store.backend() != "postgres" {
            let gateway = crate::platforms::discord::start(config, discord).await?;
            let socket = crate::platforms::slack::start(slack);
            return Ok(Self {
                gateway,
                socket,
                leaders: Vec::new(),
            });
        }
        let owner = instance_id();
        let ttl = Duration::from_secs(config.bus.leader_lease_seconds);
        let mut leaders = Vec::new();
        if discord.is_some() && config.discord.token.is_some() {
            let (config, discord) = (config.clone(), discord.cloned());
            let lease = Leadership::new(store.clone(), DISCORD_GATEWAY, owner.clone(), ttl);
            leaders.push(lease.spawn(move |mut term: Term| {
                let (config, discord) = (config.clone(), discord.clone());
                async move {
                    match crate::platforms::discord::start(&config, discord.as_ref()).await {
                        Ok(Some(gateway)) => {
                            term.lost().await;
                            gateway.shutdown().await;
                        }
                        Ok(None) => term.lost().await,
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "cannot start the Discord gateway")
                        }
                    }
                }
            }));
        }
        if let Some(slack) = slack.filter(|s| s.socket_mode()).cloned() {
            let lease = Leadership::new(store.clone(), SLACK_SOCKET_MODE, owner, ttl);
            leaders.push(lease.spawn(move |mut term: Term| {
                let slack = slack.clone();
                async move {
                    match crate::platforms::slack::start(Some(&slack)) {
                        Some(socket) => {
                            term.lost().await;
                            socket.stop().await;
                        }
                        None => term.lost().await,
                    }
                }
            }));
        }
        Ok(Self {
            gateway: None,
            socket: None,
            leaders,
        })
    }

    /// Names of the leases this instance holds now.
    pub fn leading(&self) -> Vec<&str> {
        self.leaders
            .iter()
            .filter(|l| l.is_leader())
            .map(|l| l.name())
            .collect()
    }

    /// Close the connections and give up the leases.
    pub async fn stop(self) {
        if let Some(gateway) = self.gateway {
            gateway.shutdown().await;
        }
        if let Some(socket) = self.socket {
            socket.stop().await;
        }
        for leader in self.leaders {
            leader.shutdown().await;
        }
    }
}
