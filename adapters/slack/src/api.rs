//! The Web API calls the adapter makes, through slack-morphism's hyper client. The connector
//! accepts `http://` as well as `https://`, so `SLACK_API_URL` can point at a local fake.

use std::collections::HashMap;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use url::Url;

use crate::SlackError;

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

/// The `metadata.event_type` of every message the adapter posts; its payload carries the
/// reply's idempotency key.
pub(crate) const METADATA_EVENT: &str = "ecdysis_reply";

/// Who a token belongs to (`auth.test`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub team_id: String,
    pub team: String,
    pub user_id: String,
    pub user: Option<String>,
}

/// A failed call, sorted by whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{0}")]
    Retryable(String),
    /// HTTP 429: Slack's `Retry-After`, when it sent one.
    #[error("{0}")]
    RateLimited(String, Option<std::time::Duration>),
    #[error("{0}")]
    Permanent(String),
}

impl CallError {
    fn from_client(method: &str, e: SlackClientError) -> Self {
        match &e {
            SlackClientError::ApiError(api) => {
                let message = format!("{method}: {}", api.code);
                match api.code.as_str() {
                    "ratelimited"
                    | "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout" => Self::Retryable(message),
                    _ => Self::Permanent(message),
                }
            }
            SlackClientError::HttpError(http) if http.status_code.is_client_error() => {
                Self::Permanent(format!("{method}: HTTP {}", http.status_code))
            }
            SlackClientError::HttpError(http) => {
                Self::Retryable(format!("{method}: HTTP {}", http.status_code))
            }
            SlackClientError::RateLimitError(limit) => {
                Self::RateLimited(format!("{method}: ratelimited"), limit.retry_after)
            }
            other => Self::Retryable(format!("{method}: {other}")),
        }
    }

    /// The Slack error code (`channel_not_found`, …) when Slack answered with one.
    pub(crate) fn is_code(&self, code: &str) -> bool {
        match self {
            Self::Retryable(m) | Self::Permanent(m) | Self::RateLimited(m, _) => {
                m.ends_with(&format!(": {code}"))
            }
        }
    }
}

impl From<CallError> for SlackError {
    fn from(e: CallError) -> Self {
        let detail = e.to_string();
        let (method, detail) = match detail.split_once(": ") {
            Some((m, d)) => (m.to_string(), d.to_string()),
            None => (String::new(), detail),
        };
        SlackError::Api { method, detail }
    }
}

/// A message to post.
pub(crate) struct PostMessage<'a> {
    pub channel: &'a str,
    pub thread_ts: Option<&'a str>,
    /// mrkdwn text (the notification text when there are blocks).
    pub text: &'a str,
    pub blocks: Option<Vec<SlackBlock>>,
    pub idempotency_key: &'a str,
}

/// A stream to start (`chat.startStream`).
pub(crate) struct StartStream<'a> {
    pub channel: &'a str,
    pub thread_ts: &'a str,
    /// The workspace and user the answer is for (Slack requires them in channels).
    pub team: &'a str,
    pub user: Option<&'a str>,
    /// The first Markdown text and task updates.
    pub chunks: Vec<SlackStreamChunk>,
}

/// The metadata every message of the adapter carries: the reply's idempotency key.
fn metadata(idempotency_key: &str) -> SlackMessageMetadata {
    SlackMessageMetadata::new(METADATA_EVENT.to_string()).with_event_payload(HashMap::from([(
        "key".to_string(),
        idempotency_key.to_string(),
    )]))
}

/// A message's text (and blocks), with the reply's key in its metadata.
fn message_content(
    text: &str,
    blocks: Option<Vec<SlackBlock>>,
    idempotency_key: &str,
) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(text.to_string())
        .opt_blocks(blocks)
        .with_metadata(metadata(idempotency_key))
}

/// What `oauth.v2.access` granted.
pub(crate) struct Granted {
    pub team_id: String,
    pub team_name: String,
    pub bot_user_id: String,
    pub bot_token: String,
    pub app_id: String,
    pub scopes: String,
    pub installed_by: String,
}

/// The Web API client.
pub(crate) struct Api {
    client: SlackClient<Connector>,
    tls: Arc<rustls::ClientConfig>,
    base: Url,
}

