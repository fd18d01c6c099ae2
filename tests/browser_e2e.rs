//! The browser against real Chromium and ffmpeg, on pages this test serves on 127.0.0.1:
//! screenshots (size, colours, full page, selector), a recording checked with ffprobe, the
//! URL guard (nothing refused ever reaches a server), crash relaunch, idle close, per-channel
//! cookies, and `/screenshot` + `/record` through the web chat of a real `serve` process.
//!
//! In CI (env `CI` set) a missing Chromium or ffmpeg fails the tests; on a laptop they skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use ecdysis::browser::image_fit::Encoding;
use ecdysis::browser::record::{RecordRequest, VideoFormat};
use ecdysis::browser::screenshot::ScreenshotRequest;
use ecdysis::browser::{
    BrowserError, BrowserOptions, BrowserService, Source, StaticResolver, Viewport, WaitFor,
};
use ecdysis::config::BrowserSettings;

/// Chromium, or `None` (skip) on a laptop without it; in CI its absence fails.
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

/// ffmpeg and ffprobe present, or skip (laptop) / fail (CI).
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

const COLOR_PAGE: &str = r#"<!doctype html><html><head><title>Colours</title><style>
html, body { margin: 0; background: #ffffff; }
#block { position: absolute; left: 0; top: 0; width: 200px; height: 100px; background: #ff0000; }
#main { position: absolute; left: 300px; top: 200px; width: 120px; height: 80px; background: #0000ff; }
</style></head><body><div id="block"></div><div id="main"></div></body></html>"#;

const TALL_PAGE: &str = r#"<!doctype html><html><head><title>Tall</title><style>
html, body { margin: 0; background: #ffffff; }
#top { height: 2900px; background: #ffffff; }
#bottom { height: 100px; background: #00ff00; }
</style></head><body><div id="top"></div><div id="bottom"></div></body></html>"#;

const ANIMATED_PAGE: &str = r#"<!doctype html><html><head><title>Moving</title><style>
html, body { margin: 0; height: 100%; }
#box { position: absolute; top: 100px; width: 120px; height: 120px; background: #ff0000; }
</style></head><body><div id="box"></div><script>
const box = document.getElementById('box');
function step(t) {
  document.body.style.background = `hsl(${(t / 10) % 360}, 80%, 60%)`;
  box.style.left = `${(t / 5) % 1000}px`;
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
</script></body></html>"#;

/// A page server on `ip`, counting every request it gets.
struct Site {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct SiteState {
    hits: Arc<AtomicUsize>,
    /// Where `/redirect` and the `<img>` of `/with-private-image` point.
    elsewhere: Arc<std::sync::Mutex<String>>,
}

async fn serve_site(ip: &str) -> Site {
    serve_site_with(ip, "").await
}

async fn serve_site_with(ip: &str, elsewhere: &str) -> Site {
    let listener = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let state = SiteState {
        hits: hits.clone(),
        elsewhere: Arc::new(std::sync::Mutex::new(elsewhere.to_string())),
    };
    let router = Router::new()
        .route("/color", get(|| async { Html(COLOR_PAGE) }))
        .route("/tall", get(|| async { Html(TALL_PAGE) }))
        .route("/anim", get(|| async { Html(ANIMATED_PAGE) }))
        // A page that never loads (its image takes 30 s) and moves on to `/color` first.
        .route(
            "/moves-on",
            get(|| async {
                Html(
                    "<!doctype html><body><img src='/slow'><script>setTimeout(() => location.replace('/color'), 100);</script></body>",
                )
            }),
        )
        .route(
            "/json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{\"a\":1}") }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, Html("<h1>nope</h1>")) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Html("late")
            }),
        )
        .route(
            "/late-element",
            get(|| async {
                Html(
                    "<!doctype html><body><script>setTimeout(() => { const d = document.createElement('div'); d.id = 'late'; d.style = 'width:50px;height:40px;background:#0000ff'; document.body.appendChild(d); }, 400);</script></body>",
                )
            }),
        )
        .route(
            "/set-cookie",
            get(|| async {
                (
                    [(header::SET_COOKIE, "flavour=pistachio; Path=/")],
                    Html("<!doctype html><body>cookie set</body>"),
                )
            }),
        )
        .route(
            "/show-cookie",
            get(|headers: HeaderMap| async move {
                let cookie = headers
                    .get(header::COOKIE)
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                Html(format!("<!doctype html><body>cookie: {cookie}</body>"))
            }),
        )
        .route(
            "/redirect",
            get(|State(s): State<SiteState>| async move {
                let to = s.elsewhere.lock().unwrap().clone();
                Redirect::temporary(&to).into_response()
            }),
        )
        .route(
            "/with-private-image",
            get(|State(s): State<SiteState>| async move {
                let to = s.elsewhere.lock().unwrap().clone();
                Html(format!(
                    "<!doctype html><body style='background:#fff'><img src='{to}' width=10 height=10>hello</body>"
                ))
                .into_response()
            }),
        )
        .route(
            "/frame-of",
            get(|State(s): State<SiteState>| async move {
                let to = s.elsewhere.lock().unwrap().clone();
                Html(format!(
                    "<!doctype html><body>outer<iframe src='{to}' width=300 height=200></iframe></body>"
                ))
                .into_response()
            }),
        )
        .route(
            "/sneaky",
            get(|State(s): State<SiteState>| async move {
                let to = s.elsewhere.lock().unwrap().clone();
                let host = to.trim_start_matches("http://").to_string();
                Html(format!(
                    "<!doctype html><head><link rel='preconnect' href='{to}'><link rel='dns-prefetch' href='{to}'>\
                     <link rel='stylesheet' href='{to}/x.css'></head><body>hi<img src='{to}/i.png'>\
                     <iframe src='{to}/frame'></iframe><script>fetch('{to}/f').catch(() => {{}});\
                     navigator.sendBeacon('{to}/b', 'x');\
                     try {{ new WebSocket('{to}'.replace('http', 'ws') + '/ws'); }} catch (e) {{}}\
                     try {{ new RTCPeerConnection({{ iceServers: [{{ urls: 'stun:{host}' }}] }}); }} catch (e) {{}}\
                     try {{ new Worker(URL.createObjectURL(new Blob([\"fetch('{to}/w')\"]))); }} catch (e) {{}}\
                     try {{ navigator.serviceWorker.register('/sw.js'); }} catch (e) {{}}\
                     </script></body>"
                ))
                .into_response()
            }),
        )
        .fallback(|| async { Html("<!doctype html><body>secret</body>").into_response() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            |State(s): State<SiteState>,
             request: axum::extract::Request,
             next: axum::middleware::Next| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                next.run(request).await
            },
        ))
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Site { addr, hits }
}

