//! Replies → REST calls: a message in the channel, DM or thread (starting the thread on the
//! user's message first), or the response of an interaction (`PATCH …/messages/@original` for
//! the first piece, follow-ups for the rest). Files go as multipart attachments, checked
//! against the upload limit; buttons as message components.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecdysis_chat::{Attachment, Button, ButtonStyle, Delivered, DeliveryError, Reply};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::DEFAULT_MAX_FILE_BYTES;
use crate::adapter::Shared;
use crate::channels::Place;
use crate::model::Message;
use crate::rest::{ActionRow, ButtonComponent, MessageBody, RestError, Style};
use crate::route::{InteractionRoute, Route};

/// Discord's error code for "request entity too large" (a file over the upload limit).
const ENTITY_TOO_LARGE: i64 = 40_005;
/// Discord's error code for "a thread has already been created for this message".
const THREAD_ALREADY_CREATED: i64 = 160_004;
/// How often the typing indicator is renewed (it lasts about 10 seconds).
const TYPING_EVERY: Duration = Duration::from_secs(8);
/// The longest the indicator is kept up without a reply.
const TYPING_FOR: Duration = Duration::from_secs(120);
/// Bookkeeping sets are emptied beyond this size.
const MAX_REMEMBERED: usize = 10_000;
/// In-place retries of an edit that found no deferred response yet.
const EDIT_404_RETRIES: u64 = 4;
/// Discord's limit on a component's `custom_id`.
const MAX_CUSTOM_ID: usize = 100;

/// Typing indicators running, by channel.
#[derive(Default)]
pub(crate) struct Typing {
    running: Mutex<HashMap<u64, JoinHandle<()>>>,
}

impl Typing {
    fn start(&self, channel: u64, task: JoinHandle<()>) {
        if let Ok(mut running) = self.running.lock() {
            running.retain(|_, t| !t.is_finished());
            if let Some(old) = running.insert(channel, task) {
                old.abort();
            }
        }
    }

    pub(crate) fn stop(&self, channel: u64) {
        if let Some(task) = self
            .running
            .lock()
            .ok()
            .and_then(|mut r| r.remove(&channel))
        {
            task.abort();
        }
    }
}

/// What delivery remembers so that retries post nothing twice.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Messages a thread was started on (the thread has the message's id).
    threads: Mutex<HashSet<u64>>,
    /// Interaction follow-ups already posted, by idempotency key.
    followups: Mutex<HashSet<String>>,
}

fn remember<T: std::hash::Hash + Eq>(set: &Mutex<HashSet<T>>, value: T) {
    if let Ok(mut set) = set.lock() {
        if set.len() >= MAX_REMEMBERED {
            set.clear();
        }
        set.insert(value);
    }
}

fn contains<T: std::hash::Hash + Eq>(set: &Mutex<HashSet<T>>, value: &T) -> bool {
    set.lock().map(|s| s.contains(value)).unwrap_or(false)
}

pub(crate) fn id(text: &str) -> Result<u64, DeliveryError> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| DeliveryError::Permanent(format!("`{text}` is not a Discord id")))
}

/// Start the thread (for a mention in a channel) and show "typing…" until the reply is there.
pub(crate) fn start_working(shared: Arc<Shared>, route: Route) {
    let Ok(target) = id(route.target_channel()) else {
        return;
    };
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = ensure_thread(&task_shared, &route).await {
            debug!(error = %e, "could not start the thread yet; delivery tries again");
        }
        let until = tokio::time::Instant::now() + TYPING_FOR;
        while tokio::time::Instant::now() < until {
            if let Err(e) = task_shared.rest.typing(target).await {
                debug!(error = %e, "typing indicator failed");
                return;
            }
            tokio::time::sleep(TYPING_EVERY).await;
        }
    });
    shared.typing.start(target, task);
}

/// Post one reply.
pub(crate) async fn deliver(
    shared: &Shared,
    route: &Route,
    reply: &Reply,
) -> Result<Delivered, DeliveryError> {
    let limit = route.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
    let (files, notes) = fitting_files(&reply.attachments, limit);
    let (rows, dropped) = components(&reply.buttons);
    let mut text = reply.text.clone();
    for note in notes.iter().chain(dropped.iter()) {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(note);
    }
    if text.trim().is_empty() && files.is_empty() {
        text = "(no text)".into();
    }
    // The answer was shown while written: that message becomes the reply.
    if let Some(live) = &reply.live
        && let Some(delivered) =
            crate::live::finish(shared, route, reply, live, &text, &files, &rows).await?
    {
        return Ok(delivered);
    }
    let piece = piece_index(&reply.idempotency_key);
    match &route.interaction {
        Some(interaction) => {
            respond(
                shared,
                interaction,
                piece,
                &reply.idempotency_key,
                text,
                files,
                rows,
            )
            .await
        }
        None => {
            let target = ensure_thread(shared, route).await?;
            shared.typing.stop(target);
            let key = &reply.idempotency_key;
            let posted = match post_message(shared, target, key, &text, files.clone(), &rows).await
            {
                // Discord's limit for this place is lower than we knew: post the text and say so.
                Err(e) if !files.is_empty() && e.code() == Some(ENTITY_TOO_LARGE) => {
                    let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
                    let text = format!(
                        "{text}\n({} could not be attached: over Discord's upload limit here.)",
                        names.join(", ")
                    );
                    post_message(shared, target, key, &text, Vec::new(), &rows).await
                }
                other => other,
            }
            .map_err(classify)?;
            Ok(Delivered {
                platform_message_id: Some(posted.id.get().to_string()),
            })
        }
    }
}