fn token(value: &str) -> SlackApiToken {
    SlackApiToken::new(SlackApiTokenValue::new(value.to_string()))
}

impl Api {
    pub(crate) fn new(api_url: &str) -> Result<Self, SlackError> {
        let trimmed = api_url.trim_end_matches('/');
        let base = Url::parse(&format!("{trimmed}/")).map_err(|e| SlackError::Config {
            key: "slack.api_url",
            problem: format!("`{api_url}` is not a URL ({e})"),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(SlackError::Config {
                key: "slack.api_url",
                problem: format!("`{api_url}` must be an http:// or https:// URL"),
            });
        }
        let tls = Arc::new(tls_config()?);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(trimmed);
        Ok(Self {
            client: SlackClient::new(connector),
            tls,
            base,
        })
    }

    /// The TLS settings, shared with the Socket Mode websocket.
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The API's host (file downloads may send the token there too).
    pub(crate) fn host(&self) -> Option<String> {
        self.base.host_str().map(str::to_string)
    }

    /// Slack's authorize page: `…/oauth/v2/authorize` on the API's host.
    pub(crate) fn authorize_url(&self) -> Url {
        let mut url = self.base.clone();
        url.set_path("/oauth/v2/authorize");
        url.set_query(None);
        url
    }

    pub(crate) async fn auth_test(&self, bot_token: &str) -> Result<AuthInfo, SlackError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let info = session
            .auth_test()
            .await
            .map_err(|e| CallError::from_client("auth.test", e))?;
        Ok(AuthInfo {
            team_id: info.team_id.to_string(),
            team: info.team,
            user_id: info.user_id.to_string(),
            user: info.user,
        })
    }

