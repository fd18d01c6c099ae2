//! Reading a streamed Messages API answer (`stream: true`): `message_start`, content blocks
//! (`text_delta`, `input_json_delta`), `message_delta` (stop reason, output tokens),
//! `message_stop`; an `error` event fails the call. The answer is rebuilt as the non-streaming
//! JSON, so both paths are read by one parser.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sse::{SseEvent, json as event_json};
use super::{ProviderError, TextSink, error_message, stream_error_status};

enum Block {
    Text(String),
    Tool {
        id: String,
        name: String,
        input_json: String,
    },
    /// Thinking and other blocks are not shown to people.
    Other,
}

/// The answer as its events arrive.
#[derive(Default)]
pub struct StreamAnswer {
    blocks: BTreeMap<u64, Block>,
    stop_reason: Option<String>,
    usage: Map<String, Value>,
    /// Text already given to the sink (a second text block starts on a new line).
    texted: bool,
    stopped: bool,
}

/// One event of the stream, the parts of it that are read; `ping` and event types added later
/// read as `Other`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: Option<StartedMessage>,
    },
    ContentBlockStart {
        index: Option<u64>,
        content_block: Option<StartedBlock>,
    },
    ContentBlockDelta {
        index: Option<u64>,
        delta: Option<BlockDelta>,
    },
    MessageDelta {
        delta: Option<MessageChange>,
        usage: Option<Map<String, Value>>,
    },
    MessageStop,
    Error {
        error: Option<ErrorBody>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartedMessage {
    usage: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartedBlock {
    Text {
        text: Option<String>,
    },
    ToolUse {
        id: Option<String>,
        name: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: Option<String>,
    },
    InputJsonDelta {
        partial_json: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageChange {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl StreamAnswer {
    /// Take one event; text deltas go to `sink`.
    pub fn read(&mut self, event: &SseEvent, sink: &dyn TextSink) -> Result<(), ProviderError> {
        let data = event_json(event)?;
        let read = Event::deserialize(&data).map_err(|e| {
            ProviderError::Malformed(format!(
                "the answer stream sent an event that does not read: {e}"
            ))
        })?;
        match read {
            Event::MessageStart { message } => {
                if let Some(usage) = message.and_then(|m| m.usage) {
                    self.usage.extend(usage);
                }
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let started = match content_block {
                    Some(StartedBlock::Text { text }) => {
                        let text = text.unwrap_or_default();
                        if self.texted {
                            sink.text("\n");
                        }
                        self.give(sink, &text);
                        Block::Text(text)
                    }
                    Some(StartedBlock::ToolUse { id, name }) => Block::Tool {
                        id: id.unwrap_or_default(),
                        name: name.unwrap_or_default(),
                        input_json: String::new(),
                    },
                    _ => Block::Other,
                };
                self.blocks.insert(index.unwrap_or(0), started);
            }
            Event::ContentBlockDelta { index, delta } => {
                let index = index.unwrap_or(0);
                let texted = &mut self.texted;
                match (self.blocks.get_mut(&index), delta) {
                    (Some(Block::Text(text)), Some(BlockDelta::TextDelta { text: piece })) => {
                        let piece = piece.unwrap_or_default();
                        text.push_str(&piece);
                        if !piece.is_empty() {
                            *texted = true;
                            sink.text(&piece);
                        }
                    }
                    (
                        Some(Block::Tool { input_json, .. }),
                        Some(BlockDelta::InputJsonDelta { partial_json }),
                    ) => {
                        input_json.push_str(partial_json.as_deref().unwrap_or_default());
                    }
                    (None, _) => {
                        return Err(ProviderError::Malformed(format!(
                            "the answer stream sent a delta for block {index} before its start"
                        )));
                    }
                    _ => {}
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(reason);
                }
                if let Some(usage) = usage {
                    self.usage
                        .extend(usage.into_iter().filter(|(_, v)| !v.is_null()));
                }
            }
            Event::MessageStop => self.stopped = true,
            Event::Error { error } => {
                let kind = error.and_then(|e| e.kind);
                return Err(ProviderError::Status {
                    status: stream_error_status(kind.as_deref()),
                    message: error_message(&data.to_string()),
                    retry_after: None,
                });
            }
            Event::Other => {}
        }
        Ok(())
    }

    fn give(&mut self, sink: &dyn TextSink, text: &str) {
        if !text.is_empty() {
            self.texted = true;
            sink.text(text);
        }
    }

    /// The whole answer as the non-streaming API would have sent it; an error when the stream
    /// ended before `message_stop`.
    pub fn finish(self) -> Result<Value, ProviderError> {
        if !self.stopped {
            return Err(ProviderError::Transport(
                "the answer stream ended before the answer was complete".into(),
            ));
        }
        let mut content = Vec::with_capacity(self.blocks.len());
        for block in self.blocks.into_values() {
            match block {
                Block::Text(text) => content.push(json!({ "type": "text", "text": text })),
                Block::Tool {
                    id,
                    name,
                    input_json,
                } => {
                    let input = if input_json.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&input_json).map_err(|e| {
                            ProviderError::Malformed(format!(
                                "the tool call `{name}` streamed input that is not JSON ({e})"
                            ))
                        })?
                    };
                    content.push(
                        json!({ "type": "tool_use", "id": id, "name": name, "input": input }),
                    );
                }
                Block::Other => {}
            }
        }
        Ok(json!({
            "type": "message",
            "content": content,
            "stop_reason": self.stop_reason,
            "usage": Value::Object(self.usage),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::agent::provider::anthropic::parse_response;
    use crate::agent::provider::{Part, StopReason};

    #[derive(Default)]
    struct Collect(Mutex<String>);

    impl TextSink for Collect {
        fn text(&self, delta: &str) {
            self.0.lock().unwrap().push_str(delta);
        }
    }

    fn event(data: Value) -> SseEvent {
        SseEvent {
            event: data["type"].as_str().map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn unknown_events_pass_and_misshapen_ones_are_clear_errors() {
        let sink = Collect::default();
        let mut answer = StreamAnswer::default();
        answer
            .read(&event(json!({"type": "some_later_event", "x": [1]})), &sink)
            .unwrap();
        let misshapen = json!({"type": "content_block_delta", "index": "first"});
        match answer.read(&event(misshapen), &sink) {
            Err(ProviderError::Malformed(message)) => {
                assert!(message.contains("does not read"), "{message}");
            }
            other => panic!("a misshapen event was read: {:?}", other.err()),
        }
        let early = json!({"type": "content_block_delta", "index": 3,
                           "delta": {"type": "text_delta", "text": "x"}});
        assert!(matches!(
            answer.read(&event(early), &sink),
            Err(ProviderError::Malformed(_))
        ));
    }

    #[test]
    fn text_and_tool_use_split_across_deltas() {
        let sink = Collect::default();
        let mut answer = StreamAnswer::default();
        for data in [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "memory_search", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"que"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ry\": \"sky\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
            json!({"type": "message_stop"}),
        ] {
            answer.read(&event(data), &sink).unwrap();
        }
        let response = parse_response(&answer.finish().unwrap()).unwrap();
        assert_eq!(*sink.0.lock().unwrap(), "Let me look.");
        assert_eq!(response.text(), "Let me look.");
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(
            response.parts[1],
            Part::ToolUse {
                id: "toolu_1".into(),
                name: "memory_search".into(),
                input: json!({"query": "sky"})
            }
        );
        assert_eq!(response.usage.input_tokens, 12);
        assert_eq!(response.usage.cache_read_tokens, 100);
        assert_eq!(response.usage.output_tokens, 30);
    }

    #[test]
    fn an_early_end_and_an_error_event_are_errors() {
        let sink = Collect::default();
        let mut answer = StreamAnswer::default();
        answer
            .read(
                &event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Half"}})),
                &sink,
            )
            .unwrap();
        let early = answer.finish().unwrap_err();
        assert!(early.retryable(), "{early}");
        assert!(early.to_string().contains("ended before"), "{early}");

        let mut answer = StreamAnswer::default();
        let overloaded = answer
            .read(
                &event(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
                &sink,
            )
            .unwrap_err();
        assert!(matches!(
            overloaded,
            ProviderError::Status { status: 529, .. }
        ));
        assert!(overloaded.to_string().contains("Overloaded"));

        let mut answer = StreamAnswer::default();
        let orphan = answer
            .read(
                &event(json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "x"}})),
                &sink,
            )
            .unwrap_err();
        assert!(matches!(orphan, ProviderError::Malformed(_)));
    }
}
