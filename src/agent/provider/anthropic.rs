//! The Anthropic Messages API (`POST {base}/v1/messages`): `tool_use` / `tool_result` blocks,
//! and `cache_control` on the stable prefix and the conversation so far (prompt caching).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::anthropic_stream::StreamAnswer;
use super::sse::{Streamed, post_stream};
use super::{
    ChatApi, ChatMessage, ChatRequest, ChatResponse, ChatRole, DocumentData, ImageData, Part,
    ProviderError, StopReason, TextSink, ToolChoice, post_json,
};
use crate::tokens::Usage;

/// Where Anthropic's API lives unless `ANTHROPIC_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
const API_VERSION: &str = "2023-06-01";

/// A client of the Messages API.
pub struct AnthropicApi {
    http: reqwest::Client,
    api_key: String,
    base_url: String,
}

impl AnthropicApi {
    pub fn new(http: reqwest::Client, api_key: String, base_url: Option<&str>) -> Self {
        // Whatever echoes the key (a gateway's error page) has it masked.
        crate::redact::global().add_secret(&api_key);
        Self {
            http,
            api_key,
            base_url: base_url
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
        }
    }
}

impl AnthropicApi {
    fn post(&self) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
    }
}

impl std::fmt::Debug for AnthropicApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicApi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ChatApi for AnthropicApi {
    async fn complete(
        &self,
        model: &str,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        let body = request_body(model, request);
        let answer = post_json(self.post(), &body, timeout).await?;
        parse_response(&answer)
    }

    async fn stream(
        &self,
        model: &str,
        request: &ChatRequest,
        timeout: Duration,
        sink: &dyn TextSink,
    ) -> Result<ChatResponse, ProviderError> {
        let mut body = request_body(model, request);
        body["stream"] = json!(true);
        let mut answer = StreamAnswer::default();
        match post_stream(self.post(), &body, timeout, |event| {
            answer.read(event, sink)
        })
        .await?
        {
            Streamed::Events => parse_response(&answer.finish()?),
            Streamed::Json(whole) => {
                let response = parse_response(&whole)?;
                sink.text(&response.text());
                Ok(response)
            }
        }
    }

    fn endpoint(&self) -> String {
        self.base_url.clone()
    }
}

fn image_block(image: &ImageData) -> Value {
    json!({
        "type": "image",
        "source": { "type": "base64", "media_type": image.mime, "data": image.base64 },
    })
}

/// A PDF as a `document` block (the model reads its pages); other documents as their text.
fn document_block(document: &DocumentData) -> Value {
    match &document.base64 {
        Some(data) if document.mime == "application/pdf" => json!({
            "type": "document",
            "source": { "type": "base64", "media_type": "application/pdf", "data": data },
            "title": document.name,
        }),
        _ => json!({ "type": "text", "text": non_empty(&document.text) }),
    }
}

fn content_blocks(message: &ChatMessage) -> Vec<Value> {
    let mut blocks = Vec::with_capacity(message.parts.len());
    // Tool results must come first in a user message.
    for part in &message.parts {
        if let Part::ToolResult {
            id,
            text,
            images,
            is_error,
        } = part
        {
            let mut content = vec![json!({ "type": "text", "text": non_empty(text) })];
            content.extend(images.iter().map(image_block));
            blocks.push(json!({
                "type": "tool_result",
                "tool_use_id": id,
                "content": content,
                "is_error": is_error,
            }));
        }
    }
    for part in &message.parts {
        match part {
            Part::Text(text) if !text.trim().is_empty() => {
                blocks.push(json!({ "type": "text", "text": text }));
            }
            Part::Image(image) => blocks.push(image_block(image)),
            Part::Document(document) => blocks.push(document_block(document)),
            Part::ToolUse { id, name, input } => blocks.push(json!({
                "type": "tool_use", "id": id, "name": name, "input": input,
            })),
            Part::Text(_) | Part::ToolResult { .. } => {}
        }
    }
    blocks
}

/// Empty text blocks are rejected by the API.
fn non_empty(text: &str) -> &str {
    if text.trim().is_empty() {
        "(empty)"
    } else {
        text
    }
}

/// The JSON body for a request.
pub fn request_body(model: &str, request: &ChatRequest) -> Value {
    let cache = json!({ "type": "ephemeral" });
    let system: Vec<Value> = request
        .system
        .iter()
        .filter(|b| !b.text.trim().is_empty())
        .map(|b| {
            let mut block = json!({ "type": "text", "text": b.text });
            if b.cache {
                block["cache_control"] = cache.clone();
            }
            block
        })
        .collect();
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let blocks = content_blocks(message);
        if blocks.is_empty() {
            continue;
        }
        let role = match message.role {
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        };
        messages.push(json!({ "role": role, "content": blocks }));
    }
    // A second breakpoint at the end of the conversation: the next step of a tool loop (and the
    // next turn, when the notes did not change) reads everything before it from the cache.
    if let Some(last) = messages
        .last_mut()
        .and_then(|m| m.get_mut("content"))
        .and_then(Value::as_array_mut)
        .and_then(|blocks| blocks.last_mut())
    {
        last["cache_control"] = cache;
    }
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = Value::Array(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                })
            })
            .collect();
        if request.tool_choice == ToolChoice::None {
            body["tool_choice"] = json!({ "type": "none" });
        }
    }
    body
}

