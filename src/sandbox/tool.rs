//! `run_command`: the model's way into the channel's sandbox. Same runner as `/run` (same
//! allowlists, limits and workspace); when `sandbox.require_approval` is on, each call waits
//! for a human to approve it first.

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::Attachment;
use serde_json::json;
use tracing::info;

use super::ApprovalGate;
use super::feature::{clean_output, notes, status_line};
use super::runner::Runner;
use crate::tools::{Tool, ToolContext, ToolError, ToolImage, ToolOutput};

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

#[async_trait]
impl Tool for RunCommandTool {
    fn name(&self) -> &'static str {
        "run_command"
    }

    fn description(&self) -> &'static str {
        "Run a shell command (bash) in this channel's Linux sandbox and get its combined stdout/stderr and exit code. \
No network. The working directory /workspace persists between runs; files written to /workspace/out/ are posted to the conversation."
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": "The shell command line to run, e.g. `python3 script.py` or `ls -la`."
                }
            },
            "required": ["command"],
            "additionalProperties": false
        })
    }

    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let command = input
            .get("command")
            .and_then(|c| c.as_str())
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ToolError::InvalidInput("`command` must be a non-empty string".into())
            })?;
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
