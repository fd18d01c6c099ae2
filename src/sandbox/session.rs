//! Long-lived programs in a channel's sandbox: an MCP server with `sandbox = true` runs as one,
//! spoken to over its stdin and stdout, under the same confinement as `/run` (namespaces, the
//! channel's uid, the read-only system, the seccomp deny list, the cgroup and rlimits) but
//! without the wall-clock limit of one command. Dropping the [`Session`] kills it.

use std::path::PathBuf;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tracing::warn;

use super::cgroup::RunGroup;
use super::{Limits, WorkspaceRef};

/// A program to keep running in a sandbox.
#[derive(Clone, Debug)]
pub struct SessionRequest {
    /// Mounted at `/workspace`, the program's working directory and `HOME`.
    pub workspace: WorkspaceRef,
    /// Found on the sandbox's `PATH` (`/usr/local/bin`, `/usr/bin`, `/bin`, …) or absolute.
    pub program: String,
    pub args: Vec<String>,
    /// Set on top of the sandbox's own few variables (`PATH`, `HOME`, `LANG`, …).
    pub env: Vec<(String, String)>,
    /// Host directories shown read-only at the same path inside (e.g. a Python installation
    /// outside `/usr`). bwrap runs as the sandbox's unprivileged user, so it must be able to
    /// reach them (not under a 0700 home directory).
    pub mounts: Vec<PathBuf>,
    /// The wall-clock `timeout` is not used; the others are.
    pub limits: Limits,
}

/// A running sandboxed program with pipes to it.
pub struct Session {
    child: Child,
    /// The program's cgroup, where one can be had.
    group: Option<RunGroup>,
}

impl Session {
    pub(super) fn new(child: Child, group: Option<RunGroup>) -> Self {
        Self { child, group }
    }

    /// The program's stdout, stdin and stderr (once; `None` after).
    pub fn take_stdio(&mut self) -> Option<(ChildStdout, ChildStdin, Option<ChildStderr>)> {
        let stdout = self.child.stdout.take()?;
        let stdin = self.child.stdin.take()?;
        Some((stdout, stdin, self.child.stderr.take()))
    }

    /// Whether the sandbox has ended.
    pub fn has_ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Kill the sandbox's PID 1 (the kernel then ends everything in its PID namespace) so
        // bwrap reaps it and exits; the cgroup catches anything that slipped out.
        if let Some(pid) = self.child.id() {
            super::namespace::kill_inner(pid);
        }
        let _ = self.child.start_kill();
        if let Some(mut group) = self.group.take() {
            group.kill_all();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || {
                        if let Err(e) = group.remove() {
                            warn!(error = %e, "cannot remove a sandbox session's cgroup");
                        }
                    });
                }
                // Without a runtime the group's own drop kills and removes what it can.
                Err(_) => drop(group),
            }
        }
    }
}
