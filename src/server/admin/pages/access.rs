//! The admin page of the guard rails: the access policy in force, DM pairing codes waiting
//! (approve), paired users (unpair), the budgets with today's spending of the busiest
//! channels, and the rate limits.

use axum::extract::{Path, State};
use axum::response::Response;
use ecdysis_chat::{AllowList, ConversationRef};
use maud::{Markup, html};
use serde::Deserialize;

use crate::engine::guard::budget::{BudgetKind, thousands, usd};
use crate::engine::guard::pairing::{describe, normalize};
use crate::engine::guard::settings::Limit;
use crate::server::admin::Admin;
use crate::server::admin::caller::{FormPost, Viewer};
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{HtmlPage, csrf_field, empty_row, page, see_other, time};
use crate::storage::store::{Approval, now_ms};

/// Channels whose spending today the page shows.
const BUDGET_CHANNELS: usize = 30;

fn list(list: &AllowList, empty: &str) -> String {
    if list.is_empty() {
        empty.to_string()
    } else {
        list.entries().join(", ")
    }
}

fn limit(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(tokens) = l.tokens {
        parts.push(format!("{} tokens", thousands(tokens)));
    }
    if let Some(nanos) = l.nanos {
        parts.push(usd(nanos));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

fn per_minute(limit: Option<u32>) -> String {
    limit
        .map(|n| n.to_string())
        .unwrap_or_else(|| "no limit".into())
}

/// Today's spending of the channels that used the most, against the per-channel budget.
async fn channels_today(admin: &Admin) -> Result<Markup, AdminError> {
    let parts = &admin.parts;
    let rows = parts.store.usage_by_channel().await.cannot("read usage")?;
    let mut seen = Vec::new();
    for row in rows {
        if !seen.contains(&row.channel) {
            seen.push(row.channel);
        }
    }
    let now = now_ms();
    let mut lines = Vec::new();
    for channel in seen.into_iter().take(BUDGET_CHANNELS) {
        let conversation = ConversationRef::new(
            channel.platform.clone(),
            channel.workspace.clone(),
            channel.channel.clone(),
            None,
        );
        let spends = parts
            .budgets
            .spend(&conversation, "", &[], now)
            .await
            .cannot("read usage")?;
        for spend in spends
            .into_iter()
            .filter(|s| s.kind == BudgetKind::ChannelDaily)
        {
            let name = format!(
                "{}:{}:{}",
                channel.platform, channel.workspace, channel.channel
            );
            lines.push((name, spend));
        }
    }
    Ok(html! {
        h3 { "Channels today" }
        table {
            tr { th { "channel" } th { "used" } th { "share" } th { "resets" } }
            @for (name, spend) in &lines {
                tr {
                    td { (name) }
                    td { (spend.describe()) }
                    td { (format!("{:.0} %", spend.share() * 100.0)) }
                    td { (spend.reset_text(now)) }
                }
            }
            @if lines.is_empty() { (empty_row(4, "no spending yet")) }
        }
    })
}

pub async fn show(State(admin): State<Admin>, viewer: Viewer) -> Result<HtmlPage, AdminError> {
    let parts = &admin.parts;
    let store = &parts.store;
    let pending = store.pending_pairings().await.cannot("read the pairings")?;
    let paired = store.paired_users().await.cannot("read the pairings")?;
    let a = &parts.guards.access;
    let b = &parts.guards.budget;
    let rate = &parts.guards.rate;
    let channels = if b.channel_daily.is_set() {
        Some(channels_today(&admin).await?)
    } else {
        None
    };
    let csrf = &viewer.csrf;
    let body = html! {
        h2 { "Access policy" }
        table {
            tr { th { "allowed users" } td { (list(&a.allow_users, "everyone")) } }
            tr { th { "allowed channels" } td { (list(&a.allow_channels, "everywhere")) } }
            tr { th { "admins" } td { (list(&a.admin_users, "nobody")) } }
            tr { th { "DMs" } td { "Slack " (a.dm_slack.as_str()) " · Discord " (a.dm_discord.as_str()) } }
            tr { th { "pairing codes valid" } td { (a.pairing_code_ttl.as_secs() / 60) " min" } }
            tr {
                th { "rate limits" }
                td {
                    (per_minute(rate.user_per_minute)) " per user · "
                    (per_minute(rate.channel_per_minute)) " per channel (a minute)"
                }
            }
        }
        h2 { "Pairing codes waiting" }
        table {
            tr { th { "code" } th { "user" } th { "DM" } th { "asked" } th { "expires" } th {} }
            @for p in &pending {
                tr {
                    td { code { (p.code) } }
                    td { (describe(p)) }
                    td { (p.workspace) ":" (p.channel) }
                    td { (time(p.created_at)) }
                    td { (time(p.expires_at)) }
                    td {
                        form method="post" action={ "/admin/pairings/" (p.code) "/approve" } {
                            (csrf_field(csrf))
                            button type="submit" { "Approve" }
                        }
                    }
                }
            }
            @if pending.is_empty() { (empty_row(6, "none")) }
        }
        h2 { "Paired users" }
        table {
            tr { th { "user" } th { "approved by" } th { "at" } th {} }
            @for u in &paired {
                tr {
                    td {
                        (u.platform) ":" (u.user_id)
                        @if let Some(name) = u.user_name.as_deref().filter(|n| !n.is_empty()) {
                            " (" (name) ")"
                        }
                    }
                    td { (u.approved_by) }
                    td { (time(u.approved_at)) }
                    td {
                        form method="post" action="/admin/paired/unpair" {
                            (csrf_field(csrf))
                            input type="hidden" name="platform" value=(u.platform);
                            input type="hidden" name="user" value=(u.user_id);
                            button type="submit" { "Unpair" }
                        }
                    }
                }
            }
            @if paired.is_empty() { (empty_row(4, "none")) }
        }
        h2 { "Budgets" }
        table {
            tr { th { "per channel, per day" } td { (limit(&b.channel_daily)) } }
            tr { th { "per user, per day" } td { (limit(&b.user_daily)) } }
            tr { th { "per workspace, per month" } td { (limit(&b.workspace_monthly)) } }
            tr { th { "days in" } td { (b.timezone.iana_name().unwrap_or("UTC")) } }
        }
        @if let Some(channels) = channels { (channels) }
    };
    Ok(page("Access and budgets", Some(csrf), body))
}

pub async fn approve(
    State(admin): State<Admin>,
    Path(code): Path<String>,
    _: FormPost,
) -> Result<Response, AdminError> {
    match admin
        .parts
        .store
        .approve_pairing(&normalize(&code), "admin")
        .await
        .cannot("approve the pairing")?
    {
        Approval::Approved(p) => {
            tracing::info!(user = %describe(&p), "admin: pairing approved");
            Ok(see_other("/admin/access"))
        }
        Approval::AlreadyApproved(_) => Ok(see_other("/admin/access")),
        Approval::Expired(_) => Err(AdminError::Gone("that pairing code has expired")),
        Approval::Unknown => Err(AdminError::NotFound("no such pairing code")),
    }
}

/// The unpair form: which user.
#[derive(Debug, Default, Deserialize)]
pub struct UnpairForm {
    #[serde(default)]
    platform: String,
    #[serde(default)]
    user: String,
}

pub async fn unpair(
    State(admin): State<Admin>,
    FormPost(form): FormPost<UnpairForm>,
) -> Result<Response, AdminError> {
    let removed = admin
        .parts
        .store
        .unpair(&form.platform, &form.user)
        .await
        .cannot("unpair")?;
    if !removed {
        return Err(AdminError::NotFound("that user is not paired"));
    }
    tracing::info!(platform = %form.platform, user = %form.user, "admin: pairing removed");
    Ok(see_other("/admin/access"))
}