/// Post a message; its key as the nonce, so a repeated post is one message.
pub(crate) async fn post_message(
    shared: &Shared,
    channel: u64,
    key: &str,
    text: &str,
    files: Vec<Attachment>,
    rows: &[ActionRow],
) -> Result<Message, RestError> {
    let body = MessageBody::text(text)
        .with_nonce(nonce(key))
        .with_files(files)
        .with_rows(rows);
    shared.rest.post_message(channel, &body).await
}

/// The first piece edits the deferred response; later pieces are follow-ups.
async fn respond(
    shared: &Shared,
    interaction: &InteractionRoute,
    piece: usize,
    key: &str,
    text: String,
    files: Vec<Attachment>,
    rows: Vec<ActionRow>,
) -> Result<Delivered, DeliveryError> {
    let body = MessageBody::text(text).with_files(files).with_rows(&rows);
    if piece == 0 {
        let message = edit_original(shared, &interaction.token, &body).await?;
        return Ok(Delivered {
            platform_message_id: Some(message.id.get().to_string()),
        });
    }
    if contains(&shared.outbox.followups, &key.to_string()) {
        return Ok(Delivered::default());
    }
    let message = shared
        .rest
        .followup(&interaction.token, &body)
        .await
        .map_err(classify_interaction)?;
    remember(&shared.outbox.followups, key.to_string());
    Ok(Delivered {
        platform_message_id: Some(message.id.get().to_string()),
    })
}

