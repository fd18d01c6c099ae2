//! What the bus stores: events in the inbox and replies in the outbox as JSON, and the files
//! both point at in the blob store (written before the rows that point at them).

use bytes::Bytes;
use ecdysis_chat::{Attachment, Button, ConversationRef, EventKind, UserRef};
use serde::{Deserialize, Serialize};

use crate::storage::blob::{BlobError, BlobStore, segment};
use crate::storage::store::NewArtifact;

/// A file stored in the blob store, as events and replies refer to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub artifact_id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

impl StoredFile {
    pub(crate) fn to_new_artifact(&self) -> NewArtifact {
        NewArtifact {
            id: self.artifact_id.clone(),
            blob_key: self.blob_key.clone(),
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
        }
    }
}

/// An event as the inbox stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventPayload {
    pub platform_event_id: String,
    pub user: UserRef,
    pub kind: EventKind,
    pub text: String,
    #[serde(default)]
    pub attachments: Vec<StoredFile>,
    /// Files still on the platform, fetched by the worker before the handler runs (their
    /// stored copies are then in `attachments`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_files: Vec<ecdysis_chat::RemoteFile>,
    #[serde(default)]
    pub route: serde_json::Value,
    /// Set on the events scheduled jobs fire (see [`crate::schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<crate::schedule::Fired>,
}

/// A reply as the outbox stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReplyPayload {
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) attachments: Vec<StoredFile>,
    #[serde(default)]
    pub(crate) buttons: Vec<Button>,
    #[serde(default)]
    pub(crate) route: serde_json::Value,
    /// The live message this reply finishes (see [`crate::engine::live`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) live: Option<ecdysis_chat::LiveHandle>,
}

/// Store a file under a new artifact id in the blob store.
pub(crate) async fn store_file(
    blobs: &dyn BlobStore,
    conversation: &ConversationRef,
    attachment: &Attachment,
) -> Result<StoredFile, BlobError> {
    let artifact_id = uuid::Uuid::new_v4().to_string();
    let blob_key = artifact_key(&conversation.platform, &artifact_id, &attachment.name);
    blobs
        .put(&blob_key, attachment.bytes.clone(), &attachment.mime)
        .await?;
    Ok(StoredFile {
        artifact_id,
        blob_key,
        name: attachment.name.clone(),
        mime: attachment.mime.clone(),
        size: i64::try_from(attachment.bytes.len()).unwrap_or(i64::MAX),
    })
}

/// Bytes of a file, for handlers that read an event's attachments.
pub async fn read_file(blobs: &dyn BlobStore, file: &StoredFile) -> anyhow::Result<Bytes> {
    blobs
        .get(&file.blob_key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the file `{}` is missing from the blob store", file.name))
}

/// A path segment safe for blob keys.
/// The blob key of an artifact (a file received or sent in a conversation of `platform`).
pub(crate) fn artifact_key(platform: &str, artifact_id: &str, name: &str) -> String {
    format!(
        "artifacts/{}/{}/{}",
        segment(platform, 100),
        artifact_id,
        segment(name, 100)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_safe() {
        assert_eq!(
            artifact_key("slack", "7", "plot 1.png"),
            "artifacts/slack/7/plot_1.png"
        );
        assert_eq!(artifact_key("web", "7", "../.."), "artifacts/web/7/_");
        assert_eq!(artifact_key("web", "7", ""), "artifacts/web/7/_");
        assert!(crate::storage::blob::validate_key(&artifact_key("a b", "7", "...")).is_ok());
    }
}
