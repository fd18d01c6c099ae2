//! `run_command`: the model's way into the channel's sandbox. Same runner as `/run` (same
//! allowlists, limits and workspace); when `sandbox.require_approval` is on, each call waits
//! for a human to approve it first.

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::Attachment;
use schemars::JsonSchema;
use serde::Deserialize;
use tracing::info;

use super::ApprovalGate;
use super::feature::{clean_output, notes, status_line};
use super::runner::Runner;
use crate::engine::tools::{
    Tool, ToolContext, ToolError, ToolImage, ToolOutput, arguments, input_schema_of,
};

/// Characters of output the model reads (the start and the end of longer output).
const MODEL_OUTPUT_CHARS: usize = 16_000;
/// Images from `out/` the model is shown, when small enough.
const MODEL_IMAGE_BYTES: usize = 4 * 1024 * 1024;
const COMMAND_MAX_CHARS: usize = 20_000;

/// The `run_command` tool.
pub struct RunCommandTool {
    runner: Arc<Runner>,
    approvals: Option<Arc<dyn ApprovalGate>>,
}

impl RunCommandTool {
    /// `approvals` is asked before each run when `sandbox.require_approval` is on; with the
    /// option on and no gate, calls are refused (closed by default).
    pub fn new(runner: Arc<Runner>, approvals: Option<Arc<dyn ApprovalGate>>) -> Self {
        Self { runner, approvals }
    }
}

/// What the model passes to `run_command`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RunCommandArgs {
    /// The shell command line to run, e.g. `python3 script.py` or `ls -la`.
    command: String,
}

#[async_trait]
impl Tool for RunCommandTool {
    fn name(&self) -> &'static str {
        "run_command"
    }

    fn description(&self) -> &'static str {
        "Run a shell command in this channel's Linux sandbox and get its combined stdout/stderr and exit code. \
No network. The working directory /workspace persists between runs; files written to /workspace/out/ are posted to the conversation."
    }

    fn input_schema(&self) -> serde_json::Value {
        input_schema_of::<RunCommandArgs>()
    }

    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let args: RunCommandArgs = arguments(input)?;
        let command = args.command.trim();
        if command.is_empty() {
            return Err(ToolError::InvalidInput(
                "`command` must be a non-empty string".into(),
            ));
        }
        if command.chars().count() > COMMAND_MAX_CHARS {
            return Err(ToolError::InvalidInput(format!(
                "the command is longer than {COMMAND_MAX_CHARS} characters; write a script file instead"
            )));
        }
        self.runner
            .may_run(&context.conversation, &context.user_id)
            .map_err(|why| ToolError::Failed(format!("not allowed: {why}")))?;
        if self.runner.settings().require_approval {
            let Some(gate) = &self.approvals else {
                return Err(ToolError::Failed(
                    "commands need a human approval here (sandbox.require_approval), and no approval mechanism is configured; the command was not run".into(),
                ));
            };
            let approved = gate.approve(context, command).await.map_err(|e| {
                ToolError::Failed(format!(
                    "could not ask for approval: {e}; the command was not run"
                ))
            })?;
            if !approved {
                info!(event_id = context.event_id, "run_command denied by a human");
                return Err(ToolError::Failed(
                    "a human denied running this command (or did not answer in time); it was not run".into(),
                ));
            }
        }
        let report = self
            .runner
            .run(&context.conversation.channel_ref(), command)
            .await
            .map_err(|e| ToolError::Failed(format!("the command did not run: {e}")))?;

        let mut text = status_line(&report);
        for note in notes(&report) {
            text.push('\n');
            text.push_str(&note);
        }
        let output = clean_output(&report.output.output);
        text.push_str("\noutput:\n");
        text.push_str(&head_and_tail(&output, MODEL_OUTPUT_CHARS));
        if !report.files.is_empty() {
            let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
            text.push_str(&format!(
                "\nfiles from /workspace/out/ posted to the conversation: {}",
                names.join(", ")
            ));
        }
        let images = report
            .files
            .iter()
            .filter(|f| {
                matches!(
                    f.mime.as_str(),
                    "image/png" | "image/jpeg" | "image/gif" | "image/webp"
                ) && f.bytes.len() <= MODEL_IMAGE_BYTES
            })
            .map(|f| ToolImage {
                mime: f.mime.clone(),
                bytes: f.bytes.clone(),
            })
            .collect();
        let attachments = report
            .files
            .iter()
            .map(|f| Attachment::new(&f.name, &f.mime, f.bytes.clone()))
            .collect();
        Ok(ToolOutput {
            text,
            images,
            attachments,
        })
    }
}

