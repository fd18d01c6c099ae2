//! MCP benchmark, with the `mcp` SDK fixture server (`tests/fixtures/mcp_fixture.py`) on this
//! machine.
//!
//! 1. Call → result of a trivial tool (`echo`) through the tool the model calls
//!    (`fx__echo`: ecdysis's client, rmcp, the transport, the Python server, the result
//!    conversion), over stdio and over streamable HTTP: p50/p99 of sequential calls. Each is
//!    paired with a bare JSON-RPC call of the same tool on a second connection to the same
//!    server (a line on a pipe; one kept-alive HTTP POST): the server's own time plus the bare
//!    transport. The difference is ecdysis's overhead (the target: p99 ≤ 5 ms).
//! 2. Start-up to `/readyz` with 5 stdio servers configured, 2 of which never answer
//!    `initialize`: ready must not wait for them.
//!
//! Run: `cargo bench --bench mcp` (needs `pip install mcp`; prints the load average).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::path::Path;
use std::time::{Duration, Instant};

use ecdysis::config::Config;
use ecdysis::engine::tools::{ToolContext, ToolSource};
use ecdysis::mcp::{Health, McpHub};
use ecdysis::server::app::App;
use ecdysis_chat::ConversationRef;
use serde_json::json;

const CALLS: usize = 500;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mcp_fixture.py")
        .display()
        .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `a - b` in milliseconds, with its sign (a difference of percentiles can be negative).
fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn config(dir: &Path, toml: &str) -> Config {
    let path = dir.join("ecdysis.toml");
    std::fs::write(&path, toml).expect("write config");
    let data = dir.join("data").display().to_string();
    Config::load_with(Some(&path), &|name| match name {
        "ECDYSIS_DATA_DIR" => Some(data.clone()),
        "ECDYSIS_SANDBOX" => Some("off".into()),
        "ECDYSIS_CHROMIUM" => Some("/nonexistent/chromium".into()),
        "ECDYSIS_LISTEN" => Some("127.0.0.1:0".into()),
        _ => None,
    })
    .expect("config")
}

/// A second connection to the same server that sends `tools/call` as bare JSON-RPC: what the
/// server itself takes, plus the transport and nothing else.
enum Bare {
    Stdio {
        _child: tokio::process::Child,
        stdin: tokio::process::ChildStdin,
        stdout: Box<tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>>,
        next_id: u64,
    },
    Http {
        http: reqwest::Client,
        url: String,
        session: String,
        next_id: u64,
    },
}

const INITIALIZE: &str = r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bare","version":"1"}}"#;

impl Bare {
    async fn stdio() -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .arg(fixture())
            .arg("stdio")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the stdio fixture");
        let stdin = child.stdin.take().expect("stdin");
        let stdout =
            Box::new(tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines());
        let mut bare = Bare::Stdio {
            _child: child,
            stdin,
            stdout,
            next_id: 0,
        };
        bare.request("initialize", INITIALIZE).await;
        bare.notify("notifications/initialized").await;
        bare
    }

    async fn http(url: &str) -> Self {
        let http = reqwest::Client::new();
        // The fixture prints its port just before it starts accepting.
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            let sent = http
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(format!(
                    r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{INITIALIZE}}}"#
                ))
                .send()
                .await;
            match sent {
                Ok(answer) => break answer,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("initialize: {e}"),
            }
        };
        let session = answer
            .headers()
            .get("mcp-session-id")
            .expect("a session id")
            .to_str()
            .expect("ascii")
            .to_string();
        answer.text().await.expect("initialize answer");
        let mut bare = Bare::Http {
            http,
            url: url.to_string(),
            session,
            next_id: 1,
        };
        bare.notify("notifications/initialized").await;
        bare
    }

    async fn notify(&mut self, method: &str) {
        let line = format!(r#"{{"jsonrpc":"2.0","method":"{method}"}}"#);
        match self {
            Bare::Stdio { stdin, .. } => {
                use tokio::io::AsyncWriteExt;
                stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .expect("write");
            }
            Bare::Http {
                http, url, session, ..
            } => {
                http.post(url.as_str())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-session-id", session.as_str())
                    .body(line)
                    .send()
                    .await
                    .expect("notify")
                    .text()
                    .await
                    .expect("notify answer");
            }
        }
    }

    /// One request; the answer's text.
    async fn request(&mut self, method: &str, params: &str) -> String {
        match self {
            Bare::Stdio {
                stdin,
                stdout,
                next_id,
                ..
            } => {
                use tokio::io::AsyncWriteExt;
                *next_id += 1;
                let id = format!(r#""id":{next_id}"#);
                let line =
                    format!(r#"{{"jsonrpc":"2.0",{id},"method":"{method}","params":{params}}}"#);
                stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .expect("write");
                loop {
                    let answer = stdout.next_line().await.expect("read").expect("a line");
                    if answer.contains(&id) {
                        return answer;
                    }
                }
            }
            Bare::Http {
                http,
                url,
                session,
                next_id,
            } => {
                *next_id += 1;
                http.post(url.as_str())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-session-id", session.as_str())
                    .header("mcp-protocol-version", "2025-06-18")
                    .body(format!(
                        r#"{{"jsonrpc":"2.0","id":{next_id},"method":"{method}","params":{params}}}"#
                    ))
                    .send()
                    .await
                    .expect("call")
                    .text()
                    .await
                    .expect("call answer")
            }
        }
    }

    async fn echo(&mut self, text: &str) -> String {
        self.request(
            "tools/call",
            &json!({ "name": "echo", "arguments": { "text": text } }).to_string(),
        )
        .await
    }
}

/// Sequential `fx__echo` calls through the hub's tool, each followed by the same call over the
/// bare connection: both sorted durations.
async fn echo_calls(hub: &McpHub, bare: &mut Bare) -> (Vec<Duration>, Vec<Duration>) {
    let conversation = ConversationRef::new("bench", "W", "C", None);
    let tools = hub.tools_for(&conversation);
    let echo = tools
        .iter()
        .find(|t| t.tool.name() == "fx__echo")
        .expect("fx__echo is listed")
        .tool
        .clone();
    let context = ToolContext {
        event_id: 1,
        step: 1,
        conversation,
        user_id: "U".into(),
        route: serde_json::Value::Null,
        poster: ecdysis::bus::Poster::detached(),
    };
    for _ in 0..20 {
        echo.call(&context, json!({ "text": "warm up" }))
            .await
            .expect("echo");
        bare.echo("warm up").await;
    }
    let mut times = Vec::with_capacity(CALLS);
    let mut bare_times = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let started = Instant::now();
        let out = echo
            .call(&context, json!({ "text": format!("call {i}") }))
            .await
            .expect("echo");
        times.push(started.elapsed());
        assert!(out.text.contains(&format!("call {i}")), "{}", out.text);
        let started = Instant::now();
        let answer = bare.echo(&format!("bare {i}")).await;
        bare_times.push(started.elapsed());
        assert!(answer.contains(&format!("bare {i}")), "{answer}");
    }
    times.sort();
    bare_times.sort();
    (times, bare_times)
}

async fn transport(label: &str, toml: String, mut bare: Bare) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &toml);
    let hub = McpHub::start(&config.mcp, None, None);
    assert!(
        hub.wait_up("fx", Duration::from_secs(60)).await,
        "{label}: {:?}",
        hub.status()
    );
    let (times, bare) = echo_calls(&hub, &mut bare).await;
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let (bare50, bare99) = (percentile(&bare, 0.5), percentile(&bare, 0.99));
    println!(
        "{label}: fx__echo call → result over {CALLS} calls: p50 {}, p99 {}, max {}; bare JSON-RPC echo (the server's own time + transport): p50 {}, p99 {}; ecdysis overhead: p50 {}, p99 {} (load {})",
        ms(p50),
        ms(p99),
        ms(*times.last().expect("calls")),
        ms(bare50),
        ms(bare99),
        signed_ms(p50, bare50),
        signed_ms(p99, bare99),
        load()
    );
    hub.shutdown().await;
}

