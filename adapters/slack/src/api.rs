//! The Web API calls the adapter makes, over reqwest: write methods as JSON bodies, reads as
//! query parameters (as Slack documents them), the token as a bearer header. `SLACK_API_URL`
//! may be `http://` as well as `https://`, so a local fake can stand in for Slack.
//!
//! Only the fields the adapter reads are read from Slack's answers; messages are sent as the
//! JSON Slack documents (Block Kit, streaming chunks) built here.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use crate::SlackError;

/// The `metadata.event_type` of every message the adapter posts; its payload carries the
/// reply's idempotency key.
pub(crate) const METADATA_EVENT: &str = "ecdysis_reply";

/// One Web API call's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A file upload's time limit (files go up to Slack's limits, over slow links too).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// Slack answered `ok: false` with `code`.
    fn from_code(method: &str, code: &str) -> Self {
        let message = format!("{method}: {code}");
        match code {
            "ratelimited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout" => Self::Retryable(message),
            _ => Self::Permanent(message),
        }
    }

    /// An HTTP status other than 200 (429 is [`CallError::RateLimited`]).
    fn from_status(method: &str, status: StatusCode) -> Self {
        let message = format!("{method}: HTTP {status}");
        if status.is_client_error() {
            Self::Permanent(message)
        } else {
            Self::Retryable(message)
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
    /// Block Kit blocks (see `deliver::blocks`).
    pub blocks: Option<Value>,
    pub idempotency_key: &'a str,
}

/// A stream to start (`chat.startStream`).
pub(crate) struct StartStream<'a> {
    pub channel: &'a str,
    pub thread_ts: &'a str,
    /// The workspace and user the answer is for (Slack requires them in channels).
    pub team: &'a str,
    pub user: Option<&'a str>,
    /// The first Markdown text and task updates (see `live`).
    pub chunks: Vec<Value>,
}

/// The metadata every message of the adapter carries: the reply's idempotency key.
fn metadata(idempotency_key: &str) -> Value {
    json!({ "event_type": METADATA_EVENT, "event_payload": { "key": idempotency_key } })
}

/// A message's channel, text (and blocks), with the reply's key in its metadata.
fn message_body(message: &PostMessage<'_>) -> Value {
    let mut body = json!({
        "channel": message.channel,
        "text": message.text,
        "metadata": metadata(message.idempotency_key),
    });
    if let Some(blocks) = &message.blocks {
        body["blocks"] = blocks.clone();
    }
    body
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
    client: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    /// `SLACK_API_URL` (e.g. `https://slack.com/api/`) with a trailing `/`.
    base: Url,
}

