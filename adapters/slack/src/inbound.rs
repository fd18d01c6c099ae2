//! Handing translated Slack input to the core: `EventSink::submit` (with file references),
//! uninstalls.
//! Shared by the HTTP routes and Socket Mode; `Ok` means "acknowledge to Slack now".

use ecdysis_chat::{Event, SubmitError};

use crate::events::{Callback, FileRef, Inbound, translate};
use crate::{Slack, SlackError, files};

/// Why an event is not acknowledged (Slack then retries it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Back-pressure: answer 503.
    #[error("busy: {0}")]
    Busy(String),
    /// Storage failed: answer 500.
    #[error("{0}")]
    Internal(String),
}

impl Slack {
    /// The bot token for a workspace: its OAuth installation's, else `SLACK_BOT_TOKEN`.
    pub(crate) async fn token(&self, team: &str) -> Result<String, SlackError> {
        match self.inner.installations.get(team).await {
            Ok(Some(installation)) => return Ok(installation.bot_token),
            Ok(None) => {}
            Err(e) => {
                // Without the store, the single-workspace token may still do.
                tracing::warn!(team, error = %e, "cannot read the Slack installation");
                if self.inner.settings.bot_token.is_none() {
                    return Err(SlackError::Installations(e));
                }
            }
        }
        self.inner
            .settings
            .bot_token
            .clone()
            .ok_or_else(|| SlackError::NoToken(team.to_string()))
    }

    /// Handle one `event_callback`.
    pub(crate) async fn accept_callback(&self, callback: Callback) -> Result<(), Refused> {
        if self.refuse_team(&callback.team_id, "event") {
            return Ok(());
        }
        let event_id = callback.event_id.clone();
        match translate(callback, crate::now_ms()) {
            Inbound::Drop(why) => {
                tracing::debug!(event_id, why, "Slack event not submitted");
                Ok(())
            }
            Inbound::Uninstalled { team } => match self.inner.installations.remove(&team).await {
                Ok(removed) => {
                    tracing::info!(team, removed, "the app was uninstalled from a workspace");
                    Ok(())
                }
                Err(e) => Err(Refused::Internal(format!(
                    "cannot remove the installation: {e}"
                ))),
            },
            Inbound::Message { mut event, files } => {
                self.attach_file_refs(&mut event, &files);
                self.submit(*event).await
            }
        }
    }

    /// Add a message's files to its event as references (the core fetches the bytes after
    /// the ack), with a note in the text for each file that cannot be fetched.
    pub(crate) fn attach_file_refs(&self, event: &mut Event, files: &[FileRef]) {
        let (remote, notes) = files::remote_files(files);
        event.remote_files = remote;
        for note in notes {
            if !event.text.is_empty() {
                event.text.push('\n');
            }
            event.text.push_str(&note);
        }
    }

    /// Submit an event; `Ok` once it is durable (or was a duplicate, ignored or invalid, which
    /// Slack must not retry either).
    pub(crate) async fn submit(&self, event: Event) -> Result<(), Refused> {
        let id = event.platform_event_id.clone();
        match self.inner.sink.submit(event).await {
            Ok(accepted) => {
                tracing::debug!(
                    slack_event = %id,
                    event_id = %accepted.event_id,
                    duplicate = accepted.duplicate,
                    ignored = accepted.ignored,
                    "Slack event accepted"
                );
                Ok(())
            }
            Err(SubmitError::Invalid(why)) => {
                tracing::debug!(slack_event = %id, why, "Slack event refused as invalid");
                Ok(())
            }
            Err(SubmitError::Busy(why)) => Err(Refused::Busy(why)),
            Err(SubmitError::Internal(why)) => Err(Refused::Internal(why)),
        }
    }
}