/// The start and the end of `text` within about `max` characters.
fn head_and_tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return if text.is_empty() {
            "(no output)".into()
        } else {
            text.to_string()
        };
    }
    let half = max / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(count - half).collect();
    format!(
        "{head}\n[… {} characters left out …]\n{tail}",
        count - 2 * half
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxSettings;
    use crate::sandbox::{
        Ended, RunOutput, RunRequest, Sandbox, SandboxError, WorkspaceRef, Workspaces,
    };
    use crate::storage::blob::LocalBlobStore;
    use ecdysis_chat::ConversationRef;
    use serde_json::json;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A backend that records commands, writes `out/plot.png`, and tracks how many runs overlap.
    #[derive(Default)]
    struct Recording {
        commands: Mutex<Vec<String>>,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait]
    impl Sandbox for Recording {
        fn backend(&self) -> &'static str {
            "recording"
        }
        fn describe(&self) -> String {
            "recording".into()
        }
        async fn prepare(&self, _workspace: &WorkspaceRef) -> Result<(), SandboxError> {
            Ok(())
        }
        async fn run(&self, request: RunRequest) -> Result<RunOutput, SandboxError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.commands.lock().unwrap().push(request.command.clone());
            let out = request.workspace.dir.join("out");
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(out.join("plot.png"), request.command.as_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(RunOutput {
                output: format!("ran {}", request.command).into_bytes(),
                exit_code: Some(0),
                ended: Ended::Exited,
                duration: Duration::from_millis(5),
                peak_memory: None,
            })
        }
    }

    struct Gate {
        answer: bool,
        asked: AtomicUsize,
    }

    #[async_trait]
    impl ApprovalGate for Gate {
        async fn approve(&self, _context: &ToolContext, command: &str) -> Result<bool, String> {
            assert!(command.starts_with("echo"));
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(self.answer)
        }
    }

    async fn setup(settings: SandboxSettings) -> (Arc<Recording>, Arc<Runner>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(
            LocalBlobStore::open(&dir.path().join("blobs"))
                .await
                .unwrap(),
        );
        let workspaces = Workspaces::open(&dir.path().join("ws"), blobs, 1 << 30)
            .await
            .unwrap();
        let sandbox = Arc::new(Recording::default());
        let runner = Arc::new(Runner::new(sandbox.clone(), workspaces, settings));
        (sandbox, runner, dir)
    }

    fn context(channel: &str, user: &str) -> ToolContext {
        ToolContext {
            event_id: 1,
            step: 1,
            conversation: ConversationRef::new("slack", "T1", channel, None),
            user_id: user.into(),
            route: serde_json::Value::Null,
            poster: crate::bus::Poster::detached(),
        }
    }

    fn approval(answer: bool) -> Arc<Gate> {
        Arc::new(Gate {
            answer,
            asked: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn runs_and_reports_to_the_model_without_asking_when_approval_is_off() {
        let (sandbox, runner, _dir) = setup(SandboxSettings::default()).await;
        let gate = approval(false);
        let tool = RunCommandTool::new(runner, Some(gate.clone()));
        let out = tool
            .call(&context("C1", "U1"), json!({ "command": "echo hi" }))
            .await
            .unwrap();
        assert_eq!(gate.asked.load(Ordering::SeqCst), 0);
        assert_eq!(*sandbox.commands.lock().unwrap(), ["echo hi"]);
        assert!(out.text.starts_with("exit 0 · "), "{}", out.text);
        assert!(out.text.contains("output:\nran echo hi"), "{}", out.text);
        assert!(
            out.text.contains("posted to the conversation: plot.png"),
            "{}",
            out.text
        );
        assert_eq!(out.attachments.len(), 1);
        assert_eq!(out.images.len(), 1, "the model sees the image");
        let e = tool
            .call(&context("C1", "U1"), json!({ "cmd": "x" }))
            .await
            .unwrap_err();
        assert!(matches!(e, ToolError::InvalidInput(_)), "{e}");
    }

    #[tokio::test]
    async fn approval_is_asked_and_a_denial_runs_nothing() {
        let settings = SandboxSettings {
            require_approval: true,
            ..SandboxSettings::default()
        };
        let (sandbox, runner, _dir) = setup(settings).await;
        let denied = approval(false);
        let tool = RunCommandTool::new(runner.clone(), Some(denied.clone()));
        let e = tool
            .call(&context("C1", "U1"), json!({ "command": "echo no" }))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("denied"), "{e}");
        assert_eq!(denied.asked.load(Ordering::SeqCst), 1);
        assert!(sandbox.commands.lock().unwrap().is_empty());

        let approved = approval(true);
        let tool = RunCommandTool::new(runner.clone(), Some(approved.clone()));
        tool.call(&context("C1", "U1"), json!({ "command": "echo yes" }))
            .await
            .unwrap();
        assert_eq!(approved.asked.load(Ordering::SeqCst), 1);
        assert_eq!(*sandbox.commands.lock().unwrap(), ["echo yes"]);

        // Required but no way to ask: closed.
        let tool = RunCommandTool::new(runner, None);
        let e = tool
            .call(&context("C1", "U1"), json!({ "command": "echo unasked" }))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no approval mechanism"), "{e}");
        assert_eq!(sandbox.commands.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn allowlists_apply_to_the_model_too() {
        let settings = SandboxSettings {
            allow_users: vec!["slack:U1".into()],
            allow_channels: vec!["C1".into(), "slack:T1:C2".into()],
            ..SandboxSettings::default()
        };
        let (sandbox, runner, _dir) = setup(settings).await;
        let tool = RunCommandTool::new(runner, None);
        let call = |channel: &'static str, user: &'static str| {
            let tool = &tool;
            async move {
                tool.call(&context(channel, user), json!({ "command": "echo x" }))
                    .await
            }
        };
        assert!(call("C1", "U1").await.is_ok());
        assert!(call("C2", "U1").await.is_ok());
        let e = call("C3", "U1").await.unwrap_err();
        assert!(e.to_string().contains("allow_channels"), "{e}");
        let e = call("C1", "U2").await.unwrap_err();
        assert!(e.to_string().contains("allow_users"), "{e}");
        assert_eq!(sandbox.commands.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn one_run_per_channel_and_a_global_cap() {
        let settings = SandboxSettings {
            max_parallel: 2,
            ..SandboxSettings::default()
        };
        let (sandbox, runner, _dir) = setup(settings).await;
        let channel = |c: &str| ecdysis_chat::ChannelRef {
            platform: "web".into(),
            workspace: "local".into(),
            channel: c.into(),
        };
        let same: Vec<_> = (0..3)
            .map(|i| {
                let runner = runner.clone();
                let c = channel("same");
                tokio::spawn(async move { runner.run(&c, &format!("echo {i}")).await })
            })
            .collect();
        for run in same {
            run.await.unwrap().unwrap();
        }
        assert_eq!(
            sandbox.most.load(Ordering::SeqCst),
            1,
            "runs in one channel overlapped"
        );
        let many: Vec<_> = (0..6)
            .map(|i| {
                let runner = runner.clone();
                let c = channel(&format!("c{i}"));
                tokio::spawn(async move { runner.run(&c, "echo").await })
            })
            .collect();
        for run in many {
            run.await.unwrap().unwrap();
        }
        assert_eq!(
            sandbox.most.load(Ordering::SeqCst),
            2,
            "the global cap did not hold"
        );
    }

    #[test]
    fn long_output_keeps_both_ends() {
        let text: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        let cut = head_and_tail(&text, 1000);
        assert!(cut.starts_with("0\n1\n"));
        assert!(cut.ends_with("9999\n"));
        assert!(cut.contains("characters left out"));
        assert_eq!(head_and_tail("", 10), "(no output)");
    }
}
