//! The overview: storage, inbox counts, adapters, leader leases, profiles and MCP servers.

use axum::extract::State;
use maud::{Markup, html};

use super::super::caller::Viewer;
use super::super::error::{AdminError, Cannot};
use super::super::layout::{HtmlPage, empty_row, page, time};
use super::super::{Admin, AdminParts};

pub async fn show(State(admin): State<Admin>, viewer: Viewer) -> Result<HtmlPage, AdminError> {
    let parts = &admin.parts;
    let store = &parts.store;
    let counts = store.inbox_counts().await.cannot("read the overview")?;
    let last_events = store.last_event_at().await.cannot("read the overview")?;
    let leases = store.leases().await.cannot("read the overview")?;

    let health = parts.bus.adapter_health();
    let mut platforms: Vec<String> = health.keys().cloned().collect();
    for (platform, _) in &last_events {
        if !platforms.contains(platform) {
            platforms.push(platform.clone());
        }
    }
    platforms.sort();
    let now = ecdysis_chat::time::now_ms();
    let body = html! {
        p {
            "ecdysis " (env!("CARGO_PKG_VERSION"))
            " · storage " b { (store.backend()) }
            " · blobs " b { (parts.blobs.describe()) }
        }
        h2 { "Inbox" }
        div.cards {
            @for (name, n) in [
                ("pending", counts.pending),
                ("leased", counts.leased),
                ("failed", counts.failed),
                ("done", counts.done),
            ] {
                a.card href={ "/admin/inbox?status=" (name) } { b { (n) } (name) }
            }
        }
        h2 { "Adapters" }
        table {
            tr { th { "platform" } th { "status" } th { "last event" } }
            @for platform in &platforms {
                tr {
                    td { (platform) }
                    td {
                        @match health.get(platform) {
                            Some(value) => code { (value.to_string()) },
                            None if platform == "web" => "built in",
                            None => span.muted { "not running here" },
                        }
                    }
                    td {
                        @match last_events.iter().find(|(p, _)| p == platform) {
                            Some((_, at)) => (time(*at)),
                            None => "—",
                        }
                    }
                }
            }
        }
        h2 { "Leader leases" }
        p.muted { "With several instances, one holds each gateway/socket connection." }
        table {
            tr { th { "lease" } th { "owner" } th { "state" } th { "since" } }
            @for lease in &leases {
                tr {
                    td { (lease.name) }
                    td { code { (lease.owner) } }
                    td {
                        @if lease.lease_until.0 > now {
                            span.ok { "held" } " until " (time(lease.lease_until))
                        } @else {
                            span.bad { "expired" } " " (time(lease.lease_until))
                        }
                    }
                    td { (time(lease.acquired_at)) }
                }
            }
            @if leases.is_empty() { (empty_row(4, "none")) }
        }
        (profiles_section(parts))
    };
    Ok(page("Overview", Some(&viewer.csrf), body))
}

/// The agent profiles with the channels they claim, and the MCP servers with their state.
fn profiles_section(parts: &AdminParts) -> Markup {
    let servers = parts.mcp.status();
    html! {
        h2 { "Profiles" }
        table {
            tr { th { "profile" } th { "channels" } th { "settings" } }
            @for profile in parts.profiles.iter() {
                tr {
                    td { (profile.name) }
                    td { @for c in &profile.channels { code { (c.as_str()) } " " } }
                    td { (profile.describe()) }
                }
            }
            tr { td { "default" } td.muted { "every other channel" } td { "everything configured" } }
        }
        @if !servers.is_empty() {
            h2 { "MCP servers" }
            table {
                tr { th { "server" } th { "state" } }
                @for server in &servers {
                    tr {
                        td { (server.name) }
                        td class=(if matches!(server.health, crate::mcp::Health::Up { .. }) { "ok" } else { "bad" }) {
                            (server.line())
                        }
                    }
                }
            }
        }
    }
}
