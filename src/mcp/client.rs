//! One MCP server's connection, kept by a background task: connect (spawn the stdio child with a
//! clean environment, or open the streamable-HTTP session), `tools/list`, list again on
//! `notifications/tools/list_changed`, restart with backoff when the server dies, and stop on
//! shutdown. Tool calls go through the current connection with a time limit.
//!
//! A stdio server with `sandbox = true` runs in sandboxes instead ([`crate::sandbox::Session`]):
//! the connection above (for `tools/list` and health) in a private empty workspace, and one
//! process per channel that calls it, started at the channel's first call in the channel's own
//! sandbox (its `/workspace`, its uid, no network), kept between calls and ended when idle.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ecdysis_chat::ConversationRef;
use ecdysis_chat::backoff::Backoff;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::{ClientInitializeError, NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceError, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::config::{McpServerConfig, Transport};
use super::tools::McpTool;
use crate::sandbox::{Runner, SandboxError, Session, SessionRequest, WorkspaceRef, channel_key};

/// How long `initialize` (and the first `tools/list`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The pauses before restarts: 250 ms, doubling up to 30 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
/// A connection that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// stderr lines of a stdio server kept to explain why it died.
const STDERR_LINES: usize = 5;
/// A sandboxed server's process for a channel ends after this long without a call.
const CHANNEL_IDLE: Duration = Duration::from_secs(10 * 60);
/// At most this many channel processes of one sandboxed server at once (the least recently
/// used one ends first).
const MAX_CHANNEL_PROCESSES: usize = 16;
/// How often idle channel processes are looked for.
const REAP_EVERY: Duration = Duration::from_secs(60);
/// CPU seconds of a sandboxed server's process: it lives for many calls, so its CPU is
/// bounded by the call time limit instead (a call that times out ends the process).
const SESSION_CPU_SECONDS: u64 = 24 * 60 * 60;

/// Where a server stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Connecting (first start or a restart).
    Starting,
    /// Connected; its tools are offered.
    Up { tools: usize },
    /// Not connected, and why; a restart is scheduled.
    Down { reason: String },
    /// Shut down.
    Stopped,
}

/// A server's state for `/status`, `doctor` and the admin page.
#[derive(Clone, Debug)]
pub struct ServerStatus {
    pub name: String,
    /// `stdio \`cmd\`` or `http URL` (no secrets).
    pub transport: String,
    pub health: Health,
    /// Connections that ended and were started again.
    pub restarts: u32,
}

impl ServerStatus {
    /// One line: `time (stdio \`mcp-server-time\`): up, 2 tools`.
    pub fn line(&self) -> String {
        let health = match &self.health {
            Health::Starting => "starting".to_string(),
            Health::Up { tools } => {
                format!("up, {tools} tool{}", if *tools == 1 { "" } else { "s" })
            }
            Health::Down { reason } => format!("down: {reason}"),
            Health::Stopped => "stopped".to_string(),
        };
        let restarts = if self.restarts > 0 {
            format!(
                " ({} restart{})",
                self.restarts,
                if self.restarts == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        };
        format!("{} ({}): {health}{restarts}", self.name, self.transport)
    }
}

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the MCP server `{server}` is not connected ({reason})")]
    Down { server: String, reason: String },
    #[error("the MCP server `{server}` did not answer within {seconds} s (the call was cancelled)")]
    TimedOut { server: String, seconds: u64 },
    #[error(
        "the MCP server `{server}` stopped while running the tool ({reason}); it is being restarted"
    )]
    Lost { server: String, reason: String },
    #[error("the MCP server `{server}` refused the call: {message}")]
    Refused { server: String, message: String },
}

