//! The runner: everything around one sandboxed command that `/run` and `run_command` share —
//! who may run, one run at a time per channel, a global cap, restoring the workspace, the
//! `out/` files, and the snapshot afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ecdysis_chat::{ChannelRef, ConversationRef};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use super::usage::Index;
use super::workspace::{OutFile, Prepared, Scan, Snapshot, WorkspaceError, Workspaces};
use super::{
    Ended, Limits, RunOutput, RunRequest, Sandbox, SandboxError, WorkspaceRef, channel_key,
};
use crate::config::SandboxSettings;

/// Files from `out/` attached to one reply.
const MAX_OUT_FILES: usize = 10;
/// The largest `out/` file attached (the platforms' common upload limit).
const MAX_OUT_FILE_BYTES: u64 = 25 * 1024 * 1024;

/// What became of the workspace after a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Nothing changed; the blob store already has it.
    Unchanged,
    Saved(Snapshot),
    /// Over `sandbox.workspace_max_mb`: kept on this machine only.
    TooLarge {
        bytes: u64,
        limit: u64,
    },
    /// The blob store refused it: kept on this machine only.
    Failed(String),
}

/// Everything one run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub command: String,
    pub output: RunOutput,
    pub limits: Limits,
    /// New or changed files under `/workspace/out/`.
    pub files: Vec<OutFile>,
    /// `out/` files not attached, with the reason.
    pub skipped_files: Vec<String>,
    /// Bytes restored from the blob store before the run, when that happened.
    pub restored_bytes: Option<u64>,
    /// The run went past the workspace's size limit: what it added was removed, this many
    /// bytes.
    pub removed_bytes: Option<u64>,
    pub snapshot: SnapshotOutcome,
}

/// Why a command could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the workspace is not available: {0}")]
    Workspace(#[from] WorkspaceError),
}

/// Why a user may not run commands in a channel (the allowlist that refused), as `/run` and
/// `run_command` tell the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error(
        "you are not on this server's list of users who may run commands (sandbox.allow_users)"
    )]
    User,
    #[error("commands may not run in this channel (sandbox.allow_channels)")]
    Channel,
}

