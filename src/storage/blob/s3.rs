//! The blob store in S3 or an S3-compatible service (Cloudflare R2, MinIO, moto, SeaweedFS).
//!
//! Requests are signed with AWS Signature V4 by `rusty-s3` (query-string signatures, valid for
//! a few minutes and sent at once) and sent with our own HTTP client (rustls). Configured by
//! hand from [`S3Config`] (no credential chain): an optional endpoint (AWS's regional endpoint
//! when unset), path-style addressing (what every S3-compatible server understands), the region
//! (`us-east-1` when unset; R2 wants `auto`), static credentials when given (without them
//! requests go unsigned, which only public buckets accept).
//! Keys live under `prefix/`. An S3 PUT is atomic, so readers never see a partial blob.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::backoff::Backoff;
use reqwest::StatusCode;
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{BlobError, BlobStore, validate_key};
use crate::config::S3Config;

/// Region used when none is configured (what moto and MinIO expect).
const DEFAULT_REGION: &str = "us-east-1";
/// How long a signed request stays valid (it is sent at once; this covers clock skew).
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// Connecting to the service may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, a large blob's body included, may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// A request that got no answer or a server error is sent this many times in all.
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_jitter();

/// Blobs as objects in one bucket, under a key prefix.
#[derive(Clone)]
pub struct S3BlobStore {
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// Empty, or the configured prefix with one trailing `/`.
    key_prefix: String,
}

impl std::fmt::Debug for S3BlobStore {
    /// The location only: the credentials stay out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("S3BlobStore")
            .field(&self.describe())
            .finish()
    }
}

/// What the service answered to a request that failed.
struct Failure {
    status: StatusCode,
    /// The S3 error code (`NoSuchKey`, `NoSuchBucket`, …) when the body had one.
    code: Option<String>,
    message: Option<String>,
}

impl Failure {
    /// `NoSuchKey (HTTP 404): The specified key does not exist.`
    fn text(&self) -> String {
        let mut text = format!(
            "{} (HTTP {})",
            self.code.as_deref().unwrap_or("unknown error"),
            self.status.as_u16()
        );
        if let Some(message) = self.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(": ");
            text.push_str(message);
        }
        text
    }

    /// The key is absent: `NoSuchKey`, or a bare 404 (some S3-compatible servers answer
    /// without a code), but not a missing bucket.
    fn is_missing_key(&self) -> bool {
        self.code.as_deref() == Some("NoSuchKey")
            || (self.status == StatusCode::NOT_FOUND
                && self.code.as_deref() != Some("NoSuchBucket"))
    }
}

/// Why a request failed: the service said no, or it could not be asked.
enum RequestError {
    Refused(Failure),
    Transport(String),
}

impl RequestError {
    fn text(&self) -> String {
        match self {
            RequestError::Refused(failure) => failure.text(),
            RequestError::Transport(text) => text.clone(),
        }
    }
}

impl S3BlobStore {
    /// A store for `bucket`, keys under `prefix` (leading and trailing `/` are ignored). Nothing
    /// is sent until the first operation; [`BlobStore::ping`] checks that the bucket answers.
    pub fn new(config: &S3Config, bucket: &str, prefix: &str) -> Result<Self, BlobError> {
        let prefix = prefix.trim_matches('/');
        let key_prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let location = format!("s3://{bucket}");
        let invalid = |message: String| BlobError::S3 {
            key: location.clone(),
            message,
        };
        let region = non_empty(&config.region).unwrap_or(DEFAULT_REGION);
        let endpoint = match non_empty(&config.endpoint_url) {
            Some(endpoint) => endpoint.to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let endpoint_url = url::Url::parse(&endpoint)
            .map_err(|e| invalid(format!("the endpoint `{endpoint}` is not a URL: {e}")))?;
        let bucket = Bucket::new(
            endpoint_url,
            UrlStyle::Path,
            bucket.to_string(),
            region.to_string(),
        )
        .map_err(|e| invalid(format!("the endpoint `{endpoint}` cannot be used: {e}")))?;
        let credentials = match (
            non_empty(&config.access_key_id),
            non_empty(&config.secret_access_key),
        ) {
            (Some(key), Some(secret)) => Some(match non_empty(&config.session_token) {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }),
            _ => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(Self {
            http,
            bucket,
            credentials,
            key_prefix,
        })
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn error(&self, key: &str, error: &RequestError) -> BlobError {
        BlobError::S3 {
            key: key.to_string(),
            message: format!("{} ({})", error.text(), self.describe()),
        }
    }

    /// Send the request `build` makes (a signed URL, which stays valid across attempts); a
    /// non-success answer is a [`RequestError::Refused`]. Every request here is idempotent, so
    /// one that got no answer, or a server error (5xx), is sent again, up to [`ATTEMPTS`]
    /// times in all, as AWS's own clients do.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RequestError> {
        let mut attempt = 1;
        loop {
            let error = match build().send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    RequestError::Refused(Failure {
                        status,
                        code: xml_field(&body, "Code"),
                        message: xml_field(&body, "Message"),
                    })
                }
                Err(error) => transport(error),
            };
            let transient = match &error {
                RequestError::Refused(failure) => failure.status.is_server_error(),
                RequestError::Transport(_) => true,
            };
            if !transient || attempt >= ATTEMPTS {
                return Err(error);
            }
            tokio::time::sleep(RETRY_PAUSE.delay(attempt)).await;
            attempt += 1;
        }
    }

