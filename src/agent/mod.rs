//! The LLM agent: answers free text and `/ask` with a model (Anthropic or any OpenAI-compatible
//! API), running a tool-use loop with a step limit and a total time limit.
//!
//! A turn reads the conversation's context (see [`context`]; the recent rows are kept between
//! turns, see [`window`]), calls the model until it answers without tool calls, and ends by
//! storing its tool steps (two `tool` rows each: the calls, the results) and the token usage of
//! every call in one transaction. The final answer is returned to the bus, which stores and
//! delivers it. A conversation over its token budget is compacted after the answer (see
//! [`compaction`]). When the model stays unreachable the user gets a clear reply and the event
//! still counts as handled.

pub mod compaction;
pub mod context;
pub mod memory_tools;
pub mod provider;
pub mod retry;
pub mod web_search;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use ecdysis_chat::{Attachment, ConversationRef};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bus::{EventContext, Outgoing};
use crate::config::{AgentConfig, Config, ModelSpec};
use crate::embeddings::MemorySearch;
use crate::engine::commands::Agent;
use crate::engine::live::Live;
use crate::engine::profile::{Profile, Profiles};
use crate::engine::progress;
use crate::engine::tools::{ToolContext, ToolError, ToolRegistry};
use crate::media::{FileRef, MediaSettings, Reader, Transcriber};
use crate::storage::blob::BlobStore;
use crate::storage::store::{NewMessage, Role, Store, StoreError, Usage};
use context::{StoredCall, StoredResult, ToolRow};
use provider::{
    ChatMessage, ChatRequest, ChatResponse, ChatRole, ImageData, Model, Part, ProviderError,
    StopReason, SystemBlock, TextSink, ToolChoice, ToolDef,
};
use retry::{CallError, RetryPolicy};

/// Rows of a conversation read for one turn (the token budget decides what is used).
const CONTEXT_ROWS: i64 = 400;
/// The longest tool result text the model reads.
const TOOL_TEXT_CHARS: usize = 16_000;
/// Images one tool result may show the model.
const TOOL_IMAGES: usize = 4;
/// The longest tool text kept in a transcript row's one-line `text`.
const ROW_TEXT_CHARS: usize = 300;

/// Why a turn could not finish normally.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The model could not be reached or answered nonsense: the user gets a clear reply.
    #[error(transparent)]
    Model(#[from] CallError),
    /// Storage failed: the bus retries the event.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A budget is used up: the user gets its reply, and no model is called.
    #[error(transparent)]
    OverBudget(#[from] crate::engine::guard::Exceeded),
    #[error("cannot encode a transcript row: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot archive the transcript: {0}")]
    Archive(#[source] crate::storage::blob::BlobError),
    #[error("{0}")]
    Internal(String),
}

/// Why the agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot set up the HTTP client for the model API: {0}")]
    Http(String),
}

/// What one turn cost, for the benchmark and the logs.
#[derive(Clone, Debug, Default)]
pub struct TurnStats {
    /// Model calls made (compaction included).
    pub model_calls: u32,
    /// Time spent waiting for the model (requests and retry pauses).
    pub model_time: Duration,
    /// The whole turn.
    pub total: Duration,
    /// Estimated tokens of the turn's first answer request (after any compaction).
    pub prompt_tokens: usize,
    /// Estimated tokens of the stable prefix (system prompt + tool definitions).
    pub prefix_tokens: usize,
    /// Time spent inside tools.
    pub tool_time: Duration,
    /// Tool steps run.
    pub steps: usize,
    /// The conversation was over budget: its compaction starts after this turn.
    pub compaction_due: bool,
    /// Token usage of each model call (model, usage), recorded when the turn ends.
    pub usage: Vec<(String, Usage)>,
}

impl TurnStats {
    /// Time the agent itself took: the turn minus the model's time.
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.model_time)
    }

    /// The agent's own work: the turn minus the model's and the tools' time.
    pub fn orchestration(&self) -> Duration {
        self.overhead().saturating_sub(self.tool_time)
    }
}

