//! MCP servers as tools, end to end with real servers from PyPI: `mcp-server-time` over stdio,
//! and the `mcp` SDK fixture (`tests/fixtures/mcp_fixture.py`) over stdio and streamable HTTP.
//! The fake LLM calls the tools; the tests check what reaches the model and the user, crashes
//! and restarts, time limits, new tools after `list_changed`, and a server that cannot start.
//! Without the Python servers the tests skip on a laptop and fail in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::{Duration, Instant};

use common::mcp::{Harness, HttpFixture, python_servers, stdio_fixture_entry};
use ecdysis::engine::tools::ToolSource;
use ecdysis::mcp::Health;
use ecdysis_chat::ConversationRef;
use ecdysis_testkit::llm::{FakeLlm, Recorded, Reply as Llm};
use serde_json::{Value, json};

fn env(fake: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![
        ("ECDYSIS_MODEL", "anthropic/claude-test".to_string()),
        ("ANTHROPIC_API_KEY", "test-anthropic-key".to_string()),
        ("ANTHROPIC_BASE_URL", fake.anthropic_base_url()),
    ]
}

fn conv(name: &str) -> ConversationRef {
    ConversationRef::new("test", "W1", name, None)
}

/// A scripted model: a message containing `trigger` gets the tool call; anything else (the tool
/// result) gets `RESULT: <what the model read last>`.
fn script(trigger: &'static str, tool: &'static str, input: Value) -> Llm {
    Llm::computed(move |r: &Recorded| {
        let last = r.last_message_text();
        if last.contains(trigger) {
            Llm::tool(tool, input.clone())
        } else {
            Llm::text(format!("RESULT: {last}"))
        }
    })
}

