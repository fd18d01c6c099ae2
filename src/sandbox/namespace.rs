//! The `namespace` backend: every command runs in fresh Linux user, mount, PID, network, IPC and
//! UTS namespaces made by bubblewrap (`bwrap`), with no daemon.
//!
//! Inside: the host's system (or a configured root file system) read-only, the channel's
//! workspace read-write at `/workspace`, a private size-capped `/tmp` and `/dev/shm`, only a
//! loopback network, and nothing else of the host (no `/home`, `/root`, data directory or
//! other workspaces). When ecdysis runs as root, bwrap itself runs as an unprivileged user of
//! the channel's own (uid = a hash of the channel), so the host's root-owned files stay closed
//! and `RLIMIT_NPROC` counts that channel's processes only. Each run gets its own cgroup
//! ([`super::cgroup`]: memory and tasks of the whole sandbox, tmpfs files included) where one
//! can be had; rlimits set just before bwrap starts (CPU seconds, address space, processes,
//! file size, no core dumps) apply to each process in any case. A wall-clock timeout, an output
//! cap, the cgroup's OOM count and a watch on the workspace's size ([`super::usage`]) kill the
//! whole sandbox. bwrap installs the seccomp deny list of [`super::seccomp`] right before it
//! executes the command; Landlock scopes (signals, abstract sockets) are added where the
//! kernel has them.

use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cgroup::{self, CgroupError, Cgroups, RunGroup};
use super::seccomp::{Filter, SeccompError};
use super::session::{Session, SessionRequest};
use super::workspace::fnv1a;
use super::{
    Ended, Limits, RunOutput, RunRequest, Sandbox, SandboxError, WorkspaceRef, landlock, usage,
};
use crate::config::SandboxSettings;

/// Per-channel sandbox users are `UID_BASE + hash(channel) % UID_SPAN` (gid the same).
const UID_BASE: u32 = 1_600_000_000;
const UID_SPAN: u32 = 1_000_000;
/// The fallback when per-channel ids cannot be used (a user namespace with few ids): `nobody`.
const SHARED_UID: u32 = 65_534;
/// Who the command is inside the sandbox.
const INSIDE_UID: u32 = 1000;
const INSIDE_USER: &str = "sandbox";
/// Commands run at a lower CPU priority than the server.
const NICE: libc::c_int = 10;
/// What of the host's `/` is visible (read-only) when no root file system is configured.
const HOST_SYSTEM: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];
/// Top-level entries of a configured root file system that the sandbox provides itself.
const NOT_FROM_ROOTFS: &[&str] = &["proc", "dev", "sys", "tmp", "workspace"];
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often a running sandbox's cgroup and workspace are looked at.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Tasks of a run besides the command's own: the outer bwrap and the sandbox's PID-1 shell.
const OWN_TASKS: u64 = 2;

/// How the host sees the sandbox's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    /// ecdysis is root: each channel gets its own unprivileged uid.
    PerChannel,
    /// ecdysis is root but per-channel ids are not usable: one unprivileged uid for all.
    Shared(u32),
    /// ecdysis is not root: the sandbox runs as ecdysis's own user.
    Caller,
}

/// One read-only piece of the sandbox's system.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SystemMount {
    Bind { source: PathBuf, dest: String },
    Symlink { target: PathBuf, dest: String },
}

/// Why the namespace backend cannot run here: shown in `doctor`, `/status` and the logs.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("bubblewrap is not installed (apt-get install bubblewrap, or set ECDYSIS_SANDBOX=off)")]
    NoBwrap,
    /// `bwrap --version` could not be started.
    #[error("cannot run {}: {source}", .bwrap.display())]
    RunBwrap {
        bwrap: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The blocking set-up of the sandbox's system did not finish.
    #[error("sandbox set-up task failed: {0}")]
    SetupTask(#[source] tokio::task::JoinError),
    #[error(
        "sandbox.rootfs {} is not a directory (unpack a root file system there, e.g. `docker export` of an image)",
        .root.display()
    )]
    RootfsNotDir { root: PathBuf },
    #[error("cannot read sandbox.rootfs {}: {source}", .root.display())]
    ReadRootfs {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the link {}: {source}", .path.display())]
    ReadLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {}: {source}", .path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox's system ({}) has no /bin/sh", .root.display())]
    NoShell { root: PathBuf },
    #[error("cannot create {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the mode of {}: {source}", .dir.display())]
    SetMode {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The probe's scratch workspace could not be made ready.
    #[error(transparent)]
    ProbePrepare(SandboxError),
    /// The probe's test command could not be run.
    #[error(transparent)]
    ProbeRun(SandboxError),
    /// The test command's bwrap could not reach the workspaces directory.
    #[error(
        "bwrap cannot reach {} as an unprivileged user ({detail}): every directory above it must be searchable by others (chmod o+x), or set ECDYSIS_DATA_DIR elsewhere",
        .workspaces.display()
    )]
    Unreachable {
        workspaces: PathBuf,
        /// The first lines of the test command's output.
        detail: String,
    },
    /// bwrap may not make user namespaces here.
    #[error(
        "user namespaces are not allowed here ({detail}): on a host, enable them (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0); in a Docker container, the default seccomp/AppArmor profiles forbid them (run with --security-opt seccomp=unconfined --security-opt apparmor=unconfined, or on a VM such as Fly.io); or set ECDYSIS_SANDBOX=off"
    )]
    NoUserNamespaces {
        /// The first lines of the test command's output.
        detail: String,
    },
    /// The test command ran but did not do what it should, for another reason.
    #[error("a test command in the sandbox failed: {detail}")]
    TestCommand {
        /// The first lines of the test command's output.
        detail: String,
    },
    #[error("no way to run the sandbox was found")]
    NoWay,
}

