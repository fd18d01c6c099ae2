//! The interactive browser and web search end to end: the fake LLM (testkit) drives the real
//! agent, tools, Chromium and ffmpeg on a site this test serves on 127.0.0.1 (allowed through
//! `ECDYSIS_BROWSER_ALLOW`). The scripted model reads each tool result it gets (the snapshot's
//! `[n]` references) before choosing its next call, like a real model; the assertions are on
//! what the tools returned to it, which the fake records.
//!
//! Also: a fake Brave and a fake SearXNG for `web_search` (and providers answering 429/500),
//! and the Moltworker demo through a real `serve` and the fake Slack: "find me a route … and
//! show me" ends with the PNG in the same thread.
//!
//! In CI (env `CI` set) a missing Chromium or ffmpeg fails the tests; on a laptop they skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ecdysis::bus::Workers;
use ecdysis::config::{BrowserSettings, Config};
use ecdysis::engine::tools::{ToolContext, ToolError};
use ecdysis::server::app::App;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply, UserRef,
};
use ecdysis_testkit::llm::{FakeLlm, Recorded, Reply as Llm};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

// --- what the machine has ---------------------------------------------------------------------

fn chromium() -> Option<PathBuf> {
    let path = ecdysis::browser::find_chromium(&BrowserSettings {
        chromium: std::env::var_os("ECDYSIS_CHROMIUM").map(PathBuf::from),
        ..BrowserSettings::default()
    });
    let found = ecdysis_testkit::prerequisite::prerequisite(
        path.is_some(),
        "Chromium",
        "apt-get install chromium, or set ECDYSIS_CHROMIUM",
    );
    path.filter(|_| found)
}

fn ffmpeg() -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("-version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    ecdysis_testkit::prerequisite::prerequisite(
        ok("ffmpeg") && ok("ffprobe"),
        "ffmpeg and ffprobe",
        "apt-get install ffmpeg",
    )
}

// --- the local site ---------------------------------------------------------------------------

/// A form post: (path, fields).
type Post = (String, HashMap<String, String>);

#[derive(Clone, Default)]
struct SiteState {
    /// Every form post: (path, fields).
    posts: Arc<Mutex<Vec<Post>>>,
    /// The order being filled, by session cookie.
    orders: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
    /// Where `/go-elsewhere` redirects.
    elsewhere: Arc<Mutex<String>>,
}

struct Site {
    addr: SocketAddr,
    state: SiteState,
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.state.posts.lock().unwrap().clone()
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><title>{title}</title><style>body {{ font: 16px sans-serif; margin: 20px; }}</style></head><body>{body}</body></html>"
    ))
}

fn user(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::COOKIE)?
        .to_str()
        .ok()?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("session=").map(str::to_string))
}

fn record(state: &SiteState, path: &str, form: &HashMap<String, String>) {
    state
        .posts
        .lock()
        .unwrap()
        .push((path.to_string(), form.clone()));
}

const LOGIN: &str = r#"<h1>Sign in</h1>
<form method="post" action="/login">
  <label for="u">Username</label> <input id="u" name="username" autocomplete="username">
  <label for="p">Password</label> <input id="p" name="password" type="password">
  <button type="submit">Sign in</button>
</form>
<p>Forgot your password? <a href="/help">Get help</a></p>"#;

