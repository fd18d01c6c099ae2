//! The REST client: the few Discord API v10 calls the bot makes, at `api_url`, with the bot
//! token. Against Discord itself it keeps Discord's rate limits ([`ratelimit`]) and waits out
//! a 429 in place a few times; against a proxy (`DISCORD_API_URL`) the proxy owns rate
//! limiting and a 429 is handed back with the wait it asked for.
//!
//! Webhook paths carry an interaction's token: errors never include a request's URL.

mod body;
mod ratelimit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) use body::{ActionRow, ButtonComponent, MessageBody, Style};
use ratelimit::RateLimits;

use crate::model::{Application, Channel, Message, User};
use crate::{DiscordError, Settings};

/// Discord's own REST base; any other `api_url` is a proxy (or a test fake).
pub(crate) const DISCORD_COM: &str = "https://discord.com";

/// How often a 429 is waited out in place before it is handed back.
const MAX_429_RETRIES: u32 = 3;
/// The wait after a 429 that did not say how long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// Discord answered with an error.
    #[error("HTTP {status}: {message} (Discord code {code})")]
    Api {
        status: u16,
        /// Discord's JSON error code (0 when the answer had none).
        code: i64,
        message: String,
    },
    /// Still rate limited after waiting, or told so by a proxy.
    #[error("rate limited; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// No answer (connection, time-out, TLS).
    #[error("request failed: {0}")]
    Transport(String),
    /// An answer that is not what the call returns.
    #[error("unreadable answer: {0}")]
    Decode(String),
}

impl RestError {
    /// The HTTP status Discord answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Api { status, .. } => Some(*status),
            RestError::RateLimited { .. } => Some(429),
            RestError::Transport(_) | RestError::Decode(_) => None,
        }
    }

    /// Discord's JSON error code, when it gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            RestError::Api { code, .. } if *code != 0 => Some(*code),
            _ => None,
        }
    }
}

/// Discord's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    /// On a 429: seconds to wait.
    #[serde(default)]
    retry_after: Option<f64>,
    /// On a 429: whether every route is limited.
    #[serde(default)]
    global: bool,
}

/// The REST client. Cheap to share (`Arc`).
pub(crate) struct Rest {
    client: reqwest::Client,
    /// `{api_url}/api/v10`.
    base: String,
    /// `Bot <token>`.
    token: String,
    /// Learnt from the settings, READY or `GET /oauth2/applications/@me`; 0 until known.
    application_id: AtomicU64,
    /// On for Discord itself, off behind a proxy.
    limits: Option<RateLimits>,
}