    /// `chat.postMessage`; returns the new message's `ts`.
    pub(crate) async fn post_message(
        &self,
        bot_token: &str,
        message: PostMessage<'_>,
    ) -> Result<String, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let content = message_content(message.text, message.blocks, message.idempotency_key);
        let request = SlackApiChatPostMessageRequest::new(message.channel.into(), content)
            .opt_thread_ts(message.thread_ts.map(SlackTs::from))
            .with_unfurl_links(false);
        let posted = session
            .chat_post_message(&request)
            .await
            .map_err(|e| CallError::from_client("chat.postMessage", e))?;
        Ok(posted.ts.to_string())
    }

    /// `chat.update` of a message the bot posted: new text (and blocks), the reply's key in
    /// its metadata.
    pub(crate) async fn update_message(
        &self,
        bot_token: &str,
        ts: &str,
        message: PostMessage<'_>,
    ) -> Result<(), CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let content = message_content(message.text, message.blocks, message.idempotency_key);
        let request =
            SlackApiChatUpdateRequest::new(message.channel.into(), content, SlackTs::from(ts));
        session
            .chat_update(&request)
            .await
            .map_err(|e| CallError::from_client("chat.update", e))?;
        Ok(())
    }

    /// `chat.delete` of a message the bot posted.
    pub(crate) async fn delete_message(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        session
            .chat_delete(&SlackApiChatDeleteRequest::new(
                channel.into(),
                SlackTs::from(ts),
            ))
            .await
            .map_err(|e| CallError::from_client("chat.delete", e))?;
        Ok(())
    }

    /// `chat.startStream` in a thread; returns the new message's `ts`.
    pub(crate) async fn start_stream(
        &self,
        bot_token: &str,
        stream: StartStream<'_>,
    ) -> Result<String, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let request = SlackApiChatStartStreamRequest::new(stream.channel.into())
            .with_thread_ts(SlackTs::from(stream.thread_ts))
            .with_recipient_team_id(stream.team.into())
            .opt_recipient_user_id(stream.user.map(SlackUserId::from))
            .opt_chunks((!stream.chunks.is_empty()).then_some(stream.chunks))
            .with_task_display_mode(SlackStreamTaskDisplayMode::Timeline);
        let started = session
            .chat_start_stream(&request)
            .await
            .map_err(|e| CallError::from_client("chat.startStream", e))?;
        Ok(started.ts.to_string())
    }

    /// `chat.appendStream`: more Markdown text and task updates.
    pub(crate) async fn append_stream(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
        chunks: Vec<SlackStreamChunk>,
    ) -> Result<(), CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let request = SlackApiChatAppendStreamRequest::new(channel.into(), SlackTs::from(ts))
            .with_chunks(chunks);
        session
            .chat_append_stream(&request)
            .await
            .map_err(|e| CallError::from_client("chat.appendStream", e))?;
        Ok(())
    }

    /// `chat.stopStream`, with the last Markdown text (if any) and the reply's key as metadata.
    pub(crate) async fn stop_stream(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
        last_text: Option<&str>,
        idempotency_key: &str,
    ) -> Result<(), CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let content = SlackMessageContent::new()
            .opt_markdown_text(last_text.map(str::to_string))
            .with_metadata(metadata(idempotency_key));
        let request =
            SlackApiChatStopStreamRequest::new(channel.into(), SlackTs::from(ts), content);
        session
            .chat_stop_stream(&request)
            .await
            .map_err(|e| CallError::from_client("chat.stopStream", e))?;
        Ok(())
    }

    /// A user's IANA time zone (`users.info`'s `tz`), when Slack has one.
    pub(crate) async fn user_timezone(
        &self,
        bot_token: &str,
        user: &str,
    ) -> Result<Option<String>, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let info = session
            .users_info(&SlackApiUsersInfoRequest::new(user.into()))
            .await
            .map_err(|e| CallError::from_client("users.info", e))?;
        Ok(info.user.tz.filter(|tz| !tz.is_empty()))
    }

    /// `reactions.add`.
    pub(crate) async fn add_reaction(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
        name: &str,
    ) -> Result<(), CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let request =
            SlackApiReactionsAddRequest::new(channel.into(), name.into(), SlackTs::from(ts));
        session
            .reactions_add(&request)
            .await
            .map_err(|e| CallError::from_client("reactions.add", e))?;
        Ok(())
    }

    /// The messages of a thread (`conversations.replies`) or, without a thread, of the
    /// channel's history since `oldest` (`conversations.history`), with message metadata
    /// included: what the duplicate check reads.
    pub(crate) async fn recent_messages(
        &self,
        bot_token: &str,
        channel: &str,
        thread_ts: Option<&str>,
        oldest: Option<&str>,
    ) -> Result<Vec<HistoryMessage>, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let (method, params) = match thread_ts {
            Some(ts) => (
                "conversations.replies",
                vec![
                    ("channel", Some(channel.to_string())),
                    ("ts", Some(ts.to_string())),
                    ("include_all_metadata", Some("true".to_string())),
                    ("limit", Some("200".to_string())),
                ],
            ),
            None => (
                "conversations.history",
                vec![
                    ("channel", Some(channel.to_string())),
                    ("oldest", oldest.map(str::to_string)),
                    ("include_all_metadata", Some("true".to_string())),
                    ("limit", Some("100".to_string())),
                ],
            ),
        };
        let history: History = session
            .http_session_api
            .http_get(method, &params, None)
            .await
            .map_err(|e| CallError::from_client(method, e))?;
        Ok(history.messages)
    }

    /// What was said in a channel (`conversations.history`: its top-level messages, newest
    /// first) or in a thread (`conversations.replies`: the root, then the replies, oldest
    /// first) after `oldest`, at most `limit` messages, as Slack sent them (catch-up).
    pub(crate) async fn messages_after(
        &self,
        bot_token: &str,
        channel: &str,
        thread_ts: Option<&str>,
        oldest: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let mut params = vec![
            ("channel", Some(channel.to_string())),
            ("oldest", Some(oldest.to_string())),
            ("limit", Some(limit.to_string())),
        ];
        let method = match thread_ts {
            Some(ts) => {
                params.push(("ts", Some(ts.to_string())));
                "conversations.replies"
            }
            None => "conversations.history",
        };
        let page: RawHistory = session
            .http_session_api
            .http_get(method, &params, None)
            .await
            .map_err(|e| CallError::from_client(method, e))?;
        Ok(page.messages)
    }

    /// Files v2: `files.getUploadURLExternal` → upload → `files.completeUploadExternal` into
    /// the channel (and thread). Returns the file id.
    pub(crate) async fn upload_file(
        &self,
        bot_token: &str,
        channel: &str,
        thread_ts: Option<&str>,
        file: &ecdysis_chat::Attachment,
    ) -> Result<String, CallError> {
        let token = token(bot_token);
        let session = self.client.open_session(&token);
        let target = session
            .get_upload_url_external(&SlackApiFilesGetUploadUrlExternalRequest::new(
                file.name.clone(),
                file.bytes.len(),
            ))
            .await
            .map_err(|e| CallError::from_client("files.getUploadURLExternal", e))?;
        session
            .files_upload_via_url(&SlackApiFilesUploadViaUrlRequest::new(
                target.upload_url,
                file.bytes.to_vec(),
                file.mime.clone(),
            ))
            .await
            .map_err(|e| CallError::from_client("upload", e))?;
        let complete = SlackApiFilesCompleteUploadExternalRequest::new(vec![
            SlackApiFilesComplete::new(target.file_id.clone()).with_title(file.name.clone()),
        ])
        .with_channel_id(channel.into())
        .opt_thread_ts(thread_ts.map(SlackTs::from));
        session
            .files_complete_upload_external(&complete)
            .await
            .map_err(|e| CallError::from_client("files.completeUploadExternal", e))?;
        Ok(target.file_id.to_string())
    }

    /// `oauth.v2.access`: trade an OAuth code for the workspace's bot token.
    pub(crate) async fn oauth_access(
        &self,
        client_id: &str,
        client_secret: &str,
        code: &str,
    ) -> Result<Granted, CallError> {
        let request = SlackOAuthV2AccessTokenRequest::new(
            client_id.into(),
            client_secret.into(),
            code.into(),
        );
        let granted = self
            .client
            .oauth2_access(&request)
            .await
            .map_err(|e| CallError::from_client("oauth.v2.access", e))?;
        let bot_user_id = granted
            .bot_user_id
            .map(|id| id.to_string())
            .ok_or_else(|| {
                CallError::Permanent("oauth.v2.access: no bot user in the grant".into())
            })?;
        Ok(Granted {
            team_id: granted.team.id.to_string(),
            team_name: granted.team.name.unwrap_or_default(),
            bot_user_id,
            bot_token: granted.access_token.value().to_string(),
            app_id: granted.app_id.to_string(),
            scopes: granted.scope.to_string(),
            installed_by: granted.authed_user.id.to_string(),
        })
    }

    /// `apps.connections.open` with the app-level token: a Socket Mode websocket URL.
    pub(crate) async fn connections_open(&self, app_token: &str) -> Result<String, CallError> {
        let token = token(app_token);
        let session = self.client.open_session(&token);
        let opened = session
            .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new())
            .await
            .map_err(|e| CallError::from_client("apps.connections.open", e))?;
        Ok(opened.url.value().to_string())
    }
}

