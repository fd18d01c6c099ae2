//! The Slack adapter end to end: a real `ecdysis serve` process, the in-process fake Slack
//! (testkit) behind `SLACK_API_URL`, the fake LLM, and requests signed like Slack signs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::server::Server;
use ecdysis::storage::store::Store;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::{FakeLlm, Reply};
use ecdysis_testkit::slack::{FakeSlack, Grant};
use serde_json::{Value, json};

const SECRET: &str = "test-signing-secret";
const BOT_TOKEN: &str = "xoxb-single-workspace";
const TEAM: &str = "T1";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    slack: FakeSlack,
    llm: FakeLlm,
    server: Server,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[(&str, &str)]) -> Env {
    let slack = FakeSlack::start().await.unwrap();
    let llm = FakeLlm::start().await.unwrap();
    llm.set_default(Reply::text("**The answer** is 42."));
    let dir = tempfile::tempdir().unwrap();
    let api = slack.api_url();
    let llm_url = llm.anthropic_base_url();
    let mut env: Vec<(&str, &str)> = vec![
        ("SLACK_SIGNING_SECRET", SECRET),
        ("SLACK_BOT_TOKEN", BOT_TOKEN),
        ("SLACK_API_URL", &api),
        // These tests check the final message; live replies have tests/streaming_e2e.rs.
        ("ECDYSIS_SLACK_STREAMING", "off"),
        ("ECDYSIS_MODEL", "anthropic/claude-test"),
        ("ANTHROPIC_API_KEY", "test-key"),
        ("ANTHROPIC_BASE_URL", &llm_url),
        ("ECDYSIS_SANDBOX", "off"),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
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

/// A request signed with `secret` at `ts`.
async fn post_signed(
    base: &str,
    path: &str,
    body: &str,
    content_type: &str,
    secret: &str,
    ts: i64,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(secret, ts, body.as_bytes()))
        .body(body.to_string());
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

async fn post_event(env: &Env, body: &Value) -> reqwest::Response {
    post_event_with(env, body, &[]).await
}

async fn post_event_with(env: &Env, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
    post_signed(
        &env.server.base,
        "/slack/events",
        &body.to_string(),
        "application/json",
        SECRET,
        now(),
        extra,
    )
    .await
}

fn callback(team: &str, event_id: &str, event: Value) -> Value {
    json!({
        "token": "verification-token",
        "team_id": team,
        "api_app_id": "AFAKE",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now(),
        "authorizations": [{"team_id": team, "user_id": "UBOT", "is_bot": true, "is_enterprise_install": false}],
        "event": event,
    })
}

/// A message from U1 in the DM D1.
fn dm(ts: &str, text: &str) -> Value {
    json!({
        "type": "message", "channel_type": "im", "user": "U1", "text": text,
        "ts": ts, "channel": "D1",
    })
}

fn mention(channel: &str, ts: &str, text: &str) -> Value {
    json!({
        "type": "app_mention",
        "user": "U1",
        "text": format!("<@UBOT> {text}"),
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    })
}

async fn post_command(
    env: &Env,
    command: &str,
    text: &str,
    response_id: &str,
) -> reqwest::Response {
    let response_url = env.slack.response_url(response_id);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "verification-token")
        .append_pair("team_id", TEAM)
        .append_pair("team_domain", "fake")
        .append_pair("channel_id", "C9")
        .append_pair("channel_name", "general")
        .append_pair("user_id", "U1")
        .append_pair("user_name", "ann")
        .append_pair("command", command)
        .append_pair("text", text)
        .append_pair("api_app_id", "AFAKE")
        .append_pair("response_url", &response_url)
        .append_pair("trigger_id", &format!("trigger-{response_id}"))
        .finish();
    post_signed(
        &env.server.base,
        "/slack/commands",
        &body,
        "application/x-www-form-urlencoded",
        SECRET,
        now(),
        &[],
    )
    .await
}

/// The response_url post for one command.
async fn command_response(env: &Env, response_id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(call) = env
            .slack
            .calls_to("response_url")
            .into_iter()
            .find(|c| c.args["response_id"] == response_id)
        {
            return call.args;
        }
        assert!(
            Instant::now() < deadline,
            "no response for {response_id}:\n{}",
            env.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Open the server's SQLite database from the test (WAL: reading beside it is fine).
/// The server's SQLite database.
fn database_url(env: &Env) -> String {
    let path = env.server.data_dir.join("data").join("ecdysis.db");
    format!("sqlite://{}", path.display())
}

async fn open_store(env: &Env) -> std::sync::Arc<dyn Store> {
    ecdysis::storage::store::open(&database_url(env))
        .await
        .unwrap()
}

/// Let a wrongly accepted event run, so "nothing happened" means something.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let env = start(&[]).await;
    let body = callback(TEAM, "EvBad", mention("C1", "1.0", "hello")).to_string();
    let base = &env.server.base;
    for path in ["/slack/events", "/slack/commands", "/slack/interactivity"] {
        // Wrong secret.
        let r = post_signed(base, path, &body, "application/json", "wrong", now(), &[]).await;
        assert_eq!(r.status(), 401, "{path}: wrong secret");
        // Stale timestamp (signed correctly, 6 minutes old).
        let r = post_signed(
            base,
            path,
            &body,
            "application/json",
            SECRET,
            now() - 360,
            &[],
        )
        .await;
        assert_eq!(r.status(), 401, "{path}: stale");
        // Missing headers.
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}: unsigned");
    }
    // A body changed after signing.
    let ts = now();
    let r = reqwest::Client::new()
        .post(format!("{base}/slack/events"))
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
        .body(body.replace("hello", "HELLO"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // url_verification is answered with the challenge.
    let r = post_event(
        &env,
        &json!({"type": "url_verification", "token": "t", "challenge": "ch-123"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["challenge"], "ch-123");

    // A malformed body (signed) is a 400.
    let r = post_signed(
        base,
        "/slack/events",
        "{not json",
        "application/json",
        SECRET,
        now(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 400);

    settle().await;
    let counts = open_store(&env).await.inbox_counts().await.unwrap();
    assert_eq!(
        counts,
        ecdysis::storage::store::InboxCounts::default(),
        "nothing was stored"
    );
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
    assert_eq!(env.llm.request_count(), 0);
}

#[tokio::test]
async fn channel_mention_is_answered_once_in_its_thread() {
    let env = start(&[]).await;
    let r = post_event(
        &env,
        &callback(
            TEAM,
            "EvM1",
            mention("C1", "1700000001.000100", "what is it?"),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let posts = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1, "{}", env.server.log());
    let post = &posts[0];
    assert_eq!(post.arg("channel"), Some("C1"));
    assert_eq!(
        post.arg("thread_ts"),
        Some("1700000001.000100"),
        "the reply starts a thread under the mention"
    );
    assert_eq!(
        post.arg("text"),
        Some("*The answer* is 42."),
        "Markdown became mrkdwn"
    );
    assert_eq!(post.bearer(), Some(BOT_TOKEN));
    assert_eq!(post.args["metadata"]["event_type"], "ecdysis_reply");
    assert!(post.args["metadata"]["event_payload"]["key"].is_string());
    // The model saw the text without the bot's mention.
    assert!(
        env.llm
            .last_request()
            .unwrap()
            .last_message_text()
            .contains("what is it?")
    );
    // 👀 on the triggering message while the agent worked.
    let reactions = env.slack.calls_to("reactions.add");
    assert_eq!(reactions.len(), 1);
    assert_eq!(reactions[0].arg("name"), Some("eyes"));
    assert_eq!(reactions[0].arg("timestamp"), Some("1700000001.000100"));

    // A reply in that thread, without a mention, is answered too (the bot takes part there).
    let reply = json!({
        "type": "message", "channel_type": "channel", "user": "U1", "text": "and why?",
        "ts": "1700000002.000100", "thread_ts": "1700000001.000100", "channel": "C1",
    });
    assert_eq!(
        post_event(&env, &callback(TEAM, "EvM2", reply))
            .await
            .status(),
        200
    );
    let posts = env.slack.wait_calls("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1].arg("thread_ts"), Some("1700000001.000100"));

    // /readyz reports the adapter.
    let ready: Value = reqwest::get(format!("{}/readyz", env.server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["adapters"]["slack"]["mode"], "events_api");
    assert!(
        ready["adapters"]["slack"]["last_event_at"].is_string(),
        "{ready}"
    );

    settle().await;
    assert_eq!(
        env.slack.calls_to("chat.postMessage").len(),
        2,
        "exactly one reply each"
    );
}

#[tokio::test]
async fn dm_is_answered_in_the_dm() {
    let env = start(&[]).await;
    let dm = dm("1700000010.000100", "hi there");
    assert_eq!(
        post_event(&env, &callback(TEAM, "EvDM", dm)).await.status(),
        200
    );
    let posts = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1, "{}", env.server.log());
    assert_eq!(posts[0].arg("channel"), Some("D1"));
    assert_eq!(
        posts[0].arg("thread_ts"),
        None,
        "a DM is answered in the DM itself"
    );
}

#[tokio::test]
async fn a_reply_that_keeps_failing_is_given_up_after_the_set_attempts() {
    let env = start(&[("ECDYSIS_BUS_MAX_DELIVERY_ATTEMPTS", "2")]).await;
    env.slack
        .fail_next("chat.postMessage", 100, "internal_error");
    let dm = dm("1700000011.000100", "hi there");
    assert_eq!(
        post_event(&env, &callback(TEAM, "EvGiveUp", dm))
            .await
            .status(),
        200
    );
    let posts = env.slack.wait_calls("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts.len(), 2, "{}", env.server.log());
    // The reply is recorded as failed (for good: a failed row is never claimed again); with
    // the default of 8 attempts it would be pending a third one instead. The store has no
    // reader for outbox rows, so the table is read directly.
    let db = sqlx::SqlitePool::connect(&database_url(&env))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'failed'")
            .fetch_one(&db)
            .await
            .unwrap();
        if failed == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", env.server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.slack.calls_to("chat.postMessage").len(), 2);
}

#[tokio::test]
async fn ambient_bot_and_edited_messages_are_not_answered() {
    let env = start(&[]).await;
    let events = [
        json!({"type": "message", "channel_type": "channel", "user": "U1", "text": "lunch?",
               "ts": "1700000020.000100", "channel": "C1"}),
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B2", "text": "beep",
               "ts": "1700000021.000100", "channel": "C1"}),
        json!({"type": "message", "user": "U2", "bot_id": "B3", "text": "i am a bot", "channel_type": "im",
               "ts": "1700000022.000100", "channel": "D1"}),
        json!({"type": "message", "user": "UBOT", "text": "my own words", "channel_type": "im",
               "ts": "1700000023.000100", "channel": "D1"}),
        json!({"type": "message", "subtype": "message_changed", "channel": "D1", "channel_type": "im",
               "ts": "1700000024.000100", "message": {"user": "U1", "text": "edited", "ts": "1.0"}}),
        json!({"type": "message", "subtype": "message_deleted", "channel": "D1", "channel_type": "im",
               "ts": "1700000025.000100", "deleted_ts": "1.0"}),
    ];
    for (i, event) in events.into_iter().enumerate() {
        let r = post_event(&env, &callback(TEAM, &format!("EvQ{i}"), event)).await;
        assert_eq!(r.status(), 200, "acknowledged all the same");
    }
    settle().await;
    assert!(
        env.slack.calls_to("chat.postMessage").is_empty(),
        "{:?}",
        env.slack.calls()
    );
    assert_eq!(env.llm.request_count(), 0);
}

#[tokio::test]
async fn retried_event_is_answered_once() {
    let env = start(&[]).await;
    let body = callback(
        TEAM,
        "EvRetry",
        mention("C2", "1700000030.000100", "once please"),
    );
    assert_eq!(post_event(&env, &body).await.status(), 200);
    assert_eq!(
        post_event_with(
            &env,
            &body,
            &[
                ("x-slack-retry-num", "1"),
                ("x-slack-retry-reason", "http_timeout")
            ]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        post_event_with(
            &env,
            &body,
            &[
                ("x-slack-retry-num", "2"),
                ("x-slack-retry-reason", "http_timeout")
            ]
        )
        .await
        .status(),
        200
    );
    let posts = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1);
    settle().await;
    assert_eq!(
        env.slack.calls_to("chat.postMessage").len(),
        1,
        "one reply for three deliveries"
    );
    assert_eq!(env.llm.request_count(), 1);
}

#[tokio::test]
async fn slash_commands_remember_recall_and_help() {
    let env = start(&[]).await;
    let r = post_command(
        &env,
        "/ecdysis",
        "remember the deploy key lives in vault",
        "r1",
    )
    .await;
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["response_type"], "ephemeral");
    let remembered = command_response(&env, "r1").await;
    assert!(
        remembered["text"].as_str().unwrap().contains("Remembered"),
        "{remembered}"
    );
    assert_eq!(remembered["response_type"], "in_channel");

    let r = post_command(&env, "/ecdysis", "recall deploy", "r2").await;
    assert_eq!(r.status(), 200);
    let recalled = command_response(&env, "r2").await;
    assert!(
        recalled["text"]
            .as_str()
            .unwrap()
            .contains("the deploy key lives in vault"),
        "{recalled}"
    );

    // The native command maps to the same handler.
    let r = post_command(&env, "/recall", "vault", "r3").await;
    assert_eq!(r.status(), 200);
    assert!(
        command_response(&env, "r3").await["text"]
            .as_str()
            .unwrap()
            .contains("deploy key")
    );

    // An unknown subcommand gets the help text.
    let r = post_command(&env, "/ecdysis", "frobnicate now", "r4").await;
    assert_eq!(r.status(), 200);
    let help = command_response(&env, "r4").await["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        help.contains("remember") && help.contains("recall"),
        "{help}"
    );

    assert_eq!(env.llm.request_count(), 0, "commands need no model");
    assert!(
        env.slack.calls_to("chat.postMessage").is_empty(),
        "answers went to response_url"
    );
}

#[tokio::test]
async fn oauth_install_stores_the_team_and_uses_its_token() {
    let env = start(&[
        ("SLACK_CLIENT_ID", "111.222"),
        ("SLACK_CLIENT_SECRET", "client-secret"),
        ("ECDYSIS_SECRET_KEY", "a test key for sealing tokens"),
    ])
    .await;
    assert!(
        env.server
            .log()
            .contains("ECDYSIS_SLACK_ALLOWED_TEAMS is empty: any Slack workspace may install"),
        "start-up warns that any workspace may install"
    );
    let team2_token = "xoxb-team-two-token";
    env.slack.add_grant(
        "code-good",
        Grant {
            team_id: "T2".into(),
            team_name: "Team Two".into(),
            bot_user_id: "UBOT2".into(),
            bot_token: team2_token.into(),
        },
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &env.server.base;
    let install = |client: reqwest::Client| async move {
        let r = client
            .get(format!("{base}/slack/install"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let query: std::collections::HashMap<String, String> =
            location.query_pairs().into_owned().collect();
        assert_eq!(location.path(), "/oauth/v2/authorize");
        assert_eq!(query["client_id"], "111.222");
        assert!(
            query["scope"].contains("chat:write") && query["scope"].contains("app_mentions:read")
        );
        let state = query["state"].clone();
        assert!(state.len() >= 32);
        assert!(cookie.contains(&state) && cookie.contains("HttpOnly"));
        (state, cookie.split(';').next().unwrap().to_string())
    };
    let callback_url =
        |state: &str, code: &str| format!("{base}/slack/oauth/callback?code={code}&state={state}");
    let store = open_store(&env).await;

    // A wrong state.
    let (state, cookie) = install(client.clone()).await;
    let r = client
        .get(callback_url("not-the-state", "code-good"))
        .header("cookie", "ecdysis_slack_state=not-the-state")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The right state from another browser (no cookie).
    let r = client
        .get(callback_url(&state, "code-good"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An expired state.
    store
        .put_oauth_state(
            "expired-state",
            ecdysis::storage::store::UnixMs::now().plus(-1),
        )
        .await
        .unwrap();
    let r = client
        .get(callback_url("expired-state", "code-good"))
        .header("cookie", "ecdysis_slack_state=expired-state")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        env.slack.calls_to("oauth.v2.access").is_empty(),
        "no code was traded"
    );
    assert!(store.installation("slack", "T2").await.unwrap().is_none());

    // The good one.
    let r = client
        .get(callback_url(&state, "code-good"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", env.server.log());
    assert!(r.text().await.unwrap().contains("Team Two"));
    let access = env.slack.calls_to("oauth.v2.access");
    assert_eq!(access.len(), 1);
    let basic = base64::engine::general_purpose::STANDARD.encode("111.222:client-secret");
    assert_eq!(
        access[0].authorization.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    let stored = store.installation("slack", "T2").await.unwrap().unwrap();
    assert_eq!(stored.bot_user_id, "UBOT2");
    assert!(
        !stored.token_ciphertext.contains(team2_token),
        "the token is encrypted at rest"
    );
    assert!(
        !env.server.log().contains(team2_token),
        "the token is not logged"
    );

    // Reusing the state fails and changes nothing.
    let r = client
        .get(callback_url(&state, "code-good"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(env.slack.calls_to("oauth.v2.access").len(), 1);

    // Team two's events are answered with team two's token; team one's with the configured one.
    let mut event = callback(
        "T2",
        "EvT2",
        mention("C7", "1700000040.000100", "hello from two"),
    );
    event["authorizations"][0]["user_id"] = json!("UBOT2");
    event["event"]["text"] = json!("<@UBOT2> hello from two");
    assert_eq!(post_event(&env, &event).await.status(), 200);
    let posts = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1, "{}", env.server.log());
    assert_eq!(posts[0].bearer(), Some(team2_token));
    assert_eq!(posts[0].arg("channel"), Some("C7"));
    assert!(
        env.llm
            .last_request()
            .unwrap()
            .last_message_text()
            .contains("hello from two")
    );
    assert!(
        !env.llm
            .last_request()
            .unwrap()
            .last_message_text()
            .contains("UBOT2")
    );
    assert_eq!(
        post_event(
            &env,
            &callback(TEAM, "EvT1", mention("C1", "1700000041.000100", "hi"))
        )
        .await
        .status(),
        200
    );
    let posts = env.slack.wait_calls("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts[1].bearer(), Some(BOT_TOKEN));

    // Uninstalling removes the installation.
    let uninstalled = callback("T2", "EvUninstall", json!({"type": "app_uninstalled"}));
    assert_eq!(post_event(&env, &uninstalled).await.status(), 200);
    assert!(store.installation("slack", "T2").await.unwrap().is_none());
}

#[tokio::test]
async fn socket_mode_events_are_acknowledged_answered_and_survive_a_disconnect() {
    let slack = FakeSlack::start().await.unwrap();
    let llm = FakeLlm::start().await.unwrap();
    llm.set_default(Reply::text("over the socket"));
    let dir = tempfile::tempdir().unwrap();
    let api = slack.api_url();
    let llm_url = llm.anthropic_base_url();
    let server = Server::start(
        dir.path(),
        &[
            ("SLACK_APP_TOKEN", "xapp-1-test"),
            ("SLACK_BOT_TOKEN", BOT_TOKEN),
            ("SLACK_API_URL", &api),
            ("ECDYSIS_SLACK_STREAMING", "off"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", "/nonexistent/chromium"),
        ],
    )
    .await;
    assert!(
        slack.wait_socket_connections(1, WAIT).await,
        "{}",
        server.log()
    );
    let open = slack.calls_to("apps.connections.open");
    assert_eq!(
        open[0].bearer(),
        Some("xapp-1-test"),
        "the app token opens the socket"
    );

    let envelope = slack
        .send_envelope(
            "events_api",
            callback(
                TEAM,
                "EvS1",
                mention("C3", "1700000050.000100", "via socket"),
            ),
        )
        .unwrap();
    assert!(
        slack.wait_ack(&envelope, WAIT).await.is_some(),
        "acknowledged:\n{}",
        server.log()
    );
    let posts = slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts.len(), 1, "{}", server.log());
    assert_eq!(posts[0].arg("thread_ts"), Some("1700000050.000100"));
    assert_eq!(posts[0].arg("text"), Some("over the socket"));

    let ready: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["adapters"]["slack"]["socket"], "connected", "{ready}");
    assert!(
        ready["adapters"]["slack"]["last_envelope_at"].is_string(),
        "{ready}"
    );

    // A slash command over the socket: acknowledged with the "working" payload.
    let command = slack
        .send_envelope(
            "slash_commands",
            json!({
                "team_id": TEAM, "channel_id": "C3", "user_id": "U1", "command": "/ecdysis",
                "text": "remember sockets work", "response_url": slack.response_url("sock1"),
                "trigger_id": "trigger-sock1",
            }),
        )
        .unwrap();
    let ack = slack.wait_ack(&command, WAIT).await.unwrap();
    assert_eq!(ack["payload"]["response_type"], "ephemeral");
    let responses = slack.wait_calls("response_url", 1, WAIT).await;
    assert!(
        responses[0].args["text"]
            .as_str()
            .unwrap()
            .contains("Remembered")
    );

    // The connection drops; the adapter reconnects and answers the next event.
    slack.drop_socket();
    assert!(
        slack.wait_socket_connections(2, WAIT).await,
        "reconnected:\n{}",
        server.log()
    );
    let mut envelope = None;
    let deadline = Instant::now() + WAIT;
    while envelope.is_none() && Instant::now() < deadline {
        envelope = slack.send_envelope(
            "events_api",
            callback(
                TEAM,
                "EvS2",
                mention("C3", "1700000051.000100", "after the drop"),
            ),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slack.wait_ack(&envelope.unwrap(), WAIT).await.is_some());
    let posts = slack.wait_calls("chat.postMessage", 2, WAIT).await;
    assert_eq!(posts.len(), 2, "{}", server.log());
    assert_eq!(posts[1].arg("thread_ts"), Some("1700000051.000100"));
}

#[tokio::test]
async fn manifest_and_doctor() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["slack", "manifest", "--url", "https://bot.example.com"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        manifest["settings"]["event_subscriptions"]["request_url"],
        "https://bot.example.com/slack/events"
    );
    assert_eq!(
        manifest["settings"]["interactivity"]["request_url"],
        "https://bot.example.com/slack/interactivity"
    );
    assert_eq!(
        manifest["oauth_config"]["redirect_urls"][0],
        "https://bot.example.com/slack/oauth/callback"
    );
    assert_eq!(
        manifest["features"]["slash_commands"][0]["command"],
        "/ecdysis"
    );
    assert!(
        manifest["settings"]["event_subscriptions"]["bot_events"]
            .as_array()
            .unwrap()
            .contains(&json!("app_mention"))
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["slack", "manifest", "--url", "not a url"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let slack = FakeSlack::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doctor = |token: &'static str| {
        let api = slack.api_url();
        let data = dir.path().join("data");
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_ecdysis"))
                    .arg("doctor")
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("ECDYSIS_DATA_DIR", data)
                    .env("ECDYSIS_SANDBOX", "off")
                    .env("SLACK_BOT_TOKEN", token)
                    .env("SLACK_API_URL", api)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = doctor(BOT_TOKEN).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("slack"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("ok") && line.contains("Fake Team"),
        "{text}"
    );
    assert_eq!(slack.calls_to("auth.test")[0].bearer(), Some(BOT_TOKEN));
    slack.accept_tokens(&["xoxb-other"]);
    let out = doctor(BOT_TOKEN).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("slack"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with("FAIL") && line.contains("invalid_auth"),
        "{text}"
    );
    assert!(!out.status.success());
}

/// Events stored in the inbox, whatever their state.
async fn events_stored(store: &dyn Store) -> i64 {
    let c = store.inbox_counts().await.unwrap();
    c.pending + c.leased + c.done + c.failed
}

#[tokio::test]
async fn only_allowed_workspaces_install_and_are_answered() {
    let env = start(&[
        ("SLACK_CLIENT_ID", "111.222"),
        ("SLACK_CLIENT_SECRET", "client-secret"),
        ("ECDYSIS_SECRET_KEY", "a test key for sealing tokens"),
        ("ECDYSIS_SLACK_ALLOWED_TEAMS", "T1, T2"),
        // Socket Mode too, beside the HTTP routes.
        ("SLACK_APP_TOKEN", "xapp-1-test"),
    ])
    .await;
    assert!(env.slack.wait_socket_connections(1, WAIT).await);
    assert!(
        !env.server.log().contains("any Slack workspace may install"),
        "no warning when the list is set"
    );
    let stranger_token = "xoxb-stranger-team-token";
    for (code, team, token) in [
        ("code-stranger", "T9", stranger_token),
        ("code-listed", "T2", "xoxb-team-two-token"),
    ] {
        env.slack.add_grant(
            code,
            Grant {
                team_id: team.into(),
                team_name: format!("Team {team}"),
                bot_user_id: format!("UBOT{team}"),
                bot_token: token.into(),
            },
        );
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &env.server.base;
    let install_with = |code: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("{base}/slack/install"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 302);
            let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
            let query: std::collections::HashMap<String, String> =
                location.query_pairs().into_owned().collect();
            assert!(!query.contains_key("team"), "two teams: none preselected");
            let cookie = r.headers()["set-cookie"].to_str().unwrap();
            let cookie = cookie.split(';').next().unwrap().to_string();
            client
                .get(format!(
                    "{base}/slack/oauth/callback?code={code}&state={}",
                    query["state"]
                ))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let store = open_store(&env).await;

    // A workspace not on the list: a clear page, nothing stored, the token not logged.
    let r = install_with("code-stranger").await;
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("may not install") && page.contains("Team T9 (T9)"),
        "{page}"
    );
    assert!(!page.contains(stranger_token));
    assert_eq!(env.slack.calls_to("oauth.v2.access").len(), 1);
    assert!(store.installation("slack", "T9").await.unwrap().is_none());
    assert!(!env.server.log().contains(stranger_token));
    assert!(
        env.server.log().contains(
            "refused a Slack install from a workspace not in ECDYSIS_SLACK_ALLOWED_TEAMS"
        ),
        "{}",
        env.server.log()
    );

    // A listed one installs.
    let r = install_with("code-listed").await;
    assert_eq!(r.status(), 200, "{}", env.server.log());
    assert!(store.installation("slack", "T2").await.unwrap().is_some());

    // The stranger's events, slash commands and button presses (over HTTP and Socket Mode) are
    // acknowledged and ignored.
    let before = events_stored(store.as_ref()).await;
    let event = callback(
        "T9",
        "EvStranger",
        mention("C9", "1700000050.000100", "spend your model key"),
    );
    assert_eq!(post_event(&env, &event).await.status(), 200);
    let command = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("team_id", "T9")
        .append_pair("channel_id", "C9")
        .append_pair("user_id", "U9")
        .append_pair("command", "/ecdysis")
        .append_pair("text", "ask something")
        .append_pair("response_url", &env.slack.response_url("stranger"))
        .append_pair("trigger_id", "trigger-stranger")
        .finish();
    let r = post_signed(
        base,
        "/slack/commands",
        &command,
        "application/x-www-form-urlencoded",
        SECRET,
        now(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["response_type"], "ephemeral");
    assert!(
        ack["text"].as_str().unwrap().contains("not allowed"),
        "{ack}"
    );
    let press = json!({
        "type": "block_actions",
        "team": {"id": "T9"},
        "user": {"id": "U9", "team_id": "T9"},
        "channel": {"id": "C9"},
        "container": {"type": "message", "channel_id": "C9", "message_ts": "1700000050.000200"},
        "message": {"ts": "1700000050.000200"},
        "actions": [{"action_id": "approval:approve", "value": "x", "type": "button"}],
        "trigger_id": "t",
        "response_url": env.slack.response_url("press"),
    });
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &press.to_string())
        .finish();
    let r = post_signed(
        base,
        "/slack/interactivity",
        &form,
        "application/x-www-form-urlencoded",
        SECRET,
        now(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    // The same over Socket Mode: acknowledged, and the command told why.
    let envelope = env
        .slack
        .send_envelope(
            "events_api",
            callback(
                "T9",
                "EvStrangerSocket",
                mention("C9", "1700000050.000300", "hi"),
            ),
        )
        .unwrap();
    assert!(env.slack.wait_ack(&envelope, WAIT).await.is_some());
    let envelope = env
        .slack
        .send_envelope(
            "slash_commands",
            json!({
                "team_id": "T9", "channel_id": "C9", "user_id": "U9", "command": "/ecdysis",
                "text": "ask something", "response_url": env.slack.response_url("sock9"),
                "trigger_id": "trigger-sock9",
            }),
        )
        .unwrap();
    let ack = env.slack.wait_ack(&envelope, WAIT).await.unwrap();
    assert!(
        ack["payload"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("not allowed"),
        "{ack}"
    );
    settle().await;
    assert_eq!(
        events_stored(store.as_ref()).await,
        before,
        "nothing was stored"
    );
    assert_eq!(env.llm.request_count(), 0, "the model was not called");
    assert!(env.slack.calls_to("chat.postMessage").is_empty());
    assert!(env.slack.calls_to("response_url").is_empty());

    // A listed workspace is answered as usual.
    let event = callback("T1", "EvListed", mention("C1", "1700000051.000100", "hi"));
    assert_eq!(post_event(&env, &event).await.status(), 200);
    let posts = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    assert_eq!(posts[0].bearer(), Some(BOT_TOKEN));
    assert_eq!(env.llm.request_count(), 1);
}

/// `/ecdysis remind …` reads clock times in the user's Slack time zone (`users.info`), names
/// the instant in it, and posts the reminder into the channel with `chat.postMessage` when it
/// is due (the command's `response_url` is for the confirmation only).
#[tokio::test]
async fn remind_uses_the_users_time_zone_and_posts_into_the_channel() {
    let env = start(&[]).await;
    env.slack.set_user_timezone("U1", "America/New_York");
    let sent = Instant::now();
    let r = post_command(&env, "/ecdysis", "remind in 2 seconds stand-up", "s1").await;
    assert_eq!(r.status(), 200);
    let confirmation = command_response(&env, "s1").await["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        confirmation.contains("(America/New_York)")
            && (confirmation.contains(" EST") || confirmation.contains(" EDT")),
        "{confirmation}"
    );
    assert_eq!(env.slack.calls_to("users.info").len(), 1);
    let posted = env.slack.wait_calls("chat.postMessage", 1, WAIT).await;
    let reminder = &posted[0];
    assert_eq!(reminder.arg("channel"), Some("C9"));
    assert!(
        reminder
            .arg("text")
            .unwrap_or_default()
            .contains("stand-up"),
        "{:?}",
        reminder.args
    );
    let after = reminder.at.duration_since(sent);
    assert!(
        after >= Duration::from_secs(2) && after <= Duration::from_millis(3_500),
        "posted {after:?} after the command"
    );
    assert_eq!(
        env.slack.calls_to("response_url").len(),
        1,
        "the reminder did not go through the expired response_url"
    );
    // The time zone is cached: a second command asks Slack no more.
    post_command(&env, "/ecdysis", "remind tomorrow at 9:00 coffee", "s2").await;
    let second = command_response(&env, "s2").await["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(second.contains("09:00 E"), "{second}");
    assert_eq!(env.slack.calls_to("users.info").len(), 1);
}