const MAP: &str = r#"<!doctype html><html><head><title>Maps</title><style>
body { margin: 0; font: 16px sans-serif; } #panel { padding: 12px; background: #eef; }
#map { position: relative; height: 600px; background: #dfe8d0; }
.road { position: absolute; background: #fff; } #route { position: absolute; display: none; background: #1a73e8; }
</style></head><body><div id="panel"><h1>Maps</h1>
<input id="from" aria-label="Start"> <input id="to" aria-label="Destination">
<button id="go">Directions</button> <span id="summary"></span></div>
<div id="map"><div class="road" style="left:100px;top:100px;width:900px;height:14px"></div>
<div class="road" style="left:500px;top:100px;width:14px;height:400px"></div>
<div id="route" style="left:100px;top:100px;width:414px;height:14px"></div></div>
<script>
document.getElementById('go').addEventListener('click', () => {
  const from = document.getElementById('from').value, to = document.getElementById('to').value;
  fetch(`/api/route?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`)
    .then((r) => r.json())
    .then((route) => {
      document.getElementById('route').style.display = 'block';
      document.getElementById('summary').textContent = route.summary;
    });
});
</script></body></html>"#;

async fn serve_site() -> Site {
    let state = SiteState::default();
    let router = Router::new()
        .route("/login", get(|| async { page("Sign in", LOGIN) }))
        .route(
            "/login",
            post(
                |State(s): State<SiteState>, Form(form): Form<HashMap<String, String>>| async move {
                    record(&s, "/login", &form);
                    let ok = form.get("username").map(String::as_str) == Some("ann")
                        && form.get("password").map(String::as_str) == Some("hunter2");
                    if !ok {
                        return page("Sign in", &format!("<p>Wrong username or password.</p>{LOGIN}"))
                            .into_response();
                    }
                    (
                        [(header::SET_COOKIE, "session=ann; Path=/; HttpOnly")],
                        Redirect::to("/account"),
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/account",
            get(|headers: HeaderMap| async move {
                match user(&headers) {
                    Some(name) => page(
                        "Account",
                        &format!("<h1>Your account</h1><p>Signed in as {name}.</p><nav><a href=\"/order/1\">New order</a> <a href=\"/go-elsewhere\">Partner offers</a></nav>"),
                    ),
                    None => page("Account", "<h1>Your account</h1><p>Not signed in.</p><a href=\"/login\">Sign in</a>"),
                }
            }),
        )
        .route(
            "/order/1",
            get(|| async {
                page(
                    "Order · step 1 of 2",
                    r#"<h1>New order</h1><h2>Step 1 of 2</h2><form method="post" action="/order/1">
<label>Size <select name="size"><option value="s">Small</option><option value="m">Medium</option><option value="l">Large</option></select></label>
<label>Name on the order <input name="name"></label>
<button>Next</button></form>"#,
                )
            })
            .post(
                |State(s): State<SiteState>,
                 headers: HeaderMap,
                 Form(form): Form<HashMap<String, String>>| async move {
                    record(&s, "/order/1", &form);
                    let Some(who) = user(&headers) else {
                        return Redirect::to("/login").into_response();
                    };
                    s.orders.lock().unwrap().insert(who, form);
                    Redirect::to("/order/2").into_response()
                },
            ),
        )
        .route(
            "/order/2",
            get(|| async {
                page(
                    "Order · step 2 of 2",
                    r#"<h1>New order</h1><h2>Step 2 of 2</h2><form method="post" action="/order/2">
<label>Delivery address <input name="address"></label>
<label><input type="checkbox" name="gift"> Gift wrap</label>
<button>Place order</button></form>"#,
                )
            })
            .post(
                |State(s): State<SiteState>,
                 headers: HeaderMap,
                 Form(form): Form<HashMap<String, String>>| async move {
                    record(&s, "/order/2", &form);
                    let who = user(&headers).unwrap_or_default();
                    let first = s.orders.lock().unwrap().get(&who).cloned().unwrap_or_default();
                    let size = match first.get("size").map(String::as_str) {
                        Some("l") => "Large",
                        Some("m") => "Medium",
                        Some("s") => "Small",
                        _ => "?",
                    };
                    page(
                        "Order confirmed",
                        &format!(
                            "<h1>Thank you</h1><p>Order confirmed for {}: {size}, to {}{}.</p>",
                            first.get("name").cloned().unwrap_or_default(),
                            form.get("address").cloned().unwrap_or_default(),
                            if form.contains_key("gift") { ", gift wrapped" } else { "" }
                        ),
                    )
                    .into_response()
                },
            ),
        )
        .route(
            "/help",
            get(|| async {
                // A page that never finishes loading.
                tokio::time::sleep(Duration::from_secs(30)).await;
                page("Help", "<p>late</p>")
            }),
        )
        .route("/map", get(|| async { Html(MAP) }))
        .route(
            "/api/route",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                // A directions service takes a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(json!({
                    "summary": format!(
                        "Route from {} to {}: 12 km, 25 min by bike",
                        q.get("from").cloned().unwrap_or_default(),
                        q.get("to").cloned().unwrap_or_default()
                    )
                }))
            }),
        )
        .route(
            "/go-elsewhere",
            get(|State(s): State<SiteState>| async move {
                let to = s.elsewhere.lock().unwrap().clone();
                Redirect::temporary(&to).into_response()
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Site { addr, state }
}

/// A server on another loopback address (not allowed): counts what reaches it.
async fn serve_counter(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = Router::new().fallback(move || {
        let hits = counted.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            Html("<h1>private</h1>")
        }
    });
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, hits)
}

// --- the scripted model -----------------------------------------------------------------------

