//! Starting and stopping the browser: launching a local Chromium (fresh profile, server
//! flags, an unprivileged user when ecdysis is root, its own sandbox where it can start, dies
//! with this process) or connecting to a remote CDP endpoint, watching the connection,
//! closing, and the `doctor` probe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tracing::{debug, warn};

use super::cdp::Browser;
use super::identity::{self, Isolation, RunAs};
use super::{BrowserError, BrowserService, Running, Source};
use crate::config::BrowserSettings;

/// The flags every local Chromium runs with (a server: no GPU, no background traffic, a fresh
/// profile). [`NO_SANDBOX`] is dropped where Chromium's own sandbox can start.
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

/// The flag that turns Chromium's own sandbox off.
pub const NO_SANDBOX: &str = "--no-sandbox";

/// Profile directories are named `<prefix><uuid>`.
pub const PROFILE_PREFIX: &str = "chromium-profile-";

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
        // Commands answer at once but for a navigation, which may take its whole time.
        let timeout = self.inner.options.settings.navigation_timeout + Duration::from_secs(5);
        match &self.inner.source {
            Source::Remote(url) => {
                let browser = tokio::time::timeout(LAUNCH_TIMEOUT, Browser::connect(url, timeout))
                    .await
                    .map_err(|_| {
                        BrowserError::Launch(format!("{} did not answer", self.inner.source))
                    })?
                    .map_err(|e| BrowserError::Launch(format!("{}: {e}", self.inner.source)))?;
                Ok(Running {
                    browser,
                    child: None,
                    pid: None,
                    profile: None,
                    isolation: None,
                    contexts: HashMap::new(),
                    generation,
                })
            }
            Source::Local(path) => self.launch_local(path, timeout, generation).await,
        }
    }

    async fn launch_local(
        &self,
        path: &Path,
        timeout: Duration,
        generation: u64,
    ) -> Result<Running, BrowserError> {
        let options = &self.inner.options;
        let started = start_local(
            path,
            &options.work_dir,
            &options.extra_args,
            self.inner.run_as,
            self.inner.known_sandbox(),
        )
        .await?;
        self.inner.set_isolation(started.isolation);
        let Started {
            mut child,
            ws_url,
            profile,
            isolation,
        } = started;
        let pid = child.id();
        let browser = match Browser::connect(&ws_url, timeout).await {
            Ok(browser) => browser,
            Err(e) => {
                let _ = child.kill().await;
                let _ = tokio::fs::remove_dir_all(&profile).await;
                return Err(BrowserError::Launch(format!(
                    "cannot connect to Chromium: {e}"
                )));
            }
        };
        Ok(Running {
            browser,
            child: Some(child),
            pid,
            profile: Some(profile),
            isolation: Some(isolation),
            contexts: HashMap::new(),
            generation,
        })
    }
}

/// A local Chromium that printed its DevTools address.
struct Started {
    child: Child,
    ws_url: String,
    profile: PathBuf,
    isolation: Isolation,
}

/// Why one attempt to start Chromium failed.
enum Attempt {
    /// The program could not be run at all: no point in trying other flags.
    Fatal(String),
    /// It ran but never listened (for instance: its sandbox cannot start here).
    Exited(String),
}

/// Start a local Chromium as `user` (ecdysis's own user when `None`), in a fresh profile under
/// `work_dir` (or the temporary directory when `user` cannot reach `work_dir`). With
/// `sandbox` unknown, Chromium's own sandbox is tried first and `--no-sandbox` only used when
/// that attempt fails.
async fn start_local(
    path: &Path,
    work_dir: &Path,
    extra_args: &[String],
    user: Option<RunAs>,
    sandbox: Option<bool>,
) -> Result<Started, BrowserError> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Chromium refuses to run as root with its sandbox.
    let sandbox = if root && user.is_none() {
        Some(false)
    } else {
        sandbox
    };
    let attempts: &[bool] = match sandbox {
        Some(true) => &[true],
        Some(false) => &[false],
        None => &[true, false],
    };
    let dir = work_dir.to_path_buf();
    let profiles = tokio::task::spawn_blocking(move || identity::profile_root(&dir, user))
        .await
        .map_err(|e| BrowserError::Launch(format!("profile set-up failed: {e}")))?
        .map_err(|e| {
            BrowserError::Launch(format!(
                "cannot prepare a profile directory under {}: {e}",
                work_dir.display()
            ))
        })?;
    let mut failures = Vec::new();
    for &with_sandbox in attempts {
        match spawn_once(path, &profiles, extra_args, user, with_sandbox).await {
            Ok((child, ws_url, profile)) => {
                let isolation = Isolation {
                    user,
                    sandbox: with_sandbox,
                };
                if let Some(first) = failures.first() {
                    warn!(
                        %isolation,
                        sandboxed_attempt = %first,
                        "Chromium's sandbox could not start here (it needs unprivileged user namespaces); Chromium runs with --no-sandbox"
                    );
                }
                return Ok(Started {
                    child,
                    ws_url,
                    profile,
                    isolation,
                });
            }
            Err(Attempt::Fatal(e)) => return Err(BrowserError::Launch(e)),
            Err(Attempt::Exited(e)) => failures.push(e),
        }
    }
    Err(BrowserError::Launch(
        failures.join("; without its sandbox: "),
    ))
}