async fn startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = String::new();
    for i in 0..3 {
        toml.push_str(&format!(
            "[[mcp]]\nname = \"fx{i}\"\ncommand = \"python3\"\nargs = [{:?}, \"stdio\"]\n",
            fixture()
        ));
    }
    for i in 0..2 {
        // A server that starts but never answers `initialize`.
        toml.push_str(&format!(
            "[[mcp]]\nname = \"slow{i}\"\ncommand = \"sleep\"\nargs = [\"120\"]\n"
        ));
    }
    let started = Instant::now();
    let config = config(dir.path(), &toml);
    let app = App::open(config).await.expect("open");
    let router = app.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/readyz", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let workers = app.bus.start().await.expect("bus");
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = started.elapsed();
    let starting_at_ready = app
        .mcp
        .status()
        .iter()
        .filter(|s| s.health == Health::Starting)
        .count();
    for i in 0..3 {
        assert!(
            app.mcp
                .wait_up(&format!("fx{i}"), Duration::from_secs(60))
                .await
        );
    }
    let all_up = started.elapsed();
    let slow_still_starting = app
        .mcp
        .status()
        .iter()
        .filter(|s| s.name.starts_with("slow") && s.health == Health::Starting)
        .count();
    println!(
        "start-up with 5 stdio MCP servers (2 never answer): /readyz 200 after {} with {starting_at_ready} server(s) still starting; the 3 working servers up after {}; slow servers still starting: {slow_still_starting} (load {})",
        ms(ready),
        ms(all_up),
        load()
    );
    workers.shutdown(Duration::from_secs(5)).await;
    app.mcp.shutdown().await;
    server.abort();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        transport(
            "stdio",
            format!(
                "[[mcp]]\nname = \"fx\"\ncommand = \"python3\"\nargs = [{:?}, \"stdio\"]\n",
                fixture()
            ),
            Bare::stdio().await,
        )
        .await;
        for (label, extra) in [
            ("http (SSE answers)", None),
            ("http (JSON answers)", Some("--json-response")),
        ] {
            let mut child = std::process::Command::new("python3")
                .arg(fixture())
                .arg("http")
                .args(extra)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the HTTP fixture");
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
                &mut line,
            )
            .expect("port");
            let port = line.trim().trim_start_matches("PORT ").to_string();
            let url = format!("http://127.0.0.1:{port}/mcp");
            transport(
                label,
                format!("[[mcp]]\nname = \"fx\"\nurl = \"{url}\"\n"),
                Bare::http(&url).await,
            )
            .await;
            let _ = child.kill();
            let _ = child.wait();
        }
        startup().await;
    });
}