/// A site on 127.0.0.1 whose `/redirect` and `/with-private-image` point at `target`.
async fn site_pointing_at(target: &str) -> Site {
    serve_site_with("127.0.0.1", target).await
}

fn options(work_dir: &Path, allow: &[&str], settings: BrowserSettings) -> BrowserOptions {
    BrowserOptions {
        settings: BrowserSettings {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..settings
        },
        ffmpeg: PathBuf::from("ffmpeg"),
        work_dir: work_dir.to_path_buf(),
        // Only the names a test lists resolve: no DNS server is ever asked.
        resolver: Arc::new(
            StaticResolver::only().with("intranet.example.com", &["10.0.0.1".parse().unwrap()]),
        ),
        extra_args: Vec::new(),
    }
}

fn service(chromium: &Path, work_dir: &Path, allow: &[&str]) -> BrowserService {
    service_with(chromium, work_dir, allow, BrowserSettings::default())
}

fn service_with(
    chromium: &Path,
    work_dir: &Path,
    allow: &[&str],
    settings: BrowserSettings,
) -> BrowserService {
    BrowserService::new(
        options(work_dir, allow, settings),
        Source::Local(chromium.to_path_buf()),
    )
    .unwrap()
}

fn decode(bytes: &[u8]) -> image::RgbaImage {
    assert_eq!(
        image::guess_format(bytes).unwrap(),
        image::ImageFormat::Png,
        "not a PNG"
    );
    image::load_from_memory(bytes).unwrap().to_rgba8()
}

