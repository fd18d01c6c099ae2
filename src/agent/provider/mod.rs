//! A provider-neutral chat model: the request (system blocks, messages of text / image /
//! tool-use / tool-result parts, tool definitions), the response with token usage, and the
//! errors a call can end in. `anthropic.rs` and `openai.rs` translate it to their wire formats.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{Config, ModelSpec, Provider, ProviderKeys};
use crate::tokens::Usage;

pub mod anthropic;
mod anthropic_stream;
pub mod openai;
mod openai_stream;
pub mod sse;

/// One block of the system prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemBlock {
    pub text: String,
    /// The end of the stable prefix: providers that support prompt caching mark it.
    pub cache: bool,
}

/// Who says a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRole {
    User,
    Assistant,
}

/// An image (base64 encoded) for the model to see.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageData {
    pub mime: String,
    pub base64: String,
}

/// A document a user sent: its text for every model, and the file itself for providers that
/// read documents (Anthropic `document` blocks for PDFs).
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentData {
    pub name: String,
    pub mime: String,
    /// The file, base64 encoded, when it should go as a document block where the provider
    /// takes one.
    pub base64: Option<String>,
    /// The text (with a line about what was left out), for everything else.
    pub text: String,
    /// Pages, when known (for the token estimate).
    pub pages: usize,
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Image(ImageData),
    /// A document (user messages only).
    Document(DocumentData),
    /// The model asks to run a tool (assistant messages only).
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A tool's answer (user messages only), matching a `ToolUse` id.
    ToolResult {
        id: String,
        text: String,
        images: Vec<ImageData>,
        is_error: bool,
    },
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub parts: Vec<Part>,
}

impl ChatMessage {
    pub fn user_text(text: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            parts: vec![Part::Text(text.into())],
        }
    }

    pub fn assistant_text(text: impl Into<String>) -> Self {
        Self {
            role: ChatRole::Assistant,
            parts: vec![Part::Text(text.into())],
        }
    }
}

/// A tool as the model sees it (serialized, its fields are the wire's names).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Whether the model may call tools in this request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Tools stay defined (earlier tool calls need them) but the model must answer in text.
    None,
}

/// One request to a chat model.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The stable prefix first (marked `cache`), then blocks that change per turn.
    pub system: Vec<SystemBlock>,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolDef>,
    pub tool_choice: ToolChoice,
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    Other,
}

/// The model's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// Text and tool-use parts, in the order the model produced them.
    pub parts: Vec<Part>,
    pub stop: StopReason,
    pub usage: Usage,
}

impl ChatResponse {
    /// The text parts joined.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            if let Part::Text(text) = part {
                if !out.is_empty() && !text.is_empty() {
                    out.push('\n');
                }
                out.push_str(text);
            }
        }
        out
    }

    /// The tool calls: (id, name, input).
    pub fn tool_calls(&self) -> Vec<(&str, &str, &Value)> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
                _ => None,
            })
            .collect()
    }
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The server's `retry-after`, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the model API: {0}")]
    Transport(String),
    #[error("the model's response could not be read: {0}")]
    Malformed(String),
}

impl ProviderError {
    /// Worth trying again after a pause: rate limits, server errors, overload, network trouble.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                matches!(status, 408 | 409 | 429) || *status >= 500
            }
            ProviderError::Timeout(_) | ProviderError::Transport(_) => true,
            ProviderError::Malformed(_) => false,
        }
    }

    /// Worth trying the next fallback model: the same conditions (5xx, overload, rate limits,
    /// unreachable); a bad request or a bad key would fail there too.
    pub fn try_fallback(&self) -> bool {
        self.retryable()
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Where a streamed answer's text goes as it arrives.
pub trait TextSink: Send + Sync {
    /// More text of the answer.
    fn text(&self, delta: &str);
    /// The call failed and is tried again (or another model answers): its text so far goes.
    fn restart(&self) {}
}

/// One wire format.
#[async_trait]
pub trait ChatApi: Send + Sync + 'static {
    /// Send one request for `model`; `timeout` bounds the whole HTTP exchange.
    async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError>;

    /// [`ChatApi::complete`] with the answer streamed: its text goes to `sink` as it arrives
    /// (a server that does not stream gives it all at once). The response is the same as
    /// `complete` would return.
    async fn stream(
        &self,
        model: &str,
        request: &ChatRequest,
        timeout: Duration,
        sink: &dyn TextSink,
    ) -> Result<ChatResponse, ProviderError> {
        let response = self.complete(model, request, timeout).await?;
        sink.text(&response.text());
        Ok(response)
    }

    /// Where requests go (the base URL; no secrets).
    fn endpoint(&self) -> String;
}

/// A model and the client that serves it.
#[derive(Clone)]
pub struct Model {
    pub spec: ModelSpec,
    pub api: Arc<dyn ChatApi>,
}

/// Which environment variable holds the key of a provider (for messages to the user).
pub fn key_env(provider: Provider) -> &'static str {
    match provider {
        Provider::Anthropic => "ANTHROPIC_API_KEY",
        Provider::OpenAi => "OPENAI_API_KEY",
    }
}

