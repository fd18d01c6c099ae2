//! What is kept beside the transcripts: sandbox workspace snapshots and OAuth installations.

use axum::extract::State;
use maud::html;

use super::LIST_LIMIT;
use crate::sandbox::Snapshot;
use crate::server::admin::Admin;
use crate::server::admin::caller::Viewer;
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{HtmlPage, bytes, empty_row, page, time};

pub async fn workspaces(
    State(admin): State<Admin>,
    viewer: Viewer,
) -> Result<HtmlPage, AdminError> {
    let blobs = &admin.parts.blobs;
    let keys = blobs.list("workspaces/").await.cannot("list workspaces")?;
    let mut rows = Vec::new();
    for key in keys
        .iter()
        .filter(|k| k.ends_with(".json"))
        .take(LIST_LIMIT as usize)
    {
        let name = key
            .trim_start_matches("workspaces/")
            .trim_end_matches(".json");
        let snapshot = match blobs.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Snapshot>(&bytes).ok(),
            _ => None,
        };
        rows.push((name, snapshot));
    }
    let body = html! {
        table {
            tr { th { "workspace" } th { "size" } th { "compressed" } th { "entries" } th { "last snapshot" } }
            @for (name, snapshot) in &rows {
                tr {
                    td { (name) }
                    @match snapshot {
                        Some(s) => {
                            td { (bytes(s.bytes)) }
                            td { (bytes(s.compressed_bytes)) }
                            td { (s.files) }
                            td { (time(s.saved_at_ms)) }
                        },
                        None => td colspan="4" class="bad" { "unreadable snapshot record" },
                    }
                }
            }
            @if rows.is_empty() { (empty_row(5, "no workspace snapshots yet")) }
        }
    };
    Ok(page("Sandbox workspaces", Some(&viewer.csrf), body))
}

pub async fn installations(
    State(admin): State<Admin>,
    viewer: Viewer,
) -> Result<HtmlPage, AdminError> {
    let rows = admin
        .parts
        .store
        .installations()
        .await
        .cannot("list installations")?;
    let body = html! {
        p.muted { "Workspaces that installed the app through OAuth; their bot tokens are stored encrypted and never shown." }
        table {
            tr {
                th { "platform" } th { "team" } th { "bot user" } th { "app" } th { "scopes" }
                th { "installed by" } th { "installed" } th { "updated" }
            }
            @for i in &rows {
                tr {
                    td { (i.platform) }
                    td { (i.team_name) " " span.muted { (i.team_id) } }
                    td { (i.bot_user_id) }
                    td { (i.app_id) }
                    td { (i.scopes) }
                    td { (i.installed_by) }
                    td { (time(i.installed_at)) }
                    td { (time(i.updated_at)) }
                }
            }
            @if rows.is_empty() { (empty_row(8, "none")) }
        }
    };
    Ok(page("Installations", Some(&viewer.csrf), body))
}