/// Slack's answer envelope: `ok`, else an error code.
#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// How a call's arguments travel.
enum Args<'a> {
    /// A JSON body (write methods).
    Json(&'a Value),
    /// Query parameters (read methods).
    Query(&'a [(&'a str, String)]),
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
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SlackError::Config {
                key: "slack",
                problem: format!("HTTP client setup failed: {e}"),
            })?;
        Ok(Self { client, tls, base })
    }

    /// `{SLACK_API_URL}/{method}` (the API URL ends in `/api/`).
    fn method_url(&self, method: &str) -> Result<Url, CallError> {
        self.base
            .join(method)
            .map_err(|e| CallError::Permanent(format!("{method}: {e}")))
    }

    /// Call `method` with `token` and read its answer as `T` (after checking `ok`).
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        token: &str,
        args: Args<'_>,
    ) -> Result<T, CallError> {
        let url = self.method_url(method)?;
        let request = match args {
            Args::Json(body) => self.client.post(url).json(body),
            Args::Query(params) => self.client.get(url).query(params),
        };
        self.send(method, request.bearer_auth(token)).await
    }

    /// A write method whose answer has nothing the adapter reads.
    async fn post(&self, method: &str, token: &str, body: &Value) -> Result<(), CallError> {
        self.call::<Value>(method, token, Args::Json(body))
            .await
            .map(drop)
    }

    /// Send a call and read Slack's answer.
    async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Retryable(format!("{method}: {}", e.without_url())))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = ecdysis_chat::request::retry_after(response.headers());
            return Err(CallError::RateLimited(
                format!("{method}: ratelimited"),
                retry_after,
            ));
        }
        if !status.is_success() {
            return Err(CallError::from_status(method, status));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Retryable(format!("{method}: {}", e.without_url())))?;
        let unreadable = |e: serde_json::Error| {
            CallError::Retryable(format!("{method}: unreadable answer ({e})"))
        };
        let envelope: Envelope = serde_json::from_slice(&body).map_err(unreadable)?;
        if !envelope.ok {
            let code = envelope.error.as_deref().unwrap_or("unknown_error");
            return Err(CallError::from_code(method, code));
        }
        serde_json::from_slice(&body).map_err(unreadable)
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
        #[derive(Deserialize)]
        struct Answer {
            team_id: String,
            #[serde(default)]
            team: String,
            user_id: String,
            #[serde(default)]
            user: Option<String>,
        }
        let info: Answer = self.call("auth.test", bot_token, Args::Query(&[])).await?;
        Ok(AuthInfo {
            team_id: info.team_id,
            team: info.team,
            user_id: info.user_id,
            user: info.user,
        })
    }

    /// `chat.postMessage`; returns the new message's `ts`.
    pub(crate) async fn post_message(
        &self,
        bot_token: &str,
        message: PostMessage<'_>,
    ) -> Result<String, CallError> {
        let mut body = message_body(&message);
        body["unfurl_links"] = json!(false);
        if let Some(thread) = message.thread_ts {
            body["thread_ts"] = json!(thread);
        }
        let posted: Posted = self
            .call("chat.postMessage", bot_token, Args::Json(&body))
            .await?;
        Ok(posted.ts)
    }

    /// `chat.update` of a message the bot posted: new text (and blocks), the reply's key in
    /// its metadata.
    pub(crate) async fn update_message(
        &self,
        bot_token: &str,
        ts: &str,
        message: PostMessage<'_>,
    ) -> Result<(), CallError> {
        let mut body = message_body(&message);
        body["ts"] = json!(ts);
        self.post("chat.update", bot_token, &body).await
    }

    /// `chat.delete` of a message the bot posted.
    pub(crate) async fn delete_message(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), CallError> {
        let body = json!({ "channel": channel, "ts": ts });
        self.post("chat.delete", bot_token, &body).await
    }

    /// `chat.startStream` in a thread; returns the new message's `ts`.
    pub(crate) async fn start_stream(
        &self,
        bot_token: &str,
        stream: StartStream<'_>,
    ) -> Result<String, CallError> {
        let mut body = json!({
            "channel": stream.channel,
            "thread_ts": stream.thread_ts,
            "recipient_team_id": stream.team,
            "task_display_mode": "timeline",
        });
        if let Some(user) = stream.user {
            body["recipient_user_id"] = json!(user);
        }
        if !stream.chunks.is_empty() {
            body["chunks"] = Value::Array(stream.chunks);
        }
        let started: Posted = self
            .call("chat.startStream", bot_token, Args::Json(&body))
            .await?;
        Ok(started.ts)
    }

    /// `chat.appendStream`: more Markdown text and task updates.
    pub(crate) async fn append_stream(
        &self,
        bot_token: &str,
        channel: &str,
        ts: &str,
        chunks: Vec<Value>,
    ) -> Result<(), CallError> {
        let body = json!({ "channel": channel, "ts": ts, "chunks": chunks });
        self.post("chat.appendStream", bot_token, &body).await
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
        let mut body = json!({
            "channel": channel,
            "ts": ts,
            "metadata": metadata(idempotency_key),
        });
        if let Some(text) = last_text {
            body["markdown_text"] = json!(text);
        }
        self.post("chat.stopStream", bot_token, &body).await
    }

    /// A user's IANA time zone (`users.info`'s `tz`), when Slack has one.
    pub(crate) async fn user_timezone(
        &self,
        bot_token: &str,
        user: &str,
    ) -> Result<Option<String>, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            user: UserInfo,
        }
        #[derive(Deserialize)]
        struct UserInfo {
            #[serde(default)]
            tz: Option<String>,
        }
        let params = [("user", user.to_string())];
        let info: Answer = self
            .call("users.info", bot_token, Args::Query(&params))
            .await?;
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
        let body = json!({ "channel": channel, "name": name, "timestamp": ts });
        self.post("reactions.add", bot_token, &body).await
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
        let mut params = vec![
            ("channel", channel.to_string()),
            ("include_all_metadata", "true".to_string()),
        ];
        let method = match thread_ts {
            Some(ts) => {
                params.push(("ts", ts.to_string()));
                params.push(("limit", "200".to_string()));
                "conversations.replies"
            }
            None => {
                if let Some(oldest) = oldest {
                    params.push(("oldest", oldest.to_string()));
                }
                params.push(("limit", "100".to_string()));
                "conversations.history"
            }
        };
        let history: History = self.call(method, bot_token, Args::Query(&params)).await?;
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
    ) -> Result<Vec<Value>, CallError> {
        let mut params = vec![
            ("channel", channel.to_string()),
            ("oldest", oldest.to_string()),
            ("limit", limit.to_string()),
        ];
        let method = match thread_ts {
            Some(ts) => {
                params.push(("ts", ts.to_string()));
                "conversations.replies"
            }
            None => "conversations.history",
        };
        let page: RawHistory = self.call(method, bot_token, Args::Query(&params)).await?;
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
        #[derive(Deserialize)]
        struct Target {
            upload_url: String,
            file_id: String,
        }
        let params = [
            ("filename", file.name.clone()),
            ("length", file.bytes.len().to_string()),
        ];
        let target: Target = self
            .call(
                "files.getUploadURLExternal",
                bot_token,
                Args::Query(&params),
            )
            .await?;
        let upload = Url::parse(&target.upload_url)
            .map_err(|e| CallError::Permanent(format!("upload: not a URL ({e})")))?;
        let response = self
            .client
            .post(upload)
            .bearer_auth(bot_token)
            .header("content-type", file.mime.as_str())
            .timeout(UPLOAD_TIMEOUT)
            .body(file.bytes.clone())
            .send()
            .await
            .map_err(|e| CallError::Retryable(format!("upload: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(CallError::from_status("upload", response.status()));
        }
        let mut body = json!({
            "files": [{ "id": target.file_id, "title": file.name }],
            "channel_id": channel,
        });
        if let Some(thread) = thread_ts {
            body["thread_ts"] = json!(thread);
        }
        self.post("files.completeUploadExternal", bot_token, &body)
            .await?;
        Ok(target.file_id)
    }

    /// `oauth.v2.access`: trade an OAuth code for the workspace's bot token (the app's
    /// client id and secret as HTTP Basic credentials).
    pub(crate) async fn oauth_access(
        &self,
        client_id: &str,
        client_secret: &str,
        code: &str,
    ) -> Result<Granted, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            scope: String,
            #[serde(default)]
            bot_user_id: Option<String>,
            #[serde(default)]
            app_id: String,
            team: Team,
            authed_user: AuthedUser,
        }
        #[derive(Deserialize)]
        struct Team {
            id: String,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct AuthedUser {
            id: String,
        }
        let method = "oauth.v2.access";
        let request = self
            .client
            .get(self.method_url(method)?)
            .query(&[("code", code)])
            .basic_auth(client_id, Some(client_secret));
        let granted: Answer = self.send(method, request).await?;
        let bot_user_id = granted.bot_user_id.ok_or_else(|| {
            CallError::Permanent("oauth.v2.access: no bot user in the grant".into())
        })?;
        Ok(Granted {
            team_id: granted.team.id,
            team_name: granted.team.name.unwrap_or_default(),
            bot_user_id,
            bot_token: granted.access_token,
            app_id: granted.app_id,
            scopes: granted.scope,
            installed_by: granted.authed_user.id,
        })
    }

    /// `apps.connections.open` with the app-level token: a Socket Mode websocket URL.
    pub(crate) async fn connections_open(&self, app_token: &str) -> Result<String, CallError> {
        #[derive(Deserialize)]
        struct Opened {
            url: String,
        }
        let opened: Opened = self
            .call("apps.connections.open", app_token, Args::Json(&json!({})))
            .await?;
        Ok(opened.url)
    }
}

/// What a call that posts a message answers, as far as it is read.
#[derive(Deserialize)]
struct Posted {
    ts: String,
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
