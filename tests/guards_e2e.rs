//! Guard rails end to end: a real `ecdysis serve` process with the fake Slack and the fake LLM
//! (access policy, DM pairing with `/pair`), the web chat (budgets, rate limits, `/status`,
//! `/metrics`), and the store and budget code directly where time has to move (code expiry,
//! the 80 % warning).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Server;
use ecdysis::engine::guard::Budgets;
use ecdysis::engine::guard::settings::{BudgetSettings, Limit};
use ecdysis::storage::store::{Approval, Clock, NewPairing, Store, Usage};
use ecdysis_chat::ConversationRef;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use ecdysis_testkit::slack::FakeSlack;
use serde_json::{Value, json};

const SECRET: &str = "test-signing-secret";
const TEAM: &str = "T1";
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    slack: FakeSlack,
    llm: FakeLlm,
    server: Server,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[(&str, &str)]) -> Env {
    let slack = FakeSlack::start().await.unwrap();
    let llm = FakeLlm::start().await.unwrap();
    llm.set_default(Reply::text("The answer is 42."));
    let dir = tempfile::tempdir().unwrap();
    let api = slack.api_url();
    let llm_url = llm.anthropic_base_url();
    let mut env: Vec<(&str, &str)> = vec![
        ("SLACK_SIGNING_SECRET", SECRET),
        ("SLACK_BOT_TOKEN", "xoxb-guards"),
        ("SLACK_API_URL", &api),
        ("ECDYSIS_MODEL", "anthropic/claude-sonnet-4-5"),
        ("ANTHROPIC_API_KEY", "test-key"),
        ("ANTHROPIC_BASE_URL", &llm_url),
        ("ECDYSIS_SANDBOX", "off"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        // Whole replies, one `chat.postMessage` each (live replies have their own tests).
        ("ECDYSIS_SLACK_STREAMING", "off"),
    ];
    env.extend_from_slice(extra);
    let server = Server::start(dir.path(), &env).await;
    Env {
        slack,
        llm,
        server,
        _dir: dir,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post_signed(env: &Env, path: &str, body: &str, content_type: &str) -> reqwest::Response {
    let ts = now();
    reqwest::Client::new()
        .post(format!("{}{path}", env.server.base))
        .header("content-type", content_type)
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Post one Slack event (`app_mention` in a channel, `message` in a DM) from `user`.
async fn slack_event(env: &Env, event_id: &str, user: &str, channel: &str, ts: &str, text: &str) {
    let event = if channel.starts_with('D') {
        json!({"type": "message", "channel_type": "im", "user": user, "text": text,
               "ts": ts, "channel": channel})
    } else {
        json!({"type": "app_mention", "user": user, "text": format!("<@UBOT> {text}"),
               "ts": ts, "channel": channel, "event_ts": ts})
    };
    let body = json!({
        "token": "verification-token", "team_id": TEAM, "api_app_id": "AFAKE",
        "type": "event_callback", "event_id": event_id, "event_time": now(),
        "authorizations": [{"team_id": TEAM, "user_id": "UBOT", "is_bot": true,
                            "is_enterprise_install": false}],
        "event": event,
    });
    let r = post_signed(env, "/slack/events", &body.to_string(), "application/json").await;
    assert_eq!(r.status(), 200, "{}", env.server.log());
}

/// Run `/ecdysis <text>` as `user` in `channel`; the response URL's post.
async fn slack_command(env: &Env, user: &str, channel: &str, text: &str, id: &str) -> Value {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "verification-token")
        .append_pair("team_id", TEAM)
        .append_pair("team_domain", "fake")
        .append_pair("channel_id", channel)
        .append_pair("channel_name", "general")
        .append_pair("user_id", user)
        .append_pair("user_name", "admin")
        .append_pair("command", "/ecdysis")
        .append_pair("text", text)
        .append_pair("api_app_id", "AFAKE")
        .append_pair("response_url", &env.slack.response_url(id))
        .append_pair("trigger_id", &format!("trigger-{id}"))
        .finish();
    let r = post_signed(
        env,
        "/slack/commands",
        &body,
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", env.server.log());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(call) = env
            .slack
            .calls_to("response_url")
            .into_iter()
            .find(|c| c.args["response_id"] == id)
        {
            return call.args;
        }
        assert!(
            Instant::now() < deadline,
            "no response for {id}:\n{}",
            env.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The texts posted with `chat.postMessage` into `channel`.
fn posts_in(env: &Env, channel: &str) -> Vec<String> {
    env.slack
        .calls_to("chat.postMessage")
        .into_iter()
        .filter(|c| c.arg("channel") == Some(channel))
        .map(|c| c.arg("text").unwrap_or_default().to_string())
        .collect()
}

/// Wait until `channel` has `n` posts; return them.
async fn wait_posts(env: &Env, channel: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let posts = posts_in(env, channel);
        if posts.len() >= n {
            return posts;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {} of {n} posts: {posts:#?}\n{}",
            posts.len(),
            env.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn strangers_get_one_refusal_and_nothing_runs() {
    let env = start(&[
        ("ECDYSIS_ALLOW_USERS", "slack:U1,slack:UADMIN"),
        ("ECDYSIS_ALLOW_CHANNELS", "slack:C1"),
    ])
    .await;
    // A user not on the list, twice in the allowed channel.
    slack_event(&env, "EvS1", "U2", "C1", "1700000001.000100", "hello?").await;
    let refusal = wait_posts(&env, "C1", 1).await.remove(0);
    assert!(refusal.contains("not set up to answer you"), "{refusal}");
    slack_event(
        &env,
        "EvS2",
        "U2",
        "C1",
        "1700000002.000100",
        "hello again?",
    )
    .await;
    // An allowed user in a channel not on the list.
    slack_event(&env, "EvS3", "U1", "C2", "1700000003.000100", "over here").await;
    let refusal = wait_posts(&env, "C2", 1).await.remove(0);
    assert!(refusal.contains("in this channel"), "{refusal}");
    // The allowed user in the allowed channel is answered; that answer comes after the
    // stranger's second message was turned away, and it was the first model call.
    slack_event(&env, "EvS4", "U1", "C1", "1700000004.000100", "what is it?").await;
    let posts = wait_posts(&env, "C1", 2).await;
    assert!(posts[1].contains("42"), "{posts:#?}");
    assert_eq!(
        env.llm.request_count(),
        1,
        "only the allowed message reached the model"
    );
    // A retry of the stranger's event, and another message within the hour: still one refusal.
    slack_event(&env, "EvS5", "U2", "C1", "1700000005.000100", "anyone?").await;
    slack_event(&env, "EvS6", "U1", "C1", "1700000006.000100", "and now?").await;
    let posts = wait_posts(&env, "C1", 3).await;
    assert_eq!(
        posts.iter().filter(|p| p.contains("not set up")).count(),
        1,
        "{posts:#?}"
    );
    assert_eq!(env.llm.request_count(), 2);
    let metrics = reqwest::get(format!("{}/metrics", env.server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ecdysis_events_refused_total{reason=\"user\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn dm_pairing_with_admin_approval() {
    let env = start(&[
        ("ECDYSIS_DM_POLICY", "pairing"),
        ("ECDYSIS_ADMIN_USERS", "slack:UADMIN"),
    ])
    .await;
    slack_event(&env, "EvP1", "U5", "D5", "1700000010.000100", "hi bot").await;
    let first = wait_posts(&env, "D5", 1).await.remove(0);
    let code = first
        .split('`')
        .nth(1)
        .and_then(|c| c.strip_prefix("/pair "))
        .unwrap_or_else(|| panic!("no code in {first}"))
        .to_string();
    assert_eq!(code.len(), 9, "{first}");
    // Writing again within the hour: no second code, and nothing runs.
    slack_event(&env, "EvP2", "U5", "D5", "1700000011.000100", "hello??").await;
    // A non-admin cannot approve.
    let denied = slack_command(&env, "U1", "C1", &format!("pair {code}"), "r1").await;
    assert!(
        denied["text"]
            .as_str()
            .unwrap()
            .contains("Only the bot's admins"),
        "{denied}"
    );
    // The admin lists and approves it.
    let listed = slack_command(&env, "UADMIN", "C1", "pair", "r2").await;
    assert!(listed["text"].as_str().unwrap().contains(&code), "{listed}");
    let approved = slack_command(
        &env,
        "UADMIN",
        "C1",
        &format!("pair {}", code.to_lowercase()),
        "r3",
    )
    .await;
    assert!(
        approved["text"]
            .as_str()
            .unwrap()
            .contains("Paired slack:U5"),
        "{approved}"
    );
    assert_eq!(
        env.llm.request_count(),
        0,
        "nothing of U5 ran before the approval"
    );
    // Now U5's DMs are answered.
    slack_event(&env, "EvP3", "U5", "D5", "1700000012.000100", "am I in?").await;
    let posts = wait_posts(&env, "D5", 2).await;
    assert!(posts[1].contains("42"), "{posts:#?}");
    assert_eq!(posts.len(), 2, "one code, one answer: {posts:#?}");
    assert_eq!(env.llm.request_count(), 1);
    // Approving twice changes nothing.
    let again = slack_command(&env, "UADMIN", "C1", &format!("pair {code}"), "r4").await;
    assert!(
        again["text"].as_str().unwrap().contains("already approved"),
        "{again}"
    );
}

/// Assistant messages of a web conversation.
async fn assistant_texts(server: &Server, conversation: &str) -> Vec<String> {
    server
        .messages(conversation)
        .await
        .into_iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn budget_used_up_in_one_channel_while_another_works() {
    let llm = FakeLlm::start().await.unwrap();
    llm.set_default(Reply::text("The answer is 42."));
    let dir = tempfile::tempdir().unwrap();
    let llm_url = llm.anthropic_base_url();
    // The fake reports the request's size as its usage (hundreds of tokens): one call uses up
    // a 100-token budget.
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_MODEL", "anthropic/claude-sonnet-4-5"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_BUDGET_CHANNEL_DAILY_TOKENS", "100"),
            ("ECDYSIS_TIMEZONE", "Europe/Berlin"),
        ],
    )
    .await;
    let first = server.ask("busy", "first question").await;
    assert!(first.contains("42"), "{first}");
    assert!(
        first.contains("Heads-up") && first.contains("daily"),
        "{first}"
    );
    let refused = server.ask("busy", "second question").await;
    assert!(
        refused.contains("used up the daily model budget of 100 tokens")
            && refused.contains("ECDYSIS_BUDGET_CHANNEL_DAILY_TOKENS")
            && refused.contains("resets at 00:00 Europe/Berlin"),
        "{refused}"
    );
    assert_eq!(llm.request_count(), 1, "no model call over budget");
    // Another channel has its own budget.
    let other = server.ask("quiet", "a question").await;
    assert!(other.contains("42"), "{other}");
    assert_eq!(llm.request_count(), 2);
    // Memory commands need no model and still work.
    let saved = server
        .ask("busy", "/remember budgets reset at midnight")
        .await;
    assert!(saved.contains("Remembered"), "{saved}");
    let status = server.ask("busy", "/status").await;
    assert!(
        status.contains("Budgets:")
            && status.contains("channel today")
            && status.contains("/ 100 tokens"),
        "{status}"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "ecdysis_llm_tokens_total{model=\"anthropic/claude-sonnet-4-5\",channel=\"web:local:busy\",kind=\"input\"}",
        "kind=\"cache_write\"",
        "ecdysis_llm_cost_usd_total{model=\"anthropic/claude-sonnet-4-5\",channel=\"web:local:quiet\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_flooding_user_is_cut_off_and_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
            ("ECDYSIS_RATE_USER_PER_MINUTE", "3"),
        ],
    )
    .await;
    let post = |user: &'static str, text: String| {
        let server = &server;
        async move {
            let r = server
                .post("flood", json!({"text": text, "user": user}))
                .await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let mut accepted = Vec::new();
    for n in 0..6 {
        accepted.push(post("mallory", format!("/remember flood {n}")).await);
    }
    // A burst of three went in; the rest were turned away (no event id).
    assert_eq!(
        accepted.iter().filter(|id| !id.is_empty()).count(),
        3,
        "{accepted:?}"
    );
    let alice = post("alice", "/remember still here".into()).await;
    assert!(!alice.is_empty(), "another user's bucket is her own");
    let reply = server.wait_replies_to("flood", &alice, 1).await.remove(0);
    assert!(
        reply["text"].as_str().unwrap().contains("Remembered"),
        "{reply}"
    );
    for id in accepted.iter().filter(|id| !id.is_empty()) {
        server.wait_replies_to("flood", id, 1).await;
    }
    // The notice is stored as the flood is turned away; wait for it (bounded), then count.
    let deadline = Instant::now() + WAIT;
    let mut texts = assistant_texts(&server, "flood").await;
    while !texts.iter().any(|t| t.contains("faster than I can take")) {
        assert!(Instant::now() < deadline, "no rate notice: {texts:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        texts = assistant_texts(&server, "flood").await;
    }
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("faster than I can take"))
            .count(),
        1,
        "one notice for the flood: {texts:#?}"
    );
    assert_eq!(texts.iter().filter(|t| t.contains("Remembered")).count(), 4);
}

// --- the store and budgets directly ------------------------------------------------------------

async fn sqlite_store(dir: &std::path::Path, clock: Arc<Clock>) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join("guards.db").display());
    ecdysis::storage::store::open_with_clock(&url, clock)
        .await
        .unwrap()
}

#[tokio::test]
async fn pairing_codes_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::default());
    let store = sqlite_store(dir.path(), clock.clone()).await;
    let new = |code: &str| NewPairing {
        code: code.into(),
        platform: "discord".into(),
        user_id: "42".into(),
        user_name: Some("eve".into()),
        workspace: "dm".into(),
        channel: "555".into(),
        valid_ms: 60_000,
    };
    let code = store.pairing_code(&new("AAAA-BBBB")).await.unwrap();
    // While it is valid the user keeps the same code.
    assert_eq!(
        store.pairing_code(&new("CCCC-DDDD")).await.unwrap().code,
        code.code
    );
    assert_eq!(store.pending_pairings().await.unwrap().len(), 1);
    clock.advance(61_000);
    assert!(store.pending_pairings().await.unwrap().is_empty());
    assert!(matches!(
        store
            .approve_pairing("AAAA-BBBB", "discord:1")
            .await
            .unwrap(),
        Approval::Expired(_)
    ));
    assert!(!store.is_paired("discord", "42").await.unwrap());
    // A new code after expiry, and it works.
    let fresh = store.pairing_code(&new("CCCC-DDDD")).await.unwrap();
    assert_eq!(fresh.code, "CCCC-DDDD");
    assert!(matches!(
        store
            .approve_pairing("cccc-dddd", "discord:1")
            .await
            .unwrap(),
        Approval::Approved(_)
    ));
    assert!(store.is_paired("discord", "42").await.unwrap());
    assert_eq!(
        store.approve_pairing("ZZZZ-ZZZZ", "x").await.unwrap(),
        Approval::Unknown
    );
    assert!(store.unpair("discord", "42").await.unwrap());
    assert!(!store.is_paired("discord", "42").await.unwrap());
}

#[tokio::test]
async fn budgets_count_cache_tokens_warn_once_and_scope_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path(), Arc::new(Clock::default())).await;
    let settings = BudgetSettings {
        channel_daily: Limit {
            tokens: Some(1_000),
            nanos: None,
        },
        user_daily: Limit {
            tokens: None,
            // $0.01 a day: 10,000,000 nano-USD.
            nanos: Some(10_000_000),
        },
        ..BudgetSettings::default()
    };
    let budgets = Budgets::new(settings, store.clone(), None);
    let general = ConversationRef::new("slack", "T1", "C1", None);
    let model = "anthropic/claude-sonnet-4-5".to_string();
    let call = |input, read, write| Usage {
        input_tokens: input,
        output_tokens: 0,
        cache_read_tokens: read,
        cache_write_tokens: write,
    };
    budgets.check(&general, "U1", &[]).await.unwrap();
    // 500 tokens, half of them cache reads: 50 %, no warning.
    let first = [(model.clone(), call(250, 250, 0))];
    store
        .record_turn(&general, None, "U1", &[], &first)
        .await
        .unwrap();
    assert_eq!(
        budgets
            .after_turn(&general, "U1", &first, Instant::now())
            .await,
        None
    );
    // 850 tokens (cache writes count too): 85 %, one warning.
    let second = [(model.clone(), call(100, 0, 250))];
    store
        .record_turn(&general, None, "U1", &[], &second)
        .await
        .unwrap();
    let warning = budgets
        .after_turn(&general, "U1", &second, Instant::now())
        .await
        .expect("a warning at 85 %");
    assert!(
        warning.contains("85 %") && warning.contains("850 / 1,000 tokens"),
        "{warning}"
    );
    // Pending calls of a running turn count before they are stored.
    let err = budgets
        .check(&general, "U1", &[(model.clone(), call(200, 0, 0))])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("1,000 tokens"), "{err}");
    let third = [(model.clone(), call(0, 0, 10))];
    store
        .record_turn(&general, None, "U1", &[], &third)
        .await
        .unwrap();
    assert_eq!(
        budgets
            .after_turn(&general, "U1", &third, Instant::now())
            .await,
        None,
        "the warning comes once"
    );
    // The user's USD budget: 860 tokens of Sonnet cost far less than a cent; a big call does not.
    let big = [
        (model.clone(), call(0, 0, 0)),
        (
            model.clone(),
            Usage {
                output_tokens: 700,
                ..Usage::default()
            },
        ),
    ];
    let elsewhere = ConversationRef::new("slack", "T1", "C2", None);
    store
        .record_turn(&elsewhere, None, "U1", &[], &big)
        .await
        .unwrap();
    budgets.counted(&elsewhere, "U1", &big, Instant::now());
    let err = budgets
        .check(&elsewhere, "U1", &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("You have used up the daily model budget of $0.01"),
        "{err}"
    );
    // Another user in that channel is not limited by U1's spending.
    budgets.check(&elsewhere, "U2", &[]).await.unwrap();
}

#[tokio::test]
async fn slack_429_storm_every_reply_once_after_the_wait() {
    let env = start(&[]).await;
    // The first three posts are refused with HTTP 429 and `Retry-After: 1`.
    env.slack.rate_limit_next("chat.postMessage", 3, 1);
    for n in 1..=3 {
        slack_event(
            &env,
            &format!("EvR{n}"),
            "U1",
            &format!("C{n}"),
            &format!("17000001{n}0.000100"),
            "rate me",
        )
        .await;
    }
    let deadline = Instant::now() + WAIT;
    let calls = loop {
        let calls = env.slack.calls_to("chat.postMessage");
        let delivered = calls.iter().skip(3).count();
        if delivered >= 3 {
            break calls;
        }
        assert!(
            Instant::now() < deadline,
            "{} posts: {calls:#?}\n{}",
            calls.len(),
            env.server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (refused, delivered) = calls.split_at(3);
    for n in 1..=3 {
        let channel = format!("C{n}");
        let ok: Vec<_> = delivered
            .iter()
            .filter(|c| c.arg("channel") == Some(channel.as_str()))
            .collect();
        assert_eq!(ok.len(), 1, "{channel}: {delivered:#?}");
        assert!(ok[0].arg("text").unwrap_or_default().contains("42"));
        // Tried again no sooner than Slack said.
        if let Some(first) = refused
            .iter()
            .find(|c| c.arg("channel") == Some(channel.as_str()))
        {
            assert!(
                ok[0].at.duration_since(first.at) >= Duration::from_secs(1),
                "{channel}: retried after {:?}",
                ok[0].at.duration_since(first.at)
            );
        }
    }
    // Nothing more comes later (each reply once).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.slack.calls_to("chat.postMessage").len(), 6);
}