/// Run Chromium once and wait for its DevTools address; the child, the address and the
/// profile directory it uses.
async fn spawn_once(
    path: &Path,
    profiles: &Path,
    extra_args: &[String],
    user: Option<RunAs>,
    sandbox: bool,
) -> Result<(Child, String, PathBuf), Attempt> {
    let profile = profiles.join(format!("{PROFILE_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let dir = profile.clone();
    tokio::task::spawn_blocking(move || identity::create_profile(&dir, user))
        .await
        .map_err(|e| Attempt::Fatal(format!("profile set-up failed: {e}")))?
        .map_err(|e| Attempt::Fatal(format!("cannot create {}: {e}", profile.display())))?;
    let mut command = tokio::process::Command::new(path);
    command
        .args(
            CHROMIUM_FLAGS
                .iter()
                .filter(|flag| !sandbox || **flag != NO_SANDBOX),
        )
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra_args)
        .arg("about:blank")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    identity::apply(&mut command, user, &profile);
    die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&profile).await;
            return Err(Attempt::Fatal(format!(
                "cannot run {}: {e} (install Chromium or set ECDYSIS_CHROMIUM)",
                path.display()
            )));
        }
    };
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill().await;
        let _ = tokio::fs::remove_dir_all(&profile).await;
        return Err(Attempt::Fatal("no stderr from Chromium".into()));
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
            // Chromium's D-Bus complaints say nothing about why it stopped.
            let said: Vec<&str> = seen
                .iter()
                .map(String::as_str)
                .filter(|l| !l.contains("dbus"))
                .collect();
            return Err(Attempt::Exited(format!(
                "{} failed: {why}: {}",
                path.display(),
                said.join(" | ")
            )));
        }
    };
    // Keep draining stderr so Chromium never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            debug!(target: "chromium", "{line}");
        }
    });
    Ok((child, ws_url, profile))
}

/// Close a browser: politely, then by force; remove its profile.
pub(super) async fn close_running(mut running: Running, source: &Source) {
    match source {
        Source::Local(_) => {
            if running.browser.is_connected() {
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
                    running.browser.dispose_context(&context.id),
                )
                .await;
            }
        }
    }
    running.browser.disconnect();
    if let Some(profile) = running.profile.take() {
        remove_profile(&profile).await;
    }
}

/// Remove a profile directory and the singleton-socket directory it links to.
async fn remove_profile(profile: &Path) {
    // Chromium keeps its singleton socket in a directory of its own under /tmp, linked from
    // the profile; a killed Chromium leaves it behind.
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
        if tokio::fs::remove_dir_all(profile).await.is_ok() || !profile.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// One line about the browser for `doctor`: the local Chromium's version and how it runs (as
/// whom, with or without its own sandbox; it is started once to find out), or the remote
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
                Ok(Ok(out)) => {
                    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    // Start it for real, the way the service does: as whom, and whether its
                    // own sandbox works here.
                    let started = start_local(
                        path,
                        &std::env::temp_dir(),
                        &[],
                        RunAs::for_chromium(),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    let Started {
                        mut child,
                        profile,
                        isolation,
                        ..
                    } = started;
                    let _ = child.kill().await;
                    let _ = child.wait().await;
                    remove_profile(&profile).await;
                    Ok(format!("{version} ({}); {isolation}", path.display()))
                }
            }
        }
        Source::Remote(url) => {
            let connect = async {
                let browser = Browser::connect(url, Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string())?;
                let version = browser.version().await.map_err(|e| e.to_string());
                browser.disconnect();
                version
            };
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Err(_) => Err(format!("{source} did not answer within 10 s")),
                Ok(Err(e)) => Err(format!("{source}: {e}")),
                Ok(Ok(product)) => Ok(format!("{product} at {source}")),
            }
        }
    }
}
