//! OpenAI-compatible chat completions (`POST {base}/chat/completions`): OpenAI, Ollama, vLLM,
//! llama.cpp, OpenRouter. Tool use travels as `tool_calls` on assistant messages and `tool`
//! messages with the results.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai_stream::StreamAnswer;
use super::sse::{Streamed, post_stream};
use super::{
    ChatApi, ChatRequest, ChatResponse, ChatRole, ImageData, Part, ProviderError, StopReason,
    TextSink, ToolChoice, post_json,
};
use crate::tokens::Usage;

/// Where OpenAI's API lives unless `OPENAI_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A client of a chat-completions API.
pub struct OpenAiApi {
    http: reqwest::Client,
    api_key: Option<String>,
    base_url: String,
}

impl OpenAiApi {
    pub fn new(http: reqwest::Client, api_key: Option<String>, base_url: Option<&str>) -> Self {
        // Whatever echoes the key (a gateway's error page) has it masked.
        if let Some(key) = &api_key {
            crate::redact::global().add_secret(key);
        }
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

impl OpenAiApi {
    fn post(&self) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .post(format!("{}/chat/completions", self.base_url));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

impl std::fmt::Debug for OpenAiApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiApi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ChatApi for OpenAiApi {
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
        body["stream_options"] = json!({ "include_usage": true });
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

fn image_part(image: &ImageData) -> Value {
    json!({
        "type": "image_url",
        "image_url": { "url": format!("data:{};base64,{}", image.mime, image.base64) },
    })
}

/// A piece of a user message.
enum Item<'a> {
    Text(&'a str),
    Image(&'a ImageData),
}

/// A user message of pieces in order: plain text when it is only text, else a list of parts.
fn user_items(items: &[Item<'_>]) -> Value {
    if items.iter().all(|i| matches!(i, Item::Text(_))) {
        let texts: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                Item::Text(t) => Some(*t),
                Item::Image(_) => None,
            })
            .collect();
        return json!({ "role": "user", "content": texts.join("\n\n") });
    }
    let content: Vec<Value> = items
        .iter()
        .map(|i| match i {
            Item::Text(t) => json!({ "type": "text", "text": t }),
            Item::Image(image) => image_part(image),
        })
        .collect();
    json!({ "role": "user", "content": content })
}

/// A user message: plain text when it is only text, else a list of parts.
fn user_message(texts: &[&str], images: &[&ImageData]) -> Value {
    if images.is_empty() {
        return json!({ "role": "user", "content": texts.join("\n\n") });
    }
    let mut content: Vec<Value> = texts
        .iter()
        .map(|t| json!({ "type": "text", "text": t }))
        .collect();
    content.extend(images.iter().map(|i| image_part(i)));
    json!({ "role": "user", "content": content })
}

/// The JSON body for a request. The system blocks become one system message (some local
/// servers' chat templates accept only one, first); its stable part stays a prefix.
pub fn request_body(model: &str, request: &ChatRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    let system: Vec<&str> = request
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.trim().is_empty())
        .collect();
    if !system.is_empty() {
        messages.push(json!({ "role": "system", "content": system.join("\n\n") }));
    }
    for message in &request.messages {
        match message.role {
            ChatRole::Assistant => {
                let texts: Vec<&str> = message
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) if !t.trim().is_empty() => Some(t.as_str()),
                        _ => None,
                    })
                    .collect();
                let calls: Vec<Value> = message
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::ToolUse { id, name, input } => Some(json!({
                            "id": id,
                            "type": "function",
                            "function": { "name": name, "arguments": input.to_string() },
                        })),
                        _ => None,
                    })
                    .collect();
                let mut out = json!({ "role": "assistant" });
                out["content"] = if texts.is_empty() {
                    Value::Null
                } else {
                    Value::String(texts.join("\n\n"))
                };
                if !calls.is_empty() {
                    out["tool_calls"] = Value::Array(calls);
                } else if texts.is_empty() {
                    continue;
                }
                messages.push(out);
            }
            ChatRole::User => {
                // Tool results first (they must follow the assistant's tool calls), then the
                // images they returned (a tool message holds text only), then the user's text.
                let mut tool_images: Vec<&ImageData> = Vec::new();
                for part in &message.parts {
                    if let Part::ToolResult {
                        id,
                        text,
                        images,
                        is_error,
                    } = part
                    {
                        let content = if *is_error {
                            format!("Error: {text}")
                        } else {
                            text.clone()
                        };
                        messages.push(json!({
                            "role": "tool", "tool_call_id": id, "content": content,
                        }));
                        tool_images.extend(images.iter());
                    }
                }
                if !tool_images.is_empty() {
                    messages.push(user_message(
                        &["Images returned by the tools:"],
                        &tool_images,
                    ));
                }
                // The user's own parts, in order: text, documents (as their text), images.
                let items: Vec<Item> = message
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) if !t.trim().is_empty() => Some(Item::Text(t.as_str())),
                        Part::Document(d) if !d.text.trim().is_empty() => {
                            Some(Item::Text(d.text.as_str()))
                        }
                        Part::Image(i) => Some(Item::Image(i)),
                        _ => None,
                    })
                    .collect();
                if !items.is_empty() {
                    messages.push(user_items(&items));
                }
            }
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                })
            })
            .collect();
        if request.tool_choice == ToolChoice::None {
            body["tool_choice"] = json!("none");
        }
    }
    body
}

