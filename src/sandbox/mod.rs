//! Container sandboxes: `/run <command>` and the model's `run_command` execute in a per-channel
//! sandbox whose `/workspace` is snapshotted to the blob store, so it outlives the machine.
//!
//! The parts: a [`Sandbox`] backend runs one command against one workspace directory (the
//! `namespace` backend in [`namespace`]: bubblewrap, a cgroup per run from [`cgroup`], rlimits,
//! the seccomp deny list of [`seccomp`], landlock, the workspace watched through [`usage`]);
//! [`Workspaces`] keeps the per-channel directories and their snapshots; [`Runner`] puts them
//! together (access, one run per channel, a global cap, restore, run, `out/` files, snapshot);
//! [`RunFeature`] is `/run` and [`RunCommandTool`] is the model's tool. A [`Session`] keeps a
//! program (a sandboxed MCP server) running in a channel's sandbox between calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

use crate::config::{Config, SandboxBackend, SandboxSettings};
use crate::engine::tools::ToolContext;
use crate::storage::blob::BlobStore;

mod archive;
pub mod cgroup;
mod feature;
mod inbox;
mod landlock;
pub mod namespace;
mod runner;
pub mod seccomp;
mod session;
mod tool;
pub mod usage;
mod workspace;

pub use feature::{RunFeature, inline_limit, render_report};
pub use inbox::safe_name as inbox_name;
pub use namespace::Namespace;
pub use runner::{NotAllowed, RunError, RunReport, Runner, SnapshotOutcome};
pub use session::{Session, SessionRequest};
pub use tool::RunCommandTool;
pub use workspace::{
    OutFile, Prepared, Scan, Snapshot, WorkspaceError, WorkspaceRef, Workspaces, channel_key,
    mime_for,
};

/// What one command may use. Every backend enforces all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time; the whole sandbox is killed when it runs out.
    pub timeout: Duration,
    /// CPU seconds of each process.
    pub cpu_seconds: u64,
    /// Memory of the whole sandbox (every process, and its `/tmp` and `/dev/shm` files) where
    /// a cgroup can be had; always also the address space of each process.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub max_processes: u64,
    /// Output (stdout and stderr together) read before the command is stopped.
    pub max_output_bytes: usize,
    /// The largest file a command may write.
    pub max_file_bytes: u64,
    /// Size of the private `/tmp`, and again of `/dev/shm`.
    pub tmp_bytes: u64,
    /// Disk the workspace may take while the command runs (see [`usage`]); past it the run
    /// is stopped.
    pub workspace_bytes: u64,
}

impl Limits {
    pub fn from_settings(settings: &SandboxSettings) -> Self {
        let mib = 1024 * 1024;
        Self {
            timeout: settings.timeout,
            cpu_seconds: settings.cpu_seconds,
            memory_bytes: settings.memory_mb.saturating_mul(mib),
            max_processes: settings.max_processes,
            max_output_bytes: settings.max_output_bytes,
            max_file_bytes: settings.workspace_max_mb.saturating_mul(mib),
            // Half each: both together fit in the memory limit they are charged to.
            tmp_bytes: settings.memory_mb.saturating_mul(mib) / 2,
            workspace_bytes: settings.workspace_max_mb.saturating_mul(mib),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_settings(&SandboxSettings::default())
    }
}

/// One command for a backend.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The channel's workspace, mounted (or attached as a volume) at `/workspace`.
    pub workspace: WorkspaceRef,
    /// A shell command line.
    pub command: String,
    pub limits: Limits,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The command exited by itself (perhaps killed by a CPU or memory limit).
    Exited,
    /// The wall-clock limit ran out and the sandbox was killed.
    TimedOut,
    /// The output limit was reached and the sandbox was killed.
    OutputLimit,
    /// The whole sandbox ran out of memory (its cgroup's limit) and was killed.
    MemoryLimit,
    /// The workspace grew past its size limit and the sandbox was killed.
    WorkspaceLimit,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutput {
    /// stdout and stderr interleaved in the order the command wrote them (one pipe for both).
    pub output: Vec<u8>,
    /// The exit code; 128 + N when signal N killed it; `None` when ecdysis stopped it.
    pub exit_code: Option<i32>,
    pub ended: Ended,
    pub duration: Duration,
    /// The most memory the whole sandbox used at once, where a cgroup measured it.
    pub peak_memory: Option<u64>,
}

/// What went wrong running a command (not the command's own failure, which is an exit code).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox I/O failed while {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox is not usable: {0}")]
    Unavailable(String),
    /// The backend's own files beside the workspaces could not be put back. Boxed: a
    /// [`namespace::NamespaceError`] may itself hold a `SandboxError` (from its probe).
    #[error("the sandbox is not usable: {0}")]
    Setup(#[source] Box<namespace::NamespaceError>),
}

/// A sandbox backend: runs one command with a channel's workspace at `/workspace`.
///
/// The namespace backend starts a fresh set of namespaces per command; a Docker backend keeps
/// one container per channel (`--network none`, the same limits, the workspace directory as a
/// volume) keyed by [`WorkspaceRef::key`]. Callers see no difference.
#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// `namespace`, `docker`.
    fn backend(&self) -> &'static str;

    /// One line for `doctor` and the logs: what runs and how it is confined.
    fn describe(&self) -> String;

    /// Make a (new or just restored) workspace directory usable by this backend, e.g. owned by
    /// the channel's sandbox user. Called before every run; cheap when nothing is to be done.
    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<(), SandboxError>;

