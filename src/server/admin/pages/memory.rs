//! Memory: channels with notes, a channel's notes, and editing or deleting a note.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::conversations::ChannelQuery;
use super::{channel_text, notes_link, notes_url, parse_channel};
use crate::server::admin::Admin;
use crate::server::admin::caller::{FormPost, Viewer};
use crate::server::admin::error::{AdminError, Cannot};
use crate::server::admin::layout::{
    HtmlPage, csrf_field, empty_row, page, query_value, see_other, time,
};
use crate::storage::store::NoteId;

pub async fn channels(State(admin): State<Admin>, viewer: Viewer) -> Result<HtmlPage, AdminError> {
    let channels = admin
        .parts
        .store
        .note_channels()
        .await
        .cannot("list memory")?;
    let body = html! {
        table {
            tr { th { "channel" } th { "notes" } th { "newest note" } }
            @for c in &channels {
                tr { td { (notes_link(&c.channel)) } td { (c.notes) } td { (time(c.last_at)) } }
            }
            @if channels.is_empty() { (empty_row(3, "no notes yet")) }
        }
    };
    Ok(page("Memory", Some(&viewer.csrf), body))
}

pub async fn notes(
    State(admin): State<Admin>,
    viewer: Viewer,
    Query(query): Query<ChannelQuery>,
) -> Result<HtmlPage, AdminError> {
    let channel = query
        .channel
        .as_deref()
        .and_then(parse_channel)
        .ok_or_else(|| {
            AdminError::BadRequest("?channel=platform:workspace:channel is required".into())
        })?;
    let mut notes = admin
        .parts
        .store
        .channel_notes(&channel)
        .await
        .cannot("read the notes")?;
    notes.reverse();
    let name = channel_text(&channel);
    let csrf = &viewer.csrf;
    let body = html! {
        p {
            (notes.len()) " notes · "
            a href={ "/admin/conversations?channel=" (query_value(&name)) } { "conversations of this channel" }
        }
        @for note in &notes {
            div.msg id={ "n" (note.id) } {
                div.who {
                    "#" (note.id) " · by " (note.created_by) " · " (time(note.created_at))
                    @if let Some(source) = &note.source { " · source " code { (source) } }
                }
                form method="post" action={ "/admin/notes/" (note.id) } {
                    (csrf_field(csrf))
                    textarea name="text" maxlength="10000" { (note.text) }
                    button type="submit" { "Save" }
                }
                form.inline method="post" action={ "/admin/notes/" (note.id) "/delete" } {
                    (csrf_field(csrf))
                    button type="submit" { "Delete" }
                }
            }
        }
        @if notes.is_empty() { p.muted { "No notes." } }
    };
    Ok(page(&format!("Memory of {name}"), Some(csrf), body))
}

#[derive(Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    text: String,
}

pub async fn edit(
    State(admin): State<Admin>,
    Path(id): Path<i64>,
    FormPost(form): FormPost<NoteForm>,
) -> Result<Response, AdminError> {
    let text = form.text.trim();
    if text.is_empty() {
        return Err(AdminError::BadRequest(
            "a note cannot be empty (delete it instead)".into(),
        ));
    }
    let store = &admin.parts.store;
    let note = find_note(&admin, id).await?;
    if !store
        .update_note(NoteId(id), text)
        .await
        .cannot("save the note")?
    {
        return Err(AdminError::NotFound("no such note"));
    }
    tracing::info!(note = id, "admin: note edited");
    Ok(see_other(&format!("{}#n{id}", notes_url(&note.channel))))
}

/// The note an action is about, or 404.
async fn find_note(
    admin: &Admin,
    id: i64,
) -> Result<crate::storage::store::StoredNote, AdminError> {
    admin
        .parts
        .store
        .note(NoteId(id))
        .await
        .cannot("read the note")?
        .ok_or(AdminError::NotFound("no such note"))
}

pub async fn delete(
    State(admin): State<Admin>,
    Path(id): Path<i64>,
    _: FormPost,
) -> Result<Response, AdminError> {
    let note = find_note(&admin, id).await?;
    admin
        .parts
        .store
        .delete_note(NoteId(id))
        .await
        .cannot("delete the note")?;
    tracing::info!(note = id, "admin: note deleted");
    Ok(see_other(&notes_url(&note.channel)))
}
