//! The worker's half of receiving files: before an event's handler runs, the files it only
//! referred to are fetched through the adapter it came from (time-limited, retried when the
//! failure may pass), stored in the blob store and kept as artifacts of the user's message;
//! what could not be fetched becomes a one-line note for the model. Every file is also put into
//! the channel's sandbox workspace under `/workspace/inbox/` when the sandbox is on.
//!
//! What became of each file is recorded (`event_files`), so a re-run of the event (a crash, a
//! retry) fetches only what is missing and sends nothing twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{ChatAdapter, CommandName, EventKind, FetchError, RemoteFile};
use tracing::{info, warn};

use crate::bus::{EventContext, FileIntake, StoredFile, artifact_key};
use crate::sandbox::Runner;
use crate::storage::blob::BlobStore;
use crate::storage::store::{EventFile, NewArtifact, Store};

/// How long one download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a download whose failure may pass.
const FETCH_ATTEMPTS: u32 = 3;

/// Fetches and keeps the files of events.
pub struct Intake {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    sandbox: Option<Arc<Runner>>,
    /// Pause before the second attempt (doubles after).
    retry_pause: Duration,
}

impl Intake {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        sandbox: Option<Arc<Runner>>,
    ) -> Self {
        Self {
            store,
            blobs,
            sandbox,
            retry_pause: Duration::from_millis(500),
        }
    }

    /// One download, retried while its failure may pass.
    async fn fetch(
        &self,
        adapter: &dyn ChatAdapter,
        event: &EventContext,
        file: &RemoteFile,
    ) -> Result<Bytes, FetchError> {
        let mut pause = self.retry_pause;
        let mut attempt = 1;
        loop {
            let result =
                tokio::time::timeout(FETCH_TIMEOUT, adapter.fetch_file(&event.conversation, file))
                    .await
                    .unwrap_or_else(|_| {
                        Err(FetchError::Temporary(format!(
                            "no answer within {} s",
                            FETCH_TIMEOUT.as_secs()
                        )))
                    });
            match result {
                Err(e) if e.retryable() && attempt < FETCH_ATTEMPTS => {
                    warn!(file = %file.name, attempt, error = %e, "file download failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Fetch, store and record one file; what became of it.
    async fn receive(
        &self,
        adapter: Option<&Arc<dyn ChatAdapter>>,
        event: &EventContext,
        idx: usize,
        file: &RemoteFile,
    ) -> anyhow::Result<EventFile> {
        let fetched = match adapter {
            Some(adapter) => self.fetch(adapter.as_ref(), event, file).await,
            None => Err(FetchError::Temporary(format!(
                "no adapter for `{}` is running",
                event.conversation.platform
            ))),
        };
        let record = match fetched {
            Ok(bytes) => {
                let id = uuid::Uuid::new_v4().to_string();
                let blob_key = artifact_key(&event.conversation.platform, &id, &file.name);
                let size = bytes.len() as i64;
                // The blob before the row that points to it.
                self.blobs.put(&blob_key, bytes, &file.mime).await?;
                EventFile {
                    idx: idx as i64,
                    artifact: Some(NewArtifact {
                        id,
                        blob_key,
                        name: file.name.clone(),
                        mime: file.mime.clone(),
                        size,
                    }),
                    note: None,
                }
            }
            // With no adapter the event is retried later (it may be starting up).
            Err(e @ FetchError::Temporary(_)) if adapter.is_none() => {
                anyhow::bail!("cannot fetch `{}`: {e}", file.name)
            }
            Err(e) => {
                warn!(file = %file.name, error = %e, "file not received");
                EventFile {
                    idx: idx as i64,
                    artifact: None,
                    note: Some(format!("[file `{}` was not attached: {e}]", file.name)),
                }
            }
        };
        self.store
            .record_event_file(event.event_id, &record)
            .await?;
        Ok(record)
    }

    /// Put the event's files into the channel's workspace (best effort: logged, not fatal).
    async fn place_in_sandbox(&self, event: &EventContext) {
        let Some(runner) = &self.sandbox else {
            return;
        };
        let mut files = Vec::with_capacity(event.payload.attachments.len());
        for file in &event.payload.attachments {
            match self.blobs.get(&file.blob_key).await {
                Ok(Some(bytes)) => files.push((file.name.clone(), bytes)),
                Ok(None) => {
                    warn!(file = %file.name, "a received file is missing from the blob store")
                }
                Err(e) => warn!(file = %file.name, error = %e, "cannot read a received file"),
            }
        }
        if files.is_empty() {
            return;
        }
        match runner
            .place_inbox(&event.conversation.channel_ref(), files)
            .await
        {
            Ok(paths) => info!(files = ?paths, "received files put into the workspace"),
            Err(e) => warn!(error = %e, "cannot put received files into the workspace"),
        }
    }
}

/// Whether notes about files go into the event's text (free text and `/ask`, which the model
/// reads; not the arguments of other commands).
fn takes_notes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Message => true,
        EventKind::Command(command) => command.name == CommandName::Ask,
        EventKind::Action { .. } => false,
    }
}

#[async_trait]
impl FileIntake for Intake {
    async fn prepare(
        &self,
        adapter: Option<Arc<dyn ChatAdapter>>,
        event: &mut EventContext,
    ) -> anyhow::Result<()> {
        if event.payload.remote_files.is_empty() && event.payload.attachments.is_empty() {
            return Ok(());
        }
        let mut notes = Vec::new();
        if !event.payload.remote_files.is_empty() {
            let known = self.store.event_files(event.event_id).await?;
            let remote = event.payload.remote_files.clone();
            for (idx, file) in remote.iter().enumerate() {
                let record = match known.iter().find(|k| k.idx == idx as i64) {
                    Some(done) => done.clone(),
                    None => self.receive(adapter.as_ref(), event, idx, file).await?,
                };
                if let Some(a) = record.artifact {
                    event.payload.attachments.push(StoredFile {
                        artifact_id: a.id,
                        blob_key: a.blob_key,
                        name: a.name,
                        mime: a.mime,
                        size: a.size,
                    });
                }
                notes.extend(record.note);
            }
        }
        if !notes.is_empty() && takes_notes(&event.payload.kind) {
            for note in notes {
                if !event.payload.text.is_empty() {
                    event.payload.text.push('\n');
                }
                event.payload.text.push_str(&note);
            }
        }
        // Writing the same files again on a re-run replaces them with themselves.
        self.place_in_sandbox(event).await;
        Ok(())
    }
}
