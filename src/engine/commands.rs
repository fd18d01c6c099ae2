//! The commands every platform shares (`remember`, `recall`, `forget`, `memory`, `status`,
//! `help`, …) and the dispatch of free text to the agent. This is the bus's [`Handler`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ecdysis_chat::{CommandName, EventKind};

use crate::bus::{EventContext, Handler, Outgoing};
use crate::embeddings::MemorySearch;
use crate::engine::profile::Profiles;
use crate::engine::tools::{Tool, ToolRegistry, ToolSource};
use crate::mcp::McpHub;
use crate::schedule::Scheduler;
use crate::storage::blob::BlobStore;
use crate::storage::store::{ItemSource, NewNote, NoteId, Store};

/// A chunk of history on one line, at most [`HISTORY_CHARS`] characters.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= HISTORY_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(HISTORY_CHARS).collect();
    cut.push('…');
    cut
}

/// The longest line `/recall` shows of compacted history.
const HISTORY_CHARS: usize = 300;

/// Answers free text (and `/ask`): the LLM agent, once configured.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    async fn answer(&self, event: &EventContext, prompt: &str) -> anyhow::Result<Vec<Outgoing>>;

    /// One line for `/status` (the model in use).
    fn describe(&self) -> String;

    /// The `/status` line for one conversation (its profile may name another model).
    fn describe_for(&self, conversation: &ecdysis_chat::ConversationRef) -> String {
        let _ = conversation;
        self.describe()
    }
}

/// A command that lives in its own module (`run`, `screenshot`, `record`): enabled when the
/// part it needs is configured.
#[async_trait]
pub trait Feature: Send + Sync + 'static {
    async fn run(&self, event: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>>;
}

/// The longest note `/remember` stores.
pub const MAX_NOTE_CHARS: usize = 4_000;
const RECALL_LIMIT: usize = 10;
const MEMORY_LIST_LIMIT: i64 = 20;

/// The command handler.
pub struct Commands {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    started: Instant,
    agent: Option<Arc<dyn Agent>>,
    run: Option<Arc<dyn Feature>>,
    screenshot: Option<Arc<dyn Feature>>,
    record: Option<Arc<dyn Feature>>,
    /// Tools features add for the agent (`run_command`, `browser_*`); the agent is built from
    /// them after every feature is in (see `App::open_with`).
    tools: ToolRegistry,
    /// Which profile is in force where (memory scope, `/run` and the browser commands).
    profiles: Profiles,
    /// The MCP servers, for `/status`.
    mcp: Option<McpHub>,
    /// `/pair` (DM pairing approvals).
    pair: Option<Arc<dyn Feature>>,
    /// The spend limits, for `/status`.
    budgets: Option<Arc<crate::engine::guard::Budgets>>,
    /// `/recall`: full text, and meaning too when embeddings are on.
    memory: MemorySearch,
    /// Scheduled jobs (`remind`, `schedules`, `unschedule`, fired jobs).
    scheduler: Option<Arc<Scheduler>>,
}

