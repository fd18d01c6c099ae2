//! A control group per sandbox run, so that the whole sandbox — every process, its page cache
//! and the files in its tmpfs `/tmp` and `/dev/shm` — shares one memory limit and one process
//! limit, however many processes a command starts.
//!
//! cgroup v2 (`memory.max`, `memory.swap.max`, `pids.max`) and v1 (`memory.limit_in_bytes`,
//! `memory.memsw.limit_in_bytes`, `pids.max` in their own hierarchies) look the same to callers.
//! Groups are made under ecdysis's own cgroup (from `/proc/self/cgroup`), named
//! `ecdysis-<pid>-<id>`, joined by the sandbox's first process before it executes bubblewrap
//! (through `cgroup.procs` files opened here, as the process that may move it), emptied and
//! removed after the run. [`Cgroups::detect`] says why when no group can be had (no
//! permission, no memory controller); the sandbox then limits each process instead.

use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::debug;

/// Run groups are `ecdysis-<pid of the server>-<random>`.
const PREFIX: &str = "ecdysis-";
/// Where ecdysis moves itself on cgroup v2 when its own group must hand its controllers down.
const SERVER_LEAF: &str = "ecdysis.server";
/// How long removing a group may wait for its last processes to be reaped.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// Which cgroup interface is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where run groups are made.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// One unified hierarchy; `pids` tells whether the pids controller is there too.
    V2 { parent: PathBuf, pids: bool },
    /// The memory hierarchy, and the pids hierarchy when it is mounted.
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
}

/// Run groups can be made here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroups {
    layout: Layout,
}

/// Why run groups cannot be had: shown in `doctor`, the logs and the sandbox's description.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/cgroup` or `/proc/self/mountinfo` could not be read.
    #[error("cannot read {path}: {source}")]
    ReadProc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// Neither hierarchy can have run groups: why v2 was refused (`None` when this process
    /// has no v2 entry in `/proc/self/cgroup`), and v1 has no memory controller.
    #[error("{}cgroup v1: no memory controller mounted", v2_refusal(.v2))]
    NoHierarchy {
        #[source]
        v2: Option<V2Error>,
    },
    /// The probe could not make a group.
    #[error("cannot make a group under {under}: {source}")]
    Create {
        /// [`Cgroups::describe`] of where the group was to be made.
        under: String,
        #[source]
        source: io::Error,
    },
    /// The probe could not remove the group it made.
    #[error("cannot remove a group under {under}: {source}")]
    Remove {
        /// [`Cgroups::describe`] of where the group was made.
        under: String,
        #[source]
        source: io::Error,
    },
    /// The blocking detection task did not finish (it panicked or was cancelled).
    #[error("cgroup detection failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Groups could be made, but a test command run in one failed where it ran without.
    #[error("a test command did not run inside a cgroup (see the debug log)")]
    TestCommand,
}

/// Why the cgroup v2 hierarchy cannot have run groups.
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// No cgroup2 mount shows this process's group.
    #[error("not mounted")]
    NotMounted,
    #[error("cannot read {}/cgroup.controllers: {source}", .dir.display())]
    ReadControllers {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the memory controller is not available in {} (it is not delegated here)",
        .dir.display()
    )]
    NoMemoryController { dir: PathBuf },
    /// The group has processes, and this one could not move into a leaf below it.
    #[error(
        "{} has processes and ecdysis cannot move into a leaf group: {source}",
        .dir.display()
    )]
    NoLeaf {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Other processes share the group, so its controllers cannot be handed down.
    #[error(
        "cannot enable the memory controller for groups below {}: {source} (other processes share it; run ecdysis in a group of its own, e.g. systemd Delegate=yes)",
        .dir.display()
    )]
    Shared {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable the memory controller below {}: {source}", .dir.display())]
    Enable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `cgroup v2: <why>; ` in front of the v1 reason, when v2 was tried.
fn v2_refusal(v2: &Option<V2Error>) -> String {
    v2.as_ref()
        .map(|e| format!("cgroup v2: {e}; "))
        .unwrap_or_default()
}

/// One mounted cgroup hierarchy from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    /// The cgroup path that the mount point shows.
    root: String,
    point: PathBuf,
    /// `None` for cgroup2; the controllers of a v1 hierarchy.
    controllers: Option<Vec<String>>,
}

