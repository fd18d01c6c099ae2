//! Server-sent events as the model APIs stream them (`stream: true`): a decoder for the
//! `event:`/`data:` lines, and the read loop of a streamed HTTP answer. A server that answers a
//! streaming request with plain JSON (a gateway or local server that does not stream) is read
//! as a whole instead.

use std::time::Duration;

use serde_json::Value;

use super::{ProviderError, error_status, transport_error};

/// The longest event (or line) accepted; a server sending more without a line end is broken.
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (Anthropic names every event; OpenAI sends none).
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Turns bytes into events, line by line (`\n`, `\r\n` or `\r`), as the SSE format says:
/// fields `event` and `data`, comments (`:`) and other fields ignored, an empty line ends an
/// event.
#[derive(Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    /// The last byte was a `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
}

impl SseDecoder {
    /// Feed bytes; the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.pending);
                    if let Some(event) = self.line(&line)? {
                        events.push(event);
                    }
                }
                _ => {
                    if self.pending.len() >= MAX_EVENT_BYTES {
                        return Err(ProviderError::Malformed(
                            "the answer stream has a line over 8 MiB".into(),
                        ));
                    }
                    self.pending.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, ProviderError> {
        if line.is_empty() {
            let Some(mut data) = self.data.take() else {
                self.event = None;
                return Ok(None);
            };
            // Every data line ended with `\n`; the last one does not belong to the data.
            data.pop();
            return Ok(Some(SseEvent {
                event: self.event.take(),
                data,
            }));
        }
        let line = std::str::from_utf8(line).map_err(|_| {
            ProviderError::Malformed("the answer stream has a line that is not UTF-8".into())
        })?;
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if data.len() + value.len() > MAX_EVENT_BYTES {
                    return Err(ProviderError::Malformed(
                        "the answer stream has an event over 8 MiB".into(),
                    ));
                }
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
        Ok(None)
    }
}

/// Parse an event's data as JSON.
pub fn json(event: &SseEvent) -> Result<Value, ProviderError> {
    serde_json::from_str(&event.data).map_err(|e| {
        let snippet = crate::redact::global().snippet(&event.data, 120);
        ProviderError::Malformed(format!(
            "the answer stream sent data that is not JSON ({e}): {snippet}"
        ))
    })
}

/// How a streaming request was answered.
pub enum Streamed {
    /// Every event went to the callback.
    Events,
    /// The server answered with one JSON document (no streaming).
    Json(Value),
}

/// Send a streaming request and feed its events to `on_event` as they arrive, within
/// `timeout` for the whole exchange. HTTP errors map as for non-streaming calls.
pub async fn post_stream(
    builder: reqwest::RequestBuilder,
    body: &Value,
    timeout: Duration,
    mut on_event: impl FnMut(&SseEvent) -> Result<(), ProviderError>,
) -> Result<Streamed, ProviderError> {
    let mut response = builder
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(body)
        .send()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    if !response.status().is_success() {
        return Err(error_status(response, timeout).await);
    }
    let is_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if !is_stream {
        let text = response
            .text()
            .await
            .map_err(|e| transport_error(e, timeout))?;
        return serde_json::from_str(&text)
            .map(Streamed::Json)
            .map_err(|e| ProviderError::Malformed(format!("not JSON ({e})")));
    }
    let mut decoder = SseDecoder::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, timeout))?
    {
        for event in decoder.push(&chunk)? {
            on_event(&event)?;
        }
    }
    Ok(Streamed::Events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        chunks
            .iter()
            .flat_map(|c| decoder.push(c).unwrap())
            .collect()
    }

    #[test]
    fn events_survive_any_chunking_and_line_ends() {
        let stream = b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\r\n\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\r\r";
        let whole = decode(&[stream]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(&bytes), whole);
        let bytes: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(decode(&bytes), whole);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert!(decode(&[b"data: {\"half\": "]).is_empty());
    }

    #[test]
    fn bad_data_is_a_clear_error() {
        let event = SseEvent {
            event: None,
            data: "{not json".into(),
        };
        let error = json(&event).unwrap_err();
        assert!(matches!(error, ProviderError::Malformed(_)));
        assert!(error.to_string().contains("not JSON"), "{error}");
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: \xff\xfe\n").is_err());
    }
}