impl Commands {
    pub fn new(store: Arc<dyn Store>, blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            store: store.clone(),
            blobs,
            started: Instant::now(),
            agent: None,
            run: None,
            screenshot: None,
            record: None,
            tools: ToolRegistry::new(),
            profiles: Profiles::default(),
            mcp: None,
            pair: None,
            budgets: None,
            memory: MemorySearch::full_text(store),
            scheduler: None,
        }
    }

    /// `/pair`: admins approve DM pairing codes.
    pub fn with_pair(mut self, feature: Arc<dyn Feature>) -> Self {
        self.pair = Some(feature);
        self
    }

    /// Show the budgets' use and limits in `/status`.
    pub fn with_budgets(mut self, budgets: Arc<crate::engine::guard::Budgets>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// Search memory with `search` (hybrid when embeddings are on).
    pub fn with_memory(mut self, search: MemorySearch) -> Self {
        self.memory = search;
        self
    }

    /// Take `remind`, `schedules` and `unschedule`, run fired jobs, and offer the model the
    /// scheduling tools.
    pub fn with_scheduler(mut self, scheduler: Arc<Scheduler>) -> Self {
        crate::schedule::tools::register(&mut self.tools, &scheduler);
        self.scheduler = Some(scheduler);
        self
    }

    /// The profiles in force (see [`crate::engine::profile`]).
    pub fn with_profiles(mut self, profiles: Profiles) -> Self {
        self.profiles = profiles;
        self
    }

    /// Offer the MCP servers' tools to the agent, and show the servers in `/status`.
    pub fn with_mcp(mut self, hub: McpHub) -> Self {
        if !hub.is_empty() {
            self.tools
                .add_source(Arc::new(hub.clone()) as Arc<dyn ToolSource>);
            self.mcp = Some(hub);
        }
        self
    }

    /// Offer a tool to the agent.
    pub fn with_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.register(tool);
        self
    }

    /// The tools features registered.
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    /// Whether an agent answers free text.
    pub fn has_agent(&self) -> bool {
        self.agent.is_some()
    }

    pub fn with_agent(mut self, agent: Arc<dyn Agent>) -> Self {
        self.agent = Some(agent);
        self
    }

    pub fn with_run(mut self, feature: Arc<dyn Feature>) -> Self {
        self.run = Some(feature);
        self
    }

    pub fn with_screenshot(mut self, feature: Arc<dyn Feature>) -> Self {
        self.screenshot = Some(feature);
        self
    }

    pub fn with_record(mut self, feature: Arc<dyn Feature>) -> Self {
        self.record = Some(feature);
        self
    }

    async fn remember(&self, event: &EventContext, text: &str) -> anyhow::Result<String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok("Usage: `/remember <text>` saves a note for this channel.".into());
        }
        if text.chars().count() > MAX_NOTE_CHARS {
            return Ok(format!(
                "That note is too long ({} characters); the limit is {MAX_NOTE_CHARS}. Nothing was saved.",
                text.chars().count()
            ));
        }
        let id = self
            .store
            .remember(&NewNote {
                channel: self.profiles.memory_channel(&event.conversation),
                text: text.to_string(),
                created_by: event.payload.user.id.clone(),
                source: Some(format!("event:{}", event.event_id)),
            })
            .await?;
        self.memory.note_written();
        Ok(format!("Remembered as #{id}."))
    }

    async fn recall(&self, event: &EventContext, query: &str) -> anyhow::Result<String> {
        let query = query.trim();
        if query.is_empty() {
            return Ok("Usage: `/recall <words>` finds this channel's notes.".into());
        }
        let found = self
            .memory
            .search(
                &self.profiles.memory_channel(&event.conversation),
                query,
                RECALL_LIMIT,
            )
            .await?;
        if found.is_empty() {
            return Ok(format!("No note in this channel matches “{query}”."));
        }
        let mut out = format!("Notes matching “{query}”:");
        for hit in found {
            // Which hits the words missed but the meaning found.
            let how = if hit.by_meaning() && !hit.by_words {
                " _(by meaning)_"
            } else {
                ""
            };
            match &hit.item.source {
                ItemSource::Note { .. } => {
                    out.push_str(&format!("\n#{} {}{how}", hit.item.item.id, hit.item.text))
                }
                ItemSource::Summary => out.push_str(&format!(
                    "\n· from a summary of earlier conversation: {}{how}",
                    one_line(&hit.item.text)
                )),
                ItemSource::Transcript => out.push_str(&format!(
                    "\n· from earlier conversation: {}{how}",
                    one_line(&hit.item.text)
                )),
            }
        }
        Ok(out)
    }

    async fn forget(&self, event: &EventContext, args: &str) -> anyhow::Result<String> {
        let Ok(id) = args.trim().trim_start_matches('#').parse::<i64>() else {
            return Ok(
                "Usage: `/forget <id>` with the number `/recall` or `/memory` shows, e.g. `/forget 12`."
                    .into(),
            );
        };
        if self
            .store
            .forget(
                &self.profiles.memory_channel(&event.conversation),
                NoteId(id),
            )
            .await?
        {
            Ok(format!("Forgot #{id}."))
        } else {
            Ok(format!(
                "This channel has no note #{id}; nothing was deleted."
            ))
        }
    }

    async fn memory(&self, event: &EventContext) -> anyhow::Result<String> {
        let channel = self.profiles.memory_channel(&event.conversation);
        let count = self.store.note_count(&channel).await?;
        if count == 0 {
            return Ok("This channel has no notes yet. Save one with `/remember <text>`.".into());
        }
        let notes = self.store.notes(&channel, MEMORY_LIST_LIMIT).await?;
        let mut out = if count > MEMORY_LIST_LIMIT {
            format!("This channel has {count} notes; the newest {MEMORY_LIST_LIMIT}:")
        } else {
            format!(
                "This channel has {count} note{}:",
                if count == 1 { "" } else { "s" }
            )
        };
        for note in notes {
            out.push_str(&format!("\n#{} {}", note.id, note.text));
        }
        Ok(out)
    }

    async fn status(&self, event: &EventContext) -> anyhow::Result<String> {
        let channel = event.conversation.channel_ref();
        let inbox = self.store.inbox_counts().await?;
        let notes = self
            .store
            .note_count(&self.profiles.memory_channel(&event.conversation))
            .await?;
        let messages = self.store.message_count(&event.conversation).await?;
        let usage = self.store.channel_usage(&channel).await?;
        let compactions = self.store.compaction_stats(&channel).await?;
        let model = match &self.agent {
            Some(agent) => agent.describe_for(&event.conversation),
            None => "none configured (set ANTHROPIC_API_KEY or OPENAI_API_KEY)".into(),
        };
        let enabled = |f: &Option<Arc<dyn Feature>>| if f.is_some() { "on" } else { "off" };
        let mut out = format!(
            "ecdysis {} · up {}\nStorage: {} · blobs: {}\nModel: {model}\nSandbox /run: {} · browser /screenshot /record: {}\nQueue: {} pending, {} in progress, {} failed, {} done\nThis channel: {notes} note{} · this conversation: {messages} message{}",
            env!("CARGO_PKG_VERSION"),
            format_uptime(self.started.elapsed().as_secs()),
            self.store.backend(),
            self.blobs.describe(),
            enabled(&self.run),
            enabled(&self.screenshot),
            inbox.pending,
            inbox.leased,
            inbox.failed,
            inbox.done,
            if notes == 1 { "" } else { "s" },
            if messages == 1 { "" } else { "s" },
        );
        let profile = self.profiles.for_conversation(&event.conversation);
        out.push_str(&format!("\nProfile: {}", profile.describe()));
        if let Some(scheduler) = &self.scheduler {
            let jobs = scheduler.channel_jobs(&channel).await?;
            out.push_str(&format!(
                "\nScheduled jobs in this channel: {}{}",
                jobs.len(),
                if jobs.is_empty() {
                    ""
                } else {
                    " (`/schedules` lists them)"
                }
            ));
            for job in jobs.iter().take(5) {
                out.push_str(&format!("\n  {}", Scheduler::describe(job)));
            }
        }
        if let Some(mcp) = &self.mcp {
            for server in mcp.status() {
                out.push_str(&format!("\nMCP {}", server.line()));
            }
        }
        if let Some(last) = compactions.last_at {
            out.push_str(&format!(
                "\nCompaction: {} time{} in this channel ({} older messages summarised and archived); last at {}",
                compactions.count,
                if compactions.count == 1 { "" } else { "s" },
                compactions.messages,
                ecdysis_chat::time::rfc3339_utc(last.0),
            ));
        }
        if let Some(budgets) = &self.budgets
            && budgets.any()
        {
            let now = crate::storage::store::now_ms();
            let spends = budgets
                .spend(&event.conversation, &event.payload.user.id, &[], now)
                .await?;
            out.push_str("\nBudgets:");
            for spend in spends {
                out.push_str(&format!(
                    "\n  {}: {} ({:.0} %), resets {}",
                    spend.kind.label(),
                    spend.describe(),
                    spend.share() * 100.0,
                    spend.reset_text(now)
                ));
            }
        }
        if usage.is_empty() {
            out.push_str("\nModel usage in this channel: none yet");
        } else {
            out.push_str("\nModel usage in this channel:");
            for u in usage {
                out.push_str(&format!(
                    "\n  {}: {} call{}, {} input + {} output tokens (cache: {} read, {} written)",
                    u.model,
                    u.calls,
                    if u.calls == 1 { "" } else { "s" },
                    u.usage.input_tokens,
                    u.usage.output_tokens,
                    u.usage.cache_read_tokens,
                    u.usage.cache_write_tokens
                ));
            }
        }
        Ok(out)
    }

    async fn free_text(&self, event: &EventContext, prompt: &str) -> anyhow::Result<Vec<Outgoing>> {
        match &self.agent {
            Some(agent) => agent.answer(event, prompt).await,
            None if prompt.trim().is_empty() => {
                Ok(vec![Outgoing::text("Usage: `/ask <question>`.")])
            }
            None => Ok(vec![Outgoing::text(NO_MODEL_TEXT)]),
        }
    }

    async fn feature(
        &self,
        feature: &Option<Arc<dyn Feature>>,
        name: &str,
        how: &str,
        event: &EventContext,
        args: &str,
    ) -> anyhow::Result<Vec<Outgoing>> {
        let profile = self.profiles.for_conversation(&event.conversation);
        let allowed = match name {
            "run" => profile.allows_sandbox(),
            _ => profile.allows_browser(),
        };
        if !allowed {
            return Ok(vec![Outgoing::text(format!(
                "`/{name}` is off in this channel (profile `{}`).",
                profile.name
            ))]);
        }
        match feature {
            Some(feature) => feature.run(event, args).await,
            None => Ok(vec![Outgoing::text(format!(
                "`/{name}` is not enabled on this server yet. {how}"
            ))]),
        }
    }
}

