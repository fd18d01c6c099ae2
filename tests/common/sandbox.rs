//! The sandbox backend driven directly (no server), and the checks the sandbox tests share:
//! is bubblewrap here, a directory the sandbox user may enter, which processes are still
//! running for a given ecdysis process.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ecdysis::config::SandboxSettings;
use ecdysis::sandbox::{Limits, Namespace, RunOutput, RunRequest, Sandbox, WorkspaceRef};

/// True when bubblewrap is installed; panics in CI when it is not.
pub fn sandbox_ready() -> bool {
    ecdysis_testkit::prerequisite::prerequisite(
        ecdysis_testkit::prerequisite::runs("bwrap", "--version"),
        "bubblewrap (bwrap)",
        "apt-get install bubblewrap",
    )
}

/// A temporary directory the sandbox's unprivileged user may pass through (tempdirs are 0700).
pub fn public_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The namespace backend on a scratch workspaces directory.
pub struct Direct {
    pub backend: Namespace,
    pub dir: tempfile::TempDir,
}

impl Direct {
    pub async fn new(settings: SandboxSettings) -> Direct {
        let dir = public_tempdir();
        let backend = Namespace::detect(&settings, &dir.path().join("workspaces"))
            .await
            .unwrap_or_else(|e| panic!("bwrap is installed but the sandbox does not work: {e}"));
        Direct { backend, dir }
    }

    /// The host directory of workspace `key`.
    pub fn workspace(&self, key: &str) -> PathBuf {
        self.dir.path().join("workspaces").join(key)
    }

    pub async fn run(&self, key: &str, command: &str, limits: Limits) -> RunOutput {
        let workspace = WorkspaceRef {
            key: key.to_string(),
            dir: self.workspace(key),
        };
        std::fs::create_dir_all(&workspace.dir).unwrap();
        self.backend.prepare(&workspace).await.unwrap();
        self.backend
            .run(RunRequest {
                workspace,
                command: command.to_string(),
                limits,
            })
            .await
            .unwrap()
    }
}

pub fn out(output: &RunOutput) -> String {
    String::from_utf8_lossy(&output.output).into_owned()
}

/// Processes that belong to the sandboxes of the ecdysis process `pid`: its descendants
/// (other than itself), and anything in one of its sandbox cgroups (`ecdysis-<pid>-…`), which
/// is where a process that escaped its parent would still be.
pub fn sandbox_processes_of(pid: u32) -> Vec<String> {
    let mut parents = std::collections::HashMap::new();
    let mut found = Vec::new();
    let marker = format!("/ecdysis-{pid}-");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: the command name may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parents.insert(child, ppid);
        let in_group = std::fs::read_to_string(entry.path().join("cgroup"))
            .map(|text| text.contains(&marker))
            .unwrap_or(false);
        if in_group {
            found.push(describe(child));
        }
    }
    for (&child, _) in parents.iter() {
        let mut up = parents.get(&child).copied();
        let mut hops = 0;
        while let Some(parent) = up {
            if parent == pid {
                let line = describe(child);
                if !found.contains(&line) {
                    found.push(line);
                }
                break;
            }
            if parent <= 1 || hops > 64 {
                break;
            }
            up = parents.get(&parent).copied();
            hops += 1;
        }
    }
    found
}

fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default();
    format!("{pid} {}", cmdline.trim())
}

/// Wait (at most `limit`) until `pid` has no sandbox processes left; what is left otherwise.
pub async fn wait_sandboxes_gone(pid: u32, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = sandbox_processes_of(pid);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