fn close(pixel: &image::Rgba<u8>, rgb: [u8; 3]) -> bool {
    pixel.0[..3]
        .iter()
        .zip(rgb)
        .all(|(a, b)| (*a as i16 - b as i16).abs() <= 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_have_the_size_colours_and_crop_asked_for() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service(&chromium, dir.path(), &["127.0.0.1"]);

    // The viewport at the requested size; the known colour blocks where the page puts them.
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.viewport = Viewport {
        width: 640,
        height: 480,
        scale: 1.0,
    };
    let shot = browser.screenshot("web:local:a", &request).await.unwrap();
    assert_eq!(shot.encoding, Encoding::Png);
    assert_eq!(shot.title.as_deref(), Some("Colours"));
    let img = decode(&shot.bytes);
    assert_eq!(img.dimensions(), (640, 480));
    assert!(
        close(img.get_pixel(50, 50), [255, 0, 0]),
        "{:?}",
        img.get_pixel(50, 50)
    );
    assert!(
        close(img.get_pixel(360, 240), [0, 0, 255]),
        "{:?}",
        img.get_pixel(360, 240)
    );
    assert!(close(img.get_pixel(600, 400), [255, 255, 255]));

    // Device scale factor 2: twice the pixels, same picture.
    request.viewport.scale = 2.0;
    let shot = browser.screenshot("web:local:a", &request).await.unwrap();
    let img = decode(&shot.bytes);
    assert_eq!(img.dimensions(), (1280, 960));
    assert!(close(img.get_pixel(100, 100), [255, 0, 0]));
    assert!(close(img.get_pixel(720, 480), [0, 0, 255]));

    // Full page: taller than the viewport, the block at the very bottom included.
    let mut request = ScreenshotRequest::new(site.url("/tall"));
    request.viewport = Viewport {
        width: 800,
        height: 600,
        scale: 1.0,
    };
    request.full_page = true;
    let shot = browser.screenshot("web:local:a", &request).await.unwrap();
    let img = decode(&shot.bytes);
    assert_eq!(img.width(), 800);
    assert!(img.height() > 600, "full page is {}px tall", img.height());
    assert_eq!(img.height(), 3000);
    assert!(close(img.get_pixel(400, 2950), [0, 255, 0]));

    // A selector: exactly the element, all blue.
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.selector = Some("#main".into());
    let shot = browser.screenshot("web:local:a", &request).await.unwrap();
    let img = decode(&shot.bytes);
    assert_eq!(img.dimensions(), (120, 80));
    assert!(img.pixels().all(|p| close(p, [0, 0, 255])));

    // Waiting for an element that appears later.
    let mut request = ScreenshotRequest::new(site.url("/late-element"));
    request.selector = Some("#late".into());
    request.wait = WaitFor::Selector("#late".into());
    let shot = browser.screenshot("web:local:a", &request).await.unwrap();
    assert_eq!(decode(&shot.bytes).dimensions(), (50, 40));
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.wait = WaitFor::NetworkIdle;
    browser.screenshot("web:local:a", &request).await.unwrap();

    // A missing element is a clear error.
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.selector = Some("#nothing".into());
    let e = browser
        .screenshot("web:local:a", &request)
        .await
        .unwrap_err();
    assert!(matches!(e, BrowserError::SelectorNotFound(_)), "{e}");

    // Over the upload limit: converted and still under it.
    let small = service_with(
        &chromium,
        dir.path(),
        &["127.0.0.1"],
        BrowserSettings {
            max_upload_bytes: 2_000,
            max_image_pixels: 500,
            ..BrowserSettings::default()
        },
    );
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.viewport.scale = 2.0;
    let shot = small.screenshot("web:local:a", &request).await.unwrap();
    assert!(shot.bytes.len() <= 2_000, "{} bytes", shot.bytes.len());
    assert!(shot.width <= 500 && shot.height <= 500);
    small.shutdown().await;
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_errors_are_clear() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service_with(
        &chromium,
        dir.path(),
        &["127.0.0.1"],
        BrowserSettings {
            navigation_timeout: Duration::from_secs(2),
            ..BrowserSettings::default()
        },
    );
    let shot = |path: &str| {
        let browser = browser.clone();
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            site.url(path)
        };
        async move {
            browser
                .screenshot("web:local:e", &ScreenshotRequest::new(url))
                .await
                .unwrap_err()
        }
    };
    let e = shot("/missing").await;
    assert!(
        matches!(e, BrowserError::HttpStatus { status: 404, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    let e = shot("/json").await;
    assert!(matches!(e, BrowserError::NotHtml { .. }), "{e}");
    assert!(e.to_string().contains("application/json"), "{e}");
    let started = Instant::now();
    let e = shot("/slow").await;
    assert!(matches!(e, BrowserError::Timeout(2)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = shot("http://no-such-host.example/").await;
    assert!(matches!(e, BrowserError::Dns(_)), "{e}");
    assert!(e.to_string().contains("DNS"), "{e}");
    // The browser still works after all that.
    browser
        .screenshot("web:local:e", &ScreenshotRequest::new(site.url("/color")))
        .await
        .unwrap();
    browser.shutdown().await;
}

/// A navigation ends with the `load` of the document the page ends up on, also when the page
/// moves on before its own document loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_moves_on_before_it_loads_is_shown_where_it_lands() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service_with(
        &chromium,
        dir.path(),
        &["127.0.0.1"],
        BrowserSettings {
            navigation_timeout: Duration::from_secs(15),
            ..BrowserSettings::default()
        },
    );
    let started = Instant::now();
    let shot = browser
        .screenshot(
            "web:local:m",
            &ScreenshotRequest::new(site.url("/moves-on")),
        )
        .await
        .unwrap();
    assert!(shot.url.ends_with("/color"), "{}", shot.url);
    let img = decode(&shot.bytes);
    assert!(
        close(img.get_pixel(50, 50), [255, 0, 0]),
        "the page it landed on"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not wait for the first page's load: {:?}",
        started.elapsed()
    );
    browser.shutdown().await;
}

/// A site whose certificate no authority signed is an error, not a page: the browser does not
/// ignore certificate errors (a man in the middle is not shown as the site).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let Some(chromium) = chromium() else { return };
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (attempts, handshakes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counters = (attempts.clone(), handshakes.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, (attempts, handshakes)) = (acceptor.clone(), counters.clone());
            tokio::spawn(async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                if acceptor.accept(stream).await.is_ok() {
                    handshakes.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let browser = service(&chromium, dir.path(), &["127.0.0.1"]);
    let e = browser
        .screenshot(
            "web:local:tls",
            &ScreenshotRequest::new(format!("https://{addr}/")),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ERR_CERT"), "{e}");
    assert!(
        attempts.load(Ordering::SeqCst) > 0,
        "the browser tried the site"
    );
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "and refused its certificate"
    );
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_urls_never_reach_a_server() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A server on 127.0.0.2 stands for a private address: it must never be hit.
    let private = serve_site("127.0.0.2").await;
    let local = serve_site("127.0.0.1").await;

    // Without an allowlist, loopback is refused before anything starts.
    let strict = service(&chromium, dir.path(), &[]);
    for url in [
        "file:///etc/passwd".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        local.url("/color"),
        "http://intranet.example.com/".to_string(),
        "http://[::1]/".to_string(),
    ] {
        let e = strict
            .screenshot("web:local:r", &ScreenshotRequest::new(&url))
            .await
            .unwrap_err();
        assert!(matches!(e, BrowserError::Refused(_)), "{url}: {e}");
        assert!(e.to_string().starts_with("refused"), "{url}: {e}");
    }
    let e = strict
        .screenshot(
            "web:local:r",
            &ScreenshotRequest::new("http://intranet.example.com/"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("10.0.0.1"), "{e}");
    assert!(
        strict
            .screenshot("web:local:r", &ScreenshotRequest::new("file:///etc/passwd"))
            .await
            .unwrap_err()
            .to_string()
            .contains("only http:// and https://")
    );
    assert_eq!(strict.stats().launches, 0, "a refused URL started Chromium");
    assert_eq!(strict.stats().navigations, 0);
    assert_eq!(local.hits(), 0);

    // 127.0.0.1 allowed; its redirect to 127.0.0.2 is refused by the interception.
    let pointing = site_pointing_at(&private.url("/secret")).await;
    let allowed = service(&chromium, dir.path(), &["127.0.0.1"]);
    let e = allowed
        .screenshot(
            "web:local:r",
            &ScreenshotRequest::new(pointing.url("/redirect")),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BrowserError::RefusedRequest(_)), "{e}");
    assert!(e.to_string().contains("127.0.0.2"), "{e}");
    assert_eq!(pointing.hits(), 1, "the allowed page was loaded once");
    // A subresource on the private address is refused too; the page itself still renders.
    let shot = allowed
        .screenshot(
            "web:local:r",
            &ScreenshotRequest::new(pointing.url("/with-private-image")),
        )
        .await
        .unwrap();
    decode(&shot.bytes);
    assert_eq!(private.hits(), 0, "a request reached the private address");
    assert!(
        allowed.stats().requests_refused >= 2,
        "{:?}",
        allowed.stats()
    );

    // Preconnect, DNS prefetch, stylesheet, image, iframe, fetch() and a beacon towards a
    // private address: not even a TCP connection reaches it.
    let raw = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = raw.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sneaky = site_pointing_at(&format!("http://{raw_addr}")).await;
    let mut request = ScreenshotRequest::new(sneaky.url("/sneaky"));
    request.wait = WaitFor::Delay(Duration::from_millis(1500));
    allowed.screenshot("web:local:r", &request).await.unwrap();
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        0,
        "a connection reached the private address"
    );
    allowed.shutdown().await;

    // A cross-site iframe (127.0.0.3, also allowed) whose image points at the private
    // address: the frame's requests are intercepted like the page's.
    let inner = serve_site_with("127.0.0.3", &format!("http://{raw_addr}/from-frame.png")).await;
    let outer = site_pointing_at(&inner.url("/with-private-image")).await;
    let both = service(&chromium, dir.path(), &["127.0.0.1", "127.0.0.3"]);
    let mut request = ScreenshotRequest::new(outer.url("/frame-of"));
    request.wait = WaitFor::Delay(Duration::from_millis(1000));
    both.screenshot("web:local:r", &request).await.unwrap();
    assert_eq!(inner.hits(), 1, "the allowed frame loaded");
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        0,
        "the frame's request reached the private address"
    );
    both.shutdown().await;
}

/// The review's `[::127.0.0.1]` and its relatives: IPv6 spellings of a private IPv4 address,
/// typed or reached through a redirect or a subresource, never reach the server behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_spellings_of_private_addresses_never_reach_a_server() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let private = serve_site("127.0.0.2").await;
    let port = private.addr.port();
    let local = serve_site("127.0.0.1").await;
    let lport = local.addr.port();

    let strict = service(&chromium, dir.path(), &[]);
    for host in [
        "[::127.0.0.1]".to_string(),
        "[0:0:0:0:0:0:127.0.0.1]".to_string(),
        "[::7f00:1]".to_string(),
        "[::ffff:7f00:1]".to_string(),
        "[::ffff:127.0.0.1]".to_string(),
        "[64:ff9b::7f00:1]".to_string(),
        "[2002:7f00:1::]".to_string(),
        "[::a9fe:a9fe]".to_string(),
    ] {
        let url = format!("http://{host}:{lport}/color");
        let e = strict
            .screenshot("web:local:v6", &ScreenshotRequest::new(&url))
            .await
            .unwrap_err();
        assert!(matches!(e, BrowserError::Refused(_)), "{url}: {e}");
    }
    assert_eq!(strict.stats().launches, 0, "a refused URL started Chromium");
    assert_eq!(local.hits(), 0, "a typed IPv6 spelling reached 127.0.0.1");

    // An allowed page whose redirect and image point at 127.0.0.2 spelled as IPv6: the
    // interception refuses both (Chromium itself connects to IPv4-mapped addresses).
    let allowed = service(&chromium, dir.path(), &["127.0.0.1"]);
    for target in [
        format!("http://[::ffff:127.0.0.2]:{port}/secret"),
        format!("http://[::127.0.0.2]:{port}/secret"),
        format!("http://[64:ff9b::7f00:2]:{port}/secret"),
    ] {
        let pointing = site_pointing_at(&target).await;
        let e = allowed
            .screenshot(
                "web:local:v6",
                &ScreenshotRequest::new(pointing.url("/redirect")),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, BrowserError::RefusedRequest(_)),
            "{target}: {e}"
        );
        allowed
            .screenshot(
                "web:local:v6",
                &ScreenshotRequest::new(pointing.url("/with-private-image")),
            )
            .await
            .unwrap();
    }
    assert_eq!(private.hits(), 0, "a request reached the private address");
    assert!(
        allowed.stats().requests_refused >= 6,
        "{:?}",
        allowed.stats()
    );
    allowed.shutdown().await;
}

/// `(pid, parent pid, real/effective/saved/fs uids)` of every process.
fn processes() -> Vec<(u32, u32, Vec<u32>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read_to_string(format!("/proc/{pid}/status")),
        ) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.push((pid, ppid, uids));
    }
    out
}