/// The reply to free text when no model is configured.
pub const NO_MODEL_TEXT: &str = "No language model is configured, so I can only run commands for now. \
To chat, set ANTHROPIC_API_KEY (or OPENAI_API_KEY; optionally ECDYSIS_MODEL=anthropic/<model> or \
openai/<model>, and ANTHROPIC_BASE_URL / OPENAI_BASE_URL for a gateway) and restart. \
Type /help for the commands that work without a model.";

/// The reply to the scheduling commands where no scheduler runs.
const NO_SCHEDULER_TEXT: &str = "Scheduled jobs are not available here.";

/// The help text: the same commands on every platform.
pub fn help_text() -> String {
    let lines = [
        ("ask <question>", "ask the model (plain messages work too)"),
        ("remember <text>", "save a note for this channel"),
        ("recall <words>", "find this channel's notes"),
        ("forget <id>", "delete a note"),
        ("memory", "list this channel's notes"),
        ("run <command>", "run a command in this channel's sandbox"),
        ("screenshot <url>", "post a screenshot of a web page"),
        ("record <url>", "post a short video of a web page"),
        (
            "remind <when> <what>",
            "post something later or on a schedule (`in 10 minutes`, `every weekday at 9:00`, …)",
        ),
        ("schedules", "list this channel's scheduled jobs"),
        ("unschedule <id>", "cancel a scheduled job"),
        ("status", "what runs here and what this channel used"),
        ("pair <code>", "approve a DM pairing code (bot admins)"),
        ("help", "this text"),
    ];
    let mut out = String::from(
        "Commands (Slack: `/ecdysis <command>`, Discord: slash commands, web and terminal: a leading `/`):",
    );
    for (usage, what) in lines {
        out.push_str(&format!("\n  /{usage} — {what}"));
    }
    out
}

