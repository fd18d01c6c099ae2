//! The blob store in S3 or an S3-compatible service (Cloudflare R2, MinIO, moto, SeaweedFS).
//!
//! The client is configured by hand from [`S3Config`] (no `aws-config` and its credential
//! chain): an optional endpoint override, path-style addressing (what every S3-compatible server
//! understands), the region (`us-east-1` when unset; R2 wants `auto`), static credentials when
//! given (without them requests go unsigned, which only public buckets accept), and a
//! rustls/ring HTTP client that speaks both `https://` and plain `http://`.
//! Keys live under `prefix/`. An S3 PUT is atomic, so readers never see a partial blob.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use bytes::Bytes;

use super::{BlobError, BlobStore, validate_key};
use crate::config::S3Config;

/// Region used when none is configured (what moto and MinIO expect).
const DEFAULT_REGION: &str = "us-east-1";

/// Blobs as objects in one bucket, under a key prefix.
#[derive(Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    /// Empty, or the configured prefix with one trailing `/`.
    key_prefix: String,
}

impl std::fmt::Debug for S3BlobStore {
    /// The location only: the client's configuration holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("S3BlobStore")
            .field(&self.describe())
            .finish()
    }
}

impl S3BlobStore {
    /// A store for `bucket`, keys under `prefix` (leading and trailing `/` are ignored). Nothing
    /// is sent until the first operation; [`BlobStore::ping`] checks that the bucket answers.
    pub fn new(config: &S3Config, bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        let key_prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Self {
            client: Client::from_conf(client_config(config)),
            bucket: bucket.to_string(),
            key_prefix,
        }
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn error<E>(&self, key: &str, error: SdkError<E, HttpResponse>) -> BlobError
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        BlobError::S3 {
            key: key.to_string(),
            message: format!("{} ({})", error_text(&error), self.describe()),
        }
    }
}

/// The SDK configuration, built without `aws-config`.
fn client_config(config: &S3Config) -> aws_sdk_s3::Config {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let region = non_empty(&config.region).unwrap_or(DEFAULT_REGION);
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client)
        .region(Region::new(region.to_string()))
        .force_path_style(true);
    if let Some(endpoint) = non_empty(&config.endpoint_url) {
        builder = builder.endpoint_url(endpoint);
    }
    if let (Some(access_key_id), Some(secret_access_key)) = (
        non_empty(&config.access_key_id),
        non_empty(&config.secret_access_key),
    ) {
        builder = builder.credentials_provider(Credentials::new(
            access_key_id,
            secret_access_key,
            non_empty(&config.session_token).map(str::to_string),
            None,
            "ecdysis-config",
        ));
    }
    builder.build()
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A one-line account of a failed request: the service's error code, HTTP status and message
/// when the service answered, else the SDK's error chain (unreachable endpoint, timeout,
/// missing credentials, ...). Never the response headers.
fn error_text<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let mut text = format!(
                "{} (HTTP {})",
                err.code().unwrap_or("unknown error"),
                service.raw().status().as_u16()
            );
            if let Some(message) = err.message().filter(|m| !m.is_empty()) {
                text.push_str(": ");
                text.push_str(message);
            }
            text
        }
        SdkError::ConstructionFailure(_) => format!(
            "the request could not be built (are credentials configured?): {}",
            chain(error)
        ),
        SdkError::TimeoutError(_) => format!("timed out: {}", chain(error)),
        SdkError::DispatchFailure(_) => format!("endpoint unreachable: {}", chain(error)),
        _ => chain(error),
    }
}

/// An error and its sources, `: `-joined, each once. (`DisplayErrorContext` does the same but
/// then appends the whole error's `Debug` form, response headers included: not one readable
/// line.)
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The service says the key is absent: `NoSuchKey`, or a bare 404 (some S3-compatible servers
/// answer without the code the SDK models), but not a missing bucket.
fn is_missing_key<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::ServiceError(service) => {
            service.err().code() == Some("NoSuchKey")
                || (service.raw().status().as_u16() == 404
                    && service.err().code() != Some("NoSuchBucket"))
        }
        _ => false,
    }
}

/// A list prefix must be the beginning of some valid key (or empty, for every key).
fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() || validate_key(&format!("{prefix}x")).is_ok() {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(prefix.to_string()))
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|error| self.error(key, error))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        validate_key(key)?;
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if is_missing_key(&error) => return Ok(None),
            Err(error) => return Err(self.error(key, error)),
        };
        let body = output.body.collect().await.map_err(|error| BlobError::S3 {
            key: key.to_string(),
            message: format!(
                "reading the body failed: {} ({})",
                chain(&error),
                self.describe()
            ),
        })?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // S3 answers 204 for a missing key; some compatible servers answer 404.
            Err(error) if is_missing_key(&error) => Ok(()),
            Err(error) => Err(self.error(key, error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        validate_prefix(prefix)?;
        let full_prefix = self.object_key(prefix);
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|error| self.error(&format!("{prefix}*"), error))?;
            for object in page.contents() {
                let Some(key) = object
                    .key()
                    .and_then(|key| key.strip_prefix(&self.key_prefix))
                else {
                    continue;
                };
                // Objects written by something else may not be valid keys; they are not ours.
                if validate_key(key).is_ok() {
                    keys.push(key.to_string());
                }
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) && !token.is_empty() => {
                    continuation = Some(token.to_string());
                }
                _ => break,
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn ping(&self) -> Result<(), BlobError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|error| {
                let hint = match &error {
                    SdkError::ServiceError(service) => match service.raw().status().as_u16() {
                        404 => ": the bucket does not exist",
                        401 | 403 => ": access denied, check the credentials",
                        301 | 307 => ": the bucket is in another region, check the region",
                        _ => "",
                    },
                    _ => "",
                };
                BlobError::S3 {
                    key: self.describe(),
                    message: format!("HeadBucket: {}{hint}", error_text(&error)),
                }
            })?;
        Ok(())
    }

    fn describe(&self) -> String {
        match self.key_prefix.strip_suffix('/') {
            Some(prefix) => format!("s3://{}/{prefix}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}