/// `pid` and all its descendants, with their uids.
fn process_tree(pid: u32) -> Vec<(u32, Vec<u32>)> {
    let all = processes();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    all.into_iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| (p.0, p.2))
        .collect()
}

/// The words of a process's command line (Chromium's helpers rewrite theirs into one string).
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split(['\0', ' '])
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `uid` may make a user namespace here (what Chromium's sandbox needs), found out
/// independently of ecdysis.
fn user_namespaces_for(uid: u32) -> bool {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("true");
    command.uid(uid).gid(uid);
    // SAFETY: unshare(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.status().is_ok_and(|s| s.success())
}

/// ecdysis runs as root here: Chromium must not. Every process of its tree runs as the
/// dedicated unprivileged user, its profile belongs to that user alone, it sees none of the
/// bot's environment, and it keeps its own sandbox where user namespaces allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_as_an_unprivileged_user_with_its_sandbox() {
    let Some(chromium) = chromium() else { return };
    if !is_root() {
        eprintln!("skipping: the uid switch is only made when ecdysis runs as root");
        return;
    }
    let site = serve_site("127.0.0.1").await;
    // A work directory the Chromium user can reach: profiles are made in it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let browser = service(&chromium, dir.path(), &["127.0.0.1"]);
    let mut request = ScreenshotRequest::new(site.url("/color"));
    request.wait = WaitFor::Delay(Duration::from_millis(300));
    let shot = browser.screenshot("web:local:uid", &request).await.unwrap();
    let img = decode(&shot.bytes);
    assert!(close(img.get_pixel(50, 50), [255, 0, 0]));

    let isolation = browser.isolation().expect("a local Chromium was started");
    let user = isolation.user.expect("root switches Chromium's user");
    assert_ne!(user.uid, 0);
    assert_ne!(user.gid, 0);
    let pid = browser.chromium_pid().await.unwrap();
    let tree = process_tree(pid);
    assert!(tree.len() >= 3, "Chromium runs several processes: {tree:?}");
    for (p, uids) in &tree {
        assert_eq!(uids.len(), 4, "{p}: {uids:?}");
        assert!(
            uids.iter().all(|u| *u == user.uid),
            "process {p} ({:?}) runs with uids {uids:?}",
            cmdline(*p).first()
        );
    }

    // Its profile: in the work directory, its user's alone.
    let profile = browser.profile_dir().await.unwrap();
    assert!(profile.starts_with(dir.path()), "{}", profile.display());
    let meta = std::fs::metadata(&profile).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    // None of the bot's environment: no variable of this process reaches Chromium, except the
    // few it needs (locale, time zone, fonts, proxies, PATH).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let needed = [
        "PATH",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "TZ",
        "CHROMIUM_FLAGS",
        "HOME",
    ];
    let ours: Vec<String> = std::env::vars()
        .filter(|(k, _)| !needed.contains(&k.as_str()) && !k.to_lowercase().ends_with("_proxy"))
        .filter(|(k, _)| !k.starts_with("FONTCONFIG_") && !k.starts_with("XDG_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert!(
        !ours.is_empty(),
        "this test process has no variables to leak"
    );
    let leaked: Vec<&String> = ours.iter().filter(|v| environ.contains(v)).collect();
    assert!(leaked.is_empty(), "leaked into Chromium: {leaked:?}");
    assert!(
        environ.contains(&format!("HOME={}", profile.display())),
        "{environ:?}"
    );

    // Its own sandbox: on wherever its user may make user namespaces, and then real (the
    // renderers live in namespaces of their own).
    let browser_cmd = cmdline(pid);
    assert_eq!(
        isolation.sandbox,
        user_namespaces_for(user.uid),
        "sandbox on/off does not match what this kernel allows"
    );
    assert_eq!(
        browser_cmd.iter().any(|a| a == "--no-sandbox"),
        !isolation.sandbox,
        "{browser_cmd:?}"
    );
    let own = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let namespaced = tree
        .iter()
        .filter(|(p, _)| std::fs::read_link(format!("/proc/{p}/ns/user")).is_ok_and(|ns| ns != own))
        .count();
    let listing: Vec<String> = tree
        .iter()
        .map(|(p, _)| {
            let ns = std::fs::read_link(format!("/proc/{p}/ns/user")).unwrap_or_default();
            let kind = cmdline(*p)
                .into_iter()
                .find(|a| a.starts_with("--type="))
                .unwrap_or_else(|| "browser".into());
            format!("{p} {kind} {}", ns.display())
        })
        .collect();
    if isolation.sandbox {
        // Renderers are forked from the sandboxed zygote (their command line is the zygote's).
        assert!(namespaced >= 2, "nothing runs in a sandbox: {listing:#?}");
    } else {
        assert_eq!(namespaced, 0, "{listing:#?}");
    }
    browser.shutdown().await;
    assert!(!profile.exists(), "the profile was not removed");
}