/// A request's body.
enum Body<'a> {
    Empty,
    Json(&'a Value),
    Message(&'a MessageBody),
}

impl Rest {
    /// The client for `settings.api_url`: rate limits kept here for Discord itself, left to
    /// the proxy otherwise.
    pub fn new(settings: &Settings) -> Arc<Self> {
        Self::with_limits(settings, api_root(settings) == DISCORD_COM)
    }

    fn with_limits(settings: &Settings, keep_limits: bool) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "DiscordBot (https://github.com/ecdysis/ecdysis, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let token = settings.token.as_deref().unwrap_or_default().trim();
        let token = if token.starts_with("Bot ") || token.starts_with("Bearer ") {
            token.to_string()
        } else {
            format!("Bot {token}")
        };
        Arc::new(Self {
            client,
            base: format!("{}/api/v10", api_root(settings)),
            token,
            application_id: AtomicU64::new(settings.application_id.unwrap_or(0)),
            limits: keep_limits.then(RateLimits::default),
        })
    }

    /// The token as IDENTIFY and `Authorization` carry it (`Bot …`).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn application_id(&self) -> Option<u64> {
        Some(self.application_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    pub fn set_application_id(&self, id: u64) {
        self.application_id.store(id, Ordering::Relaxed);
    }

    /// The application id, asked of Discord when not known yet.
    async fn application(&self) -> Result<u64, RestError> {
        if let Some(id) = self.application_id() {
            return Ok(id);
        }
        let app: Application = self
            .call(Method::GET, "/oauth2/applications/@me", Body::Empty)
            .await?;
        self.set_application_id(app.id.get());
        Ok(app.id.get())
    }

    /// The path of an interaction's webhook (responses and follow-ups).
    async fn webhook(&self, token: &str) -> Result<String, RestError> {
        Ok(format!("/webhooks/{}/{token}", self.application().await?))
    }

    pub async fn current_user(&self) -> Result<User, RestError> {
        self.call(Method::GET, "/users/@me", Body::Empty).await
    }

    /// `GET /gateway/bot`: where the gateway websocket is.
    pub async fn gateway_url(&self) -> Result<String, RestError> {
        #[derive(Deserialize)]
        struct Gateway {
            url: String,
        }
        let gateway: Gateway = self.call(Method::GET, "/gateway/bot", Body::Empty).await?;
        Ok(gateway.url)
    }

    pub async fn channel(&self, channel: u64) -> Result<Channel, RestError> {
        self.call(Method::GET, &format!("/channels/{channel}"), Body::Empty)
            .await
    }

    /// Up to `limit` (at most 100) messages of a channel after the message `after`, in the
    /// order Discord gives them (newest first).
    pub async fn messages_after(
        &self,
        channel: u64,
        after: u64,
        limit: u8,
    ) -> Result<Vec<Message>, RestError> {
        let path = format!("/channels/{channel}/messages?after={after}&limit={limit}");
        self.call(Method::GET, &path, Body::Empty).await
    }

    pub async fn post_message(
        &self,
        channel: u64,
        body: &MessageBody,
    ) -> Result<Message, RestError> {
        let path = format!("/channels/{channel}/messages");
        self.call(Method::POST, &path, Body::Message(body)).await
    }

    pub async fn edit_message(
        &self,
        channel: u64,
        message: u64,
        body: &MessageBody,
    ) -> Result<Message, RestError> {
        let path = format!("/channels/{channel}/messages/{message}");
        self.call(Method::PATCH, &path, Body::Message(body)).await
    }

    pub async fn delete_message(&self, channel: u64, message: u64) -> Result<(), RestError> {
        let path = format!("/channels/{channel}/messages/{message}");
        self.call_empty(Method::DELETE, &path, Body::Empty).await
    }

    /// Start a thread on a message (archived after a day without messages).
    pub async fn start_thread(
        &self,
        channel: u64,
        message: u64,
        name: &str,
    ) -> Result<Channel, RestError> {
        let path = format!("/channels/{channel}/messages/{message}/threads");
        let body = serde_json::json!({ "name": name, "auto_archive_duration": 1440 });
        self.call(Method::POST, &path, Body::Json(&body)).await
    }

    /// "typing…" for about ten seconds.
    pub async fn typing(&self, channel: u64) -> Result<(), RestError> {
        let path = format!("/channels/{channel}/typing");
        self.call_empty(Method::POST, &path, Body::Empty).await
    }

    /// An interaction's first response (`{"type": 5}` defers it).
    pub async fn respond(
        &self,
        interaction: u64,
        token: &str,
        response: &Value,
    ) -> Result<(), RestError> {
        let path = format!("/interactions/{interaction}/{token}/callback");
        self.call_empty(Method::POST, &path, Body::Json(response))
            .await
    }

    pub async fn edit_original(
        &self,
        token: &str,
        body: &MessageBody,
    ) -> Result<Message, RestError> {
        let path = format!("{}/messages/@original", self.webhook(token).await?);
        self.call(Method::PATCH, &path, Body::Message(body)).await
    }

    pub async fn delete_original(&self, token: &str) -> Result<(), RestError> {
        let path = format!("{}/messages/@original", self.webhook(token).await?);
        self.call_empty(Method::DELETE, &path, Body::Empty).await
    }

    pub async fn followup(&self, token: &str, body: &MessageBody) -> Result<Message, RestError> {
        let path = self.webhook(token).await?;
        self.call(Method::POST, &path, Body::Message(body)).await
    }

    pub async fn edit_followup(
        &self,
        token: &str,
        message: u64,
        body: &MessageBody,
    ) -> Result<Message, RestError> {
        let path = format!("{}/messages/{message}", self.webhook(token).await?);
        self.call(Method::PATCH, &path, Body::Message(body)).await
    }

    pub async fn delete_followup(&self, token: &str, message: u64) -> Result<(), RestError> {
        let path = format!("{}/messages/{message}", self.webhook(token).await?);
        self.call_empty(Method::DELETE, &path, Body::Empty).await
    }

    /// Replace the application's slash commands, globally or in one guild. Returns how many
    /// Discord now has.
    pub async fn set_commands(
        &self,
        guild: Option<u64>,
        commands: &Value,
    ) -> Result<usize, RestError> {
        let application = self.application().await?;
        let path = match guild {
            Some(guild) => format!("/applications/{application}/guilds/{guild}/commands"),
            None => format!("/applications/{application}/commands"),
        };
        let registered: Vec<Value> = self.call(Method::PUT, &path, Body::Json(commands)).await?;
        Ok(registered.len())
    }

    /// A call whose answer is read as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<T, RestError> {
        let answer = self.send(method, path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| RestError::Decode(e.to_string()))
    }

    /// A call whose answer has nothing to read (204).
    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<(), RestError> {
        self.send(method, path, body).await.map(drop)
    }

    /// Send a request (again after a 429, a few times, when rate limits are kept here) and
    /// return the body of a successful answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<bytes::Bytes, RestError> {
        let route = ratelimit::route_key(&method, path.split('?').next().unwrap_or(path));
        let mut retries = 0;
        loop {
            let mut turn = match &self.limits {
                Some(limits) => Some(limits.turn(&route).await),
                None => None,
            };
            let response = self
                .request(method.clone(), path, &body)?
                .send()
                .await
                .map_err(|e| RestError::Transport(e.without_url().to_string()))?;
            let status = response.status();
            let headers = response.headers().clone();
            if let Some(turn) = turn.as_mut() {
                turn.update(&headers);
            }
            let answer = response
                .bytes()
                .await
                .map_err(|e| RestError::Transport(e.without_url().to_string()))?;
            if status.is_success() {
                return Ok(answer);
            }
            let error: Option<ErrorBody> = serde_json::from_slice(&answer).ok();
            if status.as_u16() == 429 {
                let retry_after = retry_after(&headers, error.as_ref());
                let (Some(limits), Some(mut turn)) = (&self.limits, turn) else {
                    return Err(RestError::RateLimited { retry_after });
                };
                if error.as_ref().is_some_and(|e| e.global) {
                    limits.pause_all(retry_after);
                } else {
                    turn.exhaust(retry_after);
                }
                if retries == MAX_429_RETRIES {
                    return Err(RestError::RateLimited { retry_after });
                }
                retries += 1;
                tracing::debug!(route, ?retry_after, "Discord said 429; waiting");
                continue;
            }
            let (code, message) = match error {
                Some(e) => (e.code, e.message),
                None => (
                    0,
                    String::from_utf8_lossy(&answer).chars().take(200).collect(),
                ),
            };
            return Err(RestError::Api {
                status: status.as_u16(),
                code,
                message,
            });
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: &Body<'_>,
    ) -> Result<reqwest::RequestBuilder, RestError> {
        let request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("authorization", &self.token);
        Ok(match body {
            Body::Empty => request,
            Body::Json(value) => request.json(value),
            Body::Message(message) if message.files.is_empty() => request.json(message),
            Body::Message(message) => request.multipart(multipart(message)?),
        })
    }
}

