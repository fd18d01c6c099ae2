//! Assembling the parts a configuration names: storage, blob store, bus, handlers, adapters,
//! and the HTTP server with its operational routes (`/healthz`, `/readyz`, `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ecdysis_chat::{BackendError, ConversationRef, EventSink};
use ecdysis_web::guard::Guard;
use ecdysis_web::limiter::LoginLimiter;
use ecdysis_web::{WebBackend, WebChat, WebFile, WebMessage, WebSettings};
use tracing::{info, warn};

use crate::agent::LlmAgent;
use crate::browser::BrowserService;
use crate::browser::feature::{RecordFeature, ScreenshotFeature};
use crate::bus::{Adapters, Bus, Workers};
use crate::config::Config;
use crate::engine::approvals::Approvals;
use crate::engine::commands::{Agent, Commands};
use crate::sandbox::{RunCommandTool, RunFeature, Runner};
use crate::schedule::Scheduler;
use crate::server::admin;
use crate::server::metrics::Metrics;
use crate::storage::blob::{self, BlobStore};
use crate::storage::store::{self, Role, Store};

/// Everything `serve` and `chat` run on.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub blobs: Arc<dyn BlobStore>,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    /// The browser behind `/screenshot`, `/record` and the browser tools, when Chromium (or a
    /// CDP endpoint) is available. Nothing runs until first use.
    pub browser: Option<BrowserService>,
    /// The sandbox behind `/run` and the `run_command` tool, when one is usable here.
    pub sandbox: Option<Arc<Runner>>,
    /// The MCP servers (`[[mcp]]`), connecting in the background; stopped by [`serve`].
    pub mcp: crate::mcp::McpHub,
    /// The Discord adapter, when `DISCORD_TOKEN` or `DISCORD_PUBLIC_KEY` is set; its gateway
    /// starts with `serve` ([`crate::platforms::discord::start`]).
    pub discord: Option<ecdysis_discord::Discord>,
    /// The Slack adapter, when `SLACK_SIGNING_SECRET` or `SLACK_APP_TOKEN` is set; Socket Mode
    /// starts with `serve` ([`crate::platforms::slack::start`]).
    pub slack: Option<ecdysis_slack::Slack>,
    /// The spend limits (and the usage metrics), checked before every model call.
    pub budgets: Arc<crate::engine::guard::Budgets>,
    /// Memory search: full text, and meaning too when `ECDYSIS_EMBEDDINGS` is set.
    pub memory: crate::embeddings::MemorySearch,
    /// The embedding worker (with embeddings on); [`serve`] runs it.
    pub indexer: Option<Arc<crate::embeddings::Indexer>>,
    /// The web chat's routes; its adapter is registered with the bus when the app opens.
    pub web: WebChat,
    /// Failed logins per client, shared by `/login`, `/admin/login` and bearer checks.
    pub logins: Arc<LoginLimiter>,
    /// Scheduled jobs; their scanner starts with `serve` and `chat` ([`Scheduler::start`]).
    pub scheduler: Arc<Scheduler>,
}