/// Where Chromium's sandbox cannot start (no unprivileged user namespaces, as in a default
/// Docker container), Chromium runs with `--no-sandbox`, still as the unprivileged user, and
/// the next launch goes straight there. A wrapper stands for such a kernel: it fails the way
/// Chromium does unless `--no-sandbox` is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_user_namespaces_chromium_runs_unsandboxed_as_the_same_user() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let attempts = dir.path().join("attempts.log");
    std::fs::write(&attempts, "").unwrap();
    std::fs::set_permissions(&attempts, std::fs::Permissions::from_mode(0o666)).unwrap();
    let wrapper = dir.path().join("chromium-without-userns");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in\n\
             *\" --no-sandbox \"*) echo unsandboxed >> {log}; exec {chromium} \"$@\";;\n\
             *) echo sandboxed >> {log}; echo '[1:1:FATAL:zygote_host_impl_linux.cc] No usable sandbox!' >&2; exit 1;;\n\
             esac\n",
            log = attempts.display(),
            chromium = chromium.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    let browser = service(&wrapper, &work, &["127.0.0.1"]);
    let request = ScreenshotRequest::new(site.url("/color"));
    browser.screenshot("web:local:ns", &request).await.unwrap();
    let isolation = browser.isolation().unwrap();
    assert!(!isolation.sandbox);
    assert_eq!(
        std::fs::read_to_string(&attempts).unwrap(),
        "sandboxed\nunsandboxed\n"
    );
    let pid = browser.chromium_pid().await.unwrap();
    assert!(cmdline(pid).iter().any(|a| a == "--no-sandbox"));
    if is_root() {
        let user = isolation.user.expect("still not root");
        for (p, uids) in process_tree(pid) {
            assert!(uids.iter().all(|u| *u == user.uid), "{p}: {uids:?}");
        }
    }
    assert!(
        isolation.to_string().contains("--no-sandbox"),
        "{isolation}"
    );
    // The failed attempt left no profile behind.
    let profiles = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(ecdysis::browser::PROFILE_PREFIX)
        })
        .count();
    assert_eq!(profiles, 1, "only the running browser's profile");

    // The next launch knows: no second sandboxed attempt.
    browser.shutdown().await;
    browser.screenshot("web:local:ns", &request).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&attempts).unwrap(),
        "sandboxed\nunsandboxed\nunsandboxed\n"
    );
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_h264_of_the_right_length_with_motion() {
    let Some(chromium) = chromium() else { return };
    if !ffmpeg() {
        return;
    }
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service(&chromium, dir.path(), &["127.0.0.1"]);
    let mut request = RecordRequest::new(site.url("/anim"));
    request.seconds = 3.0;
    request.viewport = Viewport {
        width: 640,
        height: 360,
        scale: 1.0,
    };
    let started = Instant::now();
    let recording = browser.record("web:local:v", &request).await.unwrap();
    eprintln!(
        "3 s recording: {} frames, {} bytes, {:?} total",
        recording.frames,
        recording.bytes.len(),
        started.elapsed()
    );
    assert_eq!(recording.format, VideoFormat::Mp4);
    assert!(recording.frames > 10, "{} frames", recording.frames);
    let file = dir.path().join("out.mp4");
    std::fs::write(&file, &recording.bytes).unwrap();
    let (codec, duration) = probe(&file);
    eprintln!("ffprobe: {codec}, {duration} s");
    assert_eq!(codec, "h264");
    assert!(
        (2.55..=3.45).contains(&duration),
        "duration {duration} s is not within 15 % of 3 s"
    );
    let distinct = distinct_frames(&file);
    assert!(distinct > 1, "{distinct} distinct frames");

    // GIF as an option.
    request.format = VideoFormat::Gif;
    request.seconds = 1.0;
    let gif = browser.record("web:local:v", &request).await.unwrap();
    assert_eq!(&gif.bytes[..6], b"GIF89a");

    // Longer than the configured maximum is refused up front.
    request.seconds = 31.0;
    let e = browser.record("web:local:v", &request).await.unwrap_err();
    assert!(matches!(e, BrowserError::BadRequest(_)), "{e}");
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ffmpeg_is_a_clear_error_on_use() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &["127.0.0.1"], BrowserSettings::default());
    opts.ffmpeg = PathBuf::from("/nonexistent/ffmpeg");
    let browser = BrowserService::new(opts, Source::Local(chromium)).unwrap();
    let e = browser
        .record("web:local:f", &RecordRequest::new("http://127.0.0.1:1/"))
        .await
        .unwrap_err();
    assert!(matches!(e, BrowserError::FfmpegMissing(_)), "{e}");
    assert!(e.to_string().contains("ECDYSIS_FFMPEG"), "{e}");
    assert_eq!(browser.stats().launches, 0);
}