/// The tool names an Anthropic request offered.
fn tool_names(r: &Recorded) -> Vec<String> {
    r.body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The request whose last message contained `needle`.
fn request_with(fake: &FakeLlm, needle: &str) -> Recorded {
    fake.requests()
        .into_iter()
        .find(|r| r.last_message_text().contains(needle))
        .unwrap_or_else(|| panic!("no request with {needle:?}"))
}

#[tokio::test]
async fn stdio_time_server_answers_through_the_model() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(script(
        "what time",
        "time__get_current_time",
        json!({ "timezone": "UTC" }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let toml = "[[mcp]]\nname = \"time\"\ncommand = \"mcp-server-time\"\nargs = [\"--local-timezone\", \"UTC\"]\nchannels = [\"*\"]\n";
    let h = Harness::start(dir.path(), toml, &env(&fake)).await;
    h.wait_up("time").await;
    let (_, answer) = h.ask(&conv("c1"), "what time is it in UTC?").await;
    // The real server's JSON result reached the model, and the model's answer the user.
    assert!(answer.starts_with("RESULT: "), "{answer}");
    assert!(
        answer.contains("\"timezone\"") && answer.contains("UTC") && answer.contains("datetime"),
        "{answer}"
    );
    let first = request_with(&fake, "what time");
    let tools = first.body["tools"].as_array().unwrap();
    let time = tools
        .iter()
        .find(|t| t["name"] == "time__get_current_time")
        .unwrap_or_else(|| panic!("offered: {:?}", tool_names(&first)));
    // The server's own input schema.
    assert!(
        time["input_schema"]["properties"]["timezone"].is_object(),
        "{time}"
    );
    assert!(tool_names(&first).contains(&"time__convert_time".to_string()));
    h.stop().await;
}

#[tokio::test]
async fn http_server_returns_text_and_images() {
    if !python_servers() {
        return;
    }
    let server = HttpFixture::start(&[]);
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(Llm::computed(|r: &Recorded| {
        let last = r.last_message_text();
        if last.contains("please echo") {
            Llm::tools(&[
                ("fx__echo", json!({ "text": "hello over http" })),
                ("fx__image", json!({})),
            ])
        } else {
            Llm::text(format!("RESULT: {last}"))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[mcp]]\nname = \"fx\"\nurl = \"{}\"\nheaders = {{ X-Test-Token = \"fixture-header-secret\" }}\n",
        server.url
    );
    let h = Harness::start(dir.path(), &toml, &env(&fake)).await;
    h.wait_up("fx").await;
    let c = conv("http");
    let (_, answer) = h.ask(&c, "please echo").await;
    assert!(answer.contains("hello over http"), "{answer}");
    assert!(answer.contains("[image fx__image-0.png"), "{answer}");
    // The image was shown to the model…
    let second = request_with(&fake, "hello over http");
    let raw = &second.raw;
    assert!(
        raw.contains("\"type\":\"image\"") && raw.contains("image/png"),
        "{raw}"
    );
    // …and attached to the reply.
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.delivered_files(&c).is_empty() {
        assert!(Instant::now() < deadline, "the image was not delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.delivered_files(&c),
        [("fx__image-0.png".to_string(), "image/png".to_string())]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_crash_mid_call_is_a_tool_error_and_the_server_restarts() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(Llm::computed(|r: &Recorded| {
        let last = r.last_message_text();
        if last.contains("crash now") {
            Llm::tool("fx__crash", json!({}))
        } else if last.contains("echo now") {
            Llm::tool("fx__echo", json!({ "text": "alive again" }))
        } else {
            Llm::text(format!("RESULT: {last}"))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &stdio_fixture_entry("fx", ""), &env(&fake)).await;
    h.wait_up("fx").await;
    let (_, answer) = h.ask(&conv("crash"), "crash now").await;
    assert!(
        answer.contains("the MCP server `fx` stopped while running the tool"),
        "{answer}"
    );
    // The tool result was marked as an error for the model.
    let after = request_with(&fake, "stopped while running");
    assert!(after.raw.contains("\"is_error\":true"), "{}", after.raw);
    // Restarted with backoff; the next call works.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = h.app.mcp.status();
        if status[0].restarts >= 1 && matches!(status[0].health, Health::Up { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, answer) = h.ask(&conv("crash"), "echo now").await;
    assert_eq!(answer, "RESULT: alive again");
    h.stop().await;
}

#[tokio::test]
async fn a_slow_tool_hits_the_time_limit() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(script("be slow", "fx__slow", json!({ "seconds": 60 })));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{}timeout_seconds = 1\n", stdio_fixture_entry("fx", ""));
    let h = Harness::start(dir.path(), &toml, &env(&fake)).await;
    h.wait_up("fx").await;
    let started = Instant::now();
    let (_, answer) = h.ask(&conv("slow"), "be slow").await;
    assert!(
        answer.contains("the MCP server `fx` did not answer within 1 s"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The server is still up: a time limit is not a crash.
    assert!(matches!(h.app.mcp.status()[0].health, Health::Up { .. }));
    h.stop().await;
}

#[tokio::test]
async fn tools_listed_later_are_offered_from_the_next_turn() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(script("add one", "fx__add_tool", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), &stdio_fixture_entry("fx", ""), &env(&fake)).await;
    h.wait_up("fx").await;
    let c = conv("later");
    let (_, answer) = h.ask(&c, "add one").await;
    assert_eq!(answer, "RESULT: added");
    assert!(!tool_names(&request_with(&fake, "add one")).contains(&"fx__late_tool".to_string()));
    // The notification arrives asynchronously: the next turn that starts after it sees the tool.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _) = h.ask(&c, "anything new?").await;
        let last = fake
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.last_message_text().contains("anything new?"))
            .unwrap();
        if tool_names(&last).contains(&"fx__late_tool".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "fx__late_tool never offered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}

/// Processes (of any user) whose command line or environment holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let holds = |file: &str| {
            std::fs::read(entry.path().join(file))
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(marker))
                .unwrap_or(false)
        };
        if holds("cmdline") || holds("environ") {
            found.push(pid);
        }
    }
    found
}

/// What `sandbox_probe` answered, from the model's `RESULT: …` answer.
fn probe(answer: &str) -> Value {
    let start = answer.find('{').unwrap_or_else(|| panic!("{answer}"));
    let end = answer.rfind('}').unwrap_or_else(|| panic!("{answer}"));
    serde_json::from_str(&answer[start..=end]).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[tokio::test]
async fn a_sandboxed_server_runs_in_each_channels_own_sandbox() {
    if !python_servers() || !common::sandbox::sandbox_ready() {
        return;
    }
    let Some(pythonpath) = common::mcp::sandbox_pythonpath() else {
        return;
    };
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(Llm::computed(|r: &Recorded| {
        let last = r.last_message_text();
        if last.contains("PROBE-AND-WRITE") {
            Llm::tool("box__sandbox_probe", json!({ "write": "written in c1" }))
        } else if last.contains("PROBE-ONLY") {
            Llm::tool("box__sandbox_probe", json!({}))
        } else {
            Llm::text(format!("RESULT: {last}"))
        }
    }));
    // The sandbox user passes through the data directory (tempdirs are 0700).
    let dir = common::sandbox::public_tempdir();
    // A host file the server must not see, and a host listener it must not reach.
    let secret = dir.path().join("host-secret.txt");
    std::fs::write(&secret, "host only").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The system python (under /usr, which the sandbox shows) with the `mcp` SDK from a
    // directory mounted read-only, and the fixture script from another (a copy outside /tmp,
    // which the sandbox has its own of).
    let scripts = tempfile::Builder::new()
        .prefix("ecdysis-mcp-fixture")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        scripts.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = scripts.path().join("mcp_fixture.py");
    std::fs::copy(common::mcp::fixture(), &script).unwrap();
    let toml = format!(
        "[[mcp]]\nname = \"box\"\ncommand = \"/usr/bin/python3\"\nargs = [{:?}, \"stdio\"]\nsandbox = true\nmounts = [{:?}, {:?}]\nenv = {{ PYTHONPATH = {:?}, PROBE_PATH = {:?}, PROBE_PORT = \"{port}\" }}\n",
        script.display().to_string(),
        pythonpath,
        scripts.path().display().to_string(),
        pythonpath,
        secret.display().to_string(),
    );
    let mut vars = env(&fake);
    vars.push(("ECDYSIS_SANDBOX", "namespace".into()));
    let h = Harness::start(dir.path(), &toml, &vars).await;
    h.wait_up("box").await;
    let status = h.app.mcp.status();
    assert!(
        status[0]
            .line()
            .contains("in each channel's sandbox, 0 running"),
        "{}",
        status[0].line()
    );

    let c1 = conv("box-c1");
    let (_, answer) = h.ask(&c1, "PROBE-AND-WRITE").await;
    let first = probe(&answer);
    assert_eq!(first["cwd"], "/workspace", "{first}");
    assert_eq!(first["home"], "/workspace", "{first}");
    assert_eq!(first["calls"], 1, "{first}");
    // Its own PID namespace, no host paths beyond the system, no host network.
    assert!(first["pid"].as_u64().unwrap() < 10, "{first}");
    assert_eq!(first["probe_visible"], false, "{first}");
    assert!(
        first["host_listener"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{first}"
    );
    // The file it wrote is in the channel's workspace on the host.
    let workspace = dir
        .path()
        .join("data/workspaces")
        .join(ecdysis::sandbox::channel_key(&c1.channel_ref()));
    assert_eq!(
        std::fs::read_to_string(workspace.join("note.txt")).unwrap(),
        "written in c1"
    );

    // The same process serves the channel's next call and sees its file.
    let (_, answer) = h.ask(&c1, "PROBE-ONLY again").await;
    let second = probe(&answer);
    assert_eq!(second["calls"], 2, "{second}");
    assert_eq!(second["files"], json!(["note.txt"]), "{second}");

    // Another channel: its own process and its own (empty) workspace.
    let c2 = conv("box-c2");
    let (_, answer) = h.ask(&c2, "PROBE-ONLY").await;
    let other = probe(&answer);
    assert_eq!(other["calls"], 1, "{other}");
    assert_eq!(other["files"], json!([]), "{other}");
    assert!(
        h.app.mcp.status()[0]
            .line()
            .contains("in each channel's sandbox, 2 running"),
        "{}",
        h.app.mcp.status()[0].line()
    );

    // Shutting down ends every sandboxed process (listing connection and both channels').
    let marker = secret.display().to_string();
    assert!(!processes_with(&marker).is_empty());
    h.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running after shutdown: {:?}",
            processes_with(&marker)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(listener);
}

#[tokio::test]
async fn a_sandboxed_server_without_a_sandbox_says_why() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(script("PROBE-ONLY", "box__sandbox_probe", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}sandbox = true\n",
        stdio_fixture_entry("box", "").trim_end().to_string() + "\n"
    );
    // The harness runs with ECDYSIS_SANDBOX=off.
    let h = Harness::start(dir.path(), &toml, &env(&fake)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Health::Down { reason } = &h.app.mcp.status()[0].health {
            break reason.clone();
        }
        assert!(Instant::now() < deadline, "{:?}", h.app.mcp.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reason.contains("sandbox = true") && reason.contains("no sandbox"),
        "{reason}"
    );
    // Nothing ran on the host instead, and the rest of ecdysis answers.
    assert!(h.app.mcp.tools_for(&conv("c")).is_empty());
    let (_, answer) = h.ask(&conv("c"), "hello").await;
    assert!(answer.starts_with("RESULT: "), "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_is_reported_and_stops_nothing() {
    let fake = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = "[[mcp]]\nname = \"broken\"\ncommand = \"/nonexistent/mcp-server\"\nenv = { BROKEN_TOKEN = \"do-not-log-this-value\" }\n";
    let h = Harness::start(dir.path(), toml, &env(&fake)).await;
    // The agent still answers (without the server's tools).
    let (_, answer) = h.ask(&conv("broken"), "hello").await;
    assert_eq!(answer, "ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Health::Down { reason } = &h.app.mcp.status()[0].health {
            break reason.clone();
        }
        assert!(Instant::now() < deadline, "{:?}", h.app.mcp.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        reason.contains("cannot start `/nonexistent/mcp-server`"),
        "{reason}"
    );
    // `/status` says which server is down and why.
    let (_, status) = h.ask(&conv("broken"), "/status").await;
    assert!(
        status.contains("MCP broken (stdio `/nonexistent/mcp-server`): down: cannot start"),
        "{status}"
    );
    assert!(!status.contains("do-not-log-this-value"));
    h.stop().await;
}

#[test]
fn doctor_says_which_server_is_down_and_why() {
    let python = python_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from(
        "[[mcp]]\nname = \"broken\"\ncommand = \"/nonexistent/mcp-server\"\nenv = { BROKEN_TOKEN = \"do-not-print-this-value\" }\n",
    );
    if python {
        toml.push_str("[[mcp]]\nname = \"time\"\ncommand = \"mcp-server-time\"\n");
    }
    std::fs::write(dir.path().join("ecdysis.toml"), toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["--config", "ecdysis.toml", "doctor"])
        .current_dir(dir.path())
        .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
        .env("ECDYSIS_SANDBOX", "off")
        .env_remove("DATABASE_URL")
        .env_remove("ECDYSIS_BLOB_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL  mcp        broken (stdio `/nonexistent/mcp-server`): down: cannot start"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("do-not-print-this-value"), "{stdout}");
    if python {
        assert!(
            stdout.contains("ok    mcp        time (stdio `mcp-server-time`): up, 2 tools"),
            "{stdout}"
        );
    }
}

/// Wait for an approval prompt in `conversation` (the `n`th) and press its button `index`
/// (0: Approve, 1: Deny) as user U2.
async fn press(h: &Harness, conversation: &ConversationRef, n: usize, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let button = loop {
        let prompts: Vec<_> = h
            .capture
            .replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &r.conversation == conversation && !r.buttons.is_empty())
            .cloned()
            .collect();
        if let Some(prompt) = prompts.get(n) {
            assert!(prompt.text.contains("`fx__echo`"), "{}", prompt.text);
            break prompt.buttons[index].clone();
        }
        assert!(Instant::now() < deadline, "no approval prompt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let event = ecdysis_chat::Event {
        platform_event_id: format!("press-{}", uuid::Uuid::new_v4().simple()),
        conversation: conversation.clone(),
        user: ecdysis_chat::UserRef {
            id: "U2".into(),
            name: None,
        },
        kind: ecdysis_chat::EventKind::Action {
            action_id: button.action_id,
            value: button.value,
        },
        addressed: ecdysis_chat::Addressed::Direct,
        text: String::new(),
        attachments: Vec::new(),
        remote_files: Vec::new(),
        route: Value::Null,
    };
    ecdysis_chat::EventSink::submit(&h.app.bus, event)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tool_marked_for_approval_waits_for_a_human() {
    if !python_servers() {
        return;
    }
    let fake = FakeLlm::start().await.unwrap();
    fake.set_default(script(
        "may I echo",
        "fx__echo",
        json!({ "text": "approved call" }),
    ));
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{}approval = [\"echo\"]\n", stdio_fixture_entry("fx", ""));
    let h = Harness::start(dir.path(), &toml, &env(&fake)).await;
    h.wait_up("fx").await;
    let c = conv("approve");
    let (answered, ()) = tokio::join!(h.ask(&c, "may I echo?"), press(&h, &c, 0, 0));
    assert_eq!(answered.1, "RESULT: approved call");
    let (denied, ()) = tokio::join!(h.ask(&c, "may I echo again?"), press(&h, &c, 1, 1));
    assert!(
        denied.1.contains("a human denied this call"),
        "{}",
        denied.1
    );
    h.stop().await;
}