/// What a turn gathers besides its text; it lives outside the turn's future, so a turn cut
/// short by the time limit still stores the steps it finished.
#[derive(Default)]
struct Collected {
    /// Files tools returned, for the reply.
    attachments: Vec<Attachment>,
    /// The tool steps' transcript rows.
    rows: Vec<NewMessage>,
    /// The turn's setup for a compaction, when the conversation is over budget.
    compact: Option<TurnSetup>,
    /// Audio transcribed this turn (file name, transcript), quoted back to the user.
    heard: Vec<(String, String)>,
}

/// The models one profile answers with: the first answers, the rest are fallbacks.
struct ModelSet {
    spec: ModelSpec,
    /// The configured model, then its fallbacks (those with credentials).
    models: Vec<Model>,
    /// Set when the model's provider has no credentials: the reply to give.
    missing_key: Option<String>,
    /// Whether the model reads images (`vision = false` in its `[models."…"]` entry: no).
    vision: bool,
}

impl ModelSet {
    /// The clients of `spec` and its fallbacks, as far as their providers have credentials.
    fn build(
        config: &Config,
        spec: &ModelSpec,
        fallbacks: &[ModelSpec],
        http: &reqwest::Client,
    ) -> Self {
        let primary = provider::model_client(config, spec, http);
        let missing_key = primary.is_none().then(|| {
            let env = provider::key_env(spec.provider);
            format!(
                "The model is set to {spec}, but {env} is not set, so I cannot answer yet. \
                 Set {env} (and {base} to route through a gateway or a local server) and restart; \
                 commands like /remember and /status keep working meanwhile.",
                base = env.replace("API_KEY", "BASE_URL"),
            )
        });
        let mut models: Vec<Model> = primary.into_iter().collect();
        if missing_key.is_none() {
            for fallback in fallbacks {
                match provider::model_client(config, fallback, http) {
                    Some(model) => models.push(model),
                    None => {
                        warn!(model = %fallback, "fallback model skipped: its provider has no key")
                    }
                }
            }
        }
        Self {
            spec: spec.clone(),
            models,
            missing_key,
            vision: config.media.vision(spec),
        }
    }

    fn describe(&self) -> String {
        self.models
            .iter()
            .map(|m| m.spec.to_string())
            .collect::<Vec<_>>()
            .join(", then ")
    }
}

/// What one turn offers and answers with, chosen by the conversation's profile: the tools
/// (built-in ones the profile allows, then the MCP tools offered now), the stable system
/// prompt (the profile's instructions at its end) and the models.
#[derive(Clone)]
struct TurnSetup {
    profile: Arc<Profile>,
    tools: ToolRegistry,
    tool_defs: Vec<ToolDef>,
    /// The stable system prompt (cached by providers).
    stable: String,
    models: Arc<ModelSet>,
}

impl TurnSetup {
    /// The stable system block alone (what compaction sends).
    fn stable_system(&self) -> Vec<SystemBlock> {
        context::system_blocks(self.stable.clone(), &[])
    }
}

/// A finished turn.
#[derive(Debug)]
pub struct TurnOutcome {
    pub outgoing: Vec<Outgoing>,
    pub stats: TurnStats,
}

/// The agent: cheap to clone, so compaction can run after a turn's reply.
#[derive(Clone)]
pub struct LlmAgent {
    core: Arc<Core>,
}

/// What the agent holds.
struct Core {
    store: Arc<dyn Store>,
    /// The notes put into each turn: full text, and meaning too when embeddings are on.
    memory: MemorySearch,
    blobs: Arc<dyn BlobStore>,
    /// Every tool (a profile offers a part), and the sources of MCP tools.
    tools: ToolRegistry,
    /// The configured model and fallbacks (channels without a profile model).
    models: Arc<ModelSet>,
    /// The models of profiles that name their own.
    profile_models: HashMap<String, Arc<ModelSet>>,
    profiles: Profiles,
    config: AgentConfig,
    policy: RetryPolicy,
    /// Conversations being compacted now (one compaction per conversation at a time).
    compacting: Mutex<HashSet<ConversationRef>>,
    /// Each conversation's recent rows, kept between turns.
    windows: window::Windows,
    /// Spend limits checked before every model call, and the usage metrics.
    budgets: Option<Arc<crate::engine::guard::Budgets>>,
    /// What the model reads of the files users send.
    media: Arc<Reader>,
}