/// Codec name and duration (seconds) as ffprobe reports them.
fn probe(file: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codec = json["streams"][0]["codec_name"]
        .as_str()
        .unwrap()
        .to_string();
    let duration = json["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (codec, duration)
}

/// How many different frames the video holds (by decoded-frame hash).
fn distinct_frames(file: &Path) -> usize {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let hashes: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next())
        .map(str::trim)
        .collect();
    hashes.len()
}

fn process_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_browser_is_relaunched_and_an_idle_one_closed() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service_with(
        &chromium,
        dir.path(),
        &["127.0.0.1"],
        BrowserSettings {
            idle: Duration::from_secs(2),
            ..BrowserSettings::default()
        },
    );
    let request = ScreenshotRequest::new(site.url("/color"));
    browser.screenshot("web:local:k", &request).await.unwrap();
    let pid = browser.chromium_pid().await.expect("a local Chromium runs");
    assert!(process_alive(pid));

    // SIGKILL mid-session: the next screenshot works on a new browser.
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shot = browser.screenshot("web:local:k", &request).await.unwrap();
    decode(&shot.bytes);
    assert_eq!(browser.stats().launches, 2);
    let second = browser.chromium_pid().await.unwrap();
    assert_ne!(second, pid);
    let profile = browser.profile_dir().await.expect("a profile");
    assert!(profile.is_dir());

    // Idle for longer than the timeout: Chromium is gone, its profile removed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while browser.is_running().await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !browser.is_running().await,
        "the idle browser was not closed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!process_alive(second), "Chromium {second} still runs");
    assert!(
        !profile.exists(),
        "profile {} left behind",
        profile.display()
    );
    let profiles = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(ecdysis::browser::PROFILE_PREFIX)
        })
        .count();
    assert_eq!(profiles, 0, "profiles left behind");
    // And it comes back on demand.
    browser.screenshot("web:local:k", &request).await.unwrap();
    assert_eq!(browser.stats().launches, 3);
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_stay_in_their_channel() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let browser = service(&chromium, dir.path(), &["127.0.0.1"]);
    browser
        .fetch_text("web:local:one", &site.url("/set-cookie"), 1000)
        .await
        .unwrap();
    let one = browser
        .fetch_text("web:local:one", &site.url("/show-cookie"), 1000)
        .await
        .unwrap();
    assert!(one.text.contains("flavour=pistachio"), "{}", one.text);
    let two = browser
        .fetch_text("web:local:two", &site.url("/show-cookie"), 1000)
        .await
        .unwrap();
    assert!(two.text.contains("cookie: none"), "{}", two.text);
    let cut = browser
        .fetch_text("web:local:one", &site.url("/show-cookie"), 5)
        .await
        .unwrap();
    assert!(cut.truncated && cut.text.chars().count() == 5);
    browser.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_posts_the_png_and_mp4_into_the_conversation() {
    let Some(chromium) = chromium() else { return };
    if !ffmpeg() {
        return;
    }
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let chromium = chromium.display().to_string();
    let server = common::server::Server::start(
        dir.path(),
        &[
            ("ECDYSIS_CHROMIUM", chromium.as_str()),
            ("ECDYSIS_BROWSER_ALLOW", "127.0.0.1"),
        ],
    )
    .await;

    let reply = reply_with_file(
        &server,
        "shots",
        &format!("/screenshot {} width=800 height=600", site.url("/color")),
    )
    .await;
    assert!(reply.0.starts_with("Screenshot of"), "{}", reply.0);
    assert_eq!(reply.1["mime"], "image/png");
    let bytes = fetch(&server, &reply.1).await;
    let img = decode(&bytes);
    assert_eq!(img.dimensions(), (800, 600));
    assert!(close(img.get_pixel(50, 50), [255, 0, 0]));

    let reply = reply_with_file(
        &server,
        "shots",
        &format!("/record {} seconds=2", site.url("/anim")),
    )
    .await;
    assert!(reply.0.starts_with("Recording of"), "{}", reply.0);
    assert_eq!(reply.1["mime"], "video/mp4");
    let bytes = fetch(&server, &reply.1).await;
    assert_eq!(&bytes[4..8], b"ftyp", "not an MP4");

    // Refusals are a clear reply with no file.
    for url in ["http://169.254.169.254/", "file:///etc/passwd"] {
        let text = server.ask("shots", &format!("/screenshot {url}")).await;
        assert!(text.contains("refused"), "{text}");
    }
    let usage = server.ask("shots", "/screenshot").await;
    assert!(usage.contains("Usage"), "{usage}");
}

