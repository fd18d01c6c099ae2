//! Who a local Chromium runs as. When ecdysis is root, Chromium gets a dedicated unprivileged
//! uid/gid of its own (like the sandbox's per-channel users: a high number no account uses,
//! `nobody` where that one is not mapped), its profile belongs to that user, and it sees none
//! of ecdysis's environment (API keys, tokens, the database URL). Chromium's own sandbox is
//! tried first and left off only where it cannot start (no unprivileged user namespaces).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The dedicated Chromium user: just below the sandbox's per-channel range (1 600 000 000 and
/// up), so neither ever shares a uid with the other.
pub const CHROMIUM_UID: u32 = 1_599_999_999;
/// The fallback where [`CHROMIUM_UID`] is not mapped (a container with few ids): `nobody`.
pub const NOBODY_UID: u32 = 65_534;

/// Environment variables Chromium (and Debian's `/usr/bin/chromium` wrapper) may use; every
/// other variable of ecdysis is left out.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "TZ",
    "FONTCONFIG_PATH",
    "FONTCONFIG_FILE",
    "CHROMIUM_FLAGS",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// An unprivileged user and group to run Chromium as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// How a local Chromium was started: as whom, and with or without its own sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The user it runs as; `None`: ecdysis's own user.
    pub user: Option<RunAs>,
    /// Chromium's own sandbox is on (no `--no-sandbox`).
    pub sandbox: bool,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.user {
            Some(user) => write!(f, "runs as uid {}", user.uid)?,
            // SAFETY: geteuid has no preconditions.
            None if unsafe { libc::geteuid() } == 0 => write!(f, "runs as root")?,
            None => write!(f, "runs as ecdysis's user")?,
        }
        if self.sandbox {
            write!(f, " with Chromium's sandbox")
        } else {
            write!(
                f,
                " with --no-sandbox (Chromium's sandbox needs unprivileged user namespaces)"
            )
        }
    }
}

impl RunAs {
    /// The user Chromium runs as: `None` when ecdysis is not root (Chromium then runs as
    /// ecdysis's user), else [`CHROMIUM_UID`] or `nobody`, whichever this user namespace maps.
    pub fn for_chromium() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let uids = std::fs::read_to_string("/proc/self/uid_map").ok();
        let gids = std::fs::read_to_string("/proc/self/gid_map").ok();
        [CHROMIUM_UID, NOBODY_UID]
            .into_iter()
            .find(|id| {
                uids.as_deref().is_none_or(|m| is_mapped(m, *id))
                    && gids.as_deref().is_none_or(|m| is_mapped(m, *id))
            })
            .map(|id| Self { uid: id, gid: id })
    }

    /// Whether this user can reach (search) `dir`: every directory from `/` down to it lets
    /// the user through.
    pub fn can_reach(&self, dir: &Path) -> bool {
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return false;
        };
        dir.ancestors().all(|d| {
            std::fs::metadata(d).is_ok_and(|m| {
                let mode = m.permissions().mode();
                if m.uid() == self.uid {
                    mode & 0o100 != 0
                } else if m.gid() == self.gid {
                    mode & 0o010 != 0
                } else {
                    mode & 0o001 != 0
                }
            })
        })
    }
}

/// Whether `id` falls in one of the ranges of a `/proc/self/{uid,gid}_map`.
fn is_mapped(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(inside)), Some(Ok(_)), Some(Ok(count))) => {
                (inside..inside.saturating_add(count)).contains(&(id as u64))
            }
            _ => false,
        }
    })
}

/// Make a fresh profile directory `profile` (with `Default/Preferences`) that belongs to
/// `user` alone (mode 0700).
pub fn create_profile(profile: &Path, user: Option<RunAs>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    // Fails when the name exists: never reuses (or follows a link planted at) the name.
    builder.create(profile)?;
    let default = profile.join("Default");
    builder.create(&default)?;
    // Never predict the network: no speculative connections (preconnects) that the request
    // interception cannot see.
    let preferences = default.join("Preferences");
    std::fs::write(&preferences, r#"{"net":{"network_prediction_options":2}}"#)?;
    if let Some(user) = user {
        for path in [&preferences, &default, profile] {
            std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(())
}

/// Where profiles go: `work_dir` when `user` can reach it, else the system's temporary
/// directory (a private data directory, mode 0700, keeps other users out).
pub fn profile_root(work_dir: &Path, user: Option<RunAs>) -> io::Result<PathBuf> {
    if !work_dir.is_dir() {
        if let Some(parent) = work_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // Others may pass through to a profile of their own, but not list the directory.
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o711).create(work_dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let Some(user) = user else {
        return Ok(work_dir.to_path_buf());
    };
    if user.can_reach(work_dir) {
        return Ok(work_dir.to_path_buf());
    }
    let tmp = std::env::temp_dir();
    if user.can_reach(&tmp) {
        Ok(tmp)
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "uid {} can reach neither {} nor {}",
                user.uid,
                work_dir.display(),
                tmp.display()
            ),
        ))
    }
}

/// Set `command` up to run as `user` with only the kept environment, its home in `profile`.
pub fn apply(command: &mut tokio::process::Command, user: Option<RunAs>, profile: &Path) {
    command.env_clear();
    for name in KEPT_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .env("HOME", profile)
        .env("XDG_CONFIG_HOME", profile.join(".config"))
        .env("XDG_CACHE_HOME", profile.join(".cache"))
        .current_dir(profile);
    if let Some(user) = user {
        // The standard library also drops root's supplementary groups when the uid changes.
        command.uid(user.uid).gid(user.gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_are_read() {
        let full = "         0          0 4294967295\n";
        assert!(is_mapped(full, CHROMIUM_UID));
        let container = "         0     100000      65536\n";
        assert!(!is_mapped(container, CHROMIUM_UID));
        assert!(is_mapped(container, NOBODY_UID));
        assert!(!is_mapped("", 0));
        assert!(!is_mapped("garbage", 0));
    }

    #[test]
    fn reachability_follows_the_mode_bits() {
        let user = RunAs {
            uid: CHROMIUM_UID,
            gid: CHROMIUM_UID,
        };
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            assert!(
                !user.can_reach(&inner),
                "0700 of another user lets it through"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(user.can_reach(&inner), "0711 keeps it out");
        assert!(!user.can_reach(Path::new("/nonexistent/x")));
    }

    #[test]
    fn profiles_belong_to_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("p");
        create_profile(&profile, None).unwrap();
        let meta = std::fs::metadata(&profile).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(profile.join("Default/Preferences").is_file());
        // A second profile of the same name is refused, never reused.
        assert!(create_profile(&profile, None).is_err());
    }
}