impl LlmAgent {
    /// The agent a configuration describes, or `None` when no model is configured. It offers
    /// the memory tools, then `extra` (the tools features registered), in that stable order.
    pub fn from_config(
        config: &Config,
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        extra: &ToolRegistry,
    ) -> Result<Option<Self>, BuildError> {
        let memory = MemorySearch::full_text(store.clone());
        Self::from_config_with_memory(config, store, blobs, extra, memory)
    }

    /// [`LlmAgent::from_config`], searching memory (`memory_search`, each turn's notes) with
    /// `memory` (hybrid when embeddings are on).
    pub fn from_config_with_memory(
        config: &Config,
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        extra: &ToolRegistry,
        memory: MemorySearch,
    ) -> Result<Option<Self>, BuildError> {
        let Some(spec) = config.model.clone() else {
            return Ok(None);
        };
        let profiles = Profiles::new(config.profiles.clone());
        let mut tools = ToolRegistry::new();
        memory_tools::register_with(&mut tools, store.clone(), memory.clone(), profiles.clone());
        for tool in extra.iter() {
            tools.register(tool.clone());
        }
        for source in extra.sources() {
            tools.add_source(source.clone());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ecdysis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        let models = Arc::new(ModelSet::build(
            config,
            &spec,
            &config.fallback_models,
            &http,
        ));
        let mut profile_models = HashMap::new();
        for profile in profiles.list() {
            if profile.model.is_none() && profile.fallback_models.is_none() {
                continue;
            }
            let spec = profile.model.as_ref().unwrap_or(&spec);
            let fallbacks = profile
                .fallback_models
                .as_deref()
                .unwrap_or(&config.fallback_models);
            let set = ModelSet::build(config, spec, fallbacks, &http);
            if let Some(missing) = &set.missing_key {
                warn!(profile = %profile.name, "{missing}");
            }
            profile_models.insert(profile.name.clone(), Arc::new(set));
        }
        let transcriber = config
            .media
            .transcribe
            .clone()
            .map(|settings| Transcriber::new(http.clone(), settings));
        let media = Arc::new(Reader::new(
            store.clone(),
            blobs.clone(),
            transcriber,
            config.media.clone(),
            tools.get("run_command").is_some(),
        ));
        Ok(Some(Self::assemble(
            models,
            profile_models,
            profiles,
            config.agent.clone(),
            (store, blobs),
            tools,
            media,
            memory,
        )))
    }

    /// An agent over explicit model clients (the first answers, the rest are fallbacks).
    pub fn new(
        spec: ModelSpec,
        models: Vec<Model>,
        missing_key: Option<String>,
        config: AgentConfig,
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        tools: ToolRegistry,
    ) -> Self {
        let models = Arc::new(ModelSet {
            spec,
            models,
            missing_key,
            vision: true,
        });
        let media = Arc::new(Reader::new(
            store.clone(),
            blobs.clone(),
            None,
            MediaSettings::default(),
            false,
        ));
        Self::assemble(
            models,
            HashMap::new(),
            Profiles::default(),
            config,
            (store.clone(), blobs),
            tools,
            media,
            MemorySearch::full_text(store),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        models: Arc<ModelSet>,
        profile_models: HashMap<String, Arc<ModelSet>>,
        profiles: Profiles,
        config: AgentConfig,
        (store, blobs): (Arc<dyn Store>, Arc<dyn BlobStore>),
        tools: ToolRegistry,
        media: Arc<Reader>,
        memory: MemorySearch,
    ) -> Self {
        let policy = RetryPolicy::new(config.max_retries, config.request_timeout);
        Self {
            core: Arc::new(Core {
                store,
                memory,
                blobs,
                tools,
                models,
                profile_models,
                profiles,
                config,
                policy,
                compacting: Mutex::new(HashSet::new()),
                windows: window::Windows::new(CONTEXT_ROWS),
                budgets: None,
                media,
            }),
        }
    }

    /// Check `budgets` before every model call (turns and compactions), count usage in them.
    /// Call before the agent is shared.
    pub fn with_budgets(mut self, budgets: Arc<crate::engine::guard::Budgets>) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.budgets = Some(budgets);
        }
        self
    }