/// The `[n]` of the first snapshot element of `role` whose name contains `name`.
fn find_ref(text: &str, role: &str, name: &str) -> Option<u64> {
    for (start, _) in text.match_indices('[') {
        let rest = &text[start + 1..];
        let Some(end) = rest.find(']') else { continue };
        let Ok(n) = rest[..end].parse::<u64>() else {
            continue;
        };
        let after = &rest[end + 1..];
        let Some(named) = after.strip_prefix(&format!(" {role} \"")) else {
            continue;
        };
        let quoted = named.split('"').next().unwrap_or_default();
        if quoted.contains(name) {
            return Some(n);
        }
    }
    None
}

/// One decision of the scripted model, from the text of the last tool result.
type Step = Box<dyn Fn(&str) -> Llm + Send + Sync>;

/// A model that plays `steps` in order, one per request.
fn script(llm: &FakeLlm, steps: Vec<Step>) {
    let next = AtomicUsize::new(0);
    llm.set_default(Llm::computed(move |request: &Recorded| {
        let i = next.fetch_add(1, Ordering::SeqCst);
        match steps.get(i) {
            Some(step) => step(&request.last_message_text()),
            None => Llm::text("(script over)"),
        }
    }));
}

fn call(name: &'static str, input: Value) -> Step {
    Box::new(move |_| Llm::tool(name, input.clone()))
}

/// A call with the reference of the element `role` "name" in the last snapshot.
fn on(name: &'static str, role: &'static str, label: &'static str, input: Value) -> Step {
    Box::new(move |last| match find_ref(last, role, label) {
        Some(n) => {
            let mut input = input.clone();
            input["ref"] = json!(n);
            Llm::tool(name, input)
        }
        None => Llm::text(format!("MISSING {role} “{label}” in: {last}")),
    })
}

fn say(text: &'static str) -> Step {
    Box::new(move |_| Llm::text(text))
}

/// The tool results the model got: (text, is_error), in order.
fn tool_results(llm: &FakeLlm) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for request in llm.requests() {
        let Some(last) = request.body["messages"].as_array().and_then(|m| m.last()) else {
            continue;
        };
        for block in last["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" {
                let text = block["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push((text, block["is_error"] == true));
            }
        }
    }
    out
}

// --- the in-process app -----------------------------------------------------------------------

#[derive(Default)]
struct Capture {
    replies: Mutex<Vec<Reply>>,
}

#[async_trait]
impl ChatAdapter for Capture {
    fn platform(&self) -> &str {
        "test"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        self.replies.lock().unwrap().push(reply.clone());
        Ok(Delivered::default())
    }
}

struct Harness {
    app: App,
    workers: Option<Workers>,
    capture: Arc<Capture>,
    llm: FakeLlm,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(chromium: &Path, extra: &[(&str, &str)]) -> Self {
        let llm = FakeLlm::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut vars: HashMap<String, String> = HashMap::from([
            (
                "ECDYSIS_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("ECDYSIS_SANDBOX".into(), "off".into()),
            ("ECDYSIS_CHROMIUM".into(), chromium.display().to_string()),
            ("ECDYSIS_BROWSER_ALLOW".into(), "127.0.0.1".into()),
            ("ECDYSIS_BUS_WORKERS".into(), "4".into()),
            ("ECDYSIS_AGENT_MAX_STEPS".into(), "20".into()),
            ("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS".into(), "90".into()),
            ("ECDYSIS_MODEL".into(), "anthropic/claude-test".into()),
            ("ANTHROPIC_API_KEY".into(), "test-key".into()),
            ("ANTHROPIC_BASE_URL".into(), llm.anthropic_base_url()),
        ]);
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        let config = Config::load_with(None, &|name| vars.get(name).cloned()).unwrap();
        let app = App::open(config).await.unwrap();
        let capture = Arc::new(Capture::default());
        app.bus.register_adapter(capture.clone());
        let workers = app.bus.start().await.unwrap();
        Self {
            app,
            workers: Some(workers),
            capture,
            llm,
            _dir: dir,
        }
    }

    /// Send `text` in `conversation` and wait for the reply to it.
    async fn ask(&self, conversation: &ConversationRef, text: &str) -> Reply {
        let before = self.replies_in(conversation).len();
        let event = Event::from_text(
            format!("ev-{}", uuid::Uuid::new_v4().simple()),
            conversation.clone(),
            UserRef {
                id: "U1".into(),
                name: None,
            },
            text,
        );
        self.app.bus.submit(event).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let replies = self.replies_in(conversation);
            if replies.len() > before {
                return replies[before].clone();
            }
            assert!(Instant::now() < deadline, "no reply to “{text}”");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn replies_in(&self, conversation: &ConversationRef) -> Vec<Reply> {
        self.capture
            .replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &r.conversation == conversation)
            .cloned()
            .collect()
    }

    async fn stop(mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(browser) = &self.app.browser {
            browser.shutdown().await;
        }
    }
}

fn conversation(channel: &str, thread: Option<&str>) -> ConversationRef {
    ConversationRef::new("test", "T1", channel, thread.map(str::to_string))
}

/// Frames of an MP4 that differ from the one before (ffmpeg's mpdecimate), and its codec.
fn distinct_frames(mp4: &[u8]) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mp4");
    std::fs::write(&path, mp4).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let codec = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    let frames = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-vf", "mpdecimate", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    let distinct = String::from_utf8_lossy(&frames.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    (codec, distinct)
}