/// A chat completion, the parts of it that are read. Fields are optional so that a gateway's
/// answer with one missing still reads; what must be there is checked in [`parse_response`].
#[derive(Deserialize)]
struct Completion {
    error: Option<Value>,
    choices: Option<Vec<Choice>>,
    #[serde(default, deserialize_with = "super::lenient")]
    usage: TokenCounts,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<AnswerMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<Content>,
    tool_calls: Option<Vec<ToolCall>>,
}

/// A message's content: a string, or a list of parts of which the text ones are read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct ToolCall {
    id: Option<String>,
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    name: Option<String>,
    /// A JSON text as the API defines it; some servers send the object itself.
    arguments: Option<Value>,
}

#[derive(Default, Deserialize)]
struct TokenCounts {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Default, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<i64>,
}

/// Read a chat completion.
pub fn parse_response(answer: &Value) -> Result<ChatResponse, ProviderError> {
    let malformed = |what: &str| ProviderError::Malformed(format!("chat completion {what}"));
    let read =
        Completion::deserialize(answer).map_err(|e| malformed(&format!("does not read: {e}")))?;
    if let Some(error) = read.error {
        return Err(ProviderError::Status {
            status: 500,
            message: super::error_message(&json!({ "error": error }).to_string()),
            retry_after: None,
        });
    }
    let choice = read
        .choices
        .and_then(|choices| choices.into_iter().next())
        .ok_or_else(|| malformed("has no `choices`"))?;
    let message = choice
        .message
        .ok_or_else(|| malformed("has no `message`"))?;
    let mut parts = Vec::new();
    match message.content {
        Some(Content::Text(text)) if !text.is_empty() => parts.push(Part::Text(text)),
        Some(Content::Parts(items)) => {
            for item in items {
                if let Some(text) = item.get("text").and_then(Value::as_str) {
                    parts.push(Part::Text(text.to_string()));
                }
            }
        }
        _ => {}
    }
    for (n, call) in message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let function = call.function;
        let name = function
            .as_ref()
            .and_then(|f| f.name.clone())
            .ok_or_else(|| malformed("has a tool call without a name"))?;
        let input = match function.and_then(|f| f.arguments) {
            Some(Value::String(raw)) if raw.trim().is_empty() => json!({}),
            // Invalid JSON stays a string: the tool answers with an input error the model reads.
            Some(Value::String(raw)) => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
            Some(other) => other,
            None => json!({}),
        };
        parts.push(Part::ToolUse {
            id: call.id.unwrap_or_else(|| format!("call_{n}")),
            name,
            input,
        });
    }
    let has_calls = parts.iter().any(|p| matches!(p, Part::ToolUse { .. }));
    let stop = match choice.finish_reason.as_deref() {
        _ if has_calls => StopReason::ToolUse,
        Some("stop") => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        _ => StopReason::Other,
    };
    let counts = read.usage;
    let prompt = counts.prompt_tokens.unwrap_or(0);
    let cached = counts
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    Ok(ChatResponse {
        parts,
        stop,
        usage: Usage {
            // Like Anthropic's `input_tokens`: the uncached part.
            input_tokens: (prompt - cached).max(0),
            output_tokens: counts.completion_tokens.unwrap_or(0),
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::provider::{ChatMessage, SystemBlock, ToolDef};

    fn request() -> ChatRequest {
        ChatRequest {
            system: vec![
                SystemBlock {
                    text: "You are ecdysis.".into(),
                    cache: true,
                },
                SystemBlock {
                    text: "Notes: #1".into(),
                    cache: false,
                },
            ],
            messages: vec![
                ChatMessage::user_text("save this"),
                ChatMessage {
                    role: ChatRole::Assistant,
                    parts: vec![Part::ToolUse {
                        id: "call_1".into(),
                        name: "memory_save".into(),
                        input: json!({"text": "x"}),
                    }],
                },
                ChatMessage {
                    role: ChatRole::User,
                    parts: vec![
                        Part::ToolResult {
                            id: "call_1".into(),
                            text: "Saved as #2.".into(),
                            images: vec![ImageData {
                                mime: "image/png".into(),
                                base64: "AAAA".into(),
                            }],
                            is_error: false,
                        },
                        Part::Text("and now?".into()),
                    ],
                },
            ],
            tools: vec![ToolDef {
                name: "memory_save".into(),
                description: "Save a note.".into(),
                input_schema: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::None,
            max_tokens: 500,
        }
    }

    #[test]
    fn body_has_tool_calls_and_tool_messages() {
        let body = request_body("gpt-x", &request());
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[0]["content"], "You are ecdysis.\n\nNotes: #1");
        assert_eq!(m[1], json!({"role": "user", "content": "save this"}));
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"text\":\"x\"}"
        );
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[3]["tool_call_id"], "call_1");
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(m[5], json!({"role": "user", "content": "and now?"}));
        assert_eq!(body["tools"][0]["function"]["name"], "memory_save");
        assert_eq!(body["tool_choice"], "none");
        assert_eq!(body["max_tokens"], 500);
    }

    #[test]
    fn parses_tool_calls_text_and_usage() {
        let answer = json!({
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant", "content": null,
                    "tool_calls": [
                        {"id": "call_a", "type": "function",
                         "function": {"name": "memory_search", "arguments": "{\"query\":\"sky\"}"}},
                        {"id": "call_b", "type": "function",
                         "function": {"name": "memory_save", "arguments": "{not json"}}
                    ]
                },
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 120, "completion_tokens": 9,
                      "prompt_tokens_details": {"cached_tokens": 100}}
        });
        let r = parse_response(&answer).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        let calls = r.tool_calls();
        assert_eq!(
            calls[0],
            ("call_a", "memory_search", &json!({"query": "sky"}))
        );
        assert_eq!(calls[1].2, &json!("{not json"));
        assert_eq!(r.usage.input_tokens, 20);
        assert_eq!(r.usage.cache_read_tokens, 100);
        assert_eq!(r.usage.output_tokens, 9);

        let text = json!({"choices": [{"message": {"role": "assistant", "content": "Hi"},
                                        "finish_reason": "stop"}]});
        let r = parse_response(&text).unwrap();
        assert_eq!((r.text().as_str(), r.stop), ("Hi", StopReason::EndTurn));
    }

    #[test]
    fn text_parts_are_read_and_odd_usage_costs_nothing() {
        let answer = json!({
            "choices": [{"message": {"content": [{"type": "text", "text": "a"},
                                                 {"type": "image_url"},
                                                 {"type": "text", "text": "b"}]},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": "many", "completion_tokens": 3}
        });
        let r = parse_response(&answer).unwrap();
        assert_eq!((r.text().as_str(), r.stop), ("a\nb", StopReason::MaxTokens));
        assert_eq!(r.usage, Usage::default());
        let failed = json!({"error": {"message": "Rate limited"}, "choices": null});
        assert!(matches!(
            parse_response(&failed),
            Err(ProviderError::Status { .. })
        ));
    }

    #[test]
    fn malformed_answers_are_errors() {
        for bad in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{"message": "nope"}]}),
            json!({"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}),
        ] {
            assert!(
                matches!(parse_response(&bad), Err(ProviderError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