    /// The name of the profile in force in a conversation (for `/status`).
    pub fn profile_for(&self, conversation: &ConversationRef) -> String {
        self.core
            .profiles
            .for_conversation(conversation)
            .name
            .clone()
    }

    /// Answer one message, with the turn's statistics. When the conversation has outgrown its
    /// budget, its compaction starts in the background once the answer is ready (the answer
    /// itself used the newest turns that fit), so the reply does not wait for the summary.
    pub async fn run_turn(
        &self,
        event: &EventContext,
        prompt: &str,
    ) -> anyhow::Result<TurnOutcome> {
        let (outcome, compact) = self.core.run_turn(event, prompt).await?;
        if let Some(setup) = compact {
            let core = self.core.clone();
            let event = event.clone();
            tokio::spawn(async move { core.compact_in_background(event, setup).await });
        }
        Ok(outcome)
    }

    /// Wait until no compaction runs (tests and benchmarks).
    pub async fn compactions_settled(&self) {
        while !self.core.lock_compacting().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Core {
    fn lock_compacting(&self) -> std::sync::MutexGuard<'_, HashSet<ConversationRef>> {
        self.compacting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a conversation's turn offers and answers with (see [`TurnSetup`]).
    fn setup(&self, conversation: &ConversationRef) -> TurnSetup {
        let profile = self.profiles.for_conversation(conversation);
        let mut tools = ToolRegistry::new();
        for tool in self.tools.iter() {
            if profile.offers_builtin(tool.name()) {
                tools.register(tool.clone());
            }
        }
        for source in self.tools.sources() {
            for sourced in source.tools_for(conversation) {
                if profile.offers_mcp(&sourced.group, sourced.tool.name()) {
                    tools.register(sourced.tool);
                }
            }
        }
        let tool_defs = context::tool_defs(&tools);
        let stable = context::system_prompt(conversation, &tools, profile.instructions.as_deref());
        let models = self
            .profile_models
            .get(&profile.name)
            .unwrap_or(&self.models)
            .clone();
        TurnSetup {
            profile,
            tools,
            tool_defs,
            stable,
            models,
        }
    }

    /// A turn, and its setup for a compaction when one is due.
    async fn run_turn(
        &self,
        event: &EventContext,
        prompt: &str,
    ) -> anyhow::Result<(TurnOutcome, Option<TurnSetup>)> {
        let started = Instant::now();
        let mut stats = TurnStats::default();
        let setup = self.setup(&event.conversation);
        if let Some(text) = &setup.models.missing_key {
            let outgoing = vec![Outgoing::text(text.clone())];
            return Ok((TurnOutcome { outgoing, stats }, None));
        }
        if prompt.trim().is_empty() && event.payload.attachments.is_empty() {
            let outgoing = vec![Outgoing::text("Usage: `/ask <question>`.")];
            return Ok((TurnOutcome { outgoing, stats }, None));
        }
        let deadline = started + self.config.turn_timeout;
        let mut collected = Collected::default();
        // The deadline bounds every model call and retry pause; this outer limit also bounds
        // tools that do not return in time.
        let outcome = tokio::time::timeout(
            self.config.turn_timeout + Duration::from_millis(250),
            self.turn(event, prompt, deadline, &setup, &mut stats, &mut collected),
        )
        .await;
        let text = match outcome {
            Ok(Ok(text)) => text,
            Ok(Err(TurnError::Store(e))) => return Err(e.into()),
            Ok(Err(TurnError::Model(e))) => {
                warn!(error = %e, "the model could not answer");
                self.failure_text(&e, stats.steps, &setup.models)
            }
            Ok(Err(TurnError::OverBudget(e))) => {
                info!(conversation = %event.conversation, budget = ?e.kind, "over budget: no model call");
                if stats.steps > 0 {
                    format!(
                        "{e}\n\n(I stopped after {} tool step(s); their results are saved.)",
                        stats.steps
                    )
                } else {
                    e.text
                }
            }
            Ok(Err(
                e @ (TurnError::Internal(_) | TurnError::Encode(_) | TurnError::Archive(_)),
            )) => {
                warn!(error = %e, "the turn failed");
                format!("Sorry, something went wrong while answering: {e}.")
            }
            Err(_) => {
                warn!("the turn ran out of time");
                format!(
                    "Sorry, I ran out of time ({} s) before finishing this answer{}. Please try again, perhaps with a smaller request.",
                    self.config.turn_timeout.as_secs(),
                    if stats.steps > 0 {
                        format!(" after {} tool step(s)", stats.steps)
                    } else {
                        String::new()
                    }
                )
            }
        };
        // The tool steps and the usage of every call, in one transaction.
        self.store
            .record_turn(
                &event.conversation,
                Some(event.event_id),
                &event.payload.user.id,
                &collected.rows,
                &stats.usage,
            )
            .await?;
        let mut text = text;
        if let Some(budgets) = &self.budgets
            && let Some(warning) = budgets
                .after_turn(
                    &event.conversation,
                    &event.payload.user.id,
                    &stats.usage,
                    Instant::now(),
                )
                .await
        {
            text = format!("{text}\n\n_{warning}_");
        }
        stats.total = started.elapsed();
        debug!(
            total_ms = stats.total.as_millis() as u64,
            model_ms = stats.model_time.as_millis() as u64,
            calls = stats.model_calls,
            steps = stats.steps,
            prompt_tokens = stats.prompt_tokens,
            "turn finished"
        );
        let mut outgoing = Vec::with_capacity(2);
        // What was heard in voice messages, quoted before the answer.
        if let Some(quote) = crate::media::heard_quote(&collected.heard) {
            outgoing.push(Outgoing::text(quote));
        }
        outgoing.push(Outgoing {
            text,
            attachments: collected.attachments,
            ..Outgoing::default()
        });
        Ok((TurnOutcome { outgoing, stats }, collected.compact))
    }

    fn failure_text(&self, error: &CallError, steps: usize, models: &ModelSet) -> String {
        let why = match error {
            CallError::OutOfTime { .. } => format!(
                "it did not answer within the time limit ({} s)",
                self.config.turn_timeout.as_secs()
            ),
            CallError::Failed { error, .. } => match error {
                ProviderError::Status { status: 401, .. }
                | ProviderError::Status { status: 403, .. } => {
                    format!(
                        "the API key was refused ({error}); check {}",
                        provider::key_env(models.spec.provider)
                    )
                }
                ProviderError::Status { status, .. } if *status == 429 => {
                    format!("it is rate-limiting us ({error})")
                }
                ProviderError::Status { status, .. } if *status >= 500 => {
                    format!("it is failing or overloaded ({error})")
                }
                ProviderError::Malformed(_) => format!("its answer could not be read ({error})"),
                other => other.to_string(),
            },
        };
        let progress = if steps > 0 {
            format!(" (after {steps} tool step(s); their results are saved)")
        } else {
            String::new()
        };
        format!(
            "Sorry, I could not get an answer from the model ({}): {why}{progress}. Your message is saved; please try again in a little while.",
            models.describe()
        )
    }

    /// One model call with retries and fallbacks, for `event`'s user and conversation, after
    /// the budget check; its usage joins the turn's. With a live view, the answer streams into it.
    async fn call(
        &self,
        event: &EventContext,
        models: &ModelSet,
        request: &ChatRequest,
        deadline: Instant,
        stats: &mut TurnStats,
        live: &Live,
    ) -> Result<ChatResponse, TurnError> {
        if let Some(budgets) = &self.budgets {
            match budgets
                .check(&event.conversation, &event.payload.user.id, &stats.usage)
                .await
            {
                Ok(()) => {}
                Err(crate::engine::guard::BudgetError::Exceeded(e)) => return Err(e.into()),
                Err(crate::engine::guard::BudgetError::Store(e)) => return Err(e.into()),
            }
        }
        stats.model_calls += 1;
        let started = Instant::now();
        let sink = live.is_on().then_some(live as &dyn TextSink);
        let span = model_span(&models.models[0].spec);
        let result = retry::call(&models.models, request, &self.policy, deadline, sink)
            .instrument(span.clone())
            .await;
        live.end_step();
        stats.model_time += started.elapsed();
        let answered = result?;
        let model = &models.models[answered.model_index];
        let usage = &answered.response.usage;
        span.record("gen_ai.response.model", model.spec.name.as_str());
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
        span.record(
            "gen_ai.usage.cache_read.input_tokens",
            usage.cache_read_tokens,
        );
        span.record(
            "gen_ai.usage.cache_creation.input_tokens",
            usage.cache_write_tokens,
        );
        stats.usage.push((model.spec.to_string(), usage.clone()));
        Ok(answered.response)
    }

    async fn turn(
        &self,
        event: &EventContext,
        prompt: &str,
        deadline: Instant,
        setup: &TurnSetup,
        stats: &mut TurnStats,
        collected: &mut Collected,
    ) -> Result<String, TurnError> {
        let conversation = &event.conversation;
        let channel = setup.profile.memory_channel(conversation);
        // The notes and the transcript are independent reads: run them together.
        // Full text looks for the message's significant words, meaning for the message.
        let query = context::recall_query(prompt);
        let notes = async {
            if self.config.memory_notes_in_context > 0 {
                self.memory
                    .search_with(
                        &channel,
                        &query,
                        prompt,
                        self.config.memory_notes_in_context,
                    )
                    .await
            } else {
                Ok(Vec::new())
            }
        };
        if !event.payload.remote_files.is_empty() {
            // Its files were attached to its message after the cached view may have read it.
            self.windows.invalidate(conversation);
        }
        let window = self.windows.get(self.store.as_ref(), conversation);
        let (notes, window) = tokio::join!(notes, window);
        let (notes, window) = (notes?, window?);
        let vision = setup.models.vision;
        let tools_tokens = context::tools_tokens(&setup.tool_defs);
        let files: Vec<FileRef> = event
            .payload
            .attachments
            .iter()
            .map(FileRef::from)
            .collect();
        let (read, earlier) = tokio::join!(
            self.media.current(&files, vision),
            self.earlier_files(&window, event.event_id, vision)
        );
        collected.heard = read.heard;
        stats.prefix_tokens = context::estimate_tokens(&setup.stable) + tools_tokens;
        let system = context::system_blocks(setup.stable.clone(), &notes);
        let new_message = context::new_message(prompt, read.parts);

        // What the transcript may take: the budget minus everything else in the request.
        let fixed = system
            .iter()
            .map(|b| context::estimate_tokens(&b.text))
            .sum::<usize>()
            + tools_tokens
            + context::message_tokens(&new_message);
        let allowance = self.config.compaction_budget_tokens.saturating_sub(fixed);
        let transcript = context::fit(
            context::transcript_with_files(&window, event.event_id, &earlier),
            allowance,
        );
        if transcript.before > allowance
            && compaction::plan(&window, event.event_id, compaction::keep_tokens(allowance))
                .is_some()
        {
            // Compacted after this answer; until then the model sees the newest turns that fit.
            collected.compact = Some(setup.clone());
            stats.compaction_due = true;
        }
        stats.prompt_tokens = fixed + transcript.tokens;

        let mut messages = transcript.messages;
        messages.push(new_message);
        // One request, grown by each tool step.
        let mut request = ChatRequest {
            system,
            messages: context::merge_roles(messages),
            tools: setup.tool_defs.clone(),
            tool_choice: ToolChoice::Auto,
            max_tokens: self.config.max_output_tokens,
        };
        let mut step = 0;
        loop {
            step += 1;
            let last_step = step >= self.config.max_steps;
            if last_step {
                request.tool_choice = ToolChoice::None;
            }
            let response = self
                .call(event, &setup.models, &request, deadline, stats, &event.live)
                .await?;
            let calls = response.tool_calls();
            if calls.is_empty() || last_step {
                return Ok(self.final_text(&response, !calls.is_empty()));
            }
            let results = self
                .run_tools(
                    event,
                    step,
                    &setup.tools,
                    &response,
                    &mut stats.tool_time,
                    collected,
                )
                .await?;
            stats.steps = step;
            request.messages.push(ChatMessage {
                role: ChatRole::Assistant,
                parts: response.parts,
            });
            request.messages.push(ChatMessage {
                role: ChatRole::User,
                parts: results,
            });
        }
    }

    /// What the model reads of the files of earlier user messages in the window, newest first
    /// (see [`Reader::earlier`]).
    async fn earlier_files(
        &self,
        window: &crate::storage::store::ContextMessages,
        current: crate::storage::store::EventId,
        vision: bool,
    ) -> context::FileParts {
        let mut parts = context::FileParts::new();
        let mut turns_ago = 0;
        for row in window.messages.iter().rev() {
            if row.role != Role::User || row.event_id == Some(current) {
                continue;
            }
            turns_ago += 1;
            if row.attachments.is_empty() {
                continue;
            }
            let files: Vec<FileRef> = row.attachments.iter().map(FileRef::from).collect();
            let read = self.media.earlier(&files, turns_ago, vision).await;
            if !read.is_empty() {
                parts.insert(row.id, read);
            }
        }
        parts
    }

    fn final_text(&self, response: &ChatResponse, stopped_with_calls: bool) -> String {
        let mut text = response.text().trim().to_string();
        if response.stop == StopReason::MaxTokens {
            text.push_str(&format!(
                "\n\n(The answer was cut off at the output limit of {} tokens.)",
                self.config.max_output_tokens
            ));
        }
        if stopped_with_calls {
            text.push_str(&format!(
                "\n\n(I stopped after {} steps, the limit for one message. Ask me to continue if needed.)",
                self.config.max_steps
            ));
        }
        if text.trim().is_empty() {
            text = "(The model returned an empty answer.)".into();
        }
        text.trim().to_string()
    }

    /// Run the tool calls of one step, store the step in the transcript (calls and results in
    /// one transaction), and return the results for the model.
    async fn run_tools(
        &self,
        event: &EventContext,
        step: usize,
        tools: &ToolRegistry,
        response: &ChatResponse,
        tool_time: &mut Duration,
        collected: &mut Collected,
    ) -> Result<Vec<Part>, TurnError> {
        let tool_context = ToolContext {
            event_id: event.event_id.0,
            step,
            conversation: event.conversation.clone(),
            user_id: event.payload.user.id.clone(),
            route: event.payload.route.clone(),
            poster: event.poster.clone(),
        };
        let mut calls = Vec::new();
        let mut stored = Vec::new();
        let mut parts = Vec::new();
        for (id, name, input) in response.tool_calls() {
            calls.push(StoredCall {
                id: id.to_string(),
                name: name.to_string(),
                input: input.clone(),
            });
            let result = match tools.get(name) {
                Some(tool) => {
                    let started = Instant::now();
                    let span = info_span!(
                        "execute_tool",
                        otel.name = %format!("execute_tool {name}"),
                        gen_ai.operation.name = "execute_tool",
                        gen_ai.tool.name = name,
                        gen_ai.tool.call.id = id,
                    );
                    let result = event
                        .live
                        .during(
                            progress::line(name, input),
                            tool.call(&tool_context, input.clone()),
                        )
                        .instrument(span)
                        .await;
                    *tool_time += started.elapsed();
                    result
                }
                None => Err(ToolError::InvalidInput(format!(
                    "there is no tool named `{name}`"
                ))),
            };
            let (text, images, is_error) = match result {
                Ok(output) => {
                    collected.attachments.extend(output.attachments);
                    let images: Vec<ImageData> = output
                        .images
                        .iter()
                        .take(TOOL_IMAGES)
                        .map(|i| ImageData {
                            mime: i.mime.clone(),
                            base64: base64::engine::general_purpose::STANDARD.encode(&i.bytes),
                        })
                        .collect();
                    (truncate(&output.text, TOOL_TEXT_CHARS), images, false)
                }
                Err(e) => (e.to_string(), Vec::new(), true),
            };
            info!(tool = name, step, is_error, "tool call");
            stored.push(StoredResult {
                id: id.to_string(),
                name: name.to_string(),
                text: text.clone(),
                is_error,
                images: images.len(),
            });
            parts.push(Part::ToolResult {
                id: id.to_string(),
                text,
                images,
                is_error,
            });
        }
        let call_line = calls
            .iter()
            .map(|c| format!("{} {}", c.name, c.input))
            .collect::<Vec<_>>()
            .join("; ");
        let result_line = stored
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.name,
                    if r.is_error { "failed:" } else { "→" },
                    r.text
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        collected.rows.extend([
            NewMessage {
                role: Role::Tool,
                text: truncate(&call_line, ROW_TEXT_CHARS),
                meta: Some(json_text(&ToolRow::ToolUse {
                    text: response.text(),
                    calls,
                })?),
                attachments: Vec::new(),
            },
            NewMessage {
                role: Role::Tool,
                text: truncate(&result_line, ROW_TEXT_CHARS),
                meta: Some(json_text(&ToolRow::ToolResult { results: stored })?),
                attachments: Vec::new(),
            },
        ]);
        Ok(parts)
    }
}

fn json_text(row: &ToolRow) -> Result<String, TurnError> {
    Ok(serde_json::to_string(row)?)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push_str("… (cut)");
    out
}

impl TextSink for Live {
    fn text(&self, delta: &str) {
        Live::text(self, delta);
    }

    fn restart(&self) {
        self.restart_step();
    }
}

#[async_trait]
impl Agent for LlmAgent {
    async fn answer(&self, event: &EventContext, prompt: &str) -> anyhow::Result<Vec<Outgoing>> {
        Ok(self.run_turn(event, prompt).await?.outgoing)
    }

    fn describe(&self) -> String {
        self.core.describe(&self.core.models)
    }

    fn describe_for(&self, conversation: &ConversationRef) -> String {
        let profile = self.core.profiles.for_conversation(conversation);
        match self.core.profile_models.get(&profile.name) {
            Some(models) => self.core.describe(models),
            None => self.core.describe(&self.core.models),
        }
    }
}

impl Core {
    fn describe(&self, models: &ModelSet) -> String {
        if models.missing_key.is_some() {
            return format!(
                "{} (not usable: {} is not set)",
                models.spec,
                provider::key_env(models.spec.provider)
            );
        }
        let mut out = models.describe();
        if let Some(primary) = models.models.first() {
            out.push_str(&format!(" via {}", primary.api.endpoint()));
        }
        out.push_str(&format!(
            " · up to {} steps, {} s a turn, compaction over {} tokens",
            self.config.max_steps,
            self.config.turn_timeout.as_secs(),
            self.config.compaction_budget_tokens
        ));
        out
    }
}

/// The span of one model call, named and described as the OpenTelemetry GenAI semantic
/// conventions say (`chat <model>`; the usage is recorded when the answer is in).
fn model_span(spec: &crate::config::ModelSpec) -> tracing::Span {
    let provider = match spec.provider {
        crate::config::Provider::Anthropic => "anthropic",
        crate::config::Provider::OpenAi => "openai",
    };
    info_span!(
        "chat",
        otel.name = %format!("chat {}", spec.name),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = spec.name.as_str(),
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.usage.cache_read.input_tokens = tracing::field::Empty,
        gen_ai.usage.cache_creation.input_tokens = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc… (cut)");
    }
}