/// Send `text`, wait for the reply, and return its text and first attachment.
async fn reply_with_file(
    server: &common::server::Server,
    conversation: &str,
    text: &str,
) -> (String, serde_json::Value) {
    let event_id = server.say(conversation, text).await;
    let reply = server
        .wait_replies_to(conversation, &event_id, 1)
        .await
        .remove(0);
    let attachment = reply["attachments"]
        .get(0)
        .unwrap_or_else(|| panic!("no attachment in {reply:#}\n{}", server.log()))
        .clone();
    (reply["text"].as_str().unwrap().to_string(), attachment)
}

async fn fetch(server: &common::server::Server, attachment: &serde_json::Value) -> Vec<u8> {
    let url = attachment["url"].as_str().unwrap();
    assert!(url.starts_with("/api/artifacts/"), "{url}");
    let response = reqwest::get(format!("{}{url}", server.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_cdp_endpoint_works_like_a_local_browser() {
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    // A Chromium of our own stands for Browser Rendering / browserless.
    let mut child = tokio::process::Command::new(&chromium)
        .args(ecdysis::browser::CHROMIUM_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("remote").display()
        ))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let ws = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, url)) = line.split_once("DevTools listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("Chromium exited before listening");
    })
    .await
    .unwrap();
    let remote = BrowserService::new(
        options(dir.path(), &["127.0.0.1"], BrowserSettings::default()),
        Source::Remote(ws.clone()),
    )
    .unwrap();
    let shot = remote
        .screenshot(
            "web:local:remote",
            &ScreenshotRequest::new(site.url("/color")),
        )
        .await
        .unwrap();
    let img = decode(&shot.bytes);
    assert!(close(img.get_pixel(50, 50), [255, 0, 0]));
    assert_eq!(remote.chromium_pid().await, None, "nothing was launched");
    // Closing our side leaves the remote browser running for its other clients.
    remote.shutdown().await;
    assert!(child.try_wait().unwrap().is_none());
    assert!(
        ecdysis::browser::probe(&Source::Remote(ws.clone()))
            .await
            .unwrap()
            .contains("Chrom")
    );
    // Its http://host:port address works too (the websocket is read from /json/version).
    let http = format!(
        "http://{}",
        ws.trim_start_matches("ws://").split('/').next().unwrap()
    );
    assert!(
        ecdysis::browser::probe(&Source::Remote(http.clone()))
            .await
            .unwrap()
            .contains("Chrom"),
        "{http}"
    );
    let _ = child.kill().await;
}