impl Cgroups {
    /// Find where this process may make run groups, and check that it can (a group is made,
    /// limited and removed). The error says why not, for `doctor` and the logs.
    pub fn detect() -> Result<Self, CgroupError> {
        let read = |path: &'static str| {
            fs::read_to_string(path).map_err(|source| CgroupError::ReadProc { path, source })
        };
        let own = read("/proc/self/cgroup")?;
        let mounts = read("/proc/self/mountinfo")?;
        let found = Self::locate(&own, &mounts)?;
        found.probe()?;
        found.remove_stale();
        Ok(found)
    }

    /// Work out the layout from `/proc/self/cgroup` and `/proc/self/mountinfo`, preparing a
    /// v2 group to hand its controllers down when it has to.
    fn locate(own: &str, mountinfo: &str) -> Result<Self, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let mut v2 = None;
        if let Some(path) = own_path(own, None) {
            let unified = mounts.iter().find(|m| m.controllers.is_none());
            match unified.and_then(|m| m.resolve(&path)) {
                Some(dir) => match prepare_v2(&dir) {
                    Ok(layout) => return Ok(Self { layout }),
                    Err(e) => v2 = Some(e),
                },
                None => v2 = Some(V2Error::NotMounted),
            }
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let path = own_path(own, Some(controller))?;
            mounts
                .iter()
                .find(|m| m.has(controller))
                .and_then(|m| m.resolve(&path))
        };
        if let Some(memory) = v1("memory")
            && memory.join("memory.limit_in_bytes").exists()
        {
            let pids = v1("pids").filter(|p| p.join("cgroup.procs").exists());
            return Ok(Self {
                layout: Layout::V1 { memory, pids },
            });
        }
        Err(CgroupError::NoHierarchy { v2 })
    }

    pub fn version(&self) -> Version {
        match self.layout {
            Layout::V1 { .. } => Version::V1,
            Layout::V2 { .. } => Version::V2,
        }
    }

    /// True when the number of processes is limited for the whole group too.
    pub fn limits_processes(&self) -> bool {
        match &self.layout {
            Layout::V2 { pids, .. } => *pids,
            Layout::V1 { pids, .. } => pids.is_some(),
        }
    }

    /// `cgroup v2 (/sys/fs/cgroup/…)`, for `doctor` and the logs.
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::V2 { parent, .. } => format!("cgroup v2 under {}", parent.display()),
            Layout::V1 { memory, pids } => format!(
                "cgroup v1 under {}{}",
                memory.display(),
                pids.as_ref()
                    .map(|p| format!(" and {}", p.display()))
                    .unwrap_or_default()
            ),
        }
    }

    /// The directories run groups are made in.
    fn parents(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2 { parent, .. } => vec![parent.as_path()],
            Layout::V1 { memory, pids } => {
                let mut parents = vec![memory.as_path()];
                parents.extend(pids.as_deref());
                parents
            }
        }
    }

    /// Make a group for one run: at most `memory_bytes` of memory (no swap) and `max_pids`
    /// tasks. Blocking (a few small writes to the cgroup file system).
    pub fn create(&self, memory_bytes: u64, max_pids: u64) -> io::Result<RunGroup> {
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut group = RunGroup {
            version: self.version(),
            dirs: Vec::new(),
            procs: Vec::new(),
            removed: false,
        };
        let memory = memory_bytes.to_string();
        let pids = max_pids.to_string();
        match &self.layout {
            Layout::V2 {
                parent,
                pids: has_pids,
            } => {
                let dir = group.make(parent, &name)?;
                write(&dir, "memory.max", &memory)?;
                write_if_present(&dir, "memory.swap.max", "0")?;
                if *has_pids {
                    write(&dir, "pids.max", &pids)?;
                }
            }
            Layout::V1 {
                memory: memory_root,
                pids: pids_root,
            } => {
                let dir = group.make(memory_root, &name)?;
                write(&dir, "memory.limit_in_bytes", &memory)?;
                // Memory plus swap: the same number, so no swap. Absent without swap accounting.
                write_if_present(&dir, "memory.memsw.limit_in_bytes", &memory)?;
                if let Some(root) = pids_root {
                    let dir = group.make(root, &name)?;
                    write(&dir, "pids.max", &pids)?;
                }
            }
        }
        for dir in &group.dirs {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            group.procs.push(file);
        }
        Ok(group)
    }

    /// Make, limit and remove a group: proves that runs will get theirs.
    fn probe(&self) -> Result<(), CgroupError> {
        let mut group =
            self.create(64 * 1024 * 1024, 16)
                .map_err(|source| CgroupError::Create {
                    under: self.describe(),
                    source,
                })?;
        group.remove().map_err(|source| CgroupError::Remove {
            under: self.describe(),
            source,
        })
    }

    /// Remove the groups of ecdysis processes that are gone (killed before they cleaned up).
    fn remove_stale(&self) {
        for parent in self.parents() {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix(PREFIX)
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<i32>().ok())
                else {
                    continue;
                };
                if pid as u32 == std::process::id() || alive(pid) {
                    continue;
                }
                let dir = entry.path();
                kill_members(&dir);
                match fs::remove_dir(&dir) {
                    Ok(()) => debug!(group = %dir.display(), "removed a stale sandbox cgroup"),
                    Err(e) => {
                        debug!(group = %dir.display(), error = %e, "cannot remove a stale sandbox cgroup")
                    }
                }
            }
        }
    }
}