    fn url<'a>(&self, action: &impl S3Action<'a>) -> url::Url {
        action.sign(SIGNED_FOR)
    }
}

/// A request that got no answer: unreachable, timed out, or cut off.
fn transport(error: reqwest::Error) -> RequestError {
    let cause = chain(&error);
    RequestError::Transport(if error.is_connect() {
        format!("endpoint unreachable: {cause}")
    } else if error.is_timeout() {
        format!("timed out: {cause}")
    } else {
        cause
    })
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The text of the first `<name>…</name>` in an S3 error body (its fields hold plain text).
fn xml_field(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_string())
}

/// An error and its sources, `: `-joined, each once.
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
        let object = self.object_key(key);
        let url = self.url(&self.bucket.put_object(self.credentials.as_ref(), &object));
        let request = || {
            self.http
                .put(url.clone())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.clone())
        };
        self.send(request)
            .await
            .map_err(|error| self.error(key, &error))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        validate_key(key)?;
        let object = self.object_key(key);
        let url = self.url(&self.bucket.get_object(self.credentials.as_ref(), &object));
        let response = match self.send(|| self.http.get(url.clone())).await {
            Ok(response) => response,
            Err(RequestError::Refused(failure)) if failure.is_missing_key() => return Ok(None),
            Err(error) => return Err(self.error(key, &error)),
        };
        let body = response.bytes().await.map_err(|error| BlobError::S3 {
            key: key.to_string(),
            message: format!(
                "reading the body failed: {} ({})",
                chain(&error),
                self.describe()
            ),
        })?;
        Ok(Some(body))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        let object = self.object_key(key);
        let url = self.url(
            &self
                .bucket
                .delete_object(self.credentials.as_ref(), &object),
        );
        match self.send(|| self.http.delete(url.clone())).await {
            Ok(_) => Ok(()),
            // S3 answers 204 for a missing key; some compatible servers answer 404.
            Err(RequestError::Refused(failure)) if failure.is_missing_key() => Ok(()),
            Err(error) => Err(self.error(key, &error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        validate_prefix(prefix)?;
        let full_prefix = self.object_key(prefix);
        let shown = format!("{prefix}*");
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_prefix(full_prefix.as_str());
            if let Some(token) = &continuation {
                action.with_continuation_token(token.as_str());
            }
            let url = self.url(&action);
            let response = self
                .send(|| self.http.get(url.clone()))
                .await
                .map_err(|error| self.error(&shown, &error))?;
            let text = response
                .text()
                .await
                .map_err(|error| self.error(&shown, &transport(error)))?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| BlobError::S3 {
                key: shown.clone(),
                message: format!("unreadable listing: {e} ({})", self.describe()),
            })?;
            for object in page.contents {
                let Some(key) = object.key.strip_prefix(&self.key_prefix) else {
                    continue;
                };
                // Objects written by something else may not be valid keys; they are not ours.
                if validate_key(key).is_ok() {
                    keys.push(key.to_string());
                }
            }
            match page.next_continuation_token {
                Some(token) => continuation = Some(token),
                None => break,
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let url = self.url(&self.bucket.head_bucket(self.credentials.as_ref()));
        self.send(|| self.http.head(url.clone()))
            .await
            .map_err(|error| {
                let hint = match &error {
                    RequestError::Refused(failure) => match failure.status.as_u16() {
                        404 => ": the bucket does not exist",
                        401 | 403 => ": access denied, check the credentials",
                        301 | 307 => ": the bucket is in another region, check the region",
                        _ => "",
                    },
                    RequestError::Transport(_) => "",
                };
                BlobError::S3 {
                    key: self.describe(),
                    message: format!("HeadBucket: {}{hint}", error.text()),
                }
            })?;
        Ok(())
    }

    fn describe(&self) -> String {
        match self.key_prefix.strip_suffix('/') {
            Some(prefix) => format!("s3://{}/{prefix}", self.bucket.name()),
            None => format!("s3://{}", self.bucket.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                    <Message>The specified key does not exist.</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(
            xml_field(body, "Message").as_deref(),
            Some("The specified key does not exist.")
        );
        assert_eq!(xml_field(body, "Resource"), None);
        assert_eq!(xml_field("", "Code"), None);
    }

    #[test]
    fn missing_keys_are_told_from_missing_buckets() {
        let answer = |status: u16, code: Option<&str>| Failure {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.map(str::to_string),
            message: None,
        };
        assert!(answer(404, Some("NoSuchKey")).is_missing_key());
        assert!(answer(404, None).is_missing_key());
        assert!(!answer(404, Some("NoSuchBucket")).is_missing_key());
        assert!(!answer(403, Some("AccessDenied")).is_missing_key());
    }

    #[test]
    fn a_bad_endpoint_is_a_clear_error() {
        let config = S3Config {
            endpoint_url: Some("ftp://example.test".into()),
            ..S3Config::default()
        };
        let error = S3BlobStore::new(&config, "b", "").unwrap_err().to_string();
        assert!(error.contains("ftp://example.test"), "{error}");
    }
}