/// Why a server cannot be used or connected: shown as the reason of [`Health::Down`] and of
/// [`CallError::Down`], so the texts are what users and operators read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest_mcp::Error),
    #[error("no HTTP client")]
    NoHttpClient,
    #[error("header `{name}`: {source}")]
    HeaderName {
        name: String,
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// The value itself is left out of the text: it may be a secret.
    #[error("the value of header `{name}` is not valid")]
    HeaderValue {
        name: http::HeaderName,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`sandbox = true`, but no sandbox runs on this machine (see `ecdysis doctor`)")]
    NoSandbox,
    #[error("only stdio servers run in the sandbox")]
    NotStdio,
    #[error("cannot make the server's workspace: {0}")]
    Workspace(#[source] std::io::Error),
    #[error(transparent)]
    Prepare(SandboxError),
    #[error("cannot start `{command}` in the sandbox: {source}")]
    SandboxSpawn {
        command: String,
        #[source]
        source: SandboxError,
    },
    #[error("the sandbox gave no pipes")]
    NoPipes,
    #[error("it did not finish `initialize` within {seconds} s")]
    InitializeTimedOut { seconds: u64 },
    #[error("`initialize` failed: {0}")]
    Initialize(#[source] Box<ClientInitializeError>),
    #[error("`tools/list` failed: {0}")]
    ListTools(#[source] Box<ServiceError>),
}

/// The mutable part of a server.
struct State {
    health: Health,
    /// The live connection, and how a call reports it broken (its receiver dies with it).
    peer: Option<(Peer<RoleClient>, mpsc::Sender<()>)>,
    tools: Arc<Vec<Arc<McpTool>>>,
    restarts: u32,
    stderr: VecDeque<String>,
    /// The sandbox the connection's server runs in (`sandbox = true`).
    session: Option<Session>,
}

/// A sandboxed server's process for one channel.
struct ChannelProcess {
    service: RunningService<RoleClient, Handler>,
    session: Session,
    last_used: Instant,
}

/// One configured server and its connection.
pub struct Server {
    pub config: McpServerConfig,
    state: Mutex<State>,
    /// The approval gate, for tools that need one.
    pub(super) approvals: Option<Arc<crate::engine::approvals::Approvals>>,
    http: Option<reqwest_mcp::Client>,
    /// The channel sandboxes (`sandbox = true`), when this machine runs them.
    sandbox: Option<Arc<Runner>>,
    /// Channel key → that channel's process (`sandbox = true`).
    channels: Mutex<HashMap<String, ChannelProcess>>,
}

/// Receives the server's notifications.
struct Handler {
    server: String,
    changed: mpsc::Sender<()>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        debug!(server = %self.server, "MCP tools changed");
        let _ = self.changed.try_send(());
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("ecdysis", env!("CARGO_PKG_VERSION")),
        )
    }
}

impl Server {
    pub fn new(
        config: McpServerConfig,
        approvals: Option<Arc<crate::engine::approvals::Approvals>>,
        sandbox: Option<Arc<Runner>>,
    ) -> Result<Arc<Self>, ConnectError> {
        let http = match &config.transport {
            Transport::Http { .. } => Some(http_client()?),
            Transport::Stdio { .. } => None,
        };
        Ok(Arc::new(Self {
            config,
            state: Mutex::new(State {
                health: Health::Starting,
                peer: None,
                tools: Arc::new(Vec::new()),
                restarts: 0,
                stderr: VecDeque::new(),
                session: None,
            }),
            approvals,
            http,
            sandbox,
            channels: Mutex::new(HashMap::new()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn channel_processes(&self) -> std::sync::MutexGuard<'_, HashMap<String, ChannelProcess>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> ServerStatus {
        let transport = if self.config.sandbox {
            format!(
                "{} in each channel's sandbox, {} running",
                self.config.transport.describe(),
                self.channel_processes().len()
            )
        } else {
            self.config.transport.describe()
        };
        let state = self.lock();
        ServerStatus {
            name: self.config.name.clone(),
            transport,
            health: state.health.clone(),
            restarts: state.restarts,
        }
    }

    /// The tools listed by the connected server (empty while it is down).
    pub fn tools(&self) -> Arc<Vec<Arc<McpTool>>> {
        self.lock().tools.clone()
    }

    fn set_health(&self, health: Health) {
        self.lock().health = health;
    }

    /// Call a tool of the connected server within the configured time limit; a sandboxed
    /// server's tool runs in the conversation's channel's process.
    pub async fn call(
        self: &Arc<Self>,
        conversation: &ConversationRef,
        tool: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, CallError> {
        if self.config.sandbox {
            return self.call_in_channel(conversation, tool, arguments).await;
        }
        let server = self.config.name.clone();
        let (peer, broken) = {
            let state = self.lock();
            match (&state.peer, &state.health) {
                (Some(live), _) => live.clone(),
                (None, Health::Down { reason }) => {
                    return Err(CallError::Down {
                        server,
                        reason: reason.clone(),
                    });
                }
                (None, _) => {
                    return Err(CallError::Down {
                        server,
                        reason: "starting".into(),
                    });
                }
            }
        };
        let result = self.call_peer(&peer, tool, arguments).await;
        if matches!(result, Err(CallError::Lost { .. })) {
            // The connection is gone or broken: restart it now rather than at the next failed
            // call (a connection that already ended ignores this).
            let _ = broken.try_send(());
        }
        result
    }

    /// One `tools/call` within the time limit.
    async fn call_peer(
        &self,
        peer: &Peer<RoleClient>,
        tool: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, CallError> {
        let server = self.config.name.clone();
        let mut params = CallToolRequestParams::new(tool.to_string());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        let timeout = self.config.call_timeout;
        match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => Err(CallError::TimedOut {
                server,
                seconds: timeout.as_secs(),
            }),
            Ok(Ok(result)) => Ok(result),
            Ok(Err(ServiceError::McpError(error))) => Err(CallError::Refused {
                server,
                message: crate::redact::global().redact_string(&error.message),
            }),
            Ok(Err(error)) => {
                let mut reason = error.to_string();
                if let Some(tail) = self.stderr_tail() {
                    reason.push_str(&format!("; its last words: {tail}"));
                }
                Err(CallError::Lost {
                    server,
                    reason: crate::redact::global().redact_string(&reason),
                })
            }
        }
    }

    /// A sandboxed server's call: in the channel's process, with the channel's workspace held
    /// (and saved afterwards) as a `/run` holds it.
    async fn call_in_channel(
        self: &Arc<Self>,
        conversation: &ConversationRef,
        tool: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, CallError> {
        let server = self.config.name.clone();
        let Some(runner) = self.sandbox.clone() else {
            return Err(CallError::Down {
                server,
                reason: ConnectError::NoSandbox.to_string(),
            });
        };
        let channel = conversation.channel_ref();
        let key = channel_key(&channel);
        let held = runner
            .with_workspace(&channel, |workspace| async {
                let peer = self.channel_peer(&runner, &key, workspace).await?;
                let result = self.call_peer(&peer, tool, arguments).await;
                if matches!(
                    result,
                    Err(CallError::Lost { .. } | CallError::TimedOut { .. })
                ) {
                    // Broken, or stuck on the call: the channel's next call starts afresh.
                    self.channel_processes().remove(&key);
                }
                result
            })
            .await;
        held.unwrap_or_else(|e| {
            Err(CallError::Down {
                server,
                reason: format!("the channel's workspace is not available: {e}"),
            })
        })
    }

    /// The channel's process, started when there is none (or it ended).
    async fn channel_peer(
        self: &Arc<Self>,
        runner: &Runner,
        key: &str,
        workspace: WorkspaceRef,
    ) -> Result<Peer<RoleClient>, CallError> {
        {
            let mut channels = self.channel_processes();
            if let Some(process) = channels.get_mut(key) {
                if !process.session.has_ended() {
                    process.last_used = Instant::now();
                    return Ok(process.service.peer().clone());
                }
                channels.remove(key);
            }
            while channels.len() >= MAX_CHANNEL_PROCESSES {
                let oldest = channels
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(oldest) => channels.remove(&oldest),
                    None => break,
                };
            }
        }
        // Notifications of a channel's process are not listened to: the tools offered are
        // those of the listing connection.
        let (changed, _) = mpsc::channel(1);
        let handler = Handler {
            server: self.config.name.clone(),
            changed,
        };
        let started = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.spawn_sandboxed(runner, workspace, handler),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::InitializeTimedOut {
                seconds: CONNECT_TIMEOUT.as_secs(),
            })
        });
        let (service, session) = started.map_err(|reason| {
            let reason = match self.stderr_tail() {
                Some(tail) => format!("{reason}; stderr: {tail}"),
                None => reason.to_string(),
            };
            CallError::Down {
                server: self.config.name.clone(),
                reason: crate::redact::global().redact_string(&reason),
            }
        })?;
        let peer = service.peer().clone();
        info!(server = %self.config.name, channel = key, "MCP server started in the channel's sandbox");
        self.channel_processes().insert(
            key.to_string(),
            ChannelProcess {
                service,
                session,
                last_used: Instant::now(),
            },
        );
        Ok(peer)
    }

    /// End the channel processes no call used for a while.
    fn reap_idle_channels(&self) {
        self.channel_processes()
            .retain(|_, p| p.last_used.elapsed() < CHANNEL_IDLE && !p.session.has_ended());
    }

    /// Start the server in a sandbox with `workspace` at `/workspace` and speak MCP to it.
    async fn spawn_sandboxed(
        self: &Arc<Self>,
        runner: &Runner,
        workspace: WorkspaceRef,
        handler: Handler,
    ) -> Result<(RunningService<RoleClient, Handler>, Session), ConnectError> {
        let Transport::Stdio { command, args, env } = &self.config.transport else {
            return Err(ConnectError::NotStdio);
        };
        let mut limits = runner.limits();
        limits.cpu_seconds = SESSION_CPU_SECONDS;
        let mut session = runner
            .sandbox()
            .spawn_session(SessionRequest {
                workspace,
                program: command.clone(),
                args: args.clone(),
                env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                mounts: self.config.mounts.clone(),
                limits,
            })
            .await
            .map_err(|source| ConnectError::SandboxSpawn {
                command: command.clone(),
                source,
            })?;
        let (stdout, stdin, stderr) = session.take_stdio().ok_or(ConnectError::NoPipes)?;
        if let Some(stderr) = stderr {
            tokio::spawn(read_stderr(Arc::downgrade(self), stderr));
        }
        let service = handler
            .serve((stdout, stdin))
            .await
            .map_err(|e| ConnectError::Initialize(Box::new(e)))?;
        Ok((service, session))
    }

    /// The listing connection's workspace: private to the server, emptied at each start.
    async fn listing_workspace(&self, runner: &Runner) -> Result<WorkspaceRef, ConnectError> {
        let workspace = runner
            .workspaces()
            .reference(&format!(".mcp-{}", self.config.name));
        let dir = workspace.dir.clone();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::fs::create_dir_all(&dir)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|made| made)
        .map_err(ConnectError::Workspace)?;
        runner
            .sandbox()
            .prepare(&workspace)
            .await
            .map_err(ConnectError::Prepare)?;
        Ok(workspace)
    }

    fn stderr_tail(&self) -> Option<String> {
        let state = self.lock();
        let tail: Vec<&str> = state.stderr.iter().map(String::as_str).collect();
        (!tail.is_empty()).then(|| tail.join(" | "))
    }

    /// Keep the connection until `shutdown` says stop.
    pub async fn supervise(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // Failed connections in a row, for the next pause.
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.set_health(Health::Starting);
            self.lock().stderr.clear();
            let (changed_tx, mut changed_rx) = mpsc::channel(4);
            let (broken_tx, mut broken_rx) = mpsc::channel(1);
            let handler = Handler {
                server: self.config.name.clone(),
                changed: changed_tx,
            };
            let connected = tokio::select! {
                result = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(handler, broken_tx)) => result,
                _ = shutdown.changed() => break,
            };
            let reason = match connected {
                Err(_) => format!(
                    "it did not finish `initialize` and `tools/list` within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                Ok(Err(reason)) => reason.to_string(),
                Ok(Ok(service)) => {
                    let started = Instant::now();
                    let outcome = self
                        .serve_connection(service, &mut changed_rx, &mut broken_rx, &mut shutdown)
                        .await;
                    {
                        let mut state = self.lock();
                        state.peer = None;
                        state.tools = Arc::new(Vec::new());
                        state.session = None;
                    }
                    match outcome {
                        None => break,
                        Some(reason) => {
                            self.lock().restarts += 1;
                            if started.elapsed() >= HEALTHY_AFTER {
                                failures = 0;
                            }
                            reason
                        }
                    }
                }
            };
            let reason = match self.stderr_tail() {
                Some(tail) => format!("{reason}; stderr: {tail}"),
                None => reason,
            };
            let reason = crate::redact::global().redact_string(&reason);
            self.lock().session = None;
            failures = failures.saturating_add(1);
            let backoff = BACKOFF.delay(failures);
            warn!(server = %self.config.name, %reason, retry_in_ms = backoff.as_millis() as u64, "MCP server is down");
            self.set_health(Health::Down { reason });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.channel_processes().clear();
        let mut state = self.lock();
        state.peer = None;
        state.tools = Arc::new(Vec::new());
        state.session = None;
        state.health = Health::Stopped;
    }

    /// Connect and list the tools; the error says why not.
    async fn connect(
        self: &Arc<Self>,
        handler: Handler,
        broken: mpsc::Sender<()>,
    ) -> Result<RunningService<RoleClient, Handler>, ConnectError> {
        let service = match &self.config.transport {
            Transport::Stdio { .. } if self.config.sandbox => {
                let runner = self.sandbox.clone().ok_or(ConnectError::NoSandbox)?;
                let workspace = self.listing_workspace(&runner).await?;
                let (service, session) = self.spawn_sandboxed(&runner, workspace, handler).await?;
                self.lock().session = Some(session);
                service
            }
            Transport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).env_clear().envs(env).kill_on_drop(true);
                if let Some(path) = std::env::var_os("PATH") {
                    cmd.env("PATH", path);
                }
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|source| ConnectError::Spawn {
                        command: command.clone(),
                        source,
                    })?;
                if let Some(stderr) = stderr {
                    tokio::spawn(read_stderr(Arc::downgrade(self), stderr));
                }
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| ConnectError::Initialize(Box::new(e)))?
            }
            Transport::Http { url, headers } => {
                let client = self.http.clone().ok_or(ConnectError::NoHttpClient)?;
                let mut custom = HashMap::new();
                for (name, value) in headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|source| {
                        ConnectError::HeaderName {
                            name: name.clone(),
                            source,
                        }
                    })?;
                    let value = http::HeaderValue::from_str(value).map_err(|source| {
                        ConnectError::HeaderValue {
                            name: name.clone(),
                            source,
                        }
                    })?;
                    custom.insert(name, value);
                }
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(custom)
                    .max_json_response_size(
                        self.config.max_output_bytes.saturating_mul(2).max(1 << 20),
                    );
                let transport = StreamableHttpClientTransport::with_client(client, config);
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| ConnectError::Initialize(Box::new(e)))?
            }
        };
        self.list_tools(service.peer()).await?;
        self.lock().peer = Some((service.peer().clone(), broken));
        Ok(service)
    }

    /// `tools/list` (every page) and publish the tools.
    async fn list_tools(self: &Arc<Self>, peer: &Peer<RoleClient>) -> Result<(), ConnectError> {
        let listed = peer
            .list_all_tools()
            .await
            .map_err(|e| ConnectError::ListTools(Box::new(e)))?;
        let tools = super::tools::wrap(self, listed);
        let count = tools.len();
        let mut state = self.lock();
        state.tools = Arc::new(tools);
        state.health = Health::Up { tools: count };
        drop(state);
        info!(server = %self.config.name, tools = count, "MCP server listed its tools");
        Ok(())
    }

    /// Serve one connection until it ends (`Some(reason)`) or shutdown (`None`).
    async fn serve_connection(
        self: &Arc<Self>,
        service: RunningService<RoleClient, Handler>,
        changed: &mut mpsc::Receiver<()>,
        broken: &mut mpsc::Receiver<()>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        let peer = service.peer().clone();
        let cancel = service.cancellation_token();
        let mut ended = std::pin::pin!(service.waiting());
        let mut reap = tokio::time::interval(REAP_EVERY);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reap.tick() => self.reap_idle_channels(),
                quit = &mut ended => {
                    return Some(match quit {
                        Ok(reason) => format!("the connection ended ({reason:?})"),
                        Err(e) => format!("the connection failed ({e})"),
                    });
                }
                Some(()) = changed.recv() => {
                    if let Err(reason) = self.list_tools(&peer).await {
                        warn!(server = %self.config.name, %reason, "MCP tools could not be listed again");
                    }
                }
                Some(()) = broken.recv() => {
                    cancel.cancel();
                    let _ = ended.await;
                    return Some("a call found the connection broken".into());
                }
                _ = shutdown.changed() => {
                    cancel.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
                    return None;
                }
            }
        }
    }
}

