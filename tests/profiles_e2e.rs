//! Agent profiles end to end: the profile in force per channel decides the instructions, the
//! model (and so the wire format), the tools the model is offered (MCP tools included: a server
//! listing 200 tools offers only the allowed ones), shared memory, `/status` and `/run`. The
//! assertions read the fake LLM's recorded requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use common::mcp::{Harness, python_servers, stdio_fixture_entry};
use ecdysis_chat::ConversationRef;
use ecdysis_testkit::llm::{Api, FakeLlm, Recorded};
use serde_json::Value;

fn env(fake: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![
        ("ECDYSIS_MODEL", "anthropic/claude-default".to_string()),
        ("ANTHROPIC_API_KEY", "test-anthropic-key".to_string()),
        ("ANTHROPIC_BASE_URL", fake.anthropic_base_url()),
        ("OPENAI_API_KEY", "test-openai-key".to_string()),
        ("OPENAI_BASE_URL", fake.openai_base_url()),
    ]
}

fn conv(channel: &str) -> ConversationRef {
    ConversationRef::new("test", "W1", channel, None)
}

/// The request whose last message contained `needle`.
fn request_with(fake: &FakeLlm, needle: &str) -> Recorded {
    fake.requests()
        .into_iter()
        .find(|r| r.last_message_text().contains(needle))
        .unwrap_or_else(|| panic!("no request with {needle:?}"))
}

/// The system prompt of a request, in either wire format.
fn system_text(r: &Recorded) -> String {
    match r.api {
        Api::Anthropic => r.body["system"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        Api::OpenAi => r.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The tool names a request offered, in either wire format.
fn tool_names(r: &Recorded) -> Vec<String> {
    let tools = r.body["tools"].as_array().cloned().unwrap_or_default();
    tools
        .iter()
        .filter_map(|t| {
            t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str())
                .map(str::to_string)
        })
        .collect()
}

const PROFILES: &str = r#"
[[profile]]
name = "support"
channels = ["test:support"]
instructions = "Answer only from the product docs."
model = "anthropic/claude-support"
tools = ["memory_search"]
sandbox = false

[[profile]]
name = "ops"
channels = ["test:W1:*"]
instructions = "You may run commands."
model = "openai/gpt-ops"

[[profile]]
name = "shared"
channels = ["test:m1", "test:m2"]
memory = "profile"
"#;

#[tokio::test]
async fn each_channel_gets_its_profiles_instructions_model_and_tools() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), PROFILES, &env(&fake)).await;
    h.ask(&conv("support"), "support question one").await;
    h.ask(&conv("support"), "support question two").await;
    h.ask(&conv("deploys"), "ops question").await;
    h.ask(
        &ConversationRef::new("other", "W9", "x", None),
        "default question",
    )
    .await;

    let support = request_with(&fake, "support question one");
    assert_eq!(support.api, Api::Anthropic);
    assert_eq!(support.body["model"], "claude-support");
    let system = system_text(&support);
    assert!(
        system.ends_with("Answer only from the product docs."),
        "{system}"
    );
    assert!(!system.contains("You may run commands."));
    assert_eq!(tool_names(&support), ["memory_search"]);
    // Stable per profile: the second turn's system prompt is the same (prompt caching).
    let again = request_with(&fake, "support question two");
    assert_eq!(
        support.body["system"][0]["text"],
        again.body["system"][0]["text"]
    );

    // The workspace pattern claims `deploys`; its model speaks the OpenAI wire format.
    let ops = request_with(&fake, "ops question");
    assert_eq!(ops.api, Api::OpenAi);
    assert_eq!(ops.body["model"], "gpt-ops");
    assert!(system_text(&ops).ends_with("You may run commands."));
    assert_eq!(
        tool_names(&ops),
        [
            "memory_search",
            "memory_save",
            "memory_forget",
            "schedule_create",
            "schedule_list",
            "schedule_cancel"
        ]
    );

    let default = request_with(&fake, "default question");
    assert_eq!(default.api, Api::Anthropic);
    assert_eq!(default.body["model"], "claude-default");
    assert!(!system_text(&default).contains("Instructions for this channel"));
    h.stop().await;
}

