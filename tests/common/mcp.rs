//! Helpers of the MCP and profile tests: the real MCP servers from PyPI (`mcp-server-time`, and
//! `tests/fixtures/mcp_fixture.py` written with the `mcp` SDK), and an in-process app with a
//! config file, the fake LLM and a capturing adapter.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis::bus::Workers;
use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis::storage::store::Role;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply, UserRef,
};

/// The fixture server script.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_fixture.py")
}

/// True when the Python MCP servers are installed (`.ci/services.sh` installs them). Missing
/// in CI is a failure; on a laptop the test skips with a note.
pub fn python_servers() -> bool {
    let sdk = Command::new("python3")
        .args(["-c", "import mcp.server.mcpserver, uvicorn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let time = Command::new("mcp-server-time")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ecdysis_testkit::prerequisite::prerequisite(
        sdk && time,
        &format!("the Python MCP servers (mcp: {sdk}, mcp-server-time: {time})"),
        "pip install mcp mcp-server-time, or source .ci/services.sh",
    )
}

/// A directory with the `mcp` SDK for `/usr/bin/python3` that the sandbox's users can read
/// (`.ci/services.sh` installs it and exports `ECDYSIS_TEST_SANDBOX_PYTHONPATH`): sandboxed
/// servers cannot reach a Python installed under a private home directory.
pub fn sandbox_pythonpath() -> Option<String> {
    let dir = crate::common::service("ECDYSIS_TEST_SANDBOX_PYTHONPATH")?;
    let works = Command::new("/usr/bin/python3")
        .args(["-c", "import mcp.server.mcpserver"])
        .env("PYTHONPATH", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ecdysis_testkit::prerequisite::prerequisite(
        works,
        &format!("the `mcp` SDK for /usr/bin/python3 in {dir}"),
        "source .ci/services.sh",
    )
    .then_some(dir)
}

/// A streamable-HTTP fixture server on 127.0.0.1, killed on drop.
pub struct HttpFixture {
    child: Child,
    pub url: String,
}

impl HttpFixture {
    pub fn start(extra: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(fixture())
            .arg("http")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the HTTP fixture");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the fixture's port");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the fixture printed {line:?}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[[mcp]]` entry of a stdio fixture server.
pub fn stdio_fixture_entry(name: &str, extra: &str) -> String {
    format!(
        "[[mcp]]\nname = \"{name}\"\ncommand = \"python3\"\nargs = [{:?}, \"stdio\"{}]\n",
        fixture().display().to_string(),
        extra
    )
}

/// Replies delivered to the `test` platform.
#[derive(Default)]
pub struct Capture {
    pub replies: Mutex<Vec<Reply>>,
}

#[async_trait]
impl ChatAdapter for Capture {
    fn platform(&self) -> &str {
        "test"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        self.replies.lock().unwrap().push(reply.clone());
        Ok(Delivered::default())
    }
}

/// An app from a config file and environment, with its bus running and a `test` adapter.
pub struct Harness {
    pub app: App,
    workers: Option<Workers>,
    pub capture: Arc<Capture>,
    next: std::sync::atomic::AtomicU64,
}

impl Harness {
    pub async fn start(dir: &Path, toml: &str, env: &[(&str, String)]) -> Self {
        let path = dir.join("ecdysis.toml");
        std::fs::write(&path, toml).unwrap();
        let mut vars: std::collections::HashMap<String, String> = [
            ("ECDYSIS_DATA_DIR", dir.join("data").display().to_string()),
            ("ECDYSIS_SANDBOX", "off".to_string()),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".to_string()),
            ("ECDYSIS_BUS_WORKERS", "4".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let config = Config::load_with(Some(&path), &|name| vars.get(name).cloned()).unwrap();
        let app = App::open(config).await.unwrap();
        let capture = Arc::new(Capture::default());
        app.bus.register_adapter(capture.clone());
        let workers = app.bus.start().await.unwrap();
        Self {
            app,
            workers: Some(workers),
            capture,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        self.app.mcp.shutdown().await;
    }

    /// Send `text` as user U1 and wait for the stored answer: (event id, answer text).
    pub async fn ask(&self, conversation: &ConversationRef, text: &str) -> (i64, String) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = Event::from_text(
            format!("ev-{}-{n}", uuid::Uuid::new_v4().simple()),
            conversation.clone(),
            UserRef {
                id: "U1".into(),
                name: None,
            },
            text,
        );
        let accepted = self.app.bus.submit(event).await.unwrap();
        let id: ecdysis::storage::store::EventId = accepted.event_id.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let messages = self
                .app
                .store
                .messages(conversation, ecdysis::storage::store::MessageId(0), 100_000)
                .await
                .unwrap();
            if let Some(answer) = messages
                .iter()
                // Not an approval prompt the event posted while it ran (it carries buttons).
                .find(|m| {
                    m.role == Role::Assistant
                        && m.event_id == Some(id)
                        && m.meta
                            .as_deref()
                            .is_none_or(|meta| !meta.contains("\"buttons\""))
                })
            {
                return (id.0, answer.text.clone());
            }
            assert!(Instant::now() < deadline, "no answer to event {id}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The replies delivered for one event's conversation that carry files.
    pub fn delivered_files(&self, conversation: &ConversationRef) -> Vec<(String, String)> {
        self.capture
            .replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &r.conversation == conversation)
            .flat_map(|r| {
                r.attachments
                    .iter()
                    .map(|a| (a.name.clone(), a.mime.clone()))
            })
            .collect()
    }

    /// Wait until the MCP server `name` is up.
    pub async fn wait_up(&self, name: &str) {
        assert!(
            self.app.mcp.wait_up(name, Duration::from_secs(60)).await,
            "MCP server {name} did not come up: {:?}",
            self.app.mcp.status()
        );
    }
}
