//! Live replies end to end against a real `ecdysis serve`: answers stream from the fake model
//! (both wire formats, text and tool calls in many small deltas) to the web chat's events, to
//! Slack (native streams, edit mode, off) and to Discord (post, then edits), with tool lines;
//! the finished message equals the non-streamed answer; bad streams end in a clear error; and
//! a SIGKILL in the middle of a streamed answer leaves exactly one finished answer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::Duration;

use common::server::Server;
use common::sse::{Received, SseReader};
use ecdysis_testkit::llm::{FakeLlm, Reply as Llm};
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Wire {
    Anthropic,
    OpenAi,
}

fn model_env(fake: &FakeLlm, wire: Wire) -> Vec<(&'static str, String)> {
    match wire {
        Wire::Anthropic => vec![
            ("ECDYSIS_MODEL", "anthropic/claude-test".into()),
            ("ANTHROPIC_API_KEY", "test-anthropic-key".into()),
            ("ANTHROPIC_BASE_URL", fake.anthropic_base_url()),
        ],
        Wire::OpenAi => vec![
            ("ECDYSIS_MODEL", "openai/gpt-test".into()),
            ("OPENAI_API_KEY", "test-openai-key".into()),
            ("OPENAI_BASE_URL", fake.openai_base_url()),
        ],
    }
}

async fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Server {
    let mut all: Vec<(&str, &str)> = vec![("ECDYSIS_SANDBOX", "off")];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    Server::start(dir, &all).await
}

/// A long answer: many deltas, Markdown included.
fn answer() -> String {
    let mut text = String::from("Here is what I found about the sky:\n\n");
    for i in 1..=12 {
        text.push_str(&format!(
            "- point {i}: the sky scatters blue light more than red\n"
        ));
    }
    text.push_str("\n```\necho done\n```\nThat is all.");
    text
}

async fn events(server: &Server, conversation: &str) -> SseReader {
    let response = server
        .authorize(
            reqwest::Client::new().get(format!("{}/api/chat/{conversation}/events", server.base)),
        )
        .send()
        .await
        .unwrap();
    SseReader::new(response)
}

fn is_reply_to(event: &Received, event_id: &str) -> bool {
    event.event == "message"
        && event.data["role"] == "assistant"
        && event.data["event_id"] == event_id
}

