//! Usage: model calls and tokens per channel and model.

use axum::extract::State;
use maud::html;

use super::notes_link;
use crate::server::admin::Admin;
use crate::server::admin::caller::Viewer;
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{HtmlPage, page};

pub async fn show(State(admin): State<Admin>, viewer: Viewer) -> Result<HtmlPage, AdminError> {
    let rows = admin
        .parts
        .store
        .usage_by_channel()
        .await
        .cannot("read usage")?;
    let (mut calls, mut input, mut output, mut read, mut written) = (0, 0, 0, 0, 0);
    for row in &rows {
        calls += row.calls;
        input += row.usage.input_tokens;
        output += row.usage.output_tokens;
        read += row.usage.cache_read_tokens;
        written += row.usage.cache_write_tokens;
    }
    let body = html! {
        table {
            tr {
                th { "channel" } th { "model" } th { "calls" } th { "input tokens" }
                th { "output tokens" } th { "cache read" } th { "cache write" }
            }
            @for row in &rows {
                tr {
                    td { (notes_link(&row.channel)) }
                    td { (row.model) }
                    td { (row.calls) }
                    td { (row.usage.input_tokens) }
                    td { (row.usage.output_tokens) }
                    td { (row.usage.cache_read_tokens) }
                    td { (row.usage.cache_write_tokens) }
                }
            }
            tr {
                th { "total" } th {} th { (calls) } th { (input) } th { (output) }
                th { (read) } th { (written) }
            }
        }
    };
    Ok(page("Usage", Some(&viewer.csrf), body))
}
