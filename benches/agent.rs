//! Agent benchmark, with the fake LLM (testkit) answering instantly on 127.0.0.1.
//!
//! Prints the agent's overhead per turn (p50/p99 of the turn time minus the time inside the
//! provider call: storage reads and writes, context assembly, compaction bookkeeping, tool
//! runs), the whole turn including the loopback HTTP round trip, the prompt size at turn 1 and
//! turn 50 of a conversation, and the size of the system prompt + tool definitions (every tool
//! this machine enables: memory, and `run_command` / browser tools when available).
//! Run: `cargo bench --bench agent` (SQLite; set ECDYSIS_TEST_POSTGRES_URL to add Postgres).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecdysis::agent::LlmAgent;
use ecdysis::agent::compaction::{FLUSH_PROMPT, SUMMARY_PROMPT};
use ecdysis::bus::{EventContext, EventPayload, Poster};
use ecdysis::config::Config;
use ecdysis::engine::tools::ToolRegistry;
use ecdysis::server::app::App;
use ecdysis::storage::store::{NewEvent, NewMessage, Role};
use ecdysis_chat::{ConversationRef, EventKind, UserRef};
use ecdysis_testkit::llm::{FakeLlm, Reply};
use serde_json::json;

const CONVERSATIONS: usize = 20;
const TURNS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Run {
    overhead: Vec<Duration>,
    plain: Vec<Duration>,
    with_tools: Vec<Duration>,
    orchestration: Vec<Duration>,
    total: Vec<Duration>,
    prompt_tokens: Vec<usize>,
    raw_tokens: Vec<usize>,
    prefix_tokens: usize,
    compactions: usize,
    budget: usize,
    tools: Vec<String>,
}

async fn run(label: &str, dir: &Path, database_url: Option<String>) -> Run {
    let fake = FakeLlm::start().await.expect("start the fake LLM");
    // Answers about 2,000 characters long (≈500 tokens), so a 50-turn conversation outgrows
    // the default 24,000-token budget and compacts on the way.
    let answer =
        "This is a fairly detailed answer with a few paragraphs of explanation. ".repeat(28);
    fake.set_default(Reply::text(answer));
    fake.when(FLUSH_PROMPT, Reply::text("nothing to save"));
    fake.when(
        SUMMARY_PROMPT,
        Reply::text("Summary: the user asked many questions about their deployment; all answered."),
    );
    let mut env: HashMap<String, String> = HashMap::from([
        ("ECDYSIS_DATA_DIR".into(), dir.display().to_string()),
        ("ECDYSIS_MODEL".into(), "anthropic/claude-bench".into()),
        ("ANTHROPIC_API_KEY".into(), "bench-key".into()),
        ("ANTHROPIC_BASE_URL".into(), fake.anthropic_base_url()),
    ]);
    if let Some(url) = database_url {
        env.insert("DATABASE_URL".into(), url);
    }
    let config = Config::load_with(None, &|name| env.get(name).cloned()).expect("config");
    // The App registers every feature's tools (sandbox, browser) before `customize`: keep them.
    let features: Arc<Mutex<ToolRegistry>> = Arc::default();
    let seen = features.clone();
    let app = App::open_with(config.clone(), move |commands| {
        *seen.lock().unwrap() = commands.tools().clone();
        commands
    })
    .await
    .expect("open the app");
    let extra = features.lock().unwrap().clone();
    let agent = LlmAgent::from_config(&config, app.store.clone(), app.blobs.clone(), &extra)
        .expect("agent")
        .expect("a model is configured");

    let mut overhead = Vec::new();
    let mut plain = Vec::new();
    let mut with_tools = Vec::new();
    let mut orchestration = Vec::new();
    let mut total = Vec::new();
    let mut prompt_tokens = vec![0; TURNS];
    let mut raw_tokens = vec![0; TURNS];
    let mut prefix_tokens = 0;
    let mut compactions = 0;
    for c in 0..CONVERSATIONS {
        let conversation =
            ConversationRef::new("bench", "W1", format!("C{c}"), Some("1700.1".into()));
        for turn in 0..TURNS {
            let text = format!(
                "Question {turn}: how should I configure the deploy pipeline for service {c}? {}",
                "Here is some context about what I tried. ".repeat(6)
            );
            // Every fifth turn uses two tools before answering.
            if turn % 5 == 4 {
                fake.push(Reply::tool(
                    "memory_save",
                    json!({ "text": format!("service {c} deploys on Fridays") }),
                ));
                fake.push(Reply::tool(
                    "memory_search",
                    json!({ "query": "deploys Fridays" }),
                ));
            }
            // What the bus does before calling the handler: the event and the user's message.
            let inserted = app
                .store
                .insert_event(&NewEvent {
                    platform_event_id: format!("{label}-{c}-{turn}"),
                    conversation: conversation.clone(),
                    user_id: "U1".into(),
                    payload: "{}".into(),
                    text: text.clone(),
                    attachments: Vec::new(),
                })
                .await
                .expect("insert event");
            let event = EventContext {
                event_id: inserted.event_id,
                conversation: conversation.clone(),
                payload: EventPayload {
                    platform_event_id: format!("{label}-{c}-{turn}"),
                    user: UserRef {
                        id: "U1".into(),
                        name: None,
                    },
                    kind: EventKind::Message,
                    text: text.clone(),
                    attachments: Vec::new(),
                    remote_files: Vec::new(),
                    route: serde_json::Value::Null,
                    scheduled: None,
                },
                attempt: 1,
                live: ecdysis::engine::live::Live::off(),
                poster: Poster::detached(),
            };
            let before = fake.request_count();
            let outcome = agent.run_turn(&event, &text).await.expect("turn");
            // What the bus does after: store the answer.
            app.store
                .append_messages(
                    &conversation,
                    Some(inserted.event_id),
                    &[NewMessage {
                        role: Role::Assistant,
                        text: outcome.outgoing[0].text.clone(),
                        meta: None,
                        attachments: Vec::new(),
                    }],
                )
                .await
                .expect("store the answer");
            let stats = outcome.stats;
            overhead.push(stats.overhead());
            orchestration.push(stats.orchestration());
            if stats.steps > 0 {
                with_tools.push(stats.overhead());
            } else {
                plain.push(stats.overhead());
            }
            total.push(stats.total);
            prefix_tokens = stats.prefix_tokens;
            if stats.compaction_due {
                compactions += 1;
                // Let it finish before the next turn, as a person's next message would.
                agent.compactions_settled().await;
            }
            if c == 0 {
                prompt_tokens[turn] = stats.prompt_tokens;
                // The raw size of the turn's answer request as sent (JSON included).
                let requests = fake.requests();
                raw_tokens[turn] = requests[before..]
                    .iter()
                    .find(|r| r.last_message_text().starts_with("Question"))
                    .map(|r| r.estimated_tokens())
                    .unwrap_or(0);
            }
        }
    }
    Run {
        overhead,
        plain,
        with_tools,
        orchestration,
        total,
        prompt_tokens,
        raw_tokens,
        prefix_tokens,
        compactions,
        budget: config.agent.compaction_budget_tokens,
        tools: agent_tools(&extra),
    }
}