impl App {
    /// Open storage (applying migrations) and the blob store, and build the bus.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        Self::open_with(config, |commands| commands).await
    }

    /// Like [`App::open`], letting the caller add features to the command handler.
    pub async fn open_with(
        config: Config,
        customize: impl FnOnce(Commands) -> Commands,
    ) -> anyhow::Result<Self> {
        // Every secret of this configuration is masked in logs and replies from now on.
        let redactor = crate::redact::global().clone();
        redactor.add_config(&config);
        let store = store::open(&config.database_url)
            .await
            .with_context(|| format!("database {}", crate::config::redact(&config.database_url)))?;
        let blobs = blob::open(&config).await.context("blob store")?;
        let browser = BrowserService::from_config(&config).context("browser")?;
        let (memory, indexer) = crate::embeddings::setup(&config, store.clone())
            .await
            .context("semantic memory (ECDYSIS_EMBEDDINGS)")?;
        if let Some(model) = memory.model() {
            info!(
                model,
                "semantic memory is on: memory is searched by words and meaning"
            );
        }
        let adapters = Adapters::default();
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            config.schedule.clone(),
            &config.timezone,
            adapters.clone(),
        ));
        let mut commands = Commands::new(store.clone(), blobs.clone())
            .with_memory(memory.clone())
            .with_scheduler(scheduler.clone());
        match &browser {
            Some(browser) => {
                info!(browser = %browser.source(), "/screenshot and /record are on (the browser starts on first use)");
                commands = commands
                    .with_screenshot(Arc::new(ScreenshotFeature::new(browser.clone())))
                    .with_record(Arc::new(RecordFeature::new(browser.clone())));
                for tool in crate::browser::tools::all(browser, config.agent.turn_timeout) {
                    commands = commands.with_tool(tool);
                }
            }
            None => info!(
                "no Chromium found (ECDYSIS_CHROMIUM, ECDYSIS_BROWSER_CDP_URL or `chromium` on PATH): /screenshot and /record are off"
            ),
        }
        if let Some(search) = crate::agent::web_search::tool(config.web_search.as_ref()) {
            info!("web_search is on");
            commands = commands.with_tool(Arc::new(search));
        }
        // The model's commands and marked MCP tools wait for a human when the config asks.
        let wants_approvals =
            config.sandbox.require_approval || config.mcp.iter().any(|m| m.approval.any());
        let approvals = wants_approvals.then(|| {
            Approvals::new(
                config.agent.turn_timeout,
                config.sandbox.allow_users.clone(),
            )
        });
        let gate = approvals
            .clone()
            .map(|a| a as Arc<dyn crate::sandbox::ApprovalGate>);
        let sandbox = match crate::sandbox::open(&config, blobs.clone()).await {
            Ok(runner) => {
                commands = commands
                    .with_run(Arc::new(RunFeature::new(runner.clone())))
                    .with_tool(Arc::new(RunCommandTool::new(runner.clone(), gate)));
                Some(runner)
            }
            // `/run` answers with how to enable a sandbox; the reason is logged.
            Err(_) => None,
        };
        // MCP servers connect in the background: start-up and /readyz never wait for them.
        let mcp = crate::mcp::McpHub::start(&config.mcp, approvals.clone(), sandbox.clone());
        let metrics = Arc::new(Metrics::new());
        let budgets = Arc::new(crate::engine::guard::Budgets::new(
            config.guards.budget.clone(),
            store.clone(),
            Some(metrics.usage.clone()),
        ));
        let commands = commands
            .with_profiles(crate::engine::profile::Profiles::new(
                config.profiles.clone(),
            ))
            .with_mcp(mcp.clone())
            .with_budgets(budgets.clone())
            .with_pair(Arc::new(crate::engine::guard::PairCommand::new(
                config.guards.access.clone(),
                store.clone(),
            )));
        let mut commands = customize(commands);
        // The agent is built last, so it offers every tool registered before it: by the features
        // above and by `customize` (`Commands::with_tool`). A `customize` that set its own agent
        // keeps it.
        if !commands.has_agent()
            && let Some(agent) = LlmAgent::from_config_with_memory(
                &config,
                store.clone(),
                blobs.clone(),
                commands.tools(),
                memory.clone(),
            )?
        {
            info!(model = %agent.describe(), "the agent answers free text and /ask");
            commands = commands.with_agent(Arc::new(agent.with_budgets(budgets.clone())));
        }
        let bus = Bus::new(
            store.clone(),
            blobs.clone(),
            Arc::new(commands),
            config.bus.clone(),
            metrics.clone(),
            redactor,
            adapters,
        );
        // Button presses reach the approvals before they would queue behind the waiting event.
        if let Some(approvals) = &approvals {
            bus.set_action_handler(approvals.clone());
        }
        bus.set_gate(Arc::new(crate::engine::guard::IntakeGate::new(
            config.guards.access.clone(),
            config.guards.rate,
            crate::engine::profile::Profiles::new(config.profiles.clone()),
            store.clone(),
            metrics.clone(),
        )));
        // Files events refer to are fetched by the workers, after the acknowledgement.
        bus.set_file_intake(Arc::new(crate::media::Intake::new(
            store.clone(),
            blobs.clone(),
            sandbox.clone(),
        )));
        let logins = Arc::new(LoginLimiter::default());
        let (web, web_adapter) = WebChat::new(
            Arc::new(bus.clone()) as Arc<dyn EventSink>,
            Arc::new(TranscriptView {
                store: store.clone(),
                blobs: blobs.clone(),
            }),
            WebSettings {
                token: config.admin_token.clone(),
                max_body_bytes: config.web_max_body_bytes,
                max_upload_bytes: config.web_upload_max_bytes,
                logins: logins.clone(),
                https: config
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
            },
        );
        bus.register_adapter(Arc::new(web_adapter));
        let discord = crate::platforms::discord::open(&config, &bus, store.clone())?;
        let slack = crate::platforms::slack::open(&config, &bus, store.clone())?;
        Ok(Self {
            config: Arc::new(config),
            store,
            blobs,
            bus,
            metrics,
            browser,
            sandbox,
            mcp,
            discord,
            slack,
            budgets,
            memory,
            indexer,
            web,
            logins,
            scheduler,
        })
    }

    /// Start firing scheduled jobs (under the `scheduler` lease with Postgres).
    pub fn start_scheduler(&self) -> crate::schedule::scanner::Running {
        self.scheduler.start(
            Duration::from_secs(self.config.bus.leader_lease_seconds),
            &self.bus,
        )
    }

    /// The HTTP routes: web chat + operations.
    ///
    /// The browser-facing routes (web chat, `/login`, `/admin`, artifacts) sit behind the
    /// browser guard (`Host` must name this server, a present `Origin` must be its own, wrong
    /// bearer tokens count as failed logins); the platform webhooks and `/healthz`, `/readyz`,
    /// `/metrics` do not (servers call them with their own `Host`). With an admin token, the
    /// web chat needs it on loopback too.
    pub fn router(&self) -> Router {
        let guard = Arc::new(Guard::new(
            self.config.listen,
            self.config.public_url.as_deref(),
            self.config.admin_token.clone(),
            self.logins.clone(),
        ));
        let web = self.web.clone();
        let ops = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        // `/admin` exists only with ECDYSIS_ADMIN_TOKEN or Cloudflare Access (404 otherwise).
        let cloudflare = self
            .config
            .cf_access
            .as_ref()
            .map(|(team, audience)| admin::cf_access::AccessSettings::new(team, audience));
        let browser = if self.config.admin_token.is_some() || cloudflare.is_some() {
            web.router().merge(admin::router(
                self.admin_parts(),
                admin::AdminAccess {
                    token: self.config.admin_token.clone(),
                    cloudflare,
                    https: guard.public_https(),
                    logins: self.logins.clone(),
                },
            ))
        } else {
            web.router()
        };
        let browser = browser.layer(axum::middleware::from_fn_with_state(
            guard,
            ecdysis_web::guard::guard,
        ));
        let router = browser.merge(ops);
        let router = match &self.slack {
            Some(slack) => router.merge(slack.router()),
            None => router,
        };
        let router = match self.discord.as_ref().and_then(|d| d.router()) {
            Some(discord) => router.merge(discord),
            None => router,
        };
        router.layer(axum::middleware::from_fn(request_timeout))
    }

    /// What the admin pages read and act on.
    fn admin_parts(&self) -> admin::AdminParts {
        admin::AdminParts {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            bus: self.bus.clone(),
            profiles: self.config.profiles.clone().into(),
            mcp: self.mcp.clone(),
            scheduler: self.scheduler.clone(),
            guards: self.config.guards.clone(),
            budgets: self.budgets.clone(),
        }
    }

    /// Refuse to serve the web chat to the network without a token.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if !self.config.listens_on_loopback() && self.config.admin_token.is_none() {
            anyhow::bail!(
                "listening on {} (not loopback) needs ECDYSIS_ADMIN_TOKEN so that strangers cannot use the web chat",
                self.config.listen
            );
        }
        Ok(())
    }
}