/// Log a stdio server's stderr and keep its last lines.
async fn read_stderr(server: Weak<Server>, stderr: tokio::process::ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(server) = server.upgrade() else {
            return;
        };
        let line = crate::redact::global().snippet(&line, 300);
        if line.is_empty() {
            continue;
        }
        debug!(server = %server.config.name, "{line}");
        let mut state = server.lock();
        if state.stderr.len() == STDERR_LINES {
            state.stderr.pop_front();
        }
        state.stderr.push_back(line);
    }
}

/// The HTTP client of streamable-HTTP servers: rustls with ring and the webpki roots.
fn http_client() -> Result<reqwest_mcp::Client, ConnectError> {
    let tls = ecdysis_chat::tls::client_config().map_err(ConnectError::Tls)?;
    reqwest_mcp::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("ecdysis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ConnectError::HttpClient)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn connect_errors_read_as_before_and_keep_their_cause() {
        let spawn = ConnectError::Spawn {
            command: "/nonexistent/mcp-server".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            spawn
                .to_string()
                .starts_with("cannot start `/nonexistent/mcp-server`: "),
            "{spawn}"
        );
        assert!(spawn.source().is_some());
        assert_eq!(
            ConnectError::NoSandbox.to_string(),
            "`sandbox = true`, but no sandbox runs on this machine (see `ecdysis doctor`)"
        );
        assert_eq!(
            ConnectError::InitializeTimedOut { seconds: 30 }.to_string(),
            "it did not finish `initialize` within 30 s"
        );
        let value = http::HeaderValue::from_str("bad\nvalue").unwrap_err();
        let header = ConnectError::HeaderValue {
            name: http::HeaderName::from_static("x-api-key"),
            source: value,
        };
        assert_eq!(
            header.to_string(),
            "the value of header `x-api-key` is not valid"
        );
        assert!(header.source().is_some());
    }
}