// --- tests ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_logs_in_fills_a_two_step_form_and_films_it() {
    let Some(chromium) = chromium() else { return };
    if !ffmpeg() {
        return;
    }
    let site = serve_site().await;
    let h = Harness::start(
        &chromium,
        &[("ECDYSIS_BROWSER_ALLOW_PASSWORD_TYPING", "true")],
    )
    .await;
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/login") })),
            on(
                "browser_type",
                "textbox",
                "Username",
                json!({ "text": "ann" }),
            ),
            on(
                "browser_type",
                "password",
                "Password",
                json!({ "text": "hunter2", "submit": true }),
            ),
            on("browser_click", "link", "New order", json!({})),
            on(
                "browser_select",
                "combobox",
                "Size",
                json!({ "value": "Large" }),
            ),
            on(
                "browser_type",
                "textbox",
                "Name on the order",
                json!({ "text": "Ann Smith" }),
            ),
            on("browser_click", "button", "Next", json!({})),
            on(
                "browser_type",
                "textbox",
                "Delivery address",
                json!({ "text": "1 Main St" }),
            ),
            on("browser_click", "checkbox", "Gift wrap", json!({})),
            on("browser_click", "button", "Place order", json!({})),
            call("browser_record", json!({})),
            say("Your order is placed; the video shows how."),
        ],
    );
    let here = conversation("C1", None);
    let reply = h.ask(&here, "order me a large one and show me how").await;
    assert_eq!(
        reply.text,
        "Your order is placed; the video shows how.",
        "{:#?}",
        tool_results(&h.llm)
    );

    let results = tool_results(&h.llm);
    assert_eq!(results.len(), 11, "{results:#?}");
    for (text, is_error) in &results {
        assert!(!is_error, "a step failed: {text}\n{results:#?}");
    }
    // The snapshot numbered the login form's fields and the model read it.
    let login = &results[0].0;
    assert!(login.starts_with("Opened http://"), "{login}");
    assert!(login.contains("# Sign in"), "{login}");
    assert!(login.contains("textbox \"Username\""), "{login}");
    assert!(login.contains("password \"Password\""), "{login}");
    assert!(login.contains("button \"Sign in\""), "{login}");
    // The password never reaches the model's transcript; the login went through.
    assert!(
        results[2].0.contains("Typed the password"),
        "{}",
        results[2].0
    );
    assert!(!results.iter().any(|(t, _)| t.contains("hunter2")));
    assert!(
        results[2].0.contains("Signed in as ann."),
        "{}",
        results[2].0
    );
    assert!(results[2].0.contains("/account"), "{}", results[2].0);
    assert!(
        results[4].0.contains("Selected “Large”"),
        "{}",
        results[4].0
    );
    assert!(results[6].0.contains("Step 2 of 2"), "{}", results[6].0);
    assert!(results[8].0.contains("(checked)"), "{}", results[8].0);
    let done = &results[9].0;
    assert!(
        done.contains("Order confirmed for Ann Smith: Large, to 1 Main St, gift wrapped."),
        "{done}"
    );
    // What the site received.
    let posts = site.posts();
    let paths: Vec<&str> = posts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/login", "/order/1", "/order/2"]);
    assert_eq!(posts[1].1.get("size").map(String::as_str), Some("l"));

    // The film of the session: an H.264 MP4 with more than one distinct frame.
    assert!(
        results[10].0.contains("Recording of the browser session"),
        "{}",
        results[10].0
    );
    let video = reply
        .attachments
        .iter()
        .find(|a| a.mime == "video/mp4")
        .expect("the session video is attached");
    let (codec, distinct) = distinct_frames(&video.bytes);
    assert_eq!(codec, "h264");
    assert!(distinct > 1, "{distinct} distinct frames");

    // Another thread of the same channel shares its cookies; another channel does not.
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/account") })),
            say("checked"),
        ],
    );
    let before = tool_results(&h.llm).len();
    h.ask(&conversation("C1", Some("1.5")), "am I signed in?")
        .await;
    let thread = tool_results(&h.llm)[before].0.clone();
    assert!(thread.contains("Signed in as ann."), "{thread}");
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/account") })),
            say("checked"),
        ],
    );
    let before = tool_results(&h.llm).len();
    h.ask(&conversation("C2", None), "am I signed in?").await;
    let other = tool_results(&h.llm)[before].0.clone();
    assert!(other.contains("Not signed in."), "{other}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_private_addresses_and_stale_references_are_refused() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site().await;
    // 127.0.0.2 is loopback too, but only 127.0.0.1 is allowed.
    let (private, hits) = serve_counter("127.0.0.2").await;
    *site.state.elsewhere.lock().unwrap() = format!("http://{private}/secret");
    let h = Harness::start(&chromium, &[]).await;
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/go-elsewhere") })),
            call(
                "browser_open",
                json!({ "url": format!("http://{private}/direct") }),
            ),
            call("browser_open", json!({ "url": site.url("/login") })),
            call("browser_click", json!({ "ref": 999 })),
            call(
                "browser_wait",
                json!({ "text": "never shown", "timeout_seconds": 0.5 }),
            ),
            say("refused"),
        ],
    );
    let reply = h.ask(&conversation("C3", None), "open it").await;
    assert_eq!(reply.text, "refused");
    let results = tool_results(&h.llm);
    assert_eq!(results.len(), 5, "{results:#?}");
    let (redirect, is_error) = &results[0];
    assert!(*is_error && redirect.contains("refused"), "{redirect}");
    assert!(redirect.contains("127.0.0.2"), "{redirect}");
    let (direct, is_error) = &results[1];
    assert!(*is_error && direct.contains("refused"), "{direct}");
    assert!(!results[2].1, "{}", results[2].0);
    let (stale, is_error) = &results[3];
    assert!(
        *is_error && stale.contains("[999]") && stale.contains("browser_snapshot"),
        "{stale}"
    );
    let (wait, is_error) = &results[4];
    assert!(*is_error && wait.contains("did not appear"), "{wait}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused address was reached"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_a_password_is_refused_by_default() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site().await;
    let h = Harness::start(&chromium, &[]).await;
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/login") })),
            on(
                "browser_type",
                "password",
                "Password",
                json!({ "text": "hunter2", "submit": true }),
            ),
            call("browser_snapshot", json!({})),
            say("I cannot type passwords."),
        ],
    );
    let reply = h.ask(&conversation("C4", None), "log in").await;
    assert_eq!(reply.text, "I cannot type passwords.");
    let results = tool_results(&h.llm);
    assert_eq!(results.len(), 3, "{results:#?}");
    let (refused, is_error) = &results[1];
    assert!(*is_error, "{refused}");
    assert!(
        refused.contains("password field")
            && refused.contains("ECDYSIS_BROWSER_ALLOW_PASSWORD_TYPING"),
        "{refused}"
    );
    // Nothing was typed or sent.
    assert!(
        results[2].0.contains("password \"Password\""),
        "{}",
        results[2].0
    );
    assert!(!results[2].0.contains("filled"), "{}", results[2].0);
    assert!(site.posts().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_never_settles_is_an_error_and_idle_sessions_close() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site().await;
    let h = Harness::start(
        &chromium,
        &[
            // Both long enough for a loaded machine (opening the page also starts Chromium; a
            // pause between two tool calls of the turn must not close the session), short
            // enough to watch the hang end and the idle session close.
            ("ECDYSIS_BROWSER_ACTION_TIMEOUT_SECONDS", "5"),
            ("ECDYSIS_BROWSER_IDLE_SECONDS", "8"),
            // A session closes once idle and once its turn is surely over (at most this long).
            ("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "25"),
        ],
    )
    .await;
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/login") })),
            on("browser_click", "link", "Get help", json!({})),
            say("the help page hangs"),
        ],
    );
    let started = Instant::now();
    let reply = h.ask(&conversation("C6", None), "get help").await;
    assert_eq!(reply.text, "the help page hangs");
    let results = tool_results(&h.llm);
    let (hung, is_error) = &results[1];
    assert!(*is_error, "{hung}");
    assert!(hung.contains("did not finish loading within 5 s"), "{hung}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The session holds a tab while it is used; idle, it closes, and then the browser does.
    let browser = h.app.browser.clone().expect("browser configured");
    assert!(browser.is_running().await);
    let deadline = started + Duration::from_secs(60);
    while browser.is_running().await {
        assert!(
            Instant::now() < deadline,
            "the idle session kept the browser open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn a_pause_between_tool_calls_of_a_turn_keeps_the_page_open() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site().await;
    // Idle after 1 s, but a turn may run 60 s: the model thinking for 3 s between two calls of
    // one turn must find its page where it left it.
    let h = Harness::start(
        &chromium,
        &[
            ("ECDYSIS_BROWSER_IDLE_SECONDS", "1"),
            ("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "60"),
        ],
    )
    .await;
    let pause: Step =
        Box::new(|_| Llm::tool("browser_snapshot", json!({})).after(Duration::from_secs(3)));
    script(
        &h.llm,
        vec![
            call("browser_open", json!({ "url": site.url("/login") })),
            pause,
            say("still there"),
        ],
    );
    let reply = h
        .ask(&conversation("C7", None), "open and look again")
        .await;
    assert_eq!(reply.text, "still there");
    let results = tool_results(&h.llm);
    let (snapshot, is_error) = &results[1];
    assert!(!*is_error, "{snapshot}");
    assert!(snapshot.contains("Sign in"), "{snapshot}");
    h.stop().await;
}

// --- web search -------------------------------------------------------------------------------

/// A search request: (path, query, X-Subscription-Token).
type Seen = (String, HashMap<String, String>, Option<String>);
/// A scripted failure: (status, Retry-After).
type Failure = (u16, Option<String>);

#[derive(Clone, Default)]
struct SearchState {
    /// (path, query, X-Subscription-Token) of every request.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Statuses to answer with before answering normally: (status, Retry-After).
    fail: Arc<Mutex<Vec<Failure>>>,
}

async fn search_answer(
    s: &SearchState,
    path: &str,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: Value,
) -> Response {
    let token = headers
        .get("x-subscription-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    s.seen
        .lock()
        .unwrap()
        .push((path.to_string(), query.clone(), token));
    let failure = {
        let mut fail = s.fail.lock().unwrap();
        if fail.is_empty() {
            None
        } else {
            Some(fail.remove(0))
        }
    };
    if let Some((status, after)) = failure {
        let mut response = (StatusCode::from_u16(status).unwrap(), "nope").into_response();
        if let Some(after) = after {
            response
                .headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        return response;
    }
    axum::Json(body).into_response()
}

/// A fake Brave (`/res/v1/web/search`) and SearXNG (`/search`) on 127.0.0.1.
async fn serve_search() -> (String, SearchState) {
    let state = SearchState::default();
    let router = Router::new()
        .route(
            "/res/v1/web/search",
            get(|State(s): State<SearchState>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap| async move {
                let body = json!({ "web": { "results": [
                    { "title": "Bike routes in <strong>Lyon</strong>", "url": "https://example.org/lyon", "description": "Every <strong>cycle</strong> lane &amp; path." },
                    { "title": "Second", "url": "https://example.org/2", "description": "more" }
                ] } });
                search_answer(&s, "/res/v1/web/search", q, &headers, body).await
            }),
        )
        .route(
            "/search",
            get(|State(s): State<SearchState>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap| async move {
                let body = json!({ "results": [
                    { "title": "SearXNG hit", "url": "https://example.net/a", "content": "from the instance" }
                ] });
                search_answer(&s, "/search", q, &headers, body).await
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), state)
}

fn search_tool(env: &[(&str, &str)]) -> Arc<dyn ecdysis::engine::tools::Tool> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::load_with(None, &|name| vars.get(name).cloned()).unwrap();
    Arc::new(ecdysis::agent::web_search::tool(config.web_search.as_ref()).expect("configured"))
}

fn tool_context() -> ToolContext {
    ToolContext {
        event_id: 1,
        step: 1,
        conversation: conversation("C9", None),
        user_id: "U1".into(),
        route: Value::Null,
        poster: ecdysis::bus::Poster::detached(),
    }
}

#[tokio::test]
async fn web_search_reaches_the_model_from_a_fake_brave() {
    let (base, state) = serve_search().await;
    let llm = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vars: HashMap<String, String> = HashMap::from([
        (
            "ECDYSIS_DATA_DIR".into(),
            dir.path().join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX".into(), "off".into()),
        ("ECDYSIS_CHROMIUM".into(), "/nonexistent/chromium".into()),
        ("ECDYSIS_MODEL".into(), "anthropic/claude-test".into()),
        ("ANTHROPIC_API_KEY".into(), "test-key".into()),
        ("ANTHROPIC_BASE_URL".into(), llm.anthropic_base_url()),
        ("ECDYSIS_WEB_SEARCH".into(), "brave".into()),
        ("BRAVE_API_KEY".into(), "brave-test-key".into()),
        ("ECDYSIS_WEB_SEARCH_URL".into(), base.clone()),
    ]);
    let config = Config::load_with(None, &|name| vars.get(name).cloned()).unwrap();
    let app = App::open(config).await.unwrap();
    let capture = Arc::new(Capture::default());
    app.bus.register_adapter(capture.clone());
    let workers = app.bus.start().await.unwrap();
    script(
        &llm,
        vec![
            call(
                "web_search",
                json!({ "query": "bike routes lyon", "count": 2 }),
            ),
            say("found them"),
        ],
    );
    let here = conversation("C5", None);
    app.bus
        .submit(Event::from_text(
            "ev-search",
            here.clone(),
            UserRef {
                id: "U1".into(),
                name: None,
            },
            "search",
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while capture.replies.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no reply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(capture.replies.lock().unwrap()[0].text, "found them");
    let results = tool_results(&llm);
    assert_eq!(results.len(), 1);
    let (text, is_error) = &results[0];
    assert!(!is_error, "{text}");
    assert!(
        text.contains(
            "1. Bike routes in Lyon\n   https://example.org/lyon\n   Every cycle lane & path."
        ),
        "{text}"
    );
    assert!(text.contains("2. Second"), "{text}");
    // The model was offered the tool; the request had Brave's shape.
    let offered = llm.requests()[0].body["tools"].to_string();
    assert!(offered.contains("\"web_search\""), "{offered}");
    let seen = state.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/res/v1/web/search");
    assert_eq!(
        seen[0].1.get("q").map(String::as_str),
        Some("bike routes lyon")
    );
    assert_eq!(seen[0].1.get("count").map(String::as_str), Some("2"));
    assert_eq!(seen[0].2.as_deref(), Some("brave-test-key"));
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn web_search_from_searxng_and_clear_errors_for_429_and_500() {
    let (base, state) = serve_search().await;
    let searxng = search_tool(&[("ECDYSIS_WEB_SEARCH", &format!("searxng:{base}"))]);
    let out = searxng
        .call(&tool_context(), json!({ "query": "q1" }))
        .await
        .unwrap();
    assert!(
        out.text
            .contains("1. SearXNG hit\n   https://example.net/a\n   from the instance"),
        "{}",
        out.text
    );
    {
        let seen = state.seen.lock().unwrap();
        assert_eq!(seen[0].0, "/search");
        assert_eq!(seen[0].1.get("format").map(String::as_str), Some("json"));
        assert_eq!(seen[0].1.get("q").map(String::as_str), Some("q1"));
    }

    let brave = search_tool(&[
        ("ECDYSIS_WEB_SEARCH", "brave"),
        ("BRAVE_API_KEY", "k"),
        ("ECDYSIS_WEB_SEARCH_URL", &base),
    ]);
    // A short Retry-After is honoured once.
    state.fail.lock().unwrap().push((429, Some("1".into())));
    let started = Instant::now();
    let out = brave
        .call(&tool_context(), json!({ "query": "q2" }))
        .await
        .unwrap();
    assert!(out.text.contains("Bike routes"), "{}", out.text);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Twice rate-limited: a clear error, no third try.
    let before = state.seen.lock().unwrap().len();
    state
        .fail
        .lock()
        .unwrap()
        .extend([(429, Some("1".into())), (429, Some("1".into()))]);
    let e = brave
        .call(&tool_context(), json!({ "query": "q3" }))
        .await
        .unwrap_err();
    assert!(matches!(e, ToolError::Failed(_)), "{e}");
    assert!(
        e.to_string().contains("rate-limiting") && e.to_string().contains("429"),
        "{e}"
    );
    assert_eq!(state.seen.lock().unwrap().len(), before + 2);
    // A long Retry-After is not waited for.
    state.fail.lock().unwrap().push((429, Some("120".into())));
    let started = Instant::now();
    let e = brave
        .call(&tool_context(), json!({ "query": "q4" }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wait 120 s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A failing provider.
    state.fail.lock().unwrap().push((500, None));
    let e = brave
        .call(&tool_context(), json!({ "query": "q5" }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed: HTTP 500"), "{e}");
    // Bad input never reaches the provider.
    let before = state.seen.lock().unwrap().len();
    assert!(
        brave
            .call(&tool_context(), json!({ "query": " " }))
            .await
            .is_err()
    );
    assert!(
        brave
            .call(&tool_context(), json!({ "query": "x", "count": 99 }))
            .await
            .is_err()
    );
    assert_eq!(state.seen.lock().unwrap().len(), before);
}

#[test]
fn web_search_needs_its_key_and_is_off_by_default() {
    let load = |env: &[(&str, &str)]| {
        let vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(None, &|name| vars.get(name).cloned())
    };
    assert!(load(&[]).unwrap().web_search.is_none());
    let e = load(&[("ECDYSIS_WEB_SEARCH", "brave")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("BRAVE_API_KEY"), "{e}");
    let e = load(&[("ECDYSIS_WEB_SEARCH", "bing")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("brave, tavily, searxng"), "{e}");
    let tavily = load(&[("ECDYSIS_WEB_SEARCH", "tavily"), ("TAVILY_API_KEY", "t")])
        .unwrap()
        .web_search
        .unwrap();
    assert_eq!(tavily.base_url.as_str(), "https://api.tavily.com/");
}

// --- the demo through Slack -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_me_a_route_and_show_me_through_slack() {
    use common::server::Server;
    use ecdysis_slack::signature::sign;
    use ecdysis_testkit::slack::FakeSlack;

    let Some(chromium) = chromium() else { return };
    let site = serve_site().await;
    let slack = FakeSlack::start().await.unwrap();
    let llm = FakeLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = slack.api_url();
    let llm_url = llm.anthropic_base_url();
    let chromium = chromium.display().to_string();
    let server = Server::start(
        dir.path(),
        &[
            ("SLACK_SIGNING_SECRET", "demo-secret"),
            ("SLACK_BOT_TOKEN", "xoxb-demo"),
            ("SLACK_API_URL", &api),
            // The demo checks the final message and its files; live replies have their own test.
            ("ECDYSIS_SLACK_STREAMING", "off"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &llm_url),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_CHROMIUM", &chromium),
            ("ECDYSIS_BROWSER_ALLOW", "127.0.0.1"),
        ],
    )
    .await;
    script(
        &llm,
        vec![
            call("browser_open", json!({ "url": site.url("/map") })),
            on(
                "browser_type",
                "textbox",
                "Start",
                json!({ "text": "Gare de Lyon" }),
            ),
            on(
                "browser_type",
                "textbox",
                "Destination",
                json!({ "text": "Bastille" }),
            ),
            on("browser_click", "button", "Directions", json!({})),
            call("browser_screenshot", json!({})),
            say("Here is your route: 12 km, 25 min by bike."),
        ],
    );
    let ts = "1700000300.000100";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = json!({
        "token": "t", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": "EvRoute", "event_time": now,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true, "is_enterprise_install": false}],
        "event": { "type": "app_mention", "user": "U1", "channel": "C1", "ts": ts, "event_ts": ts,
                   "text": "<@UBOT> find me a route from Gare de Lyon to Bastille by bike and show me" },
    })
    .to_string();
    let response = reqwest::Client::new()
        .post(format!("{}/slack/events", server.base))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", now.to_string())
        .header(
            "x-slack-signature",
            sign("demo-secret", now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let complete = slack
        .wait_calls("files.completeUploadExternal", 1, WAIT)
        .await;
    let results = tool_results(&llm);
    assert_eq!(complete.len(), 1, "{results:#?}\n{}", server.log());
    for (text, is_error) in &results {
        assert!(!is_error, "{text}");
    }
    // The click waited for the route to be drawn: the model read the summary.
    assert!(
        results[3]
            .0
            .contains("Route from Gare de Lyon to Bastille: 12 km, 25 min by bike"),
        "{}",
        results[3].0
    );
    assert!(
        results[4].0.contains("Screenshot of http://"),
        "{}",
        results[4].0
    );
    // The PNG went into the mention's thread, with the answer.
    assert_eq!(complete[0].args["channel_id"], "C1");
    assert_eq!(complete[0].args["thread_ts"], ts);
    let uploads = slack.calls_to("upload");
    assert_eq!(uploads.len(), 1);
    assert!(uploads[0].body.starts_with(b"\x89PNG"), "not a PNG");
    let png = image::load_from_memory(&uploads[0].body).unwrap().to_rgb8();
    // The drawn route (blue) is in the picture.
    assert!(
        png.pixels().any(|p| p.0 == [0x1a, 0x73, 0xe8]),
        "the route is not in the screenshot"
    );
    let posts = slack.calls_to("chat.postMessage");
    assert!(
        posts.iter().any(|p| p.arg("thread_ts") == Some(ts)
            && p.arg("text")
                .is_some_and(|t| t.contains("Here is your route"))),
        "{posts:#?}"
    );
}