/// Run the server until SIGTERM or Ctrl-C; then stop accepting, let running events finish
/// (or release their leases) and return.
pub async fn serve(app: App) -> anyhow::Result<()> {
    let started = Instant::now();
    app.check_exposure()?;
    let router = app.router();
    if app.config.public_url.is_none() && app.config.listen.ip().is_unspecified() {
        warn!(
            listen = %app.config.listen,
            "no ECDYSIS_PUBLIC_URL: the web chat and /admin answer to any host name (the admin token guards them); set it to refuse other names"
        );
    }
    let listener = crate::server::listener::bind(app.config.listen)
        .with_context(|| format!("cannot listen on {}", app.config.listen))?;
    let address: SocketAddr = listener.local_addr()?;
    let workers = app.bus.start().await?;
    let indexing = app.indexer.clone().map(|indexer| indexer.start());
    // The Discord gateway and Slack Socket Mode: directly, or under leader leases (Postgres).
    let connections = crate::platforms::connections::Connections::start(
        &app.config,
        &app.store,
        app.discord.as_ref(),
        app.slack.as_ref(),
    )
    .await?;
    let scheduler = app.start_scheduler();
    info!(
        %address,
        storage = app.store.backend(),
        blobs = %app.blobs.describe(),
        ready_ms = started.elapsed().as_millis() as u64,
        "ecdysis is listening; web chat at http://{address}/"
    );
    let limits = crate::server::listener::Limits {
        header_timeout: app.config.web_header_timeout,
        max_connections: app.config.web_max_connections,
        drain: Duration::from_secs(10),
    };
    crate::server::listener::serve(listener, router, limits, shutdown_signal()).await;
    info!("shutting down: finishing running events");
    connections.stop().await;
    scheduler.stop().await;
    stop(workers).await;
    if let Some(indexing) = indexing {
        indexing.stop().await;
    }
    if let Some(browser) = &app.browser {
        browser.shutdown().await;
    }
    app.mcp.shutdown().await;
    Ok(())
}