    /// Run one command to its end or its limits.
    async fn run(&self, request: RunRequest) -> Result<RunOutput, SandboxError>;

    /// Start a long-lived program with pipes to its stdin and stdout (an MCP server with
    /// `sandbox = true`), confined as a command is but without the wall-clock limit.
    async fn spawn_session(&self, request: SessionRequest) -> Result<Session, SandboxError> {
        let _ = request;
        Err(SandboxError::Unavailable(format!(
            "the {} backend cannot keep a program running",
            self.backend()
        )))
    }
}

/// Asks a human whether the model may run a command (buttons in Slack/Discord). Consulted by
/// `run_command` only when `sandbox.require_approval` is on; `/run` from a user never asks.
#[async_trait]
pub trait ApprovalGate: Send + Sync + 'static {
    /// `Ok(true)`: approved; `Ok(false)`: denied or timed out; `Err`: could not ask.
    async fn approve(&self, context: &ToolContext, command: &str) -> Result<bool, String>;
}

/// The result of looking for a usable sandbox.
pub enum Availability {
    Ready(Arc<dyn Sandbox>),
    /// No sandbox, and why (for `/status`, `doctor` and the logs).
    Off {
        reason: String,
        /// True when a backend was asked for explicitly and cannot run (a `doctor` failure).
        requested: bool,
    },
}

/// Where the per-channel workspaces live: `ECDYSIS_SANDBOX_WORKSPACES` when set, else
/// `$ECDYSIS_DATA_DIR/workspaces`, unless the sandbox users cannot reach that.
///
/// Run as root, bubblewrap runs as a per-channel user, which must be able to walk every
/// directory above the workspace it binds. A private data directory (mode 0700, as systemd's
/// `StateDirectory=` and `mktemp -d` make it) stays private: the workspaces then live in
/// [`private_data_workspaces`] instead, a root-owned directory of their own whose modes let the
/// sandbox users through (0711) without letting them list it. The workspaces' contents are
/// snapshotted to the blob store after each run, so nothing is lost with that directory.
pub fn workspaces_dir(config: &Config) -> PathBuf {
    if let Some(dir) = &config.sandbox.workspaces {
        return dir.clone();
    }
    let in_data = config.data_dir.join("workspaces");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || reachable_by_others(&config.data_dir) {
        return in_data;
    }
    private_data_workspaces(&config.data_dir)
}

/// The workspaces of a private data directory when ecdysis runs as root:
/// `/var/lib/ecdysis/workspaces/<hash of the data directory>`.
pub fn private_data_workspaces(data_dir: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = workspace::fnv1a(absolute.as_os_str().as_encoded_bytes());
    Path::new(PRIVATE_DATA_WORKSPACES).join(format!("{hash:016x}"))
}

/// Where [`private_data_workspaces`] puts them.
const PRIVATE_DATA_WORKSPACES: &str = "/var/lib/ecdysis/workspaces";

/// Whether a user other than the owner may walk down to `dir`: it and every directory above it
/// (those that exist) are searchable by others.
fn reachable_by_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute.ancestors().all(|d| match std::fs::metadata(d) {
        Ok(meta) => meta.permissions().mode() & 0o001 != 0,
        Err(_) => true,
    })
}

/// Find the configured backend and check that it really runs a command here.
pub async fn detect(config: &Config) -> Availability {
    let settings = &config.sandbox;
    let requested = settings.backend.is_some();
    match settings.backend {
        Some(SandboxBackend::Off) => Availability::Off {
            reason: "off (sandbox.backend = off)".into(),
            requested: false,
        },
        Some(SandboxBackend::Docker) => Availability::Off {
            reason: "the docker backend is not part of this build yet; set ECDYSIS_SANDBOX=namespace (needs bubblewrap)".into(),
            requested: true,
        },
        Some(SandboxBackend::Namespace) | None => {
            match Namespace::detect(settings, &workspaces_dir(config)).await {
                Ok(backend) => Availability::Ready(Arc::new(backend)),
                Err(e) => Availability::Off {
                    reason: e.to_string(),
                    requested,
                },
            }
        }
    }
}

/// Why there is no sandbox.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unavailable {
    pub reason: String,
    /// True when a backend was asked for explicitly.
    pub requested: bool,
}

/// Detect the sandbox and build the runner `/run` and `run_command` use, or say why not (the
/// reason is logged: a warning when a backend was asked for, a note otherwise).
pub async fn open(config: &Config, blobs: Arc<dyn BlobStore>) -> Result<Arc<Runner>, Unavailable> {
    let sandbox = match detect(config).await {
        Availability::Ready(sandbox) => sandbox,
        Availability::Off { reason, requested } => {
            if requested {
                warn!(%reason, "the sandbox is unavailable; /run is off");
            } else {
                info!(%reason, "no sandbox; /run is off");
            }
            return Err(Unavailable { reason, requested });
        }
    };
    let workspaces = Workspaces::open(
        &workspaces_dir(config),
        blobs,
        config.sandbox.workspace_max_mb.saturating_mul(1024 * 1024),
    )
    .await
    .map_err(|e| {
        let reason = format!("workspaces: {e}");
        warn!(%reason, "the sandbox is unavailable; /run is off");
        Unavailable {
            reason,
            requested: true,
        }
    })?;
    info!(sandbox = %sandbox.describe(), "sandbox ready; /run is on");
    Ok(Arc::new(Runner::new(
        sandbox,
        workspaces,
        config.sandbox.clone(),
    )))
}