fn format_uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[async_trait]
impl Handler for Commands {
    async fn handle(&self, event: &EventContext) -> anyhow::Result<Vec<Outgoing>> {
        let args = event.payload.text.as_str();
        if let Some(fired) = &event.payload.scheduled {
            return crate::schedule::fired::handle(
                self.store.as_ref(),
                self.agent.as_deref(),
                event,
                fired,
            )
            .await;
        }
        let command = match &event.payload.kind {
            EventKind::Message => return self.free_text(event, args).await,
            EventKind::Action { .. } => {
                return Ok(vec![Outgoing::text(
                    "That button has expired or is not waiting for an answer.",
                )]);
            }
            EventKind::Command(command) => command,
        };
        let text = match &command.name {
            CommandName::Ask => return self.free_text(event, args).await,
            CommandName::Run => {
                return self
                    .feature(
                        &self.run,
                        "run",
                        "Commands run in a sandbox; set ECDYSIS_SANDBOX=namespace (needs bubblewrap) to enable it.",
                        event,
                        args,
                    )
                    .await;
            }
            CommandName::Screenshot => {
                return self
                    .feature(
                        &self.screenshot,
                        "screenshot",
                        "It needs Chromium (ECDYSIS_CHROMIUM or ECDYSIS_BROWSER_CDP_URL).",
                        event,
                        args,
                    )
                    .await;
            }
            CommandName::Record => {
                return self
                    .feature(
                        &self.record,
                        "record",
                        "It needs Chromium and ffmpeg.",
                        event,
                        args,
                    )
                    .await;
            }
            CommandName::Remember => self.remember(event, args).await?,
            CommandName::Recall => self.recall(event, args).await?,
            CommandName::Forget => self.forget(event, args).await?,
            CommandName::Memory => self.memory(event).await?,
            CommandName::Status => self.status(event).await?,
            CommandName::Remind => match &self.scheduler {
                Some(scheduler) => crate::schedule::commands::remind(scheduler, event, args).await,
                None => NO_SCHEDULER_TEXT.into(),
            },
            CommandName::Schedules => match &self.scheduler {
                Some(scheduler) => crate::schedule::commands::list(scheduler, event).await?,
                None => NO_SCHEDULER_TEXT.into(),
            },
            CommandName::Unschedule => match &self.scheduler {
                Some(scheduler) => {
                    crate::schedule::commands::unschedule(scheduler, event, args).await?
                }
                None => NO_SCHEDULER_TEXT.into(),
            },
            CommandName::Help => help_text(),
            CommandName::Pair => {
                return match &self.pair {
                    Some(pair) => pair.run(event, args).await,
                    None => Ok(vec![Outgoing::text(
                        "DM pairing is not set up on this server.",
                    )]),
                };
            }
            CommandName::Unknown(word) => {
                format!("Unknown command `/{word}`.\n{}", help_text())
            }
        };
        Ok(vec![Outgoing::text(text)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for name in CommandName::ALL {
            assert!(help.contains(&format!("/{}", name.as_str())), "{name:?}");
        }
    }

    #[test]
    fn uptime_reads_well() {
        assert_eq!(format_uptime(5), "5s");
        assert_eq!(format_uptime(125), "2m 5s");
        assert_eq!(format_uptime(7300), "2h 1m");
    }
}