#[test]
fn doctor_reports_chromium_and_ffmpeg() {
    if chromium().is_none() || !ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let doctor = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecdysis"));
        command
            .arg("doctor")
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", dir.path().join("data"))
            .env_remove("DATABASE_URL")
            .env_remove("ECDYSIS_BLOB_URL")
            .env_remove("ECDYSIS_BROWSER_CDP_URL");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = doctor(&[]);
    assert!(out.contains("ok    chromium"), "{out}");
    // The line says how Chromium runs: as whom, with or without its own sandbox.
    let line = out.lines().find(|l| l.contains("chromium")).unwrap();
    if is_root() {
        assert!(line.contains("runs as uid "), "{line}");
        assert!(!line.contains("runs as uid 0 "), "{line}");
    }
    assert!(
        line.contains("with Chromium's sandbox") || line.contains("with --no-sandbox"),
        "{line}"
    );
    assert!(out.contains("ok    ffmpeg"), "{out}");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = doctor(&[("ECDYSIS_FFMPEG", "/nonexistent/ffmpeg")]);
    assert_eq!(code, Some(1), "{out}");
    let line = out.lines().find(|l| l.contains("ffmpeg")).unwrap();
    assert!(line.starts_with("FAIL  ffmpeg"), "{line}");
    assert!(line.contains("apt-get install ffmpeg"), "{line}");
    let (code, out) = doctor(&[("ECDYSIS_CHROMIUM", "/nonexistent/chromium")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  chromium"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discord_screenshot_and_record_post_files_in_the_thread() {
    use ecdysis_testkit::discord::{APPLICATION_ID, CHANNEL_ID, FakeDiscord, TOKEN};
    let Some(chromium) = chromium() else { return };
    if !ffmpeg() {
        return;
    }
    let site = serve_site("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDiscord::start().await.unwrap();
    let env: std::collections::HashMap<String, String> = [
        (
            "ECDYSIS_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", chromium.display().to_string()),
        ("ECDYSIS_BROWSER_ALLOW", "127.0.0.1".into()),
        ("DISCORD_TOKEN", TOKEN.into()),
        ("DISCORD_API_URL", fake.url()),
        ("DISCORD_APPLICATION_ID", APPLICATION_ID.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = ecdysis::config::Config::load_with(None, &|name| env.get(name).cloned()).unwrap();
    let app = ecdysis::server::app::App::open(config).await.unwrap();
    let workers = app.bus.start().await.unwrap();
    let gateway = ecdysis::platforms::discord::start(&app.config, app.discord.as_ref())
        .await
        .unwrap()
        .expect("a token starts the gateway");
    assert!(fake.wait_identified(1).await, "the bot identified");

    let wait_file = |thread: String| {
        let fake = &fake;
        async move {
            fake.wait_until(Duration::from_secs(60), |f| {
                f.posted()
                    .into_iter()
                    .find(|p| p.channel == thread && !p.files.is_empty())
            })
            .await
            .unwrap_or_else(|| panic!("no file posted; posted: {:#?}", fake.posted()))
        }
    };
    let thread = fake.say_in_guild(
        CHANNEL_ID,
        &format!("/screenshot {} width=640 height=480", site.url("/color")),
        true,
    );
    let posted = wait_file(thread).await;
    assert!(
        posted.content.starts_with("Screenshot of"),
        "{}",
        posted.content
    );
    assert_eq!(posted.files[0].filename, "screenshot.png");
    let img = decode(&posted.files[0].bytes);
    assert_eq!(img.dimensions(), (640, 480));
    assert!(close(img.get_pixel(50, 50), [255, 0, 0]));

    let thread = fake.say_in_guild(
        CHANNEL_ID,
        &format!("/record {} seconds=1", site.url("/anim")),
        true,
    );
    let posted = wait_file(thread).await;
    assert!(
        posted.content.starts_with("Recording of"),
        "{}",
        posted.content
    );
    assert_eq!(posted.files[0].filename, "recording.mp4");
    assert_eq!(&posted.files[0].bytes[4..8], b"ftyp");

    gateway.shutdown().await;
    workers.shutdown(Duration::from_secs(5)).await;
    if let Some(browser) = &app.browser {
        browser.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_sees_its_screenshot_and_the_thread_gets_the_file() {
    use ecdysis_testkit::llm::{FakeLlm, Reply as Llm};
    let Some(chromium) = chromium() else { return };
    let site = serve_site("127.0.0.1").await;
    let fake = FakeLlm::start().await.unwrap();
    fake.push(Llm::tool(
        "browser_screenshot",
        serde_json::json!({ "url": site.url("/color"), "width": 640, "height": 480 }),
    ));
    fake.push(Llm::text("The page shows a red block and a blue box."));
    let dir = tempfile::tempdir().unwrap();
    let chromium = chromium.display().to_string();
    let base = fake.anthropic_base_url();
    let server = common::server::Server::start(
        dir.path(),
        &[
            ("ECDYSIS_CHROMIUM", chromium.as_str()),
            ("ECDYSIS_BROWSER_ALLOW", "127.0.0.1"),
            ("ECDYSIS_SANDBOX", "off"),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", base.as_str()),
        ],
    )
    .await;
    let (text, attachment) = reply_with_file(&server, "look", "what is on my page?").await;
    assert_eq!(text, "The page shows a red block and a blue box.");
    assert_eq!(attachment["mime"], "image/png");
    let img = decode(&fetch(&server, &attachment).await);
    assert_eq!(img.dimensions(), (640, 480));

    // Every request offers the browser tools; the second carries the image for the model.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one tool step, then the answer");
    let tools = requests[0].body["tools"].to_string();
    for name in ["browser_screenshot", "browser_record", "fetch_url"] {
        assert!(tools.contains(name), "{name} not offered: {tools}");
    }
    let messages = requests[1].body["messages"].as_array().unwrap();
    let result = &messages.last().unwrap()["content"][0];
    assert_eq!(result["type"], "tool_result");
    let image = result["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|block| block["type"] == "image")
        .unwrap_or_else(|| panic!("no image block in {result:#}"));
    assert_eq!(image["source"]["media_type"], "image/png");
    assert!(image["source"]["data"].as_str().unwrap().len() > 100);
}
