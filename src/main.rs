//! The `ecdysis` command line: `serve`, `chat`, `migrate`, `doctor`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ecdysis::config::{Config, LogFormat};
use ecdysis::redact::{MakeRedactingWriter, Redactor};
use ecdysis::server::app::{self, App};
use ecdysis_chat::EventSink;
use ecdysis_web::terminal::{self, TerminalAdapter};

/// A self-hosted AI agent for Slack and Discord.
#[derive(Parser)]
#[command(name = "ecdysis", version, about)]
struct Cli {
    /// Configuration file (TOML); every key can also be set by environment variable.
    #[arg(long, global = true, env = "ECDYSIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server, every configured adapter and the workers.
    Serve,
    /// Chat with the agent in this terminal (conversation `local:terminal`).
    Chat,
    /// Apply database migrations and exit.
    Migrate,
    /// Check every configured part and print one line each; exit 1 if one fails.
    Doctor,
    /// Write a channel's memory notes and transcripts (with compaction summaries, archives and
    /// artifact metadata) as JSON lines.
    Export {
        /// The channel: platform:workspace:channel (e.g. slack:T012AB:C345CD, web:local:general).
        #[arg(long)]
        channel: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Include the artifact files themselves (base64), for a move to another blob store.
        #[arg(long)]
        files: bool,
    },
    /// Read an export (JSON lines) into this database and blob store; importing twice adds
    /// nothing.
    Import {
        /// Read this file instead of standard input.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Semantic memory tools.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Discord tools.
    #[command(subcommand)]
    Discord(DiscordCommand),
    /// Slack tools.
    #[command(subcommand)]
    Slack(SlackCommand),
}

#[derive(Subcommand)]
enum SlackCommand {
    /// Print the Slack app manifest (JSON) for a server reachable at --url.
    Manifest {
        /// Where Slack reaches this server, e.g. https://ecdysis.example.com.
        #[arg(long)]
        url: String,
        /// Also offer /ask, /remember, /recall, … next to /ecdysis.
        #[arg(long)]
        native_commands: bool,
    },
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// Embed every note and compacted-history chunk again with the configured model
    /// (ECDYSIS_EMBEDDINGS), now.
    Reindex,
}

#[derive(Subcommand)]
enum DiscordCommand {
    /// Register the slash commands (globally, or in one guild, where they show at once).
    Register {
        /// The guild (server) id to register in.
        #[arg(long)]
        guild: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ecdysis: {e}");
            return ExitCode::from(2);
        }
    };
    // Every configured secret is masked in what this process prints from here on.
    let redactor = ecdysis::redact::global().clone();
    redactor.add_config(&config);
    // Traces go to an OTLP collector only from the server, and only when one is named.
    let telemetry = match cli.command {
        Command::Serve => match ecdysis::server::telemetry::Telemetry::from_env() {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("ecdysis: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    init_logging(
        redactor.clone(),
        config.log_format,
        matches!(
            cli.command,
            Command::Chat | Command::Export { .. } | Command::Import { .. }
        ),
        telemetry.as_ref(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ecdysis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The SQLite file is private (0600) before anything opens it; `doctor` reports a
    // database it cannot prepare on its own line.
    if opens_storage(&cli.command)
        && let Err(e) = ecdysis::storage::private_files::prepare_database(&config.database_url)
        && !matches!(cli.command, Command::Doctor)
    {
        eprintln!("ecdysis: cannot prepare the database file: {e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Chat => chat(config).await,
            Command::Migrate => migrate(config).await,
            Command::Doctor => return doctor(config).await,
            Command::Export {
                channel,
                out,
                files,
            } => export(config, &channel, out, files).await,
            Command::Import { input } => import(config, input).await,
            Command::Memory(MemoryCommand::Reindex) => reindex(config).await,
            Command::Discord(DiscordCommand::Register { guild }) => {
                discord_register(config, guild).await
            }
            Command::Slack(SlackCommand::Manifest {
                url,
                native_commands,
            }) => ecdysis::platforms::slack::manifest(&config, &url, native_commands)
                .map(|manifest| println!("{manifest}")),
        }
        .map(|()| ExitCode::SUCCESS)
    });
    drop(runtime);
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ecdysis: {}", redactor.redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Whether the command opens the database (and so may create it).
fn opens_storage(command: &Command) -> bool {
    matches!(
        command,
        Command::Serve
            | Command::Chat
            | Command::Migrate
            | Command::Doctor
            | Command::Export { .. }
            | Command::Import { .. }
            | Command::Memory(_)
    )
}

/// Log to standard error, every line passed through the redactor (text and JSON alike), and
/// send the spans to the OTLP collector when there is one.
fn init_logging(
    redactor: Redactor,
    format: LogFormat,
    quiet: bool,
    telemetry: Option<&ecdysis::server::telemetry::Telemetry>,
) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(MakeRedactingWriter::new(std::io::stderr, redactor));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(telemetry.map(|t| t.layer()));
    match format {
        LogFormat::Json => registry.with(log.json()).init(),
        LogFormat::Text => registry.with(log).init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // SQLite mode is single-instance: a second `serve` or `chat` on the file stops here.
    let _instance = ecdysis::server::instance_lock::acquire(&config.database_url)?;
    let app = App::open(config).await?;
    app::serve(app).await
}

async fn chat(config: Config) -> anyhow::Result<()> {
    let _instance = ecdysis::server::instance_lock::acquire(&config.database_url)?;
    let app = App::open(config).await?;
    let adapter = Arc::new(TerminalAdapter::new());
    app.bus.register_adapter(adapter.clone());
    let workers = app.bus.start().await?;
    let scheduler = app.start_scheduler();
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    let sink: Arc<dyn EventSink> = Arc::new(app.bus.clone());
    terminal::run(sink, adapter, input, Duration::from_secs(600)).await?;
    scheduler.stop().await;
    app::stop(workers).await;
    Ok(())
}

async fn discord_register(config: Config, guild: Option<u64>) -> anyhow::Result<()> {
    println!(
        "{}",
        ecdysis::platforms::discord::register(&config, guild).await?
    );
    Ok(())
}

async fn export(
    config: Config,
    channel: &str,
    out: Option<PathBuf>,
    files: bool,
) -> anyhow::Result<()> {
    let channel = ecdysis::storage::backup::parse_channel(channel)?;
    let store = ecdysis::storage::store::open(&config.database_url).await?;
    let blobs = ecdysis::storage::blob::open(&config).await?;
    let summary = match &out {
        Some(path) => {
            // An export holds a channel's memory: readable by this user alone (0600).
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            let mut writer = tokio::io::BufWriter::new(file);
            ecdysis::storage::backup::export(
                store.as_ref(),
                blobs.as_ref(),
                &channel,
                files,
                &mut writer,
            )
            .await?
        }
        None => {
            let mut writer = tokio::io::BufWriter::new(tokio::io::stdout());
            ecdysis::storage::backup::export(
                store.as_ref(),
                blobs.as_ref(),
                &channel,
                files,
                &mut writer,
            )
            .await?
        }
    };
    eprintln!("exported {summary}");
    Ok(())
}

async fn import(config: Config, input: Option<PathBuf>) -> anyhow::Result<()> {
    let store = ecdysis::storage::store::open(&config.database_url).await?;
    let blobs = ecdysis::storage::blob::open(&config).await?;
    let summary = match &input {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            ecdysis::storage::backup::import(
                &store,
                blobs.as_ref(),
                &mut tokio::io::BufReader::new(file),
            )
            .await?
        }
        None => {
            let mut reader = tokio::io::BufReader::new(tokio::io::stdin());
            ecdysis::storage::backup::import(&store, blobs.as_ref(), &mut reader).await?
        }
    };
    eprintln!("imported {summary}");
    Ok(())
}

async fn reindex(config: Config) -> anyhow::Result<()> {
    let store = ecdysis::storage::store::open(&config.database_url).await?;
    let done = ecdysis::embeddings::reindex(&config, store, |n| {
        if n % 256 < 32 {
            eprintln!("embedded {n}…");
        }
    })
    .await?;
    println!(
        "reindexed: {} rows queued, {} embedded, {} still waiting",
        done.queued, done.embedded, done.waiting
    );
    if done.waiting > 0 {
        anyhow::bail!(
            "{} rows could not be embedded now (see the warnings above); `ecdysis serve` retries them",
            done.waiting
        );
    }
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = ecdysis::storage::store::open(&config.database_url).await?;
    println!(
        "migrations applied ({}: {})",
        store.backend(),
        ecdysis::config::redact(&config.database_url)
    );
    Ok(())
}

async fn doctor(config: Config) -> anyhow::Result<ExitCode> {
    let report = ecdysis::server::doctor::run(&config).await;
    for line in &report.lines {
        println!("{line}");
    }
    Ok(if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
