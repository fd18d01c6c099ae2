//! Reading a streamed chat completion (`stream: true`, `stream_options.include_usage`):
//! `data:` chunks with `choices[0].delta` (content, tool calls by index with their arguments in
//! pieces), `finish_reason`, a last chunk with `usage`, then `data: [DONE]`. The answer is
//! rebuilt as the non-streaming JSON, so both paths are read by one parser.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::sse::{SseEvent, json as event_json};
use super::{ProviderError, TextSink, error_message};

#[derive(Default)]
struct Call {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// The answer as its chunks arrive.
#[derive(Default)]
pub struct StreamAnswer {
    content: String,
    calls: BTreeMap<u64, Call>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

/// One chunk, the parts of it that are read (every field may be absent).
#[derive(Deserialize)]
struct Chunk {
    error: Option<Value>,
    usage: Option<Value>,
    choices: Option<Vec<ChunkChoice>>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<ChunkDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    tool_calls: Option<Vec<CallPiece>>,
}

/// A piece of one tool call: its index, and any of its id, name or arguments so far.
#[derive(Deserialize)]
struct CallPiece {
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionPiece>,
}

#[derive(Deserialize)]
struct FunctionPiece {
    name: Option<String>,
    arguments: Option<String>,
}

impl StreamAnswer {
    /// Take one event; text deltas go to `sink`.
    pub fn read(&mut self, event: &SseEvent, sink: &dyn TextSink) -> Result<(), ProviderError> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let data = event_json(event)?;
        let chunk = Chunk::deserialize(&data).map_err(|e| {
            ProviderError::Malformed(format!(
                "the answer stream sent a chunk that does not read: {e}"
            ))
        })?;
        if let Some(error) = chunk.error {
            return Err(ProviderError::Status {
                status: 500,
                message: error_message(&json!({ "error": error }).to_string()),
                retry_after: None,
            });
        }
        if let Some(usage) = chunk.usage.filter(Value::is_object) {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                sink.text(&text);
                self.content.push_str(&text);
            }
            for (n, piece) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let entry = self
                    .calls
                    .entry(piece.index.unwrap_or(n as u64))
                    .or_default();
                if let Some(id) = piece.id {
                    entry.id = Some(id);
                }
                if let Some(function) = piece.function {
                    entry
                        .name
                        .push_str(function.name.as_deref().unwrap_or_default());
                    entry
                        .arguments
                        .push_str(function.arguments.as_deref().unwrap_or_default());
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
        Ok(())
    }

    /// The whole answer as the non-streaming API would have sent it; an error when the stream
    /// ended before `[DONE]` (or at least a finish reason, for servers that send no `[DONE]`).
    pub fn finish(self) -> Result<Value, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ProviderError::Transport(
                "the answer stream ended before the answer was complete".into(),
            ));
        }
        let tool_calls: Vec<Value> = self
            .calls
            .into_iter()
            .map(|(index, call)| {
                json!({
                    "id": call.id.unwrap_or_else(|| format!("call_{index}")),
                    "type": "function",
                    "function": { "name": call.name, "arguments": call.arguments },
                })
            })
            .collect();
        let mut message = json!({
            "role": "assistant",
            "content": if self.content.is_empty() { Value::Null } else { Value::String(self.content) },
        });
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        let mut answer = json!({
            "choices": [{ "index": 0, "message": message, "finish_reason": self.finish_reason }],
        });
        if let Some(usage) = self.usage {
            answer["usage"] = usage;
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::agent::provider::StopReason;
    use crate::agent::provider::openai::parse_response;

    #[derive(Default)]
    struct Collect(Mutex<String>);

    impl TextSink for Collect {
        fn text(&self, delta: &str) {
            self.0.lock().unwrap().push_str(delta);
        }
    }

    fn data(value: Value) -> SseEvent {
        SseEvent {
            event: None,
            data: value.to_string(),
        }
    }

    #[test]
    fn text_tool_calls_and_usage_from_many_chunks() {
        let sink = Collect::default();
        let mut answer = StreamAnswer::default();
        for chunk in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Run"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "ning it."}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "run_command", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 40}}}),
        ] {
            answer.read(&data(chunk), &sink).unwrap();
        }
        answer
            .read(
                &SseEvent {
                    event: None,
                    data: "[DONE]".into(),
                },
                &sink,
            )
            .unwrap();
        let response = parse_response(&answer.finish().unwrap()).unwrap();
        assert_eq!(*sink.0.lock().unwrap(), "Running it.");
        assert_eq!(response.text(), "Running it.");
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(
            response.tool_calls(),
            vec![("call_a", "run_command", &json!({"command": "ls"}))]
        );
        assert_eq!(response.usage.input_tokens, 10);
        assert_eq!(response.usage.cache_read_tokens, 40);
        assert_eq!(response.usage.output_tokens, 7);
    }

    #[test]
    fn an_early_end_and_bad_chunks_are_errors() {
        let sink = Collect::default();
        let mut answer = StreamAnswer::default();
        answer
            .read(
                &data(json!({"choices": [{"delta": {"content": "Half an"}}]})),
                &sink,
            )
            .unwrap();
        let early = answer.finish().unwrap_err();
        assert!(early.retryable(), "{early}");

        let mut answer = StreamAnswer::default();
        let bad = answer
            .read(
                &SseEvent {
                    event: None,
                    data: "{\"choices\": [".into(),
                },
                &sink,
            )
            .unwrap_err();
        assert!(matches!(bad, ProviderError::Malformed(_)), "{bad}");
        let failed = answer
            .read(
                &data(json!({"error": {"message": "model overloaded"}})),
                &sink,
            )
            .unwrap_err();
        assert!(failed.to_string().contains("model overloaded"), "{failed}");
    }
}
