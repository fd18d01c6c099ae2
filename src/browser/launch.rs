//! Starting and stopping the browser: launching a local Chromium (fresh profile, server
//! flags, dies with this process) or connecting to a remote CDP endpoint, watching the
//! connection, closing, and the `doctor` probe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chromiumoxide::Browser;
use chromiumoxide::handler::HandlerConfig;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tracing::debug;

use super::{BrowserError, BrowserService, Running, Source};
use crate::config::BrowserSettings;

/// The flags every local Chromium runs with (a server: no sandbox, no GPU, no background
/// traffic, a fresh profile).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    // Site isolation off: cross-site iframes then load in the page's own process, where the
    // request interception sees them (an out-of-process iframe's requests bypass it).
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,CertificateTransparencyComponentUpdater,IsolateOrigins,site-per-process",
    "--disable-site-isolation-trials",
    "--dns-prefetch-disable",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-hang-monitor",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
];

/// Names looked up on PATH when `ECDYSIS_CHROMIUM` is not set.
const CHROMIUM_NAMES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
];

/// How long Chromium may take to print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The Chromium to launch: `ECDYSIS_CHROMIUM` (a path or a name on PATH), else the first of
/// `chromium`, `chromium-browser`, `google-chrome` found on PATH.
pub fn find_chromium(settings: &BrowserSettings) -> Option<PathBuf> {
    match &settings.chromium {
        Some(path) => find_executable(path),
        None => CHROMIUM_NAMES
            .iter()
            .find_map(|name| find_executable(Path::new(name))),
    }
}

/// An executable by path, or by name on PATH.
pub fn find_executable(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 || path.is_absolute() {
        return is_executable(path).then(|| path.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(path))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

impl BrowserService {
    pub(super) async fn launch(&self, generation: u64) -> Result<Running, BrowserError> {
        let config = HandlerConfig {
            viewport: None,
            request_timeout: self.inner.options.settings.navigation_timeout
                + Duration::from_secs(5),
            ..HandlerConfig::default()
        };
        match &self.inner.source {
            Source::Remote(url) => {
                let (browser, handler) = tokio::time::timeout(
                    LAUNCH_TIMEOUT,
                    Browser::connect_with_config(url.clone(), config),
                )
                .await
                .map_err(|_| BrowserError::Launch(format!("{} did not answer", self.inner.source)))?
                .map_err(|e| BrowserError::Launch(format!("{}: {e}", self.inner.source)))?;
                let alive = Arc::new(AtomicBool::new(true));
                Ok(Running {
                    browser,
                    child: None,
                    pid: None,
                    profile: None,
                    handler: drive(handler, alive.clone()),
                    alive,
                    contexts: HashMap::new(),
                    generation,
                })
            }
            Source::Local(path) => self.launch_local(path, config, generation).await,
        }
    }

    async fn launch_local(
        &self,
        path: &Path,
        config: HandlerConfig,
        generation: u64,
    ) -> Result<Running, BrowserError> {
        let profile = self
            .inner
            .options
            .work_dir
            .join(format!("profile-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(profile.join("Default"))
            .await
            .map_err(|e| {
                BrowserError::Launch(format!("cannot create {}: {e}", profile.display()))
            })?;
        // Never predict the network: no speculative connections (preconnects) that the request
        // interception cannot see.
        tokio::fs::write(
            profile.join("Default").join("Preferences"),
            r#"{"net":{"network_prediction_options":2}}"#,
        )
        .await
        .map_err(|e| BrowserError::Launch(format!("cannot write the profile: {e}")))?;
        let mut command = tokio::process::Command::new(path);
        command
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(&self.inner.options.extra_args)
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command.spawn().map_err(|e| {
            BrowserError::Launch(format!(
                "cannot run {}: {e} (install Chromium or set ECDYSIS_CHROMIUM)",
                path.display()
            ))
        })?;
        let pid = child.id();
        let Some(stderr) = child.stderr.take() else {
            return Err(BrowserError::Launch("no stderr from Chromium".into()));
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(LAUNCH_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, url)) = line.split_once("DevTools listening on ") {
                    return Some(url.trim().to_string());
                }
                if seen.len() < 20 {
                    seen.push(line);
                }
            }
            None
        })
        .await;
        let ws_url = match found {
            Ok(Some(url)) => url,
            outcome => {
                let _ = child.kill().await;
                let _ = tokio::fs::remove_dir_all(&profile).await;
                let why = if outcome.is_err() {
                    "it did not start in time"
                } else {
                    "it exited"
                };
                return Err(BrowserError::Launch(format!(
                    "{} failed: {why}: {}",
                    path.display(),
                    seen.join(" | ")
                )));
            }
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                debug!(target: "chromium", "{line}");
            }
        });
        let (browser, handler) = match Browser::connect_with_config(ws_url, config).await {
            Ok(pair) => pair,
            Err(e) => {
                let _ = child.kill().await;
                let _ = tokio::fs::remove_dir_all(&profile).await;
                return Err(BrowserError::Launch(format!(
                    "cannot connect to Chromium: {e}"
                )));
            }
        };
        let alive = Arc::new(AtomicBool::new(true));
        Ok(Running {
            browser,
            child: Some(child),
            pid,
            profile: Some(profile),
            handler: drive(handler, alive.clone()),
            alive,
            contexts: HashMap::new(),
            generation,
        })
    }
}