/// Edit an interaction's original response. A 404 right after the deferral (the HTTP
/// endpoint's answer may still be on its way to Discord) is tried again a few times at once.
pub(crate) async fn edit_original(
    shared: &Shared,
    token: &str,
    body: &MessageBody,
) -> Result<Message, DeliveryError> {
    let mut attempt = 0;
    loop {
        match shared.rest.edit_original(token, body).await {
            Ok(message) => return Ok(message),
            Err(e) if e.status() == Some(404) && attempt < EDIT_404_RETRIES => {
                attempt += 1;
                debug!(
                    attempt,
                    "the interaction response is not there yet; trying again"
                );
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            Err(e) => return Err(classify_interaction(e)),
        }
    }
}

/// The channel to post into; for a mention in a channel, the thread on the user's message,
/// started first when it does not exist yet.
pub(crate) async fn ensure_thread(shared: &Shared, route: &Route) -> Result<u64, DeliveryError> {
    let channel = id(&route.channel_id)?;
    let Some(message) = route.thread_on.as_deref() else {
        return Ok(channel);
    };
    let message = id(message)?;
    if contains(&shared.outbox.threads, &message) {
        return Ok(message);
    }
    let name = route
        .thread_name
        .clone()
        .unwrap_or_else(|| "ecdysis".into());
    let thread_id = match shared.rest.start_thread(channel, message, &name).await {
        Ok(thread) => thread.id.get(),
        Err(e) if e.code() == Some(THREAD_ALREADY_CREATED) => message,
        Err(e) => return Err(classify(e)),
    };
    shared
        .channels
        .note(thread_id, Place::Thread { parent: channel });
    remember(&shared.outbox.threads, message);
    Ok(thread_id)
}

/// Files within the limit, and a note for each one left out.
fn fitting_files(files: &[Attachment], limit: u64) -> (Vec<Attachment>, Vec<String>) {
    let mut fitting = Vec::new();
    let mut notes = Vec::new();
    for file in files {
        if file.bytes.len() as u64 > limit {
            notes.push(format!(
                "({} is {:.1} MB, over Discord's {:.1} MB upload limit here, so it is not attached.)",
                file.name,
                file.bytes.len() as f64 / 1_048_576.0,
                limit as f64 / 1_048_576.0
            ));
        } else {
            fitting.push(file.clone());
        }
    }
    (fitting, notes)
}

/// Buttons as action rows (five per row, five rows); a button whose payload does not fit in a
/// `custom_id` is left out with a note.
fn components(buttons: &[Button]) -> (Vec<ActionRow>, Vec<String>) {
    let mut fitting = Vec::new();
    let mut notes = Vec::new();
    for button in buttons {
        let custom_id = custom_id(&button.action_id, &button.value);
        if custom_id.chars().count() > MAX_CUSTOM_ID {
            warn!(action = %button.action_id, "button payload is too long for Discord; left out");
            notes.push(format!(
                "(The “{}” button could not be shown.)",
                button.label
            ));
            continue;
        }
        let style = match button.style {
            ButtonStyle::Primary => Style::Primary,
            ButtonStyle::Danger => Style::Danger,
            ButtonStyle::Default => Style::Secondary,
        };
        let label = button.label.chars().take(80).collect();
        fitting.push(ButtonComponent::new(custom_id, label, style));
    }
    let rows = fitting
        .chunks(5)
        .take(5)
        .map(|chunk| ActionRow::buttons(chunk.to_vec()))
        .collect();
    (rows, notes)
}

/// A button's `custom_id`: the length of `action_id`, `:`, then `action_id` and `value`
/// (`16:approval:approveabc`), so either may contain any character.
pub(crate) fn custom_id(action_id: &str, value: &str) -> String {
    format!("{}:{action_id}{value}", action_id.len())
}

/// The inverse of [`custom_id`]; an id in another shape is all action, no value.
pub(crate) fn parse_custom_id(custom_id: &str) -> (String, String) {
    let parsed = custom_id.split_once(':').and_then(|(len, rest)| {
        let len: usize = len.parse().ok()?;
        let action = rest.get(..len)?;
        Some((action.to_string(), rest[len..].to_string()))
    });
    parsed.unwrap_or_else(|| (custom_id.to_string(), String::new()))
}

/// `{event_id}:{n}` → n; any other key (a button press's confirmation) is a first piece.
fn piece_index(key: &str) -> usize {
    match key.rsplit_once(':') {
        Some((event, n)) if event.bytes().all(|b| b.is_ascii_digit()) => n.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A message nonce (at most 25 characters) from an idempotency key: with `enforce_nonce`,
/// Discord posts a retried message once.
fn nonce(key: &str) -> String {
    if key.len() <= 25 {
        return key.to_string();
    }
    // FNV-1a: stable across processes and versions.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Rate limits, server errors and network trouble are retried; other refusals are final.
pub(crate) fn classify(error: RestError) -> DeliveryError {
    match error {
        RestError::RateLimited { retry_after } => DeliveryError::RateLimited {
            retry_after,
            detail: error.to_string(),
        },
        RestError::Api { status: 500.., .. } | RestError::Transport(_) | RestError::Decode(_) => {
            DeliveryError::Retryable(error.to_string())
        }
        RestError::Api { .. } => DeliveryError::Permanent(error.to_string()),
    }
}

/// Like [`classify`], and a 404 is retried too: the deferral may not have reached Discord yet
/// (the interaction token stays valid for 15 minutes).
pub(crate) fn classify_interaction(error: RestError) -> DeliveryError {
    match error.status() {
        Some(404) => DeliveryError::Retryable(error.to_string()),
        _ => classify(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pieces_and_nonces() {
        assert_eq!(piece_index("17:0"), 0);
        assert_eq!(piece_index("17:3"), 3);
        assert_eq!(piece_index("action:1200000000000000001"), 0);
        assert_eq!(nonce("17:3"), "17:3");
        let long = "x".repeat(40);
        assert_eq!(nonce(&long).len(), 16);
        assert_eq!(nonce(&long), nonce(&long));
    }

    #[test]
    fn custom_ids_round_trip() {
        let id = custom_id("approval:approve", "run:42");
        assert_eq!(id, "16:approval:approverun:42");
        assert_eq!(
            parse_custom_id(&id),
            ("approval:approve".into(), "run:42".into())
        );
        assert_eq!(parse_custom_id("x"), ("x".into(), String::new()));
        assert_eq!(
            parse_custom_id("99:short"),
            ("99:short".into(), String::new())
        );
        let (rows, notes) = components(&[
            Button {
                action_id: "approve".into(),
                label: "Approve".into(),
                value: "1".into(),
                style: ButtonStyle::Primary,
            },
            Button {
                action_id: "deny".into(),
                label: "Deny".into(),
                value: "y".repeat(200),
                style: ButtonStyle::Danger,
            },
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn files_over_the_limit_become_notes() {
        let files = vec![
            Attachment::new("small.png", "image/png", vec![0u8; 10]),
            Attachment::new("big.mp4", "video/mp4", vec![0u8; 100]),
        ];
        let (fitting, notes) = fitting_files(&files, 50);
        assert_eq!(fitting.len(), 1);
        assert!(notes[0].contains("big.mp4"), "{notes:?}");
    }
}