/// A Messages API answer, the parts of it that are read. Fields are optional so that a
/// gateway's or an older model's answer with one missing still reads; what must be there is
/// checked in [`parse_response`].
#[derive(Deserialize)]
struct MessagesAnswer {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<Vec<Block>>,
    stop_reason: Option<String>,
    #[serde(default, deserialize_with = "super::lenient")]
    usage: TokenCounts,
}

/// One content block: text, a tool call, or something not shown to people (thinking, …).
#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
}

#[derive(Default, Deserialize)]
struct TokenCounts {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
}

/// Read a Messages API response.
pub fn parse_response(answer: &Value) -> Result<ChatResponse, ProviderError> {
    let malformed = |what: &str| ProviderError::Malformed(format!("Anthropic response {what}"));
    let read = MessagesAnswer::deserialize(answer)
        .map_err(|e| malformed(&format!("does not read: {e}")))?;
    if read.kind.as_deref() == Some("error") {
        return Err(ProviderError::Status {
            status: 500,
            message: super::error_message(&answer.to_string()),
            retry_after: None,
        });
    }
    let content = read
        .content
        .ok_or_else(|| malformed("has no `content` list"))?;
    let mut parts = Vec::with_capacity(content.len());
    for block in content {
        match block.kind.as_deref() {
            Some("text") => {
                let text = block
                    .text
                    .ok_or_else(|| malformed("has a text block without text"))?;
                parts.push(Part::Text(text));
            }
            Some("tool_use") => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return Err(malformed("has a tool_use block without id or name"));
                };
                parts.push(Part::ToolUse {
                    id,
                    name,
                    input: block.input.unwrap_or_else(|| json!({})),
                });
            }
            // Thinking and other blocks are not shown to people.
            _ => {}
        }
    }
    let stop = match read.stop_reason.as_deref() {
        Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        _ => StopReason::Other,
    };
    let counts = read.usage;
    Ok(ChatResponse {
        parts,
        stop,
        usage: Usage {
            input_tokens: counts.input_tokens.unwrap_or(0),
            output_tokens: counts.output_tokens.unwrap_or(0),
            cache_read_tokens: counts.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: counts.cache_creation_input_tokens.unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::provider::{SystemBlock, ToolDef};

    fn request() -> ChatRequest {
        ChatRequest {
            system: vec![
                SystemBlock {
                    text: "You are ecdysis.".into(),
                    cache: true,
                },
                SystemBlock {
                    text: "Notes: #1 sky is blue".into(),
                    cache: false,
                },
            ],
            messages: vec![
                ChatMessage::user_text("save this"),
                ChatMessage {
                    role: ChatRole::Assistant,
                    parts: vec![
                        Part::Text("Saving.".into()),
                        Part::ToolUse {
                            id: "toolu_1".into(),
                            name: "memory_save".into(),
                            input: json!({"text": "x"}),
                        },
                    ],
                },
                ChatMessage {
                    role: ChatRole::User,
                    parts: vec![Part::ToolResult {
                        id: "toolu_1".into(),
                        text: "Saved as #2.".into(),
                        images: vec![ImageData {
                            mime: "image/png".into(),
                            base64: "AAAA".into(),
                        }],
                        is_error: false,
                    }],
                },
            ],
            tools: vec![ToolDef {
                name: "memory_save".into(),
                description: "Save a note.".into(),
                input_schema: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Auto,
            max_tokens: 1000,
        }
    }

    #[test]
    fn body_has_blocks_tools_and_cache_marks() {
        let body = request_body("claude-x", &request());
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], 1000);
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert!(body["system"][1].get("cache_control").is_none());
        assert_eq!(body["messages"][1]["content"][1]["type"], "tool_use");
        assert_eq!(body["messages"][1]["content"][1]["input"]["text"], "x");
        let result = &body["messages"][2]["content"][0];
        assert_eq!(result["type"], "tool_result");
        assert_eq!(result["tool_use_id"], "toolu_1");
        assert_eq!(result["content"][1]["source"]["media_type"], "image/png");
        assert_eq!(result["cache_control"]["type"], "ephemeral");
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
        assert!(body.get("tool_choice").is_none());
        let mut last_step = request();
        last_step.tool_choice = ToolChoice::None;
        assert_eq!(request_body("m", &last_step)["tool_choice"]["type"], "none");
    }

    #[test]
    fn parses_text_tool_use_and_usage() {
        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_9", "name": "memory_search", "input": {"query": "sky"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5,
                      "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}
        });
        let r = parse_response(&answer).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        assert_eq!(r.text(), "Let me look.");
        assert_eq!(
            r.tool_calls(),
            vec![("toolu_9", "memory_search", &json!({"query": "sky"}))]
        );
        assert_eq!(r.usage.cache_read_tokens, 100);
        assert_eq!(r.usage.cache_write_tokens, 7);
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(matches!(
            parse_response(&json!({"nothing": true})),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(&json!({"content": [{"type": "tool_use"}]})),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(&json!({"type": "error", "error": {"message": "Overloaded"}})),
            Err(ProviderError::Status { .. })
        ));
    }
}
