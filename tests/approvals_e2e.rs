//! Approvals end to end: with `sandbox.require_approval`, the model's `run_command` posts a
//! prompt with Approve / Deny buttons into the conversation and waits; a button press from the
//! web chat answers it without queueing behind the waiting event.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use serde_json::{Value, json};

fn sandbox_available() -> bool {
    common::sandbox::sandbox_ready()
}

async fn start(fake: &FakeLlm, dir: &std::path::Path) -> Server {
    let base = fake.anthropic_base_url();
    Server::start(
        dir,
        &[
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &base),
            ("ECDYSIS_SANDBOX", "namespace"),
            ("ECDYSIS_SANDBOX_REQUIRE_APPROVAL", "true"),
            ("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "20"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ],
    )
    .await
}

/// Wait for a message with buttons; return its buttons.
async fn wait_for_buttons(server: &Server, conversation: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let messages = server.messages(conversation).await;
        if let Some(m) = messages.iter().find(|m| m["buttons"].is_array()) {
            return m["buttons"].as_array().unwrap().clone();
        }
        assert!(
            Instant::now() < deadline,
            "no approval prompt: {messages:#?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn press(server: &Server, conversation: &str, button: &Value, user: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/api/chat/{conversation}/actions", server.base))
        .json(&json!({ "action_id": button["action_id"], "value": button["value"], "user": user }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_approved_command_runs_and_a_denied_one_does_not() {
    if !sandbox_available() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&fake, dir.path()).await;

    // Approved.
    fake.push(Reply::tool(
        "run_command",
        json!({ "command": "echo approved-$((6*7))" }),
    ));
    fake.push(Reply::text("It printed approved-42."));
    server.say("ops", "please run the check").await;
    let buttons = wait_for_buttons(&server, "ops").await;
    assert_eq!(buttons.len(), 2);
    assert_eq!(buttons[0]["label"], "Approve");
    assert_eq!(press(&server, "ops", &buttons[0], "alice").await, 202);
    let messages = server.wait_replies("ops", 2).await;
    let last = messages.last().unwrap()["text"].as_str().unwrap();
    assert_eq!(last, "It printed approved-42.");
    // The model saw the command's real output.
    let requests = fake.requests();
    let tool_result = requests.last().unwrap().body.to_string();
    assert!(tool_result.contains("approved-42"), "{tool_result}");

    // Denied: the command never runs, and the model is told so.
    fake.push(Reply::tool(
        "run_command",
        json!({ "command": "echo should-not-run > out/ran.txt" }),
    ));
    fake.push(Reply::text("Understood, I did not run it."));
    server.say("ops2", "run something risky").await;
    let buttons = wait_for_buttons(&server, "ops2").await;
    assert_eq!(press(&server, "ops2", &buttons[1], "bob").await, 202);
    let messages = server.wait_replies("ops2", 2).await;
    assert!(
        messages
            .iter()
            .all(|m| m["attachments"].as_array().unwrap().is_empty())
    );
    let tool_result = fake.requests().last().unwrap().body.to_string();
    assert!(
        tool_result.contains("denied") || tool_result.contains("not approved"),
        "{tool_result}"
    );
    assert!(!tool_result.contains("should-not-run\\n"), "{tool_result}");

    // A stale button: answered clearly, nothing breaks.
    assert_eq!(press(&server, "ops2", &buttons[0], "bob").await, 202);
}
