//! Answers shown while they are written: the first text is posted (in the thread, the DM, or
//! as the deferred response of a slash command), then edited about once a second, within the
//! per-channel limit of five edits in five seconds; an answer past 2,000 characters continues
//! in further messages (follow-ups for slash commands). The final reply edits the same message;
//! one Discord no longer has (deleted meanwhile) is replaced by a new post.

use std::time::Duration;

use ecdysis_chat::{
    Attachment, Delivered, DeliveryError, LiveHandle, LiveMessage, LiveSettings, LiveView, Reply,
};
use serde::{Deserialize, Serialize};

use crate::MAX_MESSAGE_CHARS;
use crate::adapter::Shared;
use crate::deliver::{
    classify, classify_interaction, edit_original, ensure_thread, id, post_message,
};
use crate::rest::{ActionRow, MessageBody};
use crate::route::Route;

/// The shortest time between two edits of one message. Discord allows 5 message requests per
/// 5 s in a channel, shared by edits and the follow-up posts of a long answer; 1.25 s leaves
/// room for those posts (and anyone else's) under the limit.
pub(crate) const INTERVAL: Duration = Duration::from_millis(1_250);

/// Which message a live answer is, as the core stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Handle {
    /// A message in a channel, thread or DM.
    Message { channel: String, id: String },
    /// A slash command's deferred response.
    Original { token: String },
    /// A follow-up of a slash command.
    Followup { token: String, id: String },
}

impl Handle {
    fn to_value(&self) -> LiveHandle {
        serde_json::to_value(self).unwrap_or(LiveHandle::Null)
    }
}

fn route_of(message: &LiveMessage) -> Result<Route, DeliveryError> {
    Route::from_value(&message.route)
        .ok_or_else(|| DeliveryError::Permanent("the reply has no Discord route".into()))
}

pub(crate) fn settings() -> LiveSettings {
    LiveSettings {
        min_interval: INTERVAL,
    }
}

/// Post the first text of a live answer.
pub(crate) async fn start(
    shared: &Shared,
    message: &LiveMessage,
    view: &LiveView,
) -> Result<LiveHandle, DeliveryError> {
    let route = route_of(message)?;
    let text = view.render(MAX_MESSAGE_CHARS);
    if let Some(interaction) = &route.interaction {
        let body = MessageBody::text(text);
        if message.piece == 0 {
            edit_original(shared, &interaction.token, &body).await?;
            return Ok(Handle::Original {
                token: interaction.token.clone(),
            }
            .to_value());
        }
        let posted = shared
            .rest
            .followup(&interaction.token, &body)
            .await
            .map_err(classify_interaction)?;
        return Ok(Handle::Followup {
            token: interaction.token.clone(),
            id: posted.id.get().to_string(),
        }
        .to_value());
    }
    let target = ensure_thread(shared, &route).await?;
    shared.typing.stop(target);
    // The reply's key as the nonce: a post repeated after a crash is the same message.
    let posted = post_message(
        shared,
        target,
        &message.idempotency_key,
        &text,
        Vec::new(),
        &[],
    )
    .await
    .map_err(classify)?;
    Ok(Handle::Message {
        channel: target.to_string(),
        id: posted.id.get().to_string(),
    }
    .to_value())
}

/// Show `view` in a live message.
pub(crate) async fn update(
    shared: &Shared,
    handle: &LiveHandle,
    view: &LiveView,
) -> Result<(), DeliveryError> {
    let handle: Handle = serde_json::from_value(handle.clone())
        .map_err(|e| DeliveryError::Permanent(format!("unreadable live handle: {e}")))?;
    edit(
        shared,
        &handle,
        view.render(MAX_MESSAGE_CHARS),
        Vec::new(),
        &[],
    )
    .await
}

async fn edit(
    shared: &Shared,
    handle: &Handle,
    text: String,
    files: Vec<Attachment>,
    rows: &[ActionRow],
) -> Result<(), DeliveryError> {
    let body = MessageBody::text(text).with_files(files).with_rows(rows);
    match handle {
        Handle::Message {
            channel,
            id: message,
        } => {
            shared
                .rest
                .edit_message(id(channel)?, id(message)?, &body)
                .await
                .map_err(classify)?;
        }
        Handle::Original { token } => {
            edit_original(shared, token, &body).await?;
        }
        Handle::Followup { token, id: message } => {
            shared
                .rest
                .edit_followup(token, id(message)?, &body)
                .await
                .map_err(classify_interaction)?;
        }
    }
    Ok(())
}

/// Finish the live message of a reply with its text, files and buttons (or remove it, for a
/// reply with nothing in it). `None` when the message is gone: the reply is posted anew.
pub(crate) async fn finish(
    shared: &Shared,
    route: &Route,
    reply: &Reply,
    handle: &LiveHandle,
    text: &str,
    files: &[Attachment],
    rows: &[ActionRow],
) -> Result<Option<Delivered>, DeliveryError> {
    let Ok(handle) = serde_json::from_value::<Handle>(handle.clone()) else {
        tracing::warn!("unreadable live handle; posting the reply anew");
        return Ok(None);
    };
    if let Ok(target) = id(route.target_channel()) {
        shared.typing.stop(target);
    }
    let message_id = match &handle {
        Handle::Message { id, .. } | Handle::Followup { id, .. } => Some(id.clone()),
        Handle::Original { .. } => None,
    };
    let empty =
        reply.text.trim().is_empty() && reply.attachments.is_empty() && reply.buttons.is_empty();
    let result = if empty {
        remove(shared, &handle).await
    } else {
        edit(shared, &handle, text.to_string(), files.to_vec(), rows).await
    };
    match result {
        Ok(()) => Ok(Some(Delivered {
            platform_message_id: message_id,
        })),
        Err(DeliveryError::Permanent(e)) if e.contains("404") || e.contains("Unknown Message") => {
            tracing::warn!(error = %e, "the live message is gone; posting the answer anew");
            Ok(if empty {
                Some(Delivered::default())
            } else {
                None
            })
        }
        Err(e) => Err(e),
    }
}

async fn remove(shared: &Shared, handle: &Handle) -> Result<(), DeliveryError> {
    let result = match handle {
        Handle::Message {
            channel,
            id: message,
        } => shared.rest.delete_message(id(channel)?, id(message)?).await,
        Handle::Original { token } => shared.rest.delete_original(token).await,
        Handle::Followup { token, id: message } => {
            shared.rest.delete_followup(token, id(message)?).await
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) => Err(classify(e)),
    }
}