/// rustls with the ring provider named explicitly (so it does not depend on which providers
/// other crates enable) and the system's root certificates.
fn tls_config() -> Result<rustls::ClientConfig, SlackError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SlackError::Config {
            key: "slack",
            problem: format!("TLS setup failed: {e}"),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the system ships but rustls cannot read is skipped, not fatal.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no system CA certificates found: https calls to Slack will fail (install ca-certificates)"
        );
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The part of `conversations.replies`/`history` the duplicate check reads.
#[derive(Deserialize)]
struct History {
    #[serde(default)]
    messages: Vec<HistoryMessage>,
}

/// `conversations.replies`/`history` with the messages left as Slack wrote them (catch-up
/// reads them as it reads live events).
#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

/// One message of `conversations.replies`/`history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryMessage {
    pub ts: String,
    /// The author (the bot user for the bot's own messages).
    #[serde(default)]
    pub user: Option<String>,
    /// Files shared with the message (an upload's message carries no reply metadata).
    #[serde(default)]
    pub files: Vec<serde_json::Value>,
    #[serde(default)]
    metadata: Option<HistoryMetadata>,
}

impl HistoryMessage {
    /// The idempotency key of the reply this message carries, if ecdysis posted it.
    pub(crate) fn reply_key(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .filter(|meta| meta.event_type == METADATA_EVENT)
            .and_then(|meta| meta.event_payload.get("key"))
            .and_then(|key| key.as_str())
    }
}

#[derive(Debug, Deserialize)]
struct HistoryMetadata {
    event_type: String,
    #[serde(default)]
    event_payload: serde_json::Map<String, serde_json::Value>,
}
