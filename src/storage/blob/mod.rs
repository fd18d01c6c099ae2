//! The blob store: artifacts, memory archives and workspace snapshots, in a local directory or
//! in S3/R2. A blob is always written (atomically) before the database row that points to it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{BlobLocation, Config};

mod key;
mod local;
mod s3;

pub use key::{segment, validate_key};

pub use local::LocalBlobStore;
pub use s3::S3BlobStore;

/// What went wrong with a blob operation.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key `{0}`: keys are relative paths of [A-Za-z0-9._-] segments")]
    InvalidKey(String),
    #[error("blob store I/O failed for `{key}`: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 request failed for `{key}`: {message}")]
    S3 { key: String, message: String },
}

/// One implementation per backend; every backend passes the same contract suite.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Store `bytes` under `key`, replacing what was there. Readers see the old or the new
    /// bytes, never a partial write.
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), BlobError>;

    /// The bytes under `key`, or `None` when there are none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError>;

    /// Remove `key`; removing a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Keys that start with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;

    /// Check that the store is reachable and writable enough to serve (for `/readyz`, `doctor`).
    async fn ping(&self) -> Result<(), BlobError>;

    /// A human description (`file:///…`, `s3://bucket/prefix`) without secrets.
    fn describe(&self) -> String;
}

/// Open the blob store the configuration names.
pub async fn open(config: &Config) -> Result<Arc<dyn BlobStore>, BlobError> {
    Ok(match &config.blob {
        BlobLocation::Dir(dir) => Arc::new(LocalBlobStore::open(dir).await?),
        BlobLocation::S3 { bucket, prefix } => {
            Arc::new(S3BlobStore::new(&config.s3, bucket, prefix)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("artifacts/2026/abc-1.png").is_ok());
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", "a/./b", "sp ace", "a\\b", "a/",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