/// The group of one run. Dropping it kills what is left in it and removes it (once, without
/// waiting); [`RunGroup::remove`] waits a little for the last processes to be reaped.
#[derive(Debug)]
pub struct RunGroup {
    version: Version,
    /// The memory (or unified) directory first.
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for writing.
    procs: Vec<fs::File>,
    removed: bool,
}

impl RunGroup {
    fn make(&mut self, parent: &Path, name: &str) -> io::Result<PathBuf> {
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// The descriptors [`join`] writes to, in the process that is to enter the group.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// How many times the kernel's OOM killer killed a process of this group.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dirs.first() else {
            return 0;
        };
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| field(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// The most memory the group used at once, when the kernel tells.
    pub fn peak_memory(&self) -> Option<u64> {
        let dir = self.dirs.first()?;
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// SIGKILL everything in the group.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if self.version == Version::V2 && write(dir, "cgroup.kill", "1").is_ok() {
                continue;
            }
            kill_members(dir);
        }
    }

    /// Kill what is left, wait (a bounded time) until the group is empty and remove it.
    /// Blocking.
    pub fn remove(&mut self) -> io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.procs.clear();
        let deadline = Instant::now() + REMOVE_WAIT;
        let mut result = Ok(());
        for dir in self.dirs.iter().rev() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        debug!(group = %dir.display(), error = %e, "sandbox cgroup not empty yet");
                        kill_members(dir);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        self.removed = true;
        result
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.procs.clear();
        for dir in self.dirs.iter().rev() {
            kill_members(dir);
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Move the calling process into the groups whose `cgroup.procs` are `fds` ("0" is the
/// writer itself; the permission is that of whoever opened the file).
///
/// # Safety
/// Meant for `pre_exec`: only write(2), no allocation.
pub unsafe fn join(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: a one-byte buffer that outlives the call.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ready a v2 group to have run groups below it: its controllers must be enabled for its
/// children, which the kernel allows only when it has no processes of its own — so when it
/// does, this process moves into a leaf of its own first.
fn prepare_v2(dir: &Path) -> Result<Layout, V2Error> {
    // Already moved into our leaf (an earlier detection in this process): its parent is ours.
    if dir.file_name().is_some_and(|name| name == SERVER_LEAF)
        && let Some(parent) = dir.parent()
    {
        return prepare_v2(parent);
    }
    let available = fs::read_to_string(dir.join("cgroup.controllers")).map_err(|source| {
        V2Error::ReadControllers {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    let available: Vec<&str> = available.split_whitespace().collect();
    if !available.contains(&"memory") {
        return Err(V2Error::NoMemoryController {
            dir: dir.to_path_buf(),
        });
    }
    let pids = available.contains(&"pids");
    let wanted: &[&str] = if pids {
        &["memory", "pids"]
    } else {
        &["memory"]
    };
    let enabled = |dir: &Path| -> bool {
        fs::read_to_string(dir.join("cgroup.subtree_control"))
            .map(|text| {
                let on: Vec<&str> = text.split_whitespace().collect();
                wanted.iter().all(|c| on.contains(c))
            })
            .unwrap_or(false)
    };
    let enable = |dir: &Path| -> io::Result<()> {
        for controller in wanted {
            write(dir, "cgroup.subtree_control", &format!("+{controller}"))?;
        }
        Ok(())
    };
    if enabled(dir) {
        return Ok(Layout::V2 {
            parent: dir.to_path_buf(),
            pids,
        });
    }
    match enable(dir) {
        Ok(()) => {}
        // Processes in the group (ecdysis itself, perhaps others): move ecdysis into a leaf.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let leaf = dir.join(SERVER_LEAF);
            let me = std::process::id().to_string();
            let moved = fs::create_dir(&leaf)
                .or_else(|e| {
                    if e.kind() == ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .and_then(|()| write(&leaf, "cgroup.procs", &me));
            if let Err(source) = moved {
                return Err(V2Error::NoLeaf {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
            if let Err(source) = enable(dir) {
                // Other processes share the group: give up and go back where we were.
                let _ = write(dir, "cgroup.procs", &me);
                let _ = fs::remove_dir(&leaf);
                return Err(V2Error::Shared {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
        Err(source) => {
            return Err(V2Error::Enable {
                dir: dir.to_path_buf(),
                source,
            });
        }
    }
    Ok(Layout::V2 {
        parent: dir.to_path_buf(),
        pids,
    })
}

/// This process's cgroup path: the v2 entry (`0::/path`) for `None`, else the v1 hierarchy
/// whose controller list names `controller`.
fn own_path(text: &str, controller: Option<&str>) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(name) => controllers.split(',').any(|c| c == name),
        };
        matches.then(|| path.to_string())
    })
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let root = unescape(fields.get(3)?);
            let point = PathBuf::from(unescape(fields.get(4)?));
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let options = after.next().unwrap_or_default();
            let controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(
                    options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_string)
                        .collect(),
                ),
                _ => return None,
            };
            Some(Mount {
                root,
                point,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mount {
    fn has(&self, controller: &str) -> bool {
        self.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|name| name == controller))
    }

    /// The directory of cgroup `path` under this mount, when the mount shows it.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.root == "/" {
            path
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        let dir = self.point.join(rest.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }
}

/// A `name value` line of a cgroup statistics file.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let mut handle = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join(file))?;
    handle.write_all(value.as_bytes())
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    match write(dir, file, value) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// SIGKILL every process listed in the group's `cgroup.procs`, a few rounds (a process may
/// fork between the read and the kill; the pids limit bounds how often).
fn kill_members(dir: &Path) {
    for _ in 0..20 {
        let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process of a sandbox group; a stale pid gets ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/a41\n1:cpu,cpuacct:/\n0::/\n";

    fn mountinfo(root: &Path) -> String {
        format!(
            "30 25 0:27 / {0}/memory rw,relatime - cgroup cgroup rw,memory\n\
             31 25 0:28 / {0}/pids rw,relatime - cgroup cgroup rw,pids\n\
             32 25 0:29 / {0}/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
             33 25 0:30 / {0}/unified rw,relatime - cgroup2 cgroup2 rw\n\
             40 1 8:1 / / rw - ext4 /dev/vda rw\n",
            root.display()
        )
    }

    #[test]
    fn hybrid_hosts_use_v1_under_the_own_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("memory/jobs/a41")).unwrap();
        fs::write(root.join("memory/jobs/a41/memory.limit_in_bytes"), "").unwrap();
        fs::create_dir_all(root.join("pids")).unwrap();
        fs::write(root.join("pids/cgroup.procs"), "").unwrap();
        fs::create_dir_all(root.join("unified")).unwrap();
        // The unified hierarchy has no memory controller on a hybrid host.
        fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let found = Cgroups::locate(HYBRID_CGROUP, &mountinfo(root)).unwrap();
        assert_eq!(
            found.layout,
            Layout::V1 {
                memory: root.join("memory/jobs/a41"),
                pids: Some(root.join("pids")),
            }
        );
        assert!(found.limits_processes());
        assert!(
            found.describe().starts_with("cgroup v1 under "),
            "{}",
            found.describe()
        );
    }

    #[test]
    fn v2_enables_controllers_for_the_groups_below() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let own = root.join("system.slice/ecdysis.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        let mounts = format!(
            "33 25 0:30 / {} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        let found = Cgroups::locate("0::/system.slice/ecdysis.service\n", &mounts).unwrap();
        assert_eq!(
            found.layout,
            Layout::V2 {
                parent: own.clone(),
                pids: true
            }
        );
        // A plain file stands in for the kernel's: the last write wins.
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }

    #[test]
    fn v2_detected_again_from_the_server_leaf_uses_the_same_parent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let own = root.join("svc");
        fs::create_dir_all(own.join(SERVER_LEAF)).unwrap();
        fs::write(own.join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let mounts = format!("33 25 0:30 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        let found = Cgroups::locate("0::/svc/ecdysis.server\n", &mounts).unwrap();
        assert_eq!(
            found.layout,
            Layout::V2 {
                parent: own,
                pids: true
            }
        );
    }

    #[test]
    fn v2_without_a_memory_controller_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("cgroup.controllers"), "cpu pids\n").unwrap();
        let mounts = format!("33 25 0:30 / {} ro - cgroup2 cgroup2 ro\n", root.display());
        let e = Cgroups::locate("0::/\n", &mounts).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::NoHierarchy {
                    v2: Some(V2Error::NoMemoryController { .. })
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "cgroup v2: the memory controller is not available in {} (it is not delegated here); cgroup v1: no memory controller mounted",
                // The mount's own directory, as `Mount::resolve` gives it (a trailing slash).
                root.join("").display()
            )
        );
    }

    #[test]
    fn refusals_read_as_before() {
        use std::error::Error as _;
        // No v2 entry, no v1 memory hierarchy: only the v1 reason.
        let e = Cgroups::locate("4:memory:/a\n", "").unwrap_err();
        assert_eq!(e.to_string(), "cgroup v1: no memory controller mounted");
        assert!(e.source().is_none());
        // A v2 entry but no cgroup2 mount.
        let e = Cgroups::locate("0::/\n", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup v2: not mounted; cgroup v1: no memory controller mounted"
        );
        assert!(e.source().is_some_and(|s| s.is::<V2Error>()));
        let e = CgroupError::ReadProc {
            path: "/proc/self/cgroup",
            source: io::Error::from(ErrorKind::PermissionDenied),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read /proc/self/cgroup: {}",
                io::Error::from(ErrorKind::PermissionDenied)
            )
        );
        assert!(e.source().is_some_and(|s| s.is::<io::Error>()));
    }

    #[test]
    fn mounts_of_a_sub_tree_resolve_only_paths_below_them() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("x")).unwrap();
        let mount = Mount {
            root: "/docker/abc".into(),
            point: dir.path().to_path_buf(),
            controllers: None,
        };
        assert_eq!(mount.resolve("/docker/abc/x"), Some(dir.path().join("x")));
        assert_eq!(mount.resolve("/docker/abc"), Some(dir.path().to_path_buf()));
        assert_eq!(mount.resolve("/docker/abcd"), None);
        assert_eq!(mount.resolve("/other"), None);
    }

    /// On this machine's real cgroups (when ecdysis may make groups here): a child that
    /// switched to an unprivileged uid still joins through the files opened before, its
    /// descendants are in the group, the limits are set, and the group is gone afterwards.
    #[test]
    fn a_child_joins_after_switching_users() {
        use std::os::unix::process::CommandExt;
        let cgroups = match Cgroups::detect() {
            Ok(cgroups) => cgroups,
            Err(e) => {
                eprintln!("skipping: no cgroup here: {e}");
                return;
            }
        };
        let mut group = cgroups.create(96 * 1024 * 1024, 20).unwrap();
        let fds = group.join_fds();
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "sleep 30 & wait"]);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            command.uid(65_534).gid(65_534);
        }
        // SAFETY: `join` only writes to descriptors opened before the fork.
        unsafe {
            command.pre_exec(move || join(&fds));
        }
        let mut child = command.spawn().unwrap();
        let dir = group.dirs[0].clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let members = loop {
            let members = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            if members.lines().count() >= 2 || Instant::now() > deadline {
                break members;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            members.lines().count() >= 2,
            "the shell and its sleep: {members}"
        );
        let limit = match cgroups.version() {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        assert_eq!(
            fs::read_to_string(dir.join(limit)).unwrap().trim(),
            (96 * 1024 * 1024).to_string()
        );
        group.kill_all();
        let _ = child.wait();
        group.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn statistics_and_escapes_are_read() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(2));
        assert_eq!(
            field("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n", "oom_kill"),
            Some(5)
        );
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(
            own_path(HYBRID_CGROUP, Some("memory")).as_deref(),
            Some("/jobs/a41")
        );
        assert_eq!(
            own_path(HYBRID_CGROUP, Some("cpuacct")).as_deref(),
            Some("/")
        );
        assert_eq!(own_path(HYBRID_CGROUP, None).as_deref(), Some("/"));
    }
}