#[tokio::test]
async fn status_run_and_shared_memory_follow_the_profile() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), PROFILES, &env(&fake)).await;
    let (_, status) = h.ask(&conv("support"), "/status").await;
    assert!(status.contains("Profile: support ("), "{status}");
    assert!(
        status.contains("Model: anthropic/claude-support"),
        "{status}"
    );
    let (_, run) = h.ask(&conv("support"), "/run ls").await;
    assert_eq!(run, "`/run` is off in this channel (profile `support`).");
    // Elsewhere `/run` answers as the server is configured (no sandbox in tests).
    let (_, run) = h.ask(&conv("deploys"), "/run ls").await;
    assert!(!run.contains("profile"), "{run}");

    // `memory = "profile"`: the profile's channels share their notes; others do not see them.
    let (_, saved) = h
        .ask(&conv("m1"), "/remember the deploy window is Tuesday")
        .await;
    assert!(saved.starts_with("Remembered as #"), "{saved}");
    let (_, found) = h.ask(&conv("m2"), "/recall deploy window").await;
    assert!(found.contains("the deploy window is Tuesday"), "{found}");
    let (_, other) = h.ask(&conv("m3"), "/recall deploy window").await;
    assert!(other.starts_with("No note"), "{other}");
    h.stop().await;
}

#[tokio::test]
async fn only_the_profiles_allowed_mcp_tools_reach_the_model() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[[profile]]\nname = \"narrow\"\nchannels = [\"test:narrow\"]\ntools = [\"memory_search\", \"big__tool_01*\", \"big__echo\"]\n",
        stdio_fixture_entry("big", ", \"--tools\", \"200\"")
    );
    let h = Harness::start(dir.path(), &toml, &env(&fake)).await;
    h.wait_up("big").await;
    let listed = match &h.app.mcp.status()[0].health {
        ecdysis::mcp::Health::Up { tools } => *tools,
        other => panic!("{other:?}"),
    };
    assert!(listed >= 205, "{listed}");
    h.ask(&conv("narrow"), "narrow question").await;
    h.ask(&conv("wide"), "wide question").await;
    let narrow = tool_names(&request_with(&fake, "narrow question"));
    let mut expected = vec!["memory_search".to_string()];
    expected.push("big__echo".into());
    expected.extend((10..20).map(|i| format!("big__tool_0{i}")));
    let mut got = narrow.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    // Without a profile every tool is offered, the server's schemas included.
    let wide = request_with(&fake, "wide question");
    let wide_names = tool_names(&wide);
    // The memory and schedule tools (three each), then every listed MCP tool.
    assert_eq!(wide_names.len(), 6 + listed, "{wide_names:?}");
    let schema: &Value = &wide.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "big__tool_199")
        .unwrap()["input_schema"];
    assert!(schema["properties"]["x"].is_object(), "{schema}");
    h.stop().await;
}

#[test]
fn config_mistakes_stop_start_up_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        (
            "[[profile]]\nname = \"p\"\nchannels = [\"*\"]\ntools = [\"memory_serch\"]\n",
            "`profile.p.tools`",
        ),
        (
            "[[profile]]\nname = \"p\"\nchannels = [\"*\"]\nmcp = [\"nowhere\"]\n",
            "`profile.p.mcp`",
        ),
        (
            "[[profile]]\nname = \"a\"\nchannels = [\"slack:C1\"]\n\n[[profile]]\nname = \"b\"\nchannels = [\"slack:C1\"]\n",
            "`profile.b.channels`",
        ),
        ("[[mcp]]\nname = \"x\"\n", "`mcp.x`"),
        (
            "[[mcp]]\nname = \"x\"\ncommand = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
            "`mcp.x`",
        ),
    ] {
        std::fs::write(dir.path().join("bad.toml"), toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
            .args(["--config", "bad.toml", "serve"])
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
            .env("ECDYSIS_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}: {stderr}");
        assert!(stderr.contains(key), "{toml}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{toml}: {stderr}");
    }
}