/// Stop the workers with the standard grace period.
pub async fn stop(workers: Workers) {
    workers.shutdown(Duration::from_secs(10)).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// The longest any request may take to be answered (a streamed body, such as the web chat's
/// live updates, may go on after its head was sent).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Answer 503 to a request whose handler takes longer than [`REQUEST_TIMEOUT`] (a slow client
/// sending its body slowly included), so no request holds a connection forever.
async fn request_timeout(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, "request timed out");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                "the request took too long; try again",
            )
                .into_response()
        }
    }
}

async fn readyz(State(app): State<App>) -> Response {
    let db = app.store.ping().await;
    let blobs = app.blobs.ping().await;
    let body = serde_json::json!({
        "database": db.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "blobs": blobs.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "queue_depth": app.bus.queue_depth(),
        "adapters": app.bus.adapter_health(),
    });
    let status = if db.is_ok() && blobs.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// The web chat's read side: the transcript and stored files.
struct TranscriptView {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
}

#[async_trait]
impl WebBackend for TranscriptView {
    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: i64,
    ) -> Result<Vec<WebMessage>, BackendError> {
        let messages = self
            .store
            .messages(conversation, store::MessageId(after), 500)
            .await
            .map_err(BackendError::new)?;
        Ok(messages
            .into_iter()
            .filter(|m| matches!(m.role, Role::User | Role::Assistant))
            .map(|m| WebMessage {
                id: m.id.0,
                event_id: m.event_id.map(|id| id.to_string()),
                role: m.role.as_str().to_string(),
                text: m.text,
                attachments: m
                    .attachments
                    .into_iter()
                    .map(|a| ecdysis_web::WebAttachment {
                        url: format!("/api/artifacts/{}", a.id),
                        name: a.name,
                        mime: a.mime,
                        size: a.size,
                    })
                    .collect(),
                buttons: m
                    .meta
                    .as_deref()
                    .and_then(|meta| serde_json::from_str::<serde_json::Value>(meta).ok())
                    .and_then(|meta| serde_json::from_value(meta["buttons"].clone()).ok())
                    .unwrap_or_default(),
                created_at: ecdysis_chat::time::rfc3339_utc(m.created_at.0),
            })
            .collect())
    }

    async fn file(&self, id: &str) -> Result<Option<WebFile>, BackendError> {
        let Some(artifact) = self.store.artifact(id).await.map_err(BackendError::new)? else {
            return Ok(None);
        };
        let bytes = self
            .blobs
            .get(&artifact.blob_key)
            .await
            .map_err(BackendError::new)?;
        Ok(bytes.map(|bytes| WebFile {
            name: artifact.name,
            mime: artifact.mime,
            bytes,
        }))
    }
}
