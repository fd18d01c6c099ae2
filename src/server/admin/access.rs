//! The admin page of the guard rails: the access policy in force, DM pairing codes waiting
//! (approve), paired users (unpair), the budgets with today's spending of the busiest
//! channels, and the rate limits.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ecdysis_chat::{AllowList, ConversationRef};

use super::super::html::{esc, page, time};
use super::super::{Admin, html_page, internal, see_other, text};
use super::{csrf_refused, field};
use crate::engine::guard::budget::BudgetKind;
use crate::engine::guard::pairing::{describe, normalize};
use crate::engine::guard::settings::Limit;
use crate::storage::store::{Approval, now_ms};

/// Channels whose spending today the page shows.
const BUDGET_CHANNELS: usize = 30;

fn list(list: &AllowList, empty: &str) -> String {
    if list.is_empty() {
        empty.to_string()
    } else {
        esc(&list.entries().join(", "))
    }
}

fn limit(l: &Limit) -> String {
    let mut parts = Vec::new();
    if let Some(tokens) = l.tokens {
        parts.push(format!(
            "{} tokens",
            crate::engine::guard::budget::thousands(tokens)
        ));
    }
    if let Some(nanos) = l.nanos {
        parts.push(crate::engine::guard::budget::usd(nanos));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

pub async fn access(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let caller = page_caller!(admin, headers);
    let csrf = admin.csrf(&caller);
    let app = &admin.app;
    let guards = &app.config.guards;
    let store = &app.store;
    let (pending, paired) = match (store.pending_pairings().await, store.paired_users().await) {
        (Ok(pending), Ok(paired)) => (pending, paired),
        (Err(e), _) | (_, Err(e)) => return internal("read the pairings", e),
    };
    let a = &guards.access;
    let mut body = String::from("<h2>Access policy</h2><table>");
    let _ = write!(
        body,
        "<tr><th>allowed users</th><td>{}</td></tr><tr><th>allowed channels</th><td>{}</td></tr><tr><th>admins</th><td>{}</td></tr><tr><th>DMs</th><td>Slack {} · Discord {}</td></tr><tr><th>pairing codes valid</th><td>{} min</td></tr><tr><th>rate limits</th><td>{} per user · {} per channel (a minute)</td></tr></table>",
        list(&a.allow_users, "everyone"),
        list(&a.allow_channels, "everywhere"),
        list(&a.admin_users, "nobody"),
        a.dm_slack.as_str(),
        a.dm_discord.as_str(),
        a.pairing_code_ttl.as_secs() / 60,
        guards
            .rate
            .user_per_minute
            .map(|n| n.to_string())
            .unwrap_or_else(|| "no limit".into()),
        guards
            .rate
            .channel_per_minute
            .map(|n| n.to_string())
            .unwrap_or_else(|| "no limit".into()),
    );
    body.push_str("<h2>Pairing codes waiting</h2><table><tr><th>code</th><th>user</th><th>DM</th><th>asked</th><th>expires</th><th></th></tr>");
    for p in &pending {
        let _ = write!(
            body,
            r#"<tr><td><code>{code}</code></td><td>{who}</td><td>{ws}:{ch}</td><td>{asked}</td><td>{expires}</td><td><form method="post" action="/admin/pairings/{code}/approve"><input type="hidden" name="csrf" value="{csrf}"><button>Approve</button></form></td></tr>"#,
            code = esc(&p.code),
            who = esc(&describe(p)),
            ws = esc(&p.workspace),
            ch = esc(&p.channel),
            asked = time(p.created_at),
            expires = time(p.expires_at),
            csrf = esc(&csrf),
        );
    }
    if pending.is_empty() {
        body.push_str("<tr><td colspan=6 class=\"muted\">none</td></tr>");
    }
    body.push_str("</table><h2>Paired users</h2><table><tr><th>user</th><th>approved by</th><th>at</th><th></th></tr>");
    for u in &paired {
        let who = match &u.user_name {
            Some(name) if !name.is_empty() => format!("{}:{} ({name})", u.platform, u.user_id),
            _ => format!("{}:{}", u.platform, u.user_id),
        };
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td><form method="post" action="/admin/paired/unpair"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="platform" value="{}"><input type="hidden" name="user" value="{}"><button>Unpair</button></form></td></tr>"#,
            esc(&who),
            esc(&u.approved_by),
            time(u.approved_at),
            esc(&u.platform),
            esc(&u.user_id),
            csrf = esc(&csrf),
        );
    }
    if paired.is_empty() {
        body.push_str("<tr><td colspan=4 class=\"muted\">none</td></tr>");
    }
    let b = &guards.budget;
    let _ = write!(
        body,
        "</table><h2>Budgets</h2><table><tr><th>per channel, per day</th><td>{}</td></tr><tr><th>per user, per day</th><td>{}</td></tr><tr><th>per workspace, per month</th><td>{}</td></tr><tr><th>days in</th><td>{}</td></tr></table>",
        limit(&b.channel_daily),
        limit(&b.user_daily),
        limit(&b.workspace_monthly),
        esc(b.timezone.iana_name().unwrap_or("UTC")),
    );
    if b.channel_daily.is_set() {
        let channels = match store.usage_by_channel().await {
            Ok(rows) => rows,
            Err(e) => return internal("read usage", e),
        };
        let mut seen = Vec::new();
        for row in channels {
            if !seen.contains(&row.channel) {
                seen.push(row.channel);
            }
        }
        body.push_str("<h3>Channels today</h3><table><tr><th>channel</th><th>used</th><th>share</th><th>resets</th></tr>");
        let now = now_ms();
        for channel in seen.into_iter().take(BUDGET_CHANNELS) {
            let conversation = ConversationRef::new(
                channel.platform.clone(),
                channel.workspace.clone(),
                channel.channel.clone(),
                None,
            );
            let spends = match app.budgets.spend(&conversation, "", &[], now).await {
                Ok(spends) => spends,
                Err(e) => return internal("read usage", e),
            };
            for spend in spends.iter().filter(|s| s.kind == BudgetKind::ChannelDaily) {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{:.0} %</td><td>{}</td></tr>",
                    esc(&format!(
                        "{}:{}:{}",
                        channel.platform, channel.workspace, channel.channel
                    )),
                    esc(&spend.describe()),
                    spend.share() * 100.0,
                    esc(&spend.reset_text(now)),
                );
            }
        }
        body.push_str("</table>");
    }
    html_page(page("Access and budgets", Some(&csrf), &body))
}

pub async fn approve(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(code): Path<String>,
    body: Bytes,
) -> Response {
    form_caller!(admin, headers, &field(&body, "csrf"));
    match admin
        .app
        .store
        .approve_pairing(&normalize(&code), "admin")
        .await
    {
        Ok(Approval::Approved(p)) => {
            tracing::info!(user = %describe(&p), "admin: pairing approved");
            see_other("/admin/access")
        }
        Ok(Approval::AlreadyApproved(_)) => see_other("/admin/access"),
        Ok(Approval::Expired(_)) => text(StatusCode::GONE, "that pairing code has expired"),
        Ok(Approval::Unknown) => text(StatusCode::NOT_FOUND, "no such pairing code"),
        Err(e) => internal("approve the pairing", e),
    }
}

pub async fn unpair(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    form_caller!(admin, headers, &field(&body, "csrf"));
    let (platform, user) = (field(&body, "platform"), field(&body, "user"));
    match admin.app.store.unpair(&platform, &user).await {
        Ok(true) => {
            tracing::info!(%platform, %user, "admin: pairing removed");
            see_other("/admin/access")
        }
        Ok(false) => text(StatusCode::NOT_FOUND, "that user is not paired"),
        Err(e) => internal("unpair", e),
    }
}