/// Runs commands for channels.
pub struct Runner {
    sandbox: Arc<dyn Sandbox>,
    workspaces: Workspaces,
    settings: SandboxSettings,
    limits: Limits,
    permits: Semaphore,
    channels: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Runner {
    pub fn new(
        sandbox: Arc<dyn Sandbox>,
        workspaces: Workspaces,
        settings: SandboxSettings,
    ) -> Self {
        Self {
            limits: Limits::from_settings(&settings),
            permits: Semaphore::new(settings.max_parallel.max(1)),
            sandbox,
            workspaces,
            settings,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    pub fn workspaces(&self) -> &Workspaces {
        &self.workspaces
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether `user_id` may run commands in this conversation's channel (the allowlists;
    /// empty lists allow everyone). The error says which list refused.
    pub fn may_run(&self, conversation: &ConversationRef, user_id: &str) -> Result<(), NotAllowed> {
        // The platform part comes from the conversation (set by the adapter that received the
        // event), never from the user id a client sent (see `ecdysis_chat::AllowList`).
        if !ecdysis_chat::AllowList::new(self.settings.allow_users.iter().cloned())
            .allows_user(&conversation.platform, user_id)
        {
            return Err(NotAllowed::User);
        }
        if !ecdysis_chat::AllowList::new(self.settings.allow_channels.iter().cloned())
            .allows_channel(conversation)
        {
            return Err(NotAllowed::Channel);
        }
        Ok(())
    }

    /// The lock that keeps one run at a time in a channel.
    fn channel_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        channels.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = channels.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        channels.insert(key.to_string(), Arc::downgrade(&lock));
        lock
    }

    /// Run `command` in the channel's sandbox: wait for the channel's previous run and for a
    /// free slot, make the workspace current, run, collect `out/` files, save the workspace.
    pub async fn run(&self, channel: &ChannelRef, command: &str) -> Result<RunReport, RunError> {
        let key = channel_key(channel);
        let lock = self.channel_lock(&key);
        let _channel = lock.lock().await;
        let _slot = self
            .permits
            .acquire()
            .await
            .map_err(|_| SandboxError::Unavailable("the runner is shutting down".into()))?;
        let restored_bytes = match self.workspaces.prepare(&key).await? {
            Prepared::Restored { bytes, .. } => Some(bytes),
            Prepared::Created | Prepared::Existing => None,
        };
        let workspace = self.workspaces.reference(&key);
        self.sandbox.prepare(&workspace).await?;
        let before = self.workspaces.scan(&key).await?;
        // What the workspace holds now, to take back what the run adds if it goes too far. A
        // workspace already over the limit (restored from a larger one) may not grow.
        let dir = workspace.dir.clone();
        let index = tokio::task::spawn_blocking(move || Index::take(&dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|index| index)
            .map_err(|source| WorkspaceError::Io {
                what: format!("measuring the workspace {key}"),
                source,
            })?;
        let mut limits = self.limits;
        limits.workspace_bytes = limits.workspace_bytes.max(index.total());
        let dir = workspace.dir.clone();
        let output = self
            .sandbox
            .run(RunRequest {
                workspace,
                command: command.to_string(),
                limits,
            })
            .await?;
        let removed_bytes = if output.ended == Ended::WorkspaceLimit {
            match tokio::task::spawn_blocking(move || index.remove_additions(&dir)).await {
                Ok(Ok(bytes)) => {
                    warn!(
                        key,
                        bytes, "a run went past the workspace limit; its additions were removed"
                    );
                    Some(bytes)
                }
                Ok(Err(e)) => {
                    error!(key, error = %e, "cannot remove what an over-limit run added");
                    None
                }
                Err(e) => {
                    error!(key, error = %e, "removing what an over-limit run added failed");
                    None
                }
            }
        } else {
            None
        };
        info!(
            key,
            exit_code = ?output.exit_code,
            ended = ?output.ended,
            duration_ms = output.duration.as_millis() as u64,
            output_bytes = output.output.len(),
            "sandboxed command finished"
        );
        let (after, files, skipped_files) = match self.workspaces.scan(&key).await {
            Ok(after) => {
                let (files, skipped) = self
                    .workspaces
                    .out_files(&key, &before, &after, MAX_OUT_FILES, MAX_OUT_FILE_BYTES)
                    .await;
                (Some(after), files, skipped)
            }
            Err(e) => {
                error!(key, error = %e, "cannot scan the workspace after a run");
                (None, Vec::new(), Vec::new())
            }
        };
        let snapshot = match after {
            None => SnapshotOutcome::Failed("the workspace could not be read after the run".into()),
            Some(after) => self.save(&key, &after).await,
        };
        Ok(RunReport {
            command: command.to_string(),
            output,
            limits,
            files,
            skipped_files,
            restored_bytes,
            removed_bytes,
            snapshot,
        })
    }

    /// Hold the channel's workspace while `work` runs (no run of the channel at the same time;
    /// restored first when another machine saved a newer one), then save it: what a sandboxed
    /// MCP server does in `/workspace` during a call outlives the machine as `/run`'s files do.
    pub async fn with_workspace<T, F, Fut>(
        &self,
        channel: &ChannelRef,
        work: F,
    ) -> Result<T, RunError>
    where
        F: FnOnce(WorkspaceRef) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let key = channel_key(channel);
        let lock = self.channel_lock(&key);
        let _channel = lock.lock().await;
        self.workspaces.prepare(&key).await?;
        let workspace = self.workspaces.reference(&key);
        self.sandbox.prepare(&workspace).await?;
        let out = work(workspace).await;
        match self.workspaces.scan(&key).await {
            Ok(after) => {
                if let SnapshotOutcome::Failed(e) = self.save(&key, &after).await {
                    warn!(key, error = %e, "the workspace is not saved yet");
                }
            }
            Err(e) => error!(key, error = %e, "cannot scan the workspace"),
        }
        Ok(out)
    }

    /// Put files users sent into the channel's workspace under `inbox/` (a file of the same
    /// name is replaced), then save the workspace, between runs of the channel. Files that
    /// would take the workspace past its size limit are left out. Returns the paths written
    /// (as the sandbox sees them: `/workspace/inbox/<name>`).
    pub async fn place_inbox(
        &self,
        channel: &ChannelRef,
        files: Vec<(String, bytes::Bytes)>,
    ) -> Result<Vec<String>, RunError> {
        let key = channel_key(channel);
        let lock = self.channel_lock(&key);
        let _channel = lock.lock().await;
        self.workspaces.prepare(&key).await?;
        let dir = self.workspaces.reference(&key).dir;
        let room = self
            .limits
            .workspace_bytes
            .saturating_sub(self.workspaces.scan(&key).await?.bytes);
        let written = tokio::task::spawn_blocking(move || super::inbox::write(&dir, files, room))
            .await
            .map_err(std::io::Error::other)
            .and_then(|written| written)
            .map_err(|source| WorkspaceError::Io {
                what: format!("writing files into the workspace {key}"),
                source,
            })?;
        if !written.is_empty() {
            let after = self.workspaces.scan(&key).await?;
            if let SnapshotOutcome::Failed(e) = self.save(&key, &after).await {
                warn!(key, error = %e, "received files are in the workspace but not saved yet");
            }
        }
        Ok(written)
    }

    async fn save(&self, key: &str, after: &Scan) -> SnapshotOutcome {
        if !self.workspaces.changed(key, after).await {
            return SnapshotOutcome::Unchanged;
        }
        match self.workspaces.snapshot(key, after).await {
            Ok(snapshot) => SnapshotOutcome::Saved(snapshot),
            Err(WorkspaceError::TooLarge { bytes, limit }) => {
                warn!(
                    key,
                    bytes, limit, "workspace over its size limit; not saved"
                );
                SnapshotOutcome::TooLarge { bytes, limit }
            }
            Err(e) => {
                error!(key, error = %e, "workspace snapshot failed");
                SnapshotOutcome::Failed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Ended, WorkspaceRef};
    use crate::storage::blob::LocalBlobStore;
    use async_trait::async_trait;
    use std::time::Duration;

    /// A backend that writes `big.bin` into the workspace and says the run went past the
    /// workspace limit (as the namespace backend's watch would).
    struct Filler;

    #[async_trait]
    impl Sandbox for Filler {
        fn backend(&self) -> &'static str {
            "filler"
        }
        fn describe(&self) -> String {
            "filler".into()
        }
        async fn prepare(&self, _workspace: &WorkspaceRef) -> Result<(), SandboxError> {
            Ok(())
        }
        async fn run(&self, request: RunRequest) -> Result<RunOutput, SandboxError> {
            let big = request.command == "fill";
            if big {
                std::fs::write(request.workspace.dir.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
            } else {
                std::fs::write(request.workspace.dir.join("notes.txt"), "keep").unwrap();
            }
            Ok(RunOutput {
                output: Vec::new(),
                exit_code: None,
                ended: if big {
                    Ended::WorkspaceLimit
                } else {
                    Ended::Exited
                },
                duration: Duration::from_millis(5),
                peak_memory: None,
            })
        }
    }

    /// A runner over [`Filler`] with its workspaces under `dir`.
    async fn filler_runner(dir: &std::path::Path, settings: SandboxSettings) -> Runner {
        let blobs = Arc::new(LocalBlobStore::open(&dir.join("blobs")).await.unwrap());
        let workspaces = Workspaces::open(&dir.join("ws"), blobs, 1 << 20)
            .await
            .unwrap();
        Runner::new(Arc::new(Filler), workspaces, settings)
    }

    #[tokio::test]
    async fn the_allowlists_say_which_refused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SandboxSettings {
            allow_users: vec!["web:U1".into()],
            allow_channels: vec!["web:local:c1".into()],
            ..SandboxSettings::default()
        };
        let runner = filler_runner(dir.path(), settings).await;
        let here = ConversationRef::new("web", "local", "c1", None);
        let elsewhere = ConversationRef::new("web", "local", "c2", None);
        assert_eq!(runner.may_run(&here, "U1"), Ok(()));
        let e = runner.may_run(&here, "U2").unwrap_err();
        assert_eq!(e, NotAllowed::User);
        assert_eq!(
            e.to_string(),
            "you are not on this server's list of users who may run commands (sandbox.allow_users)"
        );
        let e = runner.may_run(&elsewhere, "U1").unwrap_err();
        assert_eq!(e, NotAllowed::Channel);
        assert_eq!(
            e.to_string(),
            "commands may not run in this channel (sandbox.allow_channels)"
        );
    }

    #[tokio::test]
    async fn an_over_limit_run_gives_back_what_it_added() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SandboxSettings {
            workspace_max_mb: 1,
            ..SandboxSettings::default()
        };
        let runner = filler_runner(dir.path(), settings).await;
        let channel = ConversationRef::new("web", "local", "c1", None).channel_ref();
        let report = runner.run(&channel, "note").await.unwrap();
        assert_eq!(report.removed_bytes, None);
        let report = runner.run(&channel, "fill").await.unwrap();
        let removed = report.removed_bytes.expect("the additions were removed");
        assert!(removed >= 3 << 20, "{removed}");
        let workspace = runner.workspaces().reference(&channel_key(&channel)).dir;
        assert!(!workspace.join("big.bin").exists());
        assert_eq!(
            std::fs::read_to_string(workspace.join("notes.txt")).unwrap(),
            "keep"
        );
        // The workspace after the failed run is what gets saved.
        assert!(matches!(
            report.snapshot,
            SnapshotOutcome::Unchanged | SnapshotOutcome::Saved(_)
        ));
    }
}