/// The client for a model, or `None` when its provider has no credentials. An OpenAI-compatible
/// server at a custom base URL (Ollama, vLLM, llama.cpp) may run without a key.
pub fn model_client(config: &Config, spec: &ModelSpec, http: &reqwest::Client) -> Option<Model> {
    let api: Arc<dyn ChatApi> = match spec.provider {
        Provider::Anthropic => {
            let ProviderKeys { api_key, base_url } = &config.anthropic;
            Arc::new(anthropic::AnthropicApi::new(
                http.clone(),
                api_key.clone()?,
                base_url.as_deref(),
            ))
        }
        Provider::OpenAi => {
            let ProviderKeys { api_key, base_url } = &config.openai;
            if api_key.is_none() && base_url.is_none() {
                return None;
            }
            Arc::new(openai::OpenAiApi::new(
                http.clone(),
                api_key.clone(),
                base_url.as_deref(),
            ))
        }
    };
    Some(Model {
        spec: spec.clone(),
        api,
    })
}

/// How much of an error body a chat reply may quote (after masking secrets).
const ERROR_SNIPPET_CHARS: usize = 160;
/// How much of an error body the log keeps (after masking secrets).
const LOGGED_BODY_CHARS: usize = 2_000;

/// The error text of an error body (`{"error": {"message": …}}` in both APIs): secrets masked
/// first (a gateway may echo the key it was sent), then cut short, since it reaches the chat.
pub(crate) fn error_message(body: &str) -> String {
    let redactor = crate::redact::global();
    let body = redactor.redact(body);
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
        })
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let short = redactor.snippet(&message, ERROR_SNIPPET_CHARS);
    if short.is_empty() {
        "no details".into()
    } else {
        short
    }
}

/// Map a reqwest error (never carries the key: keys travel in headers).
pub(crate) fn transport_error(error: reqwest::Error, timeout: Duration) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout(timeout)
    } else if error.is_decode() {
        ProviderError::Malformed(error.to_string())
    } else {
        ProviderError::Transport(error.without_url().to_string())
    }
}

/// Send a JSON body and read the JSON answer, mapping HTTP failures to [`ProviderError`].
pub(crate) async fn post_json(
    builder: reqwest::RequestBuilder,
    body: &Value,
    timeout: Duration,
) -> Result<Value, ProviderError> {
    let response = builder
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    if !response.status().is_success() {
        return Err(error_status(response, timeout).await);
    }
    let text = response
        .text()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    serde_json::from_str(&text).map_err(|e| ProviderError::Malformed(format!("not JSON ({e})")))
}

/// The error of an answer with a failure status (its body logged masked and short).
pub(crate) async fn error_status(response: reqwest::Response, timeout: Duration) -> ProviderError {
    let status = response.status();
    let retry_after = ecdysis_chat::request::retry_after(response.headers());
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => return transport_error(e, timeout),
    };
    tracing::warn!(
        status = status.as_u16(),
        body = %crate::redact::global().snippet(&text, LOGGED_BODY_CHARS),
        "the model API answered with an error"
    );
    ProviderError::Status {
        status: status.as_u16(),
        message: error_message(&text),
        retry_after,
    }
}

/// The status an API's in-stream error stands for, by its `error.type`.
pub(crate) fn stream_error_status(kind: Option<&str>) -> u16 {
    match kind {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") | Some("rate_limit_exceeded") => 429,
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        _ => 500,
    }
}

/// Read a part of an answer that only counts (token usage) when it reads, else take its
/// default: a gateway that reports usage oddly must not cost the answer itself.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = <Value as serde::Deserialize>::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_know_what_to_retry() {
        let status = |status| ProviderError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(429).retryable());
        assert!(status(500).retryable());
        assert!(status(529).retryable());
        assert!(!status(400).retryable());
        assert!(!status(401).retryable());
        assert!(!ProviderError::Malformed("x".into()).retryable());
        assert!(ProviderError::Transport("x".into()).try_fallback());
    }

    #[test]
    fn error_messages_are_extracted_and_short() {
        assert_eq!(
            error_message(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(
            error_message("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(
            error_message(&"x".repeat(1000)).chars().count(),
            ERROR_SNIPPET_CHARS + 1
        );
        assert_eq!(error_message(""), "no details");
    }

    #[test]
    fn error_messages_never_quote_a_known_secret() {
        crate::redact::global().add_secret("sk-echoed-provider-key-77");
        // Echoed in the message, and across the cut (200 characters in).
        let echoed = r#"{"error":{"message":"bad key sk-echoed-provider-key-77"}}"#;
        let message = error_message(echoed);
        assert!(!message.contains("sk-echoed"), "{message}");
        assert!(message.contains(crate::redact::MASK), "{message}");
        let long = format!("{}sk-echoed-provider-key-77", "y".repeat(150));
        let message = error_message(&long);
        assert!(!message.contains("sk-ech"), "{message}");
    }
}
