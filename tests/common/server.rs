//! A real `ecdysis serve` process for end-to-end tests, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
}

impl Server {
    /// Start `ecdysis serve` with its data under `data_dir` and extra environment.
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(data_dir.to_path_buf(), env, 0).await
    }

    /// Start `serve` listening on `port`; with 0 the kernel picks a free port (no race with
    /// other tests) and the server's "listening" log line says which.
    async fn spawn(data_dir: PathBuf, env: Vec<(String, String)>, port: u16) -> Server {
        let log_path = data_dir.join("serve.log");
        let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecdysis"));
        command
            .arg("serve")
            .current_dir(&data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ECDYSIS_DATA_DIR", data_dir.join("data"))
            .env("ECDYSIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.join("serve.log"))
                    .unwrap(),
            ));
        for (k, v) in &env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start ecdysis serve");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir,
            env,
            port,
        };
        server.wait_ready(log_start).await;
        server
    }

    /// The address this start of `serve` logged it listens on (the log is appended to by
    /// restarts, so only what came after `log_start` counts).
    fn listening_port(&self, log_start: u64) -> Option<u16> {
        const MARK: &str = "web chat at http://";
        let log = std::fs::read(self.data_dir.join("serve.log")).ok()?;
        let text = String::from_utf8_lossy(log.get(log_start as usize..)?);
        let at = text.find(MARK)? + MARK.len();
        let address = text[at..].split('/').next()?;
        address.rsplit_once(':')?.1.parse().ok()
    }

    async fn wait_ready(&mut self, log_start: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited early with {status}:\n{}", self.log());
            }
            if self.port == 0 {
                match self.listening_port(log_start) {
                    Some(port) => {
                        self.port = port;
                        self.base = format!("http://127.0.0.1:{port}");
                    }
                    None => {
                        assert!(
                            Instant::now() < deadline,
                            "serve did not log its address:\n{}",
                            self.log()
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.base)).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("serve.log")).unwrap_or_default()
    }

    /// The process id (bus lease owners start with it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }

    /// Start again on the same port, data and environment.
    pub async fn restart(mut self) -> Server {
        self.kill();
        let data_dir = self.data_dir.clone();
        let env = std::mem::take(&mut self.env);
        let port = self.port;
        drop(self);
        Self::spawn(data_dir, env, port).await
    }

    /// Start again like [`Self::restart`], with these variables set anew.
    pub async fn restart_with(mut self, vars: &[(&str, &str)]) -> Server {
        for (name, value) in vars {
            self.env.retain(|(key, _)| key != name);
            self.env.push((name.to_string(), value.to_string()));
        }
        self.restart().await
    }

    /// With `ECDYSIS_ADMIN_TOKEN` in the environment, the web chat needs it (on loopback too):
    /// the request carries it as a bearer token.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.env.iter().find(|(k, _)| k == "ECDYSIS_ADMIN_TOKEN") {
            Some((_, token)) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn post(&self, conversation: &str, body: serde_json::Value) -> reqwest::Response {
        self.authorize(
            reqwest::Client::new().post(format!("{}/api/chat/{conversation}", self.base)),
        )
        .json(&body)
        .send()
        .await
        .unwrap()
    }

    /// Send a message and return its event id.
    pub async fn say(&self, conversation: &str, text: &str) -> String {
        let r = self
            .post(
                conversation,
                serde_json::json!({ "text": text, "user": "tester" }),
            )
            .await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        let body: serde_json::Value = r.json().await.unwrap();
        body["event_id"].as_str().unwrap().to_string()
    }

    pub async fn messages(&self, conversation: &str) -> Vec<serde_json::Value> {
        let body: serde_json::Value = self
            .authorize(
                reqwest::Client::new()
                    .get(format!("{}/api/chat/{conversation}/messages", self.base)),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["messages"].as_array().unwrap().clone()
    }

    /// Wait until the conversation has `n` assistant messages; return all messages.
    pub async fn wait_replies(&self, conversation: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self.messages(conversation).await;
            let replies = messages.iter().filter(|m| m["role"] == "assistant").count();
            if replies >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{conversation}: {replies} of {n} replies:\n{messages:#?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the event `event_id` (as the POST returned it) has `n` assistant messages;
    /// return them in order. Replies to other events do not count, however late they are.
    pub async fn wait_replies_to(
        &self,
        conversation: &str,
        event_id: &str,
        n: usize,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self.messages(conversation).await;
            let replies: Vec<serde_json::Value> = messages
                .iter()
                .filter(|m| m["role"] == "assistant" && m["event_id"] == event_id)
                .cloned()
                .collect();
            if replies.len() >= n {
                return replies;
            }
            assert!(
                Instant::now() < deadline,
                "{conversation}: {} of {n} replies to event {event_id}:\n{messages:#?}\n{}",
                replies.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Send a message and wait for the reply to it (matched by its event id).
    pub async fn ask(&self, conversation: &str, text: &str) -> String {
        let event_id = self.say(conversation, text).await;
        let reply = self
            .wait_replies_to(conversation, &event_id, 1)
            .await
            .remove(0);
        reply["text"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
