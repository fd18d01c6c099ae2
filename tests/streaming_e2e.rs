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
async fn a_run_command_shows_a_live_line_while_it_runs() {
    if !common::sandbox::sandbox_ready() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    // The sandbox user passes through the data directory (tempdirs are 0700).
    let dir = common::sandbox::public_tempdir();
    let mut env = model_env(&fake, Wire::Anthropic);
    env.push(("ECDYSIS_SANDBOX", "namespace".into()));
    let server = start(dir.path(), &env).await;
    let mut live = events(&server, "runs").await;
    let event_id = server.say("runs", "/run sleep 1; echo ran-it").await;
    let seen = live
        .until(Duration::from_secs(60), |e| is_reply_to(e, &event_id))
        .await;
    let progress: Vec<&Received> = seen
        .iter()
        .filter(|e| e.event == "progress" && e.data["event_id"] == event_id.as_str())
        .collect();
    assert_eq!(progress.len(), 1, "{seen:#?}");
    assert_eq!(
        progress[0].data["text"],
        "running `sleep 1; echo ran-it` in the sandbox"
    );
    let reply = seen.iter().find(|e| is_reply_to(e, &event_id)).unwrap();
    assert!(
        reply.data["text"].as_str().unwrap().contains("ran-it"),
        "{reply:#?}"
    );
    // No model call: a command, not a turn.
    assert!(fake.requests().is_empty());
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

// --- Slack -----------------------------------------------------------------------------------

mod slack {
    use std::time::{Duration, Instant};

    use super::common::server::Server;
    use ecdysis_slack::signature::sign;
    use ecdysis_testkit::llm::{FakeLlm, Reply as Llm};
    use ecdysis_testkit::slack::{Call, FakeSlack};
    use serde_json::{Value, json};

    const SECRET: &str = "test-signing-secret";
    const CHANNEL: &str = "C1";

    pub struct Env {
        pub slack: FakeSlack,
        pub llm: FakeLlm,
        pub server: Server,
        _dir: tempfile::TempDir,
    }

    pub async fn start(mode: Option<&str>) -> Env {
        let slack = FakeSlack::start().await.unwrap();
        let llm = FakeLlm::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let api = slack.api_url();
        let llm_url = llm.anthropic_base_url();
        let mut env: Vec<(&str, &str)> = vec![
            ("SLACK_SIGNING_SECRET", SECRET),
            ("SLACK_BOT_TOKEN", "xoxb-test"),
            ("SLACK_API_URL", &api),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
        ];
        if let Some(mode) = mode {
            env.push(("ECDYSIS_SLACK_STREAMING", mode));
        }
        let server = Server::start(dir.path(), &env).await;
        Env {
            slack,
            llm,
            server,
            _dir: dir,
        }
    }

    /// A long plain answer (its mrkdwn is itself), in many deltas.
    pub fn answer() -> String {
        (1..=8)
            .map(|i| format!("Reason {i}: air scatters short blue waves more than long red ones."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Mention the bot in a channel message `ts`; the answer goes into that thread.
    pub async fn mention(server: &Server, event_id: &str, ts: &str, text: &str) {
        let body = json!({
            "token": "t", "team_id": "T1", "api_app_id": "AFAKE", "type": "event_callback",
            "event_id": event_id, "event_time": 1,
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
            "event": {
                "type": "app_mention", "user": "U1", "text": format!("<@UBOT> {text}"),
                "ts": ts, "channel": CHANNEL, "event_ts": ts,
            },
        })
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let response = reqwest::Client::new()
            .post(format!("{}/slack/events", server.base))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", sign(SECRET, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// Wait until the thread holds a finished (not streaming) message with `text`.
    pub async fn finished(env: &Env, thread: &str, text: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let messages = env.slack.thread_messages(CHANNEL, thread);
            if messages
                .iter()
                .any(|m| m["text"] == text && m["streaming"] != true)
            {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "no finished answer in the thread: {messages:#?}\n{}",
                env.server.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/ecdysis ask <question>` in channel `C9`, answered in that channel.
    pub async fn slash_ask(env: &Env, question: &str) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", "verification-token")
            .append_pair("team_id", "T1")
            .append_pair("channel_id", "C9")
            .append_pair("user_id", "U1")
            .append_pair("command", "/ecdysis")
            .append_pair("text", &format!("ask {question}"))
            .append_pair("api_app_id", "AFAKE")
            .append_pair("response_url", &env.slack.response_url("cmd1"))
            .append_pair("trigger_id", "trigger-cmd1")
            .finish();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let response = reqwest::Client::new()
            .post(format!("{}/slack/commands", env.server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", sign(SECRET, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    pub fn streamed_text(calls: &[Call]) -> String {
        calls
            .iter()
            .flat_map(|c| {
                let mut texts: Vec<String> = c
                    .arg("markdown_text")
                    .map(str::to_string)
                    .into_iter()
                    .collect();
                texts.extend(
                    c.args["chunks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|chunk| chunk["type"] == "markdown_text")
                        .filter_map(|chunk| chunk["text"].as_str().map(str::to_string)),
                );
                texts
            })
            .collect()
    }

    pub fn script(llm: &FakeLlm, pace: Duration) {
        llm.push(Llm::tool("memory_search", json!({ "query": "sky" })).paced(pace));
        llm.push(Llm::text(answer()).paced(pace));
    }
}

#[tokio::test]
async fn slack_native_stream_with_tool_lines() {
    let env = slack::start(None).await;
    slack::script(&env.llm, Duration::from_millis(10));
    let thread = "1700000000.000100";
    slack::mention(&env.server, "Ev1", thread, "why is the sky blue?").await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    // One stream, in the thread, for the user who asked.
    let starts = env.slack.calls_to("chat.startStream");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].arg("thread_ts"), Some(thread));
    assert_eq!(starts[0].arg("recipient_team_id"), Some("T1"));
    assert_eq!(starts[0].arg("recipient_user_id"), Some("U1"));
    let appends = env.slack.calls_to("chat.appendStream");
    assert!(appends.len() >= 2, "{} appends", appends.len());
    let stops = env.slack.calls_to("chat.stopStream");
    assert_eq!(stops.len(), 1);
    assert!(starts[0].at <= appends[0].at && appends.last().unwrap().at <= stops[0].at);
    // The text arrived in order: start + appends + stop make the answer exactly.
    let mut calls = starts.clone();
    calls.extend(appends.iter().cloned());
    calls.extend(stops.iter().cloned());
    assert_eq!(slack::streamed_text(&calls), slack::answer());
    // The tool showed as a task line, finished by the end.
    let tasks = &messages[0]["tasks"];
    assert_eq!(tasks["tool_1"]["title"], "searching memory", "{tasks}");
    assert_eq!(tasks["tool_1"]["status"], "complete", "{tasks}");
    // The finished message carries the reply's key (the duplicate check finds it).
    assert_eq!(messages[0]["metadata"]["event_type"], "ecdysis_reply");
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
}

#[tokio::test]
async fn slack_edit_mode_updates_about_once_a_second() {
    let env = slack::start(Some("edit")).await;
    // About five seconds of answer.
    slack::script(&env.llm, Duration::from_millis(40));
    let started = std::time::Instant::now();
    let thread = "1700000000.000200";
    slack::mention(&env.server, "Ev2", thread, "why is the sky blue?").await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let posts = env.slack.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 1, "one message, then edits");
    assert!(
        posts[0]
            .arg("text")
            .unwrap_or_default()
            .contains("searching memory"),
        "{:?}",
        posts[0].args
    );
    let updates = env.slack.calls_to("chat.update");
    assert!(
        updates.len() >= 3,
        "{} updates in {:?}: {:#?}\n{}",
        updates.len(),
        started.elapsed(),
        updates
            .iter()
            .map(|u| u.at - posts[0].at)
            .collect::<Vec<_>>(),
        env.server.log()
    );
    // Live edits (all but the final one) at least ~1 s apart, counting from the post.
    let mut times = vec![posts[0].at];
    times.extend(updates[..updates.len() - 1].iter().map(|c| c.at));
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(900), "edits {gap:?} apart");
    }
    // Each live edit shows a beginning of the answer.
    for update in &updates[..updates.len() - 1] {
        let text = update.arg("text").unwrap_or_default();
        let answer_part = text.split("\n\n_").next().unwrap_or_default();
        assert!(slack::answer().starts_with(answer_part), "{text:?}");
    }
    assert!(env.slack.calls_to("chat.startStream").is_empty());
}

/// A slash command has no thread to stream in: its answer is posted in the channel and
/// edited as it grows (native mode falls back to edits), not sent through `response_url`.
#[tokio::test]
async fn slack_slash_command_streams_by_edits() {
    let env = slack::start(None).await;
    env.llm
        .push(Llm::text(slack::answer()).paced(Duration::from_millis(25)));
    slack::slash_ask(&env, "why is the sky blue?").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let updates = env.slack.calls_to("chat.update");
        if updates
            .last()
            .is_some_and(|u| u.arg("text") == Some(slack::answer().as_str()))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", env.server.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let posts = env.slack.calls_to("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].arg("channel"), Some("C9"));
    assert!(posts[0].args.get("thread_ts").is_none());
    assert!(env.slack.calls_to("chat.update").len() >= 2);
    assert!(env.slack.calls_to("chat.startStream").is_empty());
    assert!(env.slack.calls_to("response_url").is_empty());
}

#[tokio::test]
async fn slack_off_posts_once() {
    let env = slack::start(Some("off")).await;
    slack::script(&env.llm, Duration::from_millis(2));
    let thread = "1700000000.000300";
    slack::mention(&env.server, "Ev3", thread, "why is the sky blue?").await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(env.slack.calls_to("chat.postMessage").len(), 1);
    assert!(env.slack.calls_to("chat.update").is_empty());
    assert!(env.slack.calls_to("chat.startStream").is_empty());
    // The model was not asked to stream either.
    assert!(
        env.llm
            .requests()
            .iter()
            .all(|r| r.body.get("stream").is_none())
    );
}

#[tokio::test]
async fn slack_refusing_a_stream_midway_still_delivers_the_answer_once() {
    let env = slack::start(None).await;
    env.slack
        .fail_next("chat.appendStream", 1, "internal_error");
    slack::script(&env.llm, Duration::from_millis(10));
    let thread = "1700000000.000400";
    slack::mention(&env.server, "Ev4", thread, "why is the sky blue?").await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        env.slack.calls_to("chat.appendStream").len(),
        1,
        "no appends after the refusal"
    );
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
}

/// SIGKILL while the answer streams: after the restart the event runs again and the same
/// message is finished; the thread holds exactly one answer.
#[tokio::test]
async fn slack_sigkill_mid_stream_finishes_the_same_message() {
    let mut env = slack::start(None).await;
    env.llm
        .set_default(Llm::text(slack::answer()).paced(Duration::from_millis(40)));
    let thread = "1700000000.000500";
    slack::mention(&env.server, "Ev5", thread, "why is the sky blue?").await;
    let appends = env
        .slack
        .wait_calls("chat.appendStream", 2, Duration::from_secs(30))
        .await;
    assert!(appends.len() >= 2, "the answer did not stream");
    let half = env.slack.thread_messages("C1", thread);
    assert_eq!(half.len(), 1);
    assert_eq!(half[0]["streaming"], true);
    assert_ne!(half[0]["text"], slack::answer().as_str());

    env.llm
        .set_default(Llm::text(slack::answer()).paced(Duration::from_millis(2)));
    env.server = env.server.restart().await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1, "exactly one answer: {messages:#?}");
    assert_eq!(
        messages[0]["ts"], half[0]["ts"],
        "the same message was finished"
    );
    assert_eq!(env.slack.calls_to("chat.startStream").len(), 1);
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
}

/// SIGKILL after Slack started the stream but before its `ts` was stored (the call never
/// answered): the re-run finds the bot's unfinished message after the question and finishes
/// it, with a stream of its own (`native`) or with the final answer (`off`): never a second
/// message, never a stream left running.
async fn crash_before_the_stream_is_recorded(streaming_after_restart: &str) {
    let mut env = slack::start(None).await;
    env.slack.stall_next("chat.startStream", 1);
    env.llm
        .set_default(Llm::text(slack::answer()).paced(Duration::from_millis(40)));
    let thread = "1700000000.000600";
    slack::mention(&env.server, "Ev6", thread, "why is the sky blue?").await;
    let started = env
        .slack
        .wait_calls("chat.startStream", 1, Duration::from_secs(30))
        .await;
    assert_eq!(started.len(), 1, "the answer did not start streaming");
    let orphan = env.slack.thread_messages("C1", thread);
    assert_eq!(orphan.len(), 1);
    assert_eq!(orphan[0]["streaming"], true);

    env.llm
        .set_default(Llm::text(slack::answer()).paced(Duration::from_millis(2)));
    env.server = env
        .server
        .restart_with(&[("ECDYSIS_SLACK_STREAMING", streaming_after_restart)])
        .await;
    let messages = slack::finished(&env, thread, &slack::answer()).await;
    assert_eq!(messages.len(), 1, "exactly one answer: {messages:#?}");
    assert_eq!(messages[0]["ts"], orphan[0]["ts"], "the same message");
    assert!(messages[0]["metadata"].is_object(), "{messages:#?}");
    assert_eq!(env.slack.calls_to("chat.startStream").len(), 1);
    assert_eq!(env.slack.calls_to("chat.stopStream").len(), 1);
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
}

#[tokio::test]
async fn slack_crash_before_the_stream_is_recorded_finishes_it_by_streaming() {
    crash_before_the_stream_is_recorded("native").await;
}

#[tokio::test]
async fn slack_crash_before_the_stream_is_recorded_finishes_it_with_the_answer() {
    crash_before_the_stream_is_recorded("off").await;
}

// --- Discord ---------------------------------------------------------------------------------

mod discord {
    use std::time::{Duration, Instant};

    use super::common::server::Server;
    use ecdysis_testkit::discord::{FakeDiscord, Posted, TOKEN};
    use ecdysis_testkit::llm::FakeLlm;

    pub struct Env {
        pub discord: FakeDiscord,
        pub llm: FakeLlm,
        pub server: Server,
        _dir: tempfile::TempDir,
    }

    pub async fn start() -> Env {
        let discord = FakeDiscord::start().await.unwrap();
        let llm = FakeLlm::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let api = discord.url();
        let llm_url = llm.anthropic_base_url();
        let env: Vec<(&str, &str)> = vec![
            ("DISCORD_TOKEN", TOKEN),
            ("DISCORD_API_URL", &api),
            (
                "DISCORD_APPLICATION_ID",
                ecdysis_testkit::discord::APPLICATION_ID,
            ),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            // DMs from anyone (Discord's default is pairing; that has its own tests).
            ("ECDYSIS_DM_POLICY", "open"),
        ];
        let server = Server::start(dir.path(), &env).await;
        assert!(discord.wait_identified(1).await, "{}", server.log());
        Env {
            discord,
            llm,
            server,
            _dir: dir,
        }
    }

    /// Wait until the messages `check` picks are there.
    pub async fn wait_for(env: &Env, what: &str, check: impl Fn(&[Posted]) -> bool) -> Vec<Posted> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let posted = env.discord.posted();
            if check(&posted) {
                return posted;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {posted:#?}\n{}",
                env.server.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A long answer with a code block: more than 2,000 characters, so it takes two messages.
fn long_answer() -> String {
    let mut text = String::from("The script:\n```python\n");
    for i in 0..70 {
        text.push_str(&format!("print('line {i} of the long example')\n"));
    }
    text.push_str("```\nRun it with python3.");
    text
}

#[tokio::test]
async fn discord_posts_then_edits_and_splits_without_breaking_code() {
    let env = discord::start().await;
    let answer = long_answer();
    assert!(answer.chars().count() > 2_000);
    // About four seconds of answer.
    env.llm.push(
        Llm::tool("memory_search", json!({ "query": "python" })).paced(Duration::from_millis(20)),
    );
    env.llm
        .push(Llm::text(answer.clone()).paced(Duration::from_millis(6)));
    env.discord.say_in_dm("write me a long script");
    let pieces = ecdysis_chat::split_text(&answer, ecdysis_discord::MAX_MESSAGE_CHARS);
    assert_eq!(pieces.len(), 2);
    let posted = discord::wait_for(&env, "the answer in two finished messages", |posted| {
        let mine: Vec<_> = posted.iter().filter(|p| p.via == "message").collect();
        mine.len() == 2 && mine[0].content == pieces[0] && mine[1].content == pieces[1]
    })
    .await;
    let mine: Vec<_> = posted.iter().filter(|p| p.via == "message").collect();
    for message in &mine {
        assert_eq!(message.channel, ecdysis_testkit::discord::DM_CHANNEL_ID);
        assert_eq!(
            message.content.matches("```").count() % 2,
            0,
            "{}",
            message.content
        );
        assert!(message.content.chars().count() <= 2_000);
    }
    // The first message was posted early and edited as the answer grew, never faster than
    // about once a second (the final edit aside).
    let edits: Vec<_> = env
        .discord
        .edits()
        .into_iter()
        .filter(|e| e.message_id == mine[0].id)
        .collect();
    assert!(edits.len() >= 2, "{edits:#?}");
    for pair in edits[..edits.len() - 1].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(900), "edits {gap:?} apart");
    }
    // The tool line showed while the model worked.
    let first_post = env
        .discord
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/messages"))
        .expect("a post");
    assert!(
        first_post.json["content"]
            .as_str()
            .unwrap_or_default()
            .contains("searching memory"),
        "{:?}",
        first_post.json
    );
}

#[tokio::test]
async fn discord_slash_command_streams_into_its_deferred_response() {
    let env = discord::start().await;
    env.llm
        .push(Llm::text(slack::answer()).paced(Duration::from_millis(25)));
    let (_, token) = env.discord.slash(
        ecdysis_testkit::discord::CHANNEL_ID,
        "ask",
        json!([{ "name": "question", "type": 3, "value": "why is the sky blue?" }]),
    );
    let answer = slack::answer();
    discord::wait_for(&env, "the finished response", |posted| {
        posted.iter().any(|p| {
            p.via == "original" && p.token.as_deref() == Some(token.as_str()) && p.content == answer
        })
    })
    .await;
    let edits = env
        .discord
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.contains(&token))
        .count();
    assert!(edits >= 3, "the deferred response grew in {edits} edits");
    assert!(
        env.discord
            .posted()
            .iter()
            .all(|p| p.via != "followup" && p.via != "message"),
        "one response, no extra messages"
    );
}

// --- Terminal --------------------------------------------------------------------------------

/// `ecdysis chat` prints the answer as it arrives (the first words long before the last), the
/// tool line on a line of its own, and the answer once.
#[tokio::test]
async fn terminal_prints_as_it_arrives() {
    use std::io::{Read, Write};

    let fake = FakeLlm::start().await.unwrap();
    let pace = Duration::from_millis(20);
    fake.push(Llm::tool("memory_search", json!({ "query": "sky" })).paced(pace));
    fake.push(Llm::text(slack::answer()).paced(pace));
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("chat")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_SANDBOX", "off")
        .env("ECDYSIS_MODEL", "anthropic/claude-test")
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("ANTHROPIC_BASE_URL", fake.anthropic_base_url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"why is the sky blue?\n")
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read on a thread, noting when each piece of output arrived.
    let reader = std::thread::spawn(move || {
        let mut pieces: Vec<(std::time::Instant, String)> = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            pieces.push((
                std::time::Instant::now(),
                String::from_utf8_lossy(&buffer[..n]).into_owned(),
            ));
        }
        pieces
    });
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let pieces = reader.join().unwrap();
    let output: String = pieces.iter().map(|(_, p)| p.as_str()).collect();
    let answer = slack::answer();
    assert_eq!(output.matches(answer.as_str()).count(), 1, "{output}");
    assert!(output.contains("… searching memory\n"), "{output}");
    let first = pieces
        .iter()
        .find(|(_, p)| p.contains("Reason"))
        .map(|(at, _)| *at)
        .expect("the answer printed");
    let last = pieces.last().unwrap().0;
    assert!(
        last - first > Duration::from_millis(500),
        "the answer printed all at once ({:?})",
        last - first
    );
}

// --- The web chat page -----------------------------------------------------------------------

/// Chromium, or `None` (skip) on a laptop without it; in CI its absence fails.
fn chromium() -> Option<std::path::PathBuf> {
    match ecdysis::browser::find_chromium(&ecdysis::config::BrowserSettings {
        chromium: std::env::var_os("ECDYSIS_CHROMIUM").map(std::path::PathBuf::from),
        ..ecdysis::config::BrowserSettings::default()
    }) {
        Some(path) => Some(path),
        None if std::env::var_os("CI").is_some() => {
            panic!("Chromium is missing: .ci/run must install it (apt-get install chromium)")
        }
        None => {
            eprintln!("skipping: no Chromium on PATH (apt-get install chromium)");
            None
        }
    }
}

/// The page renders an answer's Markdown (code block, list, table, link) as elements, and HTML
/// written by the model or a user only as text: no element of it reaches the DOM.
#[tokio::test]
async fn web_page_renders_markdown_and_never_html() {
    let Some(chromium) = chromium() else {
        return;
    };
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &model_env(&fake, Wire::Anthropic)).await;
    let markdown = "**Steps** for [the docs](https://example.com/docs):\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nlet x = \"<b>not bold</b>\";\n```\nBeware <img src=x onerror=\"document.title='pwned'\"> and <script>document.title='pwned'</script>.";
    fake.push(Llm::text(markdown));
    server
        .ask("md", "show me <b>my</b> <img src=y onerror=alert(1)>")
        .await;
    let dom = rendered_log(&chromium, &format!("{}/#md", server.base)).await;
    assert!(dom.contains("<strong>Steps</strong>"), "{dom}");
    assert!(
        dom.contains(r#"<a href="https://example.com/docs" rel="noopener noreferrer" target="_blank">the docs</a>"#),
        "{dom}"
    );
    assert!(dom.contains("<li>one</li><li>two</li>"), "{dom}");
    assert!(
        dom.contains("<th>a</th>") && dom.contains("<td>2</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<pre><code>let x = \"&lt;b&gt;not bold&lt;/b&gt;\";</code></pre>"),
        "{dom}"
    );
    // The HTML is text, in the answer and in the user's message.
    assert!(dom.contains("&lt;img src=x onerror="), "{dom}");
    assert!(dom.contains("&lt;script&gt;"), "{dom}");
    assert!(dom.contains("&lt;b&gt;my&lt;/b&gt;"), "{dom}");
    assert!(
        !dom.contains("<img src=\"x\"") && !dom.contains("<img src=\"y\""),
        "{dom}"
    );
    assert!(!dom.contains("pwned</title>"), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
}

/// Open `url` in a headless Chromium and return the chat log's HTML once an answer shows.
async fn rendered_log(chromium: &std::path::Path, url: &str) -> String {
    use std::io::BufRead;

    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ws = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split_once("DevTools listening on ")
                    .map(|(_, url)| url.trim().to_string())
            })
    })
    .await
    .unwrap()
    .expect("Chromium's DevTools address");
    let browser = ecdysis::browser::cdp::Browser::connect(&ws, Duration::from_secs(30))
        .await
        .unwrap();
    let page = browser.new_page(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), page.navigate(url))
        .await
        .expect("the chat page loads in time")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let html = loop {
        let html: String = page
            .evaluate("document.getElementById('log').innerHTML")
            .await
            .unwrap();
        if html.contains("msg assistant") || std::time::Instant::now() > deadline {
            break html;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    browser.disconnect();
    let _ = child.kill();
    let _ = child.wait();
    html
}
