//! `/run <command>`: run a command in the channel's sandbox and post what it did — the output
//! as a code block (or a file when it is too long for the platform), the exit code and the
//! duration, and the files it wrote under `/workspace/out/` as attachments.

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::Attachment;

use super::runner::{RunReport, Runner, SnapshotOutcome};
use super::{Ended, Limits};
use crate::bus::{EventContext, Outgoing};
use crate::engine::commands::Feature;
use crate::engine::progress;

/// The `/run` command.
pub struct RunFeature {
    runner: Arc<Runner>,
}

impl RunFeature {
    pub fn new(runner: Arc<Runner>) -> Self {
        Self { runner }
    }
}

const USAGE: &str = "Usage: `/run <command>` runs a shell command in this channel's sandbox. \
`/workspace` (the working directory) is kept between runs; files written to `/workspace/out/` \
are posted here.";

#[async_trait]
impl Feature for RunFeature {
    async fn run(&self, event: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>> {
        let command = args.trim();
        if command.is_empty() {
            return Ok(vec![Outgoing::text(USAGE)]);
        }
        if let Err(why) = self
            .runner
            .may_run(&event.conversation, &event.payload.user.id)
        {
            return Ok(vec![Outgoing::text(format!(
                "Not run: {why}. An administrator can change that in the [sandbox] settings."
            ))]);
        }
        // The same line the model's `run_command` shows while it runs.
        let line = progress::line("run_command", &serde_json::json!({ "command": command }));
        let ran = event
            .live
            .during(
                line,
                self.runner.run(&event.conversation.channel_ref(), command),
            )
            .await;
        match ran {
            Ok(report) => Ok(vec![render_report(
                &report,
                inline_limit(&event.conversation.platform),
            )]),
            // Nothing ran (the workspace could not be restored, the sandbox did not start):
            // say so rather than retry a command that may not be idempotent.
            Err(e) => Ok(vec![Outgoing::text(format!(
                "The command did not run: {e}."
            ))]),
        }
    }
}

/// Characters of a reply shown inline on a platform; longer output goes into a file.
pub fn inline_limit(platform: &str) -> usize {
    match platform {
        "discord" => 2_000,
        // A Slack section block holds 3,000 characters.
        "slack" => 3_000,
        _ => 4_000,
    }
}

/// The reply for a run: a code block and a status line, or a summary and `output.txt` when the
/// whole would not fit in `limit` characters; `out/` files attached.
pub fn render_report(report: &RunReport, limit: usize) -> Outgoing {
    let text = clean_output(&report.output.output);
    let status = status_line(report);
    let notes = notes(report);
    let mut footer = status.clone();
    for note in &notes {
        footer.push('\n');
        footer.push_str(note);
    }
    let mut attachments: Vec<Attachment> = report
        .files
        .iter()
        .map(|f| Attachment::new(&f.name, &f.mime, f.bytes.clone()))
        .collect();
    let inline = format!("{}\n{footer}", code_block(&text));
    if inline.chars().count() <= limit {
        return Outgoing {
            text: inline,
            attachments,
            ..Outgoing::default()
        };
    }
    let lines = text.lines().count();
    let mut header = format!(
        "Output: {} line{}, {} — attached as `output.txt`.",
        lines,
        if lines == 1 { "" } else { "s" },
        human_bytes(report.output.output.len() as u64)
    );
    let budget = limit
        .saturating_sub(header.chars().count() + footer.chars().count() + 40)
        .min(1_500);
    let tail = tail_lines(&text, budget);
    if !tail.is_empty() {
        header.push_str(" The last lines:");
    }
    let mut body = header;
    if !tail.is_empty() {
        body.push('\n');
        body.push_str(&code_block(&tail));
    }
    body.push('\n');
    body.push_str(&footer);
    attachments.insert(
        0,
        Attachment::new(
            "output.txt",
            "text/plain",
            bytes::Bytes::from(report.output.output.clone()),
        ),
    );
    Outgoing {
        text: truncate_chars(&body, limit),
        attachments,
        ..Outgoing::default()
    }
}

/// `exit 0 · 12 ms`, or how the run was stopped.
pub(crate) fn status_line(report: &RunReport) -> String {
    let took = human_duration(report.output.duration);
    match (report.output.ended, report.output.exit_code) {
        (Ended::TimedOut, _) => format!(
            "stopped: the {} s time limit ran out (sandbox.timeout_seconds) · {took}",
            report.limits.timeout.as_secs()
        ),
        (Ended::OutputLimit, _) => format!(
            "stopped: more than {} of output (sandbox.max_output_bytes) · {took}",
            human_bytes(report.limits.max_output_bytes as u64)
        ),
        (Ended::MemoryLimit, _) => format!(
            "stopped: the sandbox used up its {} of memory (sandbox.memory_mb, for all its processes and /tmp together) · {took}",
            human_bytes(report.limits.memory_bytes)
        ),
        (Ended::WorkspaceLimit, _) => format!(
            "stopped: the workspace grew past its {} limit (sandbox.workspace_max_mb) · {took}",
            human_bytes(report.limits.workspace_bytes)
        ),
        (Ended::Exited, Some(code)) => match signal_meaning(code, &report.limits) {
            Some(meaning) => format!("exit {code} ({meaning}) · {took}"),
            None => format!("exit {code} · {took}"),
        },
        (Ended::Exited, None) => format!("ended without an exit code · {took}"),
    }
}

/// What an exit code of 128 + N says about why the command died.
fn signal_meaning(code: i32, limits: &Limits) -> Option<String> {
    Some(match code - 128 {
        9 => "killed: SIGKILL, e.g. past the CPU time limit (sandbox.cpu_seconds) or out of memory (sandbox.memory_mb)".into(),
        24 => format!(
            "killed: the CPU time limit of {} s ran out (sandbox.cpu_seconds)",
            limits.cpu_seconds
        ),
        25 => format!(
            "killed: a file reached the {} size limit (sandbox.workspace_max_mb)",
            human_bytes(limits.max_file_bytes)
        ),
        11 => "killed: SIGSEGV, perhaps out of memory (sandbox.memory_mb)".into(),
        6 => "killed: SIGABRT, perhaps out of memory (sandbox.memory_mb)".into(),
        15 => "killed: SIGTERM".into(),
        _ => return None,
    })
}

/// Lines after the status: workspace restores, snapshot problems, files not attached.
pub(crate) fn notes(report: &RunReport) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(bytes) = report.removed_bytes {
        notes.push(format!(
            "⚠ The run failed: what it added to the workspace was removed ({} given back); files it did not add or grow are as before.",
            human_bytes(bytes)
        ));
    }
    if let Some(bytes) = report.restored_bytes {
        notes.push(format!(
            "The workspace was restored from its snapshot ({}).",
            human_bytes(bytes)
        ));
    }
    match &report.snapshot {
        SnapshotOutcome::Unchanged | SnapshotOutcome::Saved(_) => {}
        SnapshotOutcome::TooLarge { bytes, limit } => notes.push(format!(
            "⚠ The workspace was NOT saved: it holds {}, over the {} limit (sandbox.workspace_max_mb). Delete files to get under it; until then changes live on this machine only.",
            human_bytes(*bytes),
            human_bytes(*limit)
        )),
        SnapshotOutcome::Failed(e) => notes.push(format!(
            "⚠ The workspace could not be saved to the blob store: {e}. Changes from this run live on this machine only until a later run saves them."
        )),
    }
    if !report.skipped_files.is_empty() {
        notes.push(format!(
            "Not attached from out/: {}.",
            report.skipped_files.join(", ")
        ));
    }
    notes
}