/// The bubblewrap backend.
#[derive(Clone, Debug)]
pub struct Namespace {
    bwrap: PathBuf,
    version: String,
    rootfs: Option<PathBuf>,
    mounts: Vec<SystemMount>,
    /// Generated `/etc/passwd` and `/etc/group` naming the sandbox user, when the system has
    /// them: (path, contents) of each.
    etc: Option<[(PathBuf, String); 2]>,
    shell: &'static str,
    identity: Identity,
    landlock_abi: i64,
    /// Where each run's cgroup is made, or why there is none. Shared (`Arc`) with the other
    /// backends [`Namespace::detect`] tries: the error holds an `io::Error`, which is not `Clone`.
    cgroups: Result<Arc<Cgroups>, Arc<CgroupError>>,
    /// The seccomp deny list, or why there is none (shared as `cgroups` is).
    seccomp: Result<Arc<Filter>, Arc<SeccompError>>,
    /// The configured limits, for [`Sandbox::describe`].
    limits: Limits,
}

impl Namespace {
    /// Find bwrap, work out the sandbox's system, and check with a real command that the kernel
    /// allows all of it here. `workspaces` is the directory the channel workspaces live in.
    pub async fn detect(
        settings: &SandboxSettings,
        workspaces: &Path,
    ) -> Result<Self, NamespaceError> {
        let bwrap = find_on_path("bwrap").ok_or(NamespaceError::NoBwrap)?;
        let version = tokio::process::Command::new(&bwrap)
            .arg("--version")
            .env_clear()
            .output()
            .await
            .map_err(|source| NamespaceError::RunBwrap {
                bwrap: bwrap.clone(),
                source,
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let rootfs = settings.rootfs.clone();
        let system_root = rootfs.clone().unwrap_or_else(|| PathBuf::from("/"));
        let workspaces = workspaces.to_path_buf();
        let dir = workspaces.clone();
        let (mounts, etc, shell) = tokio::task::spawn_blocking(move || {
            prepare_system(&system_root, rootfs_is_custom(&system_root), &dir)
        })
        .await
        .map_err(NamespaceError::SetupTask)??;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let candidates: &[Identity] = if root {
            &[Identity::PerChannel, Identity::Shared(SHARED_UID)]
        } else {
            &[Identity::Caller]
        };
        let cgroups = tokio::task::spawn_blocking(Cgroups::detect)
            .await
            .map_err(CgroupError::Task)
            .and_then(|found| found)
            .map(Arc::new)
            .map_err(Arc::new);
        let seccomp = Filter::build().map(Arc::new).map_err(Arc::new);
        let mut first_error = None;
        let mut attempts = vec![cgroups];
        if attempts[0].is_ok() {
            attempts.push(Err(Arc::new(CgroupError::TestCommand)));
        }
        for cgroups in attempts {
            for identity in candidates {
                let backend = Self {
                    bwrap: bwrap.clone(),
                    version: version.clone(),
                    rootfs: settings.rootfs.clone(),
                    mounts: mounts.clone(),
                    etc: etc.clone(),
                    shell,
                    identity: *identity,
                    landlock_abi: landlock::abi(),
                    cgroups: cgroups.clone(),
                    seccomp: seccomp.clone(),
                    limits: Limits::from_settings(settings),
                };
                match backend.probe(&workspaces).await {
                    Ok(()) => {
                        backend.log_confinement();
                        return Ok(backend);
                    }
                    Err(e) => {
                        debug!(identity = ?identity, cgroup = cgroups.is_ok(), error = %e, "sandbox probe failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_error.unwrap_or(NamespaceError::NoWay))
    }

    /// Say at start-up how the whole sandbox is limited, loudly when only per process.
    fn log_confinement(&self) {
        match &self.cgroups {
            Ok(cgroups) => info!(
                cgroup = %cgroups.describe(),
                "each sandbox run gets its own cgroup (memory and tasks of the whole sandbox)"
            ),
            Err(reason) => warn!(
                %reason,
                "no cgroup for sandbox runs: memory and processes are limited per process only (sandbox.memory_mb applies to each process, not to the whole sandbox)"
            ),
        }
        if let Err(reason) = &self.seccomp {
            warn!(%reason, "sandboxed commands run without the seccomp deny list");
        }
    }

    /// Run a real command in a scratch workspace: user namespaces, mounts, the uid switch, the
    /// rlimits and Landlock all have to work.
    async fn probe(&self, workspaces: &Path) -> Result<(), NamespaceError> {
        let key = format!(".probe-{}", uuid::Uuid::new_v4().simple());
        let workspace = WorkspaceRef {
            key: key.clone(),
            dir: workspaces.join(&key),
        };
        std::fs::create_dir(&workspace.dir).map_err(|source| NamespaceError::CreateDir {
            dir: workspace.dir.clone(),
            source,
        })?;
        let result = async {
            self.prepare(&workspace)
                .await
                .map_err(NamespaceError::ProbePrepare)?;
            let limits = Limits {
                timeout: Duration::from_secs(20),
                max_processes: 16,
                ..Limits::default()
            };
            let output = self
                .run(RunRequest {
                    workspace: workspace.clone(),
                    command: ": > /workspace/.probe && echo ok".into(),
                    limits,
                })
                .await
                .map_err(NamespaceError::ProbeRun)?;
            let text = String::from_utf8_lossy(&output.output).trim().to_string();
            if output.exit_code == Some(0) && text == "ok" {
                Ok(())
            } else {
                Err(explain_probe_failure(&text, workspaces))
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&workspace.dir);
        result
    }

    /// The host uid the channel's sandbox runs as, when ecdysis switches users.
    fn uid_for(&self, key: &str) -> Option<u32> {
        match self.identity {
            Identity::PerChannel => {
                Some(UID_BASE + (fnv1a(key.as_bytes()) % UID_SPAN as u64) as u32)
            }
            Identity::Shared(uid) => Some(uid),
            Identity::Caller => None,
        }
    }

    /// `RLIMIT_NPROC` counts every task of the host uid; leave room for what that uid already
    /// runs (nothing, for a per-channel uid), the outer bwrap and the sandbox's PID-1 shell.
    fn nproc_limit(&self, uid: Option<u32>, max_processes: u64) -> u64 {
        let existing = match self.identity {
            Identity::PerChannel => 0,
            // SAFETY: getuid has no preconditions.
            Identity::Shared(_) | Identity::Caller => {
                count_tasks(uid.unwrap_or_else(|| unsafe { libc::getuid() }))
            }
        };
        existing + max_processes + 2
    }

    fn args(&self, inside: &Inside<'_>, seccomp: Option<RawFd>) -> Vec<OsString> {
        let mut args = Args(Vec::with_capacity(80));
        args.words(&[
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            // No bwrap init inside: the outer bwrap exits without reaping it, and it would
            // linger as a zombie of the host's PID 1, counting against the process limit.
            "--as-pid-1",
            "--new-session",
            "--hostname",
            "sandbox",
        ]);
        let id = INSIDE_UID.to_string();
        args.words(&["--uid", &id, "--gid", &id]);
        for mount in &self.mounts {
            match mount {
                SystemMount::Bind { source, dest } => args.mount("--ro-bind", source, dest),
                SystemMount::Symlink { target, dest } => args.mount("--symlink", target, dest),
            }
        }
        if let Some([(passwd, _), (group, _)]) = &self.etc {
            args.mount("--ro-bind", passwd, "/etc/passwd");
            args.mount("--ro-bind", group, "/etc/group");
        }
        for path in inside.mounts {
            args.mount("--ro-bind", path, &path.to_string_lossy());
        }
        let tmp = inside.limits.tmp_bytes.max(1024 * 1024).to_string();
        args.words(&["--proc", "/proc", "--dev", "/dev"]);
        args.words(&["--size", &tmp, "--tmpfs", "/dev/shm"]);
        args.words(&["--size", &tmp, "--tmpfs", "/tmp"]);
        args.mount("--bind", &inside.workspace.dir, "/workspace");
        args.words(&["--remount-ro", "/dev", "--remount-ro", "/"]);
        if let Some(fd) = seccomp {
            args.words(&["--seccomp", &fd.to_string()]);
        }
        args.words(&["--chdir", "/workspace", "--clearenv"]);
        for (name, value) in [
            ("PATH", PATH),
            ("HOME", "/workspace"),
            ("USER", INSIDE_USER),
            ("LOGNAME", INSIDE_USER),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("TERM", "dumb"),
            ("PYTHONUNBUFFERED", "1"),
        ] {
            args.words(&["--setenv", name, value]);
        }
        for (name, value) in inside.env {
            args.words(&["--setenv", name, value]);
        }
        // PID 1 is a shell that runs the command as its child and exits with its status: the
        // command keeps ordinary signal semantics (a namespace's init ignores SIGXCPU and
        // other signals it has no handler for), and the namespace ends when the command does.
        match inside.payload {
            Payload::Shell(command) => {
                args.words(&[
                    "--",
                    self.shell,
                    "-c",
                    "\"$0\" -c \"$1\"; exit $?",
                    self.shell,
                    command,
                ]);
            }
            Payload::Program {
                program,
                args: words,
            } => {
                args.words(&["--", self.shell, "-c", "\"$0\" \"$@\"; exit $?", program]);
                args.0.extend(words.iter().map(OsString::from));
            }
        }
        args.0
    }

    /// bwrap, ready to spawn with the caller's stdio: its arguments, uid, rlimits, cgroup and
    /// seccomp program. The [`Launch`] keeps what must live until bwrap has started.
    async fn launch(&self, inside: &Inside<'_>) -> Result<Launch, SandboxError> {
        let limits = *inside.limits;
        let uid = self.uid_for(&inside.workspace.key);
        let nproc = self.nproc_limit(uid, limits.max_processes);
        let landlock = self.landlock_abi >= landlock::SCOPES_ABI;
        let group = match &self.cgroups {
            Ok(cgroups) => {
                let cgroups = cgroups.clone();
                let made = tokio::task::spawn_blocking(move || {
                    cgroups.create(limits.memory_bytes, limits.max_processes + OWN_TASKS)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|made| made)
                .map_err(|source| SandboxError::Io {
                    what: "making the run's cgroup",
                    source,
                })?;
                Some(made)
            }
            Err(_) => None,
        };
        let join_fds = group.as_ref().map(RunGroup::join_fds).unwrap_or_default();
        let seccomp = match &self.seccomp {
            Ok(filter) => Some(filter.pipe().map_err(|source| SandboxError::Io {
                what: "passing the seccomp filter",
                source,
            })?),
            Err(_) => None,
        };
        let seccomp_fd = seccomp.as_ref().map(AsRawFd::as_raw_fd);
        let mut command = tokio::process::Command::new(&self.bwrap);
        command
            .args(self.args(inside, seccomp_fd))
            .env_clear()
            .kill_on_drop(true);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        // SAFETY: `join`, `inherit` and `confine` only make async-signal-safe system calls on
        // values copied or moved in before the fork.
        unsafe {
            command.pre_exec(move || {
                // First of all: everything bwrap starts is then in the group.
                cgroup::join(&join_fds)?;
                if let Some(fd) = seccomp_fd {
                    inherit(fd)?;
                }
                confine(&limits, nproc, landlock)
            });
        }
        Ok(Launch {
            command,
            group,
            seccomp,
        })
    }

    /// Start a long-lived program in a sandbox (see [`super::session`]).
    pub async fn start_session(&self, request: SessionRequest) -> Result<Session, SandboxError> {
        let inside = Inside {
            workspace: &request.workspace,
            limits: &request.limits,
            payload: Payload::Program {
                program: &request.program,
                args: &request.args,
            },
            env: &request.env,
            mounts: &request.mounts,
        };
        let Launch {
            mut command,
            group,
            seccomp,
        } = self.launch(&inside).await?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = command.spawn();
        // Only bwrap keeps the seccomp program.
        drop(command);
        drop(seccomp);
        let child = spawned.map_err(|source| SandboxError::Spawn {
            program: self.bwrap.display().to_string(),
            source,
        })?;
        Ok(Session::new(child, group))
    }
}

/// What runs inside one sandbox.
struct Inside<'a> {
    workspace: &'a WorkspaceRef,
    limits: &'a Limits,
    payload: Payload<'a>,
    /// Variables on top of the sandbox's own.
    env: &'a [(String, String)],
    /// Host directories bound read-only at the same path inside.
    mounts: &'a [PathBuf],
}

/// The program PID 1 runs.
enum Payload<'a> {
    /// A shell command line (`/run`).
    Shell(&'a str),
    /// A program and its arguments, as they are (a session).
    Program {
        program: &'a str,
        args: &'a [String],
    },
}

/// bwrap about to be spawned.
struct Launch {
    command: tokio::process::Command,
    group: Option<RunGroup>,
    /// The seccomp program's pipe: ours to close once bwrap has started.
    seccomp: Option<OwnedFd>,
}

/// bwrap's command line.
struct Args(Vec<OsString>);

impl Args {
    fn words(&mut self, words: &[&str]) {
        self.0.extend(words.iter().map(OsString::from));
    }

    fn mount(&mut self, option: &str, source: impl AsRef<Path>, dest: &str) {
        self.0.push(option.into());
        self.0.push(source.as_ref().into());
        self.0.push(dest.into());
    }
}

#[async_trait]
impl Sandbox for Namespace {
    fn backend(&self) -> &'static str {
        "namespace"
    }

    fn describe(&self) -> String {
        let system = match &self.rootfs {
            Some(dir) => format!("root file system {} read-only", dir.display()),
            None => "host system read-only".into(),
        };
        let users = match self.identity {
            Identity::PerChannel => "a uid per channel".to_string(),
            Identity::Shared(uid) => format!("uid {uid} for every channel"),
            // SAFETY: getuid has no preconditions.
            Identity::Caller => format!("ecdysis's own uid {}", unsafe { libc::getuid() }),
        };
        let landlock = if self.landlock_abi >= landlock::SCOPES_ABI {
            format!("landlock ABI {} scopes", self.landlock_abi)
        } else if self.landlock_abi > 0 {
            format!("landlock ABI {} (no scopes; not used)", self.landlock_abi)
        } else {
            "no landlock".into()
        };
        let mb = |bytes: u64| bytes / (1024 * 1024);
        let whole = match &self.cgroups {
            Ok(cgroups) => format!(
                "{}: {} MB of memory{} for the whole sandbox",
                match cgroups.version() {
                    cgroup::Version::V1 => "cgroup v1",
                    cgroup::Version::V2 => "cgroup v2",
                },
                mb(self.limits.memory_bytes),
                if cgroups.limits_processes() {
                    format!(" and {} processes", self.limits.max_processes)
                } else {
                    String::new()
                }
            ),
            Err(reason) => format!(
                "NO cgroup ({reason}): memory ({} MB) and processes ({}) limited per process only",
                mb(self.limits.memory_bytes),
                self.limits.max_processes
            ),
        };
        let seccomp = match &self.seccomp {
            Ok(filter) => format!("seccomp denies {} system calls", filter.denied()),
            Err(reason) => format!("no seccomp ({reason})"),
        };
        format!(
            "namespace ({}; {system}; {users}; no network; {whole}; /tmp and /dev/shm {} MB each; workspace {} MB enforced while commands run; {seccomp}; {landlock})",
            if self.version.is_empty() {
                "bwrap"
            } else {
                &self.version
            },
            mb(self.limits.tmp_bytes),
            mb(self.limits.workspace_bytes),
        )
    }

    async fn prepare(&self, workspace: &WorkspaceRef) -> Result<(), SandboxError> {
        // The generated /etc files live beside the workspaces; put them back if someone wiped
        // that directory.
        if let Some(files) = &self.etc
            && !files[0].0.exists()
        {
            let files = files.clone();
            tokio::task::spawn_blocking(move || write_etc(&files))
                .await
                .map_err(|e| SandboxError::Unavailable(e.to_string()))?
                .map_err(|e| SandboxError::Setup(Box::new(e)))?;
        }
        let Some(uid) = self.uid_for(&workspace.key) else {
            return Ok(());
        };
        let dir = workspace.dir.clone();
        tokio::task::spawn_blocking(move || own_tree(&dir, uid))
            .await
            .map_err(|e| SandboxError::Io {
                what: "handing the workspace to the sandbox user",
                source: io::Error::other(e),
            })?
            .map_err(|source| SandboxError::Io {
                what: "handing the workspace to the sandbox user",
                source,
            })
    }

    async fn spawn_session(&self, request: SessionRequest) -> Result<Session, SandboxError> {
        self.start_session(request).await
    }

    async fn run(&self, request: RunRequest) -> Result<RunOutput, SandboxError> {
        let limits = request.limits;
        let inside = Inside {
            workspace: &request.workspace,
            limits: &request.limits,
            payload: Payload::Shell(&request.command),
            env: &[],
            mounts: &[],
        };
        let Launch {
            mut command,
            group,
            seccomp,
        } = self.launch(&inside).await?;
        let pipe_error = |source| SandboxError::Io {
            what: "opening the output pipe",
            source,
        };
        // One pipe for stdout and stderr: the output interleaves as the command wrote it.
        let (reader, writer) = io::pipe().map_err(pipe_error)?;
        let writer_err = writer.try_clone().map_err(pipe_error)?;
        command
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_err);
        let started = Instant::now();
        let spawned = command.spawn();
        // Close our copies of the pipes' ends: the output pipe then sees EOF when the sandbox
        // ends, and only bwrap holds the seccomp program.
        drop(command);
        drop(seccomp);
        let mut child = spawned.map_err(|source| SandboxError::Spawn {
            program: self.bwrap.display().to_string(),
            source,
        })?;
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .map_err(pipe_error)?;

        let mut output = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut status: Option<ExitStatus> = None;
        let mut eof = false;
        let mut ended = Ended::Exited;
        let deadline = tokio::time::sleep(limits.timeout);
        tokio::pin!(deadline);
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut measuring: Option<JoinHandle<io::Result<u64>>> = None;
        let workspace = request.workspace.dir.clone();
        while !(eof && status.is_some()) {
            tokio::select! {
                read = pipe.read(&mut chunk), if !eof => match read {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        let room = limits.max_output_bytes.saturating_sub(output.len());
                        if n > room {
                            output.extend_from_slice(&chunk[..room]);
                            ended = Ended::OutputLimit;
                            break;
                        }
                        output.extend_from_slice(&chunk[..n]);
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the sandbox's output failed");
                        eof = true;
                    }
                },
                waited = child.wait(), if status.is_none() => {
                    status = Some(waited.map_err(|source| SandboxError::Io {
                        what: "waiting for the command",
                        source,
                    })?);
                }
                _ = &mut deadline => {
                    ended = Ended::TimedOut;
                    break;
                }
                _ = watch.tick() => {
                    if group.as_ref().is_some_and(|g| g.oom_kills() > 0) {
                        ended = Ended::MemoryLimit;
                        break;
                    }
                    if measuring.is_none() {
                        let dir = workspace.clone();
                        let cap = limits.workspace_bytes;
                        measuring = Some(tokio::task::spawn_blocking(move || usage::measure(&dir, cap)));
                    }
                }
                measured = finished(&mut measuring) => {
                    measuring = None;
                    match measured {
                        Ok(Ok(bytes)) if bytes > limits.workspace_bytes => {
                            ended = Ended::WorkspaceLimit;
                            break;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => debug!(error = %e, "cannot measure the workspace"),
                        Err(e) => debug!(error = %e, "the workspace measurement failed"),
                    }
                }
            }
        }
        let duration = started.elapsed();
        let exit_code = match ended {
            Ended::Exited => status.map(exit_code),
            Ended::TimedOut | Ended::OutputLimit | Ended::MemoryLimit | Ended::WorkspaceLimit => {
                stop(&mut child).await;
                None
            }
        };
        if let Some(group) = &group {
            group.kill_all();
        }
        // A command may have passed a limit in its last moments, after the last look.
        if ended == Ended::Exited {
            if group.as_ref().is_some_and(|g| g.oom_kills() > 0) {
                ended = Ended::MemoryLimit;
            } else {
                let cap = limits.workspace_bytes;
                let measured =
                    tokio::task::spawn_blocking(move || usage::measure(&workspace, cap)).await;
                if let Ok(Ok(bytes)) = measured
                    && bytes > cap
                {
                    ended = Ended::WorkspaceLimit;
                }
            }
        }
        let peak_memory = group.as_ref().and_then(RunGroup::peak_memory);
        if let Some(mut group) = group {
            let removed = tokio::task::spawn_blocking(move || group.remove()).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot remove a sandbox run's cgroup"),
                Err(e) => warn!(error = %e, "removing a sandbox run's cgroup failed"),
            }
        }
        Ok(RunOutput {
            output,
            exit_code,
            ended,
            duration,
            peak_memory,
        })
    }
}

/// The result of a background task, or never when there is none.
async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Let the program that is about to be executed inherit `fd` (clear close-on-exec).
fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor this process owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kill a running sandbox: SIGKILL its PID 1 (the kernel then kills everything else in the PID
/// namespace) and let bwrap reap it and exit. Killing bwrap first would also end the sandbox
/// (--die-with-parent), but would leave its PID 1 unreaped, a zombie of the host's init.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id()
        && kill_inner(pid)
        && tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .is_ok()
    {
        return;
    }
    if let Err(e) = child.kill().await {
        warn!(error = %e, "cannot kill the sandbox");
    }
}

/// SIGKILL the children of bwrap `pid` (the sandbox's PID 1): true when one was killed.
pub(super) fn kill_inner(pid: u32) -> bool {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut killed = false;
    for inner in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) on a child of our own child, which bwrap has not reaped yet.
        killed |= unsafe { libc::kill(inner, libc::SIGKILL) } == 0;
    }
    killed
}

/// 128 + N for a process killed by signal N, as a shell reports it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Set the limits on the process about to exec bwrap (inherited by everything it starts).
fn confine(limits: &Limits, nproc: u64, landlock: bool) -> io::Result<()> {
    fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(resource, &limit) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    // SAFETY: setpriority on this process only; failure just leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
    set(libc::RLIMIT_CORE, 0, 0)?;
    let cpu = limits.cpu_seconds.max(1);
    // SIGXCPU at the soft limit, SIGKILL one second later.
    set(libc::RLIMIT_CPU, cpu, cpu + 1)?;
    set(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    set(
        libc::RLIMIT_FSIZE,
        limits.max_file_bytes,
        limits.max_file_bytes,
    )?;
    set(libc::RLIMIT_NPROC, nproc, nproc)?;
    if landlock {
        // SAFETY: raw system calls only, as `pre_exec` requires.
        unsafe { landlock::restrict_scopes()? };
    }
    Ok(())
}

/// Tasks (processes and threads) whose real uid is `uid`, from /proc.
fn count_tasks(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(uid as u64) {
            total += field("Threads:").unwrap_or(1);
        }
    }
    total
}

/// Make `dir` and everything under it belong to `uid` (never following symlinks), and keep
/// other users out of it. Cheap when the directory already belongs to `uid`.
fn own_tree(dir: &Path, uid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.uid() == uid && meta.gid() == uid && meta.mode() & 0o7777 == 0o700 {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let path = entry.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    // The top directory last: its owner says the whole tree is done.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    Ok(())
}

fn rootfs_is_custom(root: &Path) -> bool {
    root != Path::new("/")
}

type System = (
    Vec<SystemMount>,
    Option<[(PathBuf, String); 2]>,
    &'static str,
);

/// The read-only mounts of the sandbox's system, the generated `/etc/passwd` and `/etc/group`,
/// and the shell commands run in. Creates the workspaces directory (mode 0711: sandbox users
/// may pass through to their own workspace, but not list the others).
fn prepare_system(root: &Path, custom: bool, workspaces: &Path) -> Result<System, NamespaceError> {
    if custom && !root.is_dir() {
        return Err(NamespaceError::RootfsNotDir {
            root: root.to_path_buf(),
        });
    }
    let names: Vec<String> = if custom {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .map_err(|source| NamespaceError::ReadRootfs {
                root: root.to_path_buf(),
                source,
            })?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !NOT_FROM_ROOTFS.contains(&n.as_str()))
            .collect();
        names.sort();
        names
    } else {
        HOST_SYSTEM.iter().map(|s| s.to_string()).collect()
    };
    let mut mounts = Vec::new();
    for name in names {
        let path = root.join(&name);
        let dest = format!("/{name}");
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(&path).map_err(|source| NamespaceError::ReadLink {
                        path: path.clone(),
                        source,
                    })?;
                mounts.push(SystemMount::Symlink { target, dest });
            }
            Ok(_) => mounts.push(SystemMount::Bind { source: path, dest }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(NamespaceError::Inspect { path, source }),
        }
    }
    let has = |p: &str| {
        let path = root.join(p);
        std::fs::symlink_metadata(&path).is_ok()
    };
    let shell = if has("bin/bash") || has("usr/bin/bash") {
        "/bin/bash"
    } else if has("bin/sh") || has("usr/bin/sh") {
        "/bin/sh"
    } else {
        return Err(NamespaceError::NoShell {
            root: root.to_path_buf(),
        });
    };
    // Directories made here on the way (e.g. those of a private data directory's workspaces
    // root) let the sandbox users through without letting them list anything.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(workspaces)
        .map_err(|source| NamespaceError::CreateDir {
            dir: workspaces.to_path_buf(),
            source,
        })?;
    std::fs::set_permissions(workspaces, std::fs::Permissions::from_mode(0o711)).map_err(
        |source| NamespaceError::SetMode {
            dir: workspaces.to_path_buf(),
            source,
        },
    )?;
    let etc_dir = workspaces.join(".etc");
    if !(has("etc/passwd") && has("etc/group")) {
        return Ok((mounts, None, shell));
    }
    let passwd = identity_file(
        &root.join("etc/passwd"),
        &format!("{INSIDE_USER}:x:{INSIDE_UID}:{INSIDE_UID}:{INSIDE_USER}:/workspace:{shell}"),
    );
    let group = identity_file(
        &root.join("etc/group"),
        &format!("{INSIDE_USER}:x:{INSIDE_UID}:"),
    );
    let files = [
        (etc_dir.join("passwd"), passwd),
        (etc_dir.join("group"), group),
    ];
    write_etc(&files)?;
    Ok((mounts, Some(files), shell))
}

/// Write the generated `/etc` files (world-readable, in a world-searchable directory).
fn write_etc(files: &[(PathBuf, String); 2]) -> Result<(), NamespaceError> {
    for (path, text) in files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|source| NamespaceError::CreateDir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        write_public(path, text).map_err(|source| NamespaceError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A copy of the system's passwd/group file whose entry for the sandbox's uid is ours.
fn identity_file(system: &Path, ours: &str) -> String {
    let existing = std::fs::read_to_string(system).unwrap_or_default();
    let id = INSIDE_UID.to_string();
    let mut out: String = existing
        .lines()
        .filter(|line| {
            let mut fields = line.split(':');
            let name = fields.next().unwrap_or_default();
            let id_field = fields.nth(1).unwrap_or_default();
            name != INSIDE_USER && id_field != id
        })
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(ours);
    out.push('\n');
    out
}

/// Write a world-readable file atomically.
fn write_public(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn explain_probe_failure(output: &str, workspaces: &Path) -> NamespaceError {
    let detail = if output.is_empty() {
        "no output".to_string()
    } else {
        output.lines().take(3).collect::<Vec<_>>().join(" / ")
    };
    if output.contains("Permission denied") && output.contains("source path") {
        NamespaceError::Unreachable {
            workspaces: workspaces.to_path_buf(),
            detail,
        }
    } else if output.contains("new namespace")
        || output.contains("uid map")
        || output.contains("user namespace")
    {
        NamespaceError::NoUserNamespaces { detail }
    } else {
        NamespaceError::TestCommand { detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_failures_say_what_to_do() {
        let dir = Path::new("/data/workspaces");
        let e = explain_probe_failure(
            "bwrap: Creating new namespace failed: Operation not permitted",
            dir,
        );
        assert!(
            matches!(e, NamespaceError::NoUserNamespaces { .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("user namespaces are not allowed here (bwrap: Creating new namespace failed: Operation not permitted): on a host")
                && text.contains("seccomp=unconfined")
                && text.ends_with("or set ECDYSIS_SANDBOX=off"),
            "{text}"
        );
        let e = explain_probe_failure(
            "bwrap: Can't find source path /data/workspaces/x: Permission denied",
            dir,
        );
        assert_eq!(
            e.to_string(),
            "bwrap cannot reach /data/workspaces as an unprivileged user (bwrap: Can't find source path /data/workspaces/x: Permission denied): every directory above it must be searchable by others (chmod o+x), or set ECDYSIS_DATA_DIR elsewhere"
        );
        let e = explain_probe_failure("", dir);
        assert_eq!(
            e.to_string(),
            "a test command in the sandbox failed: no output"
        );
    }

    #[test]
    fn tasks_of_a_user_are_counted() {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert!(count_tasks(me) >= 1, "this test runs as uid {me}");
        assert_eq!(count_tasks(UID_BASE + UID_SPAN + 17), 0);
    }

    #[test]
    fn landlock_scopes_stop_signals_leaving_the_sandbox() {
        if landlock::abi() < landlock::SCOPES_ABI {
            eprintln!("skipping: this kernel's Landlock has no scopes");
            return;
        }
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("kill -0 {parent} 2>&1; echo status $?"));
        // SAFETY: restrict_scopes only makes raw system calls.
        unsafe {
            command.pre_exec(|| landlock::restrict_scopes());
        }
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("status 1"), "{text}");
        assert!(text.contains("not permitted"), "{text}");
        // Without the scope the same signal is allowed.
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -0 {parent}; echo status $?"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&output.stdout).contains("status 0"));
    }

    #[test]
    fn identity_files_replace_the_sandbox_uid() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        let text = identity_file(&passwd, "sandbox:x:1000:1000:sandbox:/workspace:/bin/sh");
        assert_eq!(
            text,
            "root:x:0:0:root:/root:/bin/bash\nsandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n"
        );
    }

    #[test]
    fn host_system_mounts_follow_the_host_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (mounts, etc, shell) =
            prepare_system(Path::new("/"), false, &dir.path().join("ws")).unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| matches!(m, SystemMount::Bind { dest, .. } if dest == "/usr"))
        );
        assert!(!mounts.iter().any(|m| match m {
            SystemMount::Bind { dest, .. } | SystemMount::Symlink { dest, .. } =>
                dest == "/home" || dest == "/root",
        }));
        assert!(shell == "/bin/bash" || shell == "/bin/sh");
        assert!(etc.is_some());
        let mode = std::fs::metadata(dir.path().join("ws")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o711);
    }

    #[test]
    fn custom_rootfs_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = prepare_system(&missing, true, &dir.path().join("ws")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "sandbox.rootfs {} is not a directory (unpack a root file system there, e.g. `docker export` of an image)",
                missing.display()
            )
        );
    }

    /// The texts `doctor` and the logs show, and the causes kept behind them.
    #[test]
    fn set_up_errors_keep_their_text_and_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        // A workspaces directory below a file cannot be made.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = prepare_system(Path::new("/"), false, &file.join("ws")).unwrap_err();
        assert!(matches!(e, NamespaceError::CreateDir { .. }), "{e:?}");
        let cause = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert!(cause.is_some(), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create {}: {}",
                file.join("ws").display(),
                cause.unwrap()
            )
        );
        assert_eq!(
            NamespaceError::NoBwrap.to_string(),
            "bubblewrap is not installed (apt-get install bubblewrap, or set ECDYSIS_SANDBOX=off)"
        );
        assert_eq!(
            NamespaceError::NoShell {
                root: PathBuf::from("/srv/root")
            }
            .to_string(),
            "the sandbox's system (/srv/root) has no /bin/sh"
        );
        // A probe's failure reads as the sandbox error it wraps.
        let e = NamespaceError::ProbeRun(SandboxError::Unavailable("gone".into()));
        assert_eq!(e.to_string(), "the sandbox is not usable: gone");
        // Written back into a run's error, the set-up error keeps its text too.
        let e = SandboxError::Setup(Box::new(NamespaceError::NoBwrap));
        assert_eq!(
            e.to_string(),
            "the sandbox is not usable: bubblewrap is not installed (apt-get install bubblewrap, or set ECDYSIS_SANDBOX=off)"
        );
        assert!(e.source().is_some());
    }
}