fn agent_tools(extra: &ToolRegistry) -> Vec<String> {
    let mut names = vec![
        "memory_search".to_string(),
        "memory_save".into(),
        "memory_forget".into(),
    ];
    names.extend(extra.iter().map(|t| t.name().to_string()));
    names
}

fn report(label: &str, mut run: Run) {
    run.overhead.sort();
    run.total.sort();
    run.plain.sort();
    run.with_tools.sort();
    run.orchestration.sort();
    println!("== agent benchmark: {label} ==");
    println!(
        "turns: {} ({CONVERSATIONS} conversations x {TURNS}), every 5th with two tool steps; compactions: {}",
        run.overhead.len(),
        run.compactions
    );
    println!(
        "agent overhead per turn (excluding the model call): p50 {} · p99 {} · max {}",
        ms(percentile(&run.overhead, 0.50)),
        ms(percentile(&run.overhead, 0.99)),
        ms(*run.overhead.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "  plain turns ({}): p50 {} · p99 {}; turns with two tool steps ({}): p50 {} · p99 {}",
        run.plain.len(),
        ms(percentile(&run.plain, 0.50)),
        ms(percentile(&run.plain, 0.99)),
        run.with_tools.len(),
        ms(percentile(&run.with_tools, 0.50)),
        ms(percentile(&run.with_tools, 0.99)),
    );
    println!(
        "agent overhead excluding the tools' own time too: p50 {} · p99 {}",
        ms(percentile(&run.orchestration, 0.50)),
        ms(percentile(&run.orchestration, 0.99)),
    );
    println!(
        "whole turn with the instant fake (incl. loopback HTTP and JSON): p50 {} · p99 {}",
        ms(percentile(&run.total, 0.50)),
        ms(percentile(&run.total, 0.99)),
    );
    println!(
        "prompt tokens (estimate / request bytes ÷ 4): turn 1 {} / {} · turn 50 {} / {} · budget {}",
        run.prompt_tokens[0],
        run.raw_tokens[0],
        run.prompt_tokens[TURNS - 1],
        run.raw_tokens[TURNS - 1],
        run.budget
    );
    let peak = run.prompt_tokens.iter().max().copied().unwrap_or(0);
    println!("largest turn prompt in the conversation: {peak} tokens");
    println!(
        "system prompt + tool definitions: {} tokens (tools: {})",
        run.prefix_tokens,
        run.tools.join(", ")
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = run("sqlite", dir.path(), None).await;
        report("SQLite", sqlite);
        if let Ok(url) = std::env::var("ECDYSIS_TEST_POSTGRES_URL")
            && !url.is_empty()
        {
            let url = fresh_schema(&url).await;
            let pg_dir = tempfile::tempdir().expect("temp dir");
            let postgres = run("postgres", pg_dir.path(), Some(url)).await;
            report("PostgreSQL", postgres);
        }
    });
}

/// A Postgres URL whose connections use a new, empty schema.
async fn fresh_schema(url: &str) -> String {
    use sqlx::Connection;
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}