/// Output as chat text: UTF-8 (lossy), without terminal escape sequences and carriage returns.
pub(crate) fn clean_output(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for next in chars.by_ref() {
                        if ('@'..='~').contains(&next) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            c => out.push(c),
        }
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// A fenced code block that the text cannot break out of.
pub(crate) fn code_block(text: &str) -> String {
    let body = if text.is_empty() {
        "(no output)".to_string()
    } else {
        text.replace("```", "``\u{200b}`")
    };
    format!("```\n{body}\n```")
}

/// The last whole lines of `text` within `budget` characters.
fn tail_lines(text: &str, budget: usize) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut used = 0;
    for line in text.lines().rev() {
        let cost = line.chars().count() + 1;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(line);
    }
    kept.reverse();
    kept.join("\n")
}

fn truncate_chars(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    text.chars()
        .take(limit.saturating_sub(1))
        .collect::<String>()
        + "…"
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MB", b / KIB / KIB)
    } else {
        format!("{:.1} GB", b / KIB / KIB / KIB)
    }
}

pub(crate) fn human_duration(duration: std::time::Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{OutFile, RunOutput};
    use std::time::Duration;

    fn report(output: &str, exit: Option<i32>, ended: Ended) -> RunReport {
        RunReport {
            command: "x".into(),
            output: RunOutput {
                output: output.as_bytes().to_vec(),
                exit_code: exit,
                ended,
                duration: Duration::from_millis(12),
                peak_memory: None,
            },
            limits: Limits::default(),
            files: Vec::new(),
            skipped_files: Vec::new(),
            restored_bytes: None,
            removed_bytes: None,
            snapshot: SnapshotOutcome::Unchanged,
        }
    }

    #[test]
    fn short_output_is_a_code_block() {
        let out = render_report(&report("hello\n", Some(0), Ended::Exited), 2000);
        assert_eq!(out.text, "```\nhello\n```\nexit 0 · 12 ms");
        assert!(out.attachments.is_empty());
        let out = render_report(&report("", Some(3), Ended::Exited), 2000);
        assert_eq!(out.text, "```\n(no output)\n```\nexit 3 · 12 ms");
    }

    #[test]
    fn long_output_becomes_a_file_with_a_tail() {
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let out = render_report(&report(&long, Some(0), Ended::Exited), 2000);
        assert!(out.text.chars().count() <= 2000, "{}", out.text.len());
        assert!(out.text.contains("output.txt"), "{}", out.text);
        assert!(out.text.contains("line 4999"), "{}", out.text);
        assert!(out.text.ends_with("exit 0 · 12 ms"), "{}", out.text);
        assert_eq!(out.attachments[0].name, "output.txt");
        assert_eq!(out.attachments[0].bytes.len(), long.len());
    }

    #[test]
    fn limits_and_problems_are_explained() {
        let out = render_report(&report("", None, Ended::TimedOut), 2000);
        assert!(out.text.contains("30 s time limit"), "{}", out.text);
        let out = render_report(&report("", None, Ended::OutputLimit), 2000);
        assert!(
            out.text.contains("sandbox.max_output_bytes"),
            "{}",
            out.text
        );
        let out = render_report(&report("", Some(152), Ended::Exited), 2000);
        assert!(out.text.contains("CPU time limit"), "{}", out.text);
        let out = render_report(&report("", None, Ended::MemoryLimit), 2000);
        assert!(
            out.text
                .contains("used up its 1.0 GB of memory (sandbox.memory_mb"),
            "{}",
            out.text
        );
        let mut over = report("", None, Ended::WorkspaceLimit);
        over.removed_bytes = Some(300 * 1024 * 1024);
        let out = render_report(&over, 2000);
        assert!(
            out.text
                .contains("grew past its 256.0 MB limit (sandbox.workspace_max_mb)"),
            "{}",
            out.text
        );
        assert!(out.text.contains("300.0 MB given back"), "{}", out.text);
        let mut failed = report("ok", Some(0), Ended::Exited);
        failed.snapshot = SnapshotOutcome::Failed("S3 said no".into());
        let out = render_report(&failed, 2000);
        assert!(out.text.contains("could not be saved") && out.text.contains("S3 said no"));
    }

    #[test]
    fn fences_and_escapes_cannot_break_the_block() {
        assert_eq!(
            clean_output(b"\x1b[31mred\x1b[0m\r\nx\rdone\n\n"),
            "red\nx\ndone"
        );
        let block = code_block("a ``` b");
        assert_eq!(block.matches("```").count(), 2, "{block}");
    }

    #[test]
    fn out_files_are_attached() {
        let mut r = report("", Some(0), Ended::Exited);
        r.files.push(OutFile {
            name: "plot.png".into(),
            mime: "image/png".into(),
            bytes: bytes::Bytes::from_static(b"png"),
        });
        let out = render_report(&r, 2000);
        assert_eq!(out.attachments.len(), 1);
        assert_eq!(out.attachments[0].mime, "image/png");
    }
}