async fn web_answer_streams(wire: Wire) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &model_env(&fake, wire)).await;
    let pace = Duration::from_millis(15);
    fake.push(Llm::tool("memory_search", json!({ "query": "sky" })).paced(pace));
    fake.push(Llm::text(answer()).paced(pace));

    let mut live = events(&server, "sky").await;
    let event_id = server.say("sky", "tell me about the sky").await;
    let seen = live
        .until(Duration::from_secs(30), |e| is_reply_to(e, &event_id))
        .await;

    let mine = |name: &str| -> Vec<&Received> {
        seen.iter()
            .filter(|e| e.event == name && e.data["event_id"] == event_id.as_str())
            .collect()
    };
    // The user's message is announced as stored, before any of the answer.
    let user = seen
        .iter()
        .position(|e| e.event == "message" && e.data["role"] == "user")
        .expect("the user message event");
    let first_delta = seen
        .iter()
        .position(|e| e.event == "delta")
        .expect("deltas");
    assert!(user < first_delta, "{seen:#?}");
    // The tool line, before the answer's text.
    let progress = mine("progress");
    assert_eq!(progress.len(), 1, "{seen:#?}");
    assert_eq!(progress[0].data["text"], "searching memory");
    let progress_at = seen.iter().position(|e| e.event == "progress").unwrap();
    assert!(progress_at < first_delta, "{seen:#?}");
    // The answer grows: each delta is the text so far, a prefix of the next and of the answer.
    let deltas: Vec<String> = mine("delta")
        .iter()
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect();
    assert!(deltas.len() >= 5, "{} deltas: {deltas:#?}", deltas.len());
    let expected = answer();
    for pair in deltas.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]) && pair[1].len() > pair[0].len(),
            "{pair:?}"
        );
    }
    for delta in &deltas {
        assert!(expected.starts_with(delta.as_str()), "{delta:?}");
    }
    // The stored message is the whole answer, as the messages API shows it.
    let stored = seen.last().unwrap();
    assert_eq!(stored.data["text"], expected.as_str());
    let replies = server.wait_replies_to("sky", &event_id, 1).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["text"], expected.as_str());
    assert_eq!(replies[0]["id"], stored.data["id"]);

    // Both model calls asked for a stream (and OpenAI for the usage at its end).
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.body["stream"], true, "{}", request.raw);
        if let Wire::OpenAi = wire {
            assert_eq!(request.body["stream_options"]["include_usage"], true);
        }
    }
    // The usage came from the stream's final events.
    let status = server.ask("sky", "/status").await;
    let usage = status
        .lines()
        .find(|l| l.contains("output tokens"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(usage.contains("2 calls"), "{usage}");
    assert!(!usage.contains(" 0 output"), "{usage}");

    // The same script without streaming (a gateway that answers JSON) gives the same message.
    fake.push(Llm::tool("memory_search", json!({ "query": "sky" })).unstreamed());
    fake.push(Llm::text(answer()).unstreamed());
    let plain = server.ask("sky-plain", "tell me about the sky").await;
    assert_eq!(plain, expected);
}

#[tokio::test]
async fn web_answer_streams_anthropic() {
    web_answer_streams(Wire::Anthropic).await;
}

#[tokio::test]
async fn web_answer_streams_openai() {
    web_answer_streams(Wire::OpenAi).await;
}

/// A malformed event line: a clear error reply, no retry (the same request would fail the
/// same way), and the half-written text does not stay as the answer.
async fn malformed_stream_is_a_clear_error(wire: Wire) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &model_env(&fake, wire)).await;
    let broken = match wire {
        Wire::Anthropic => concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The half answer \"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\n\n",
        ),
        Wire::OpenAi => concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The half answer \"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\n\n",
        ),
    };
    fake.push(Llm::sse(broken));
    let mut live = events(&server, "broken").await;
    let event_id = server.say("broken", "hello").await;
    let seen = live
        .until(Duration::from_secs(30), |e| is_reply_to(e, &event_id))
        .await;
    let text = seen.last().unwrap().data["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("could not be read"), "{text}");
    assert!(!text.contains("The half answer"), "{text}");
    assert_eq!(
        fake.request_count(),
        1,
        "a malformed answer is not asked again"
    );
    let replies = server.wait_replies_to("broken", &event_id, 1).await;
    assert_eq!(replies.len(), 1);
}

#[tokio::test]
async fn malformed_stream_is_a_clear_error_anthropic() {
    malformed_stream_is_a_clear_error(Wire::Anthropic).await;
}

#[tokio::test]
async fn malformed_stream_is_a_clear_error_openai() {
    malformed_stream_is_a_clear_error(Wire::OpenAi).await;
}

/// A stream that ends early is retried; what the first attempt showed is replaced, and the
/// answer is the second attempt's, once.
async fn early_eof_is_retried(wire: Wire) {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &model_env(&fake, wire)).await;
    fake.push(Llm::text("An answer that never ends because the line drops").cut_after(6));
    fake.push(Llm::text(answer()));
    let mut live = events(&server, "eof").await;
    let event_id = server.say("eof", "hello").await;
    let seen = live
        .until(Duration::from_secs(30), |e| is_reply_to(e, &event_id))
        .await;
    assert_eq!(fake.request_count(), 2);
    assert_eq!(seen.last().unwrap().data["text"], answer().as_str());
    // The last text shown live belongs to the second attempt.
    let last_delta = seen
        .iter()
        .rev()
        .find(|e| e.event == "delta")
        .expect("deltas");
    assert!(
        answer().starts_with(last_delta.data["text"].as_str().unwrap()),
        "{last_delta:?}"
    );
    assert_eq!(server.wait_replies_to("eof", &event_id, 1).await.len(), 1);
}

#[tokio::test]
async fn early_eof_is_retried_anthropic() {
    early_eof_is_retried(Wire::Anthropic).await;
}

#[tokio::test]
async fn early_eof_is_retried_openai() {
    early_eof_is_retried(Wire::OpenAi).await;
}