/// Poll the CDP connection until it ends; then the browser is gone.
pub(super) fn drive(mut handler: chromiumoxide::Handler, alive: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = handler.next().await {
            if let Err(e) = event {
                debug!(error = %e, "the CDP connection ended");
                break;
            }
        }
        alive.store(false, Ordering::SeqCst);
    })
}

/// Close a browser: politely, then by force; remove its profile.
pub(super) async fn close_running(mut running: Running, source: &Source) {
    match source {
        Source::Local(_) => {
            if running.alive.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(Duration::from_secs(2), running.browser.close()).await;
            }
            if let Some(child) = running.child.as_mut() {
                let exited = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
                if exited.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
        Source::Remote(_) => {
            for (_, context) in running.contexts.drain() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    running.browser.dispose_browser_context(context.id),
                )
                .await;
            }
        }
    }
    running.handler.abort();
    if let Some(profile) = running.profile.take() {
        // Chromium keeps its singleton socket in a directory of its own under /tmp, linked
        // from the profile; a killed Chromium leaves it behind.
        if let Ok(socket) = tokio::fs::read_link(profile.join("SingletonSocket")).await
            && let Some(dir) = socket.parent()
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("org.chromium.Chromium."))
        {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        // Chromium's helpers may still be writing for a moment.
        for _ in 0..5 {
            if tokio::fs::remove_dir_all(&profile).await.is_ok() || !profile.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Make the child die with this process, so a killed bot leaves no Chromium behind.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut tokio::process::Command) {}

/// One line about the browser for `doctor`: the local Chromium's version, or the remote
/// endpoint's product after connecting to it.
pub async fn probe(source: &Source) -> Result<String, String> {
    match source {
        Source::Local(path) => {
            let run = tokio::process::Command::new(path)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(Duration::from_secs(30), run).await {
                Err(_) => Err(format!("`{} --version` did not answer", path.display())),
                Ok(Err(e)) => Err(format!("cannot run {}: {e}", path.display())),
                Ok(Ok(out)) if !out.status.success() => Err(format!(
                    "`{} --version` failed with {}",
                    path.display(),
                    out.status
                )),
                Ok(Ok(out)) => Ok(format!(
                    "{} ({})",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    path.display()
                )),
            }
        }
        Source::Remote(url) => {
            let connect = async {
                let (browser, handler) = Browser::connect(url.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let alive = Arc::new(AtomicBool::new(true));
                let task = drive(handler, alive);
                let version = browser.version().await.map_err(|e| e.to_string());
                task.abort();
                version.map(|v| v.product)
            };
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Err(_) => Err(format!("{source} did not answer within 10 s")),
                Ok(Err(e)) => Err(format!("{source}: {e}")),
                Ok(Ok(product)) => Ok(format!("{product} at {source}")),
            }
        }
    }
}
