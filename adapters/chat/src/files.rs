//! Files a platform holds for an event: referred to when the event is acknowledged, fetched by
//! the core's worker afterwards (never inside the platform's acknowledgement window).

use serde::{Deserialize, Serialize};

/// A file attached to a message that still lives on the platform (a Slack `url_private_download`,
/// a Discord CDN URL). The adapter that made the event fetches it later through
/// [`crate::ChatAdapter::fetch_file`]; the core keeps it as an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// The platform's id for the file, when it has one (Slack `F…`, Discord attachment id).
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub mime: String,
    /// The size the platform announced, when it did.
    #[serde(default)]
    pub size: Option<u64>,
    /// Where the adapter downloads it from.
    pub url: String,
}

/// Why a file could not be fetched. The text of each variant is meant for the model and the
/// user (it never carries a token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// The file is larger than the adapter (or the core) accepts.
    #[error("it is larger than {} MB", limit / 1024 / 1024)]
    TooLarge { limit: u64 },
    /// The URL is not on a host this platform's files come from: nothing was requested.
    #[error("its URL is not on {platform} ({host}), so it was not downloaded")]
    ForeignHost { platform: String, host: String },
    /// A failure that may pass (timeouts, 5xx, connection trouble).
    #[error("the download failed ({0})")]
    Temporary(String),
    /// A failure that will not pass by retrying (404, 403, no token for the workspace).
    #[error("the download failed ({0})")]
    Permanent(String),
    /// This adapter has no files to fetch.
    #[error("this platform does not provide files")]
    Unsupported,
}

impl FetchError {
    /// Worth another attempt.
    pub fn retryable(&self) -> bool {
        matches!(self, FetchError::Temporary(_))
    }
}
