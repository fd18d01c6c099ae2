//! The error of the host behind an adapter's traits (its store of installations, transcripts
//! and inbox), with its cause kept for the log.

use std::error::Error;

/// What went wrong in the host's storage while an adapter asked it for something. The cause
/// stays attached (`source()`), so a log line shows the whole chain.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BackendError(Box<dyn Error + Send + Sync>);

impl BackendError {
    pub fn new(cause: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(cause.into())
    }
}