/// `api_url` without its trailing `/`; Discord's own when empty.
fn api_root(settings: &Settings) -> &str {
    match settings.api_url.trim_end_matches('/') {
        "" => DISCORD_COM,
        api => api,
    }
}

/// A message with files: its JSON as `payload_json`, then each file as `files[n]`.
fn multipart(message: &MessageBody) -> Result<Form, RestError> {
    let json = serde_json::to_string(message).map_err(|e| RestError::Decode(e.to_string()))?;
    let payload = Part::text(json)
        .mime_str("application/json")
        .map_err(|e| RestError::Decode(e.to_string()))?;
    let mut form = Form::new().part("payload_json", payload);
    for (n, file) in message.files.iter().enumerate() {
        let part = |mime: &str| {
            Part::stream(reqwest::Body::from(file.bytes.clone()))
                .file_name(file.name.clone())
                .mime_str(mime)
        };
        // A type reqwest cannot read is sent as plain bytes.
        let part = part(&file.mime)
            .or_else(|_| part("application/octet-stream"))
            .map_err(|e| RestError::Decode(e.to_string()))?;
        form = form.part(format!("files[{n}]"), part);
    }
    Ok(form)
}

/// How long a 429 asks to wait: its body's `retry_after`, else the `Retry-After` header.
fn retry_after(headers: &HeaderMap, error: Option<&ErrorBody>) -> Duration {
    error
        .and_then(|e| e.retry_after)
        .map(ratelimit::seconds)
        .or_else(|| ecdysis_chat::request::retry_after(headers))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// `GET /users/@me`: who the token belongs to (`ecdysis doctor`). Returns `name (id)`.
pub async fn current_user(settings: &Settings) -> Result<String, DiscordError> {
    if settings.token.is_none() {
        return Err(DiscordError::Config("DISCORD_TOKEN is not set".into()));
    }
    let user = Rest::new(settings).current_user().await?;
    Ok(format!("{} ({})", user.username, user.id))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::Router;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::json;

    use super::*;

    /// A Discord that answers the first post with a 429 (wait 0.3 s) and later ones with a
    /// message and a used-up bucket (0.5 s until it resets); it notes when each post came.
    async fn strict_discord() -> (String, Arc<Mutex<Vec<Instant>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route(
            "/api/v10/channels/1/messages",
            post({
                let seen = seen.clone();
                move |headers: AxumHeaders| async move {
                    assert_eq!(headers["authorization"], "Bot t0k");
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Instant::now());
                        seen.len()
                    };
                    let response: Response = if n == 1 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            axum::Json(json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": false})),
                        )
                            .into_response()
                    } else {
                        (
                            [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset-after", "0.5")],
                            axum::Json(json!({"id": "9", "channel_id": "1", "author": {"id": "2"}})),
                        )
                            .into_response()
                    };
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    fn settings(url: &str) -> Settings {
        let mut settings = Settings::new(url);
        settings.token = Some("t0k".into());
        settings
    }

    #[tokio::test]
    async fn discords_rate_limits_are_waited_out_in_place() {
        let (url, seen) = strict_discord().await;
        let rest = Rest::with_limits(&settings(&url), true);
        let body = MessageBody::text("hi");
        let posted = rest.post_message(1, &body).await.unwrap();
        assert_eq!(posted.id.get(), 9);
        rest.post_message(1, &body).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            3,
            "the 429 was retried once, then one more post"
        );
        assert!(seen[1] - seen[0] >= Duration::from_millis(300), "{seen:?}");
        assert!(seen[2] - seen[1] >= Duration::from_millis(500), "{seen:?}");
    }

    #[tokio::test]
    async fn behind_a_proxy_a_429_is_handed_back_with_its_wait() {
        let (url, seen) = strict_discord().await;
        let rest = Rest::new(&settings(&url));
        let error = rest
            .post_message(1, &MessageBody::text("hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, RestError::RateLimited { retry_after } if retry_after == Duration::from_millis(300)),
            "{error:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "not retried here");
    }
}
