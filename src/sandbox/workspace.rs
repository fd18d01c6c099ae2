//! Per-channel workspaces: a directory under `$ECDYSIS_DATA_DIR/workspaces/<channel key>` that
//! is mounted at `/workspace`, and its snapshot in the blob store.
//!
//! After a run that changed the workspace it is written as a zstd-compressed tar to
//! `workspaces/<key>.tar.zst` (one atomic blob put), followed by `workspaces/<key>.json` naming
//! the snapshot. Before a run on a machine that does not have the workspace (a new machine, a
//! wiped disk) or has an older one (another machine saved since), the snapshot is restored into
//! a temporary directory and renamed into place. The local `<key>.state.json` records which
//! snapshot the directory holds and a fingerprint of its contents at that time, so "changed"
//! means "differs from what the blob store has", even after a failed snapshot. The archive
//! format, and a restore that cannot write outside the workspace, are in [`super::archive`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ecdysis_chat::ChannelRef;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::archive::{pack, unpack, walk};
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::store::now_ms;

/// A channel's workspace as backends see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// The channel key: safe as a path segment, a blob key segment and a container name.
    pub key: String,
    /// The host directory mounted at `/workspace`.
    pub dir: PathBuf,
}

/// What went wrong with a workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("the snapshot `{key}` cannot be restored: {problem}")]
    Corrupt { key: String, problem: String },
    #[error(
        "the workspace holds {} MB, more than the {} MB limit (sandbox.workspace_max_mb)",
        mb(*bytes),
        mb(*limit)
    )]
    TooLarge { bytes: u64, limit: u64 },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> WorkspaceError {
    let what = what.into();
    move |source| WorkspaceError::Io { what, source }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// What [`Workspaces::prepare`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The workspace was here and current.
    Existing,
    /// There was no workspace anywhere: a new empty one.
    Created,
    /// Restored from the blob store.
    Restored { bytes: u64, compressed_bytes: u64 },
}

/// A stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    /// Bytes of file content in the workspace.
    pub bytes: u64,
    /// Bytes of the compressed archive in the blob store.
    pub compressed_bytes: u64,
    /// Entries (files, directories, links).
    pub files: u64,
    pub saved_at_ms: i64,
}

/// What a workspace holds at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Changes whenever a path, size, mtime, mode or link target changes.
    pub fingerprint: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries (files, directories, links).
    pub files: u64,
    /// Regular files under `out/`: exact path relative to `out/` → (size, mtime in ns).
    pub out: BTreeMap<PathBuf, (u64, i128)>,
}

/// A file a command wrote under `/workspace/out/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFile {
    /// The path under `out/`.
    pub name: String,
    pub mime: String,
    pub bytes: Bytes,
}

/// What the local directory holds, as last recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LocalState {
    /// The snapshot the directory was restored from or last saved as.
    snapshot: Option<Snapshot>,
    /// The fingerprint of the contents the blob store has (hex).
    fingerprint: Option<String>,
}

/// The per-channel workspaces of this machine and their snapshots.
pub struct Workspaces {
    root: PathBuf,
    blobs: Arc<dyn BlobStore>,
    max_bytes: u64,
}

/// A stable 64-bit FNV-1a hash (the same on every machine and every build).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The workspace key of a channel: readable, safe everywhere, and unique (a hash of the exact
/// platform, workspace and channel ids ends it).
pub fn channel_key(channel: &ChannelRef) -> String {
    fn segment(text: &str, max: usize) -> String {
        let cleaned: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect();
        if cleaned.is_empty() {
            "_".into()
        } else {
            cleaned
        }
    }
    let exact = format!(
        "{}\0{}\0{}",
        channel.platform, channel.workspace, channel.channel
    );
    format!(
        "{}-{}-{}-{:016x}",
        segment(&channel.platform, 16),
        segment(&channel.workspace, 32),
        segment(&channel.channel, 48),
        fnv1a(exact.as_bytes())
    )
}

impl Workspaces {
    /// Use `root` for the local directories (created if needed) and `blobs` for snapshots.
    pub async fn open(
        root: &Path,
        blobs: Arc<dyn BlobStore>,
        max_bytes: u64,
    ) -> Result<Self, WorkspaceError> {
        let dir = root.to_path_buf();
        blocking(move || {
            fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))
        })
        .await?;
        Ok(Self {
            root: root.to_path_buf(),
            blobs,
            max_bytes,
        })
    }

    /// The directory all workspaces live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size limit of one workspace.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn reference(&self, key: &str) -> WorkspaceRef {
        WorkspaceRef {
            key: key.to_string(),
            dir: self.root.join(key),
        }
    }

    fn state_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.state.json"))
    }

    fn archive_key(key: &str) -> String {
        format!("workspaces/{key}.tar.zst")
    }

    fn meta_key(key: &str) -> String {
        format!("workspaces/{key}.json")
    }

    async fn local_state(&self, key: &str) -> Option<LocalState> {
        let dir = self.root.join(key);
        if !tokio::fs::metadata(&dir)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return None;
        }
        let text = tokio::fs::read(self.state_path(key)).await.ok()?;
        serde_json::from_slice(&text).ok()
    }

    async fn write_state(&self, key: &str, state: &LocalState) -> Result<(), WorkspaceError> {
        let path = self.state_path(key);
        let text = serde_json::to_vec(state).map_err(|e| WorkspaceError::Io {
            what: "encoding the workspace state".into(),
            source: io::Error::other(e),
        })?;
        blocking(move || {
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            fs::write(&tmp, &text)
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(io_error(format!("writing {}", path.display())))
        })
        .await
    }

    async fn remote_snapshot(&self, key: &str) -> Result<Option<Snapshot>, WorkspaceError> {
        let Some(bytes) = self.blobs.get(&Self::meta_key(key)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| WorkspaceError::Corrupt {
                key: Self::meta_key(key),
                problem: e.to_string(),
            })
    }

    /// Make sure the channel's workspace is here and current: restore it from the blob store
    /// when this machine does not have it or has an older one; create it when nobody has it.
    pub async fn prepare(&self, key: &str) -> Result<Prepared, WorkspaceError> {
        match self.local_state(key).await {
            Some(state) => {
                // Another machine may have saved a newer snapshot since.
                let remote = match self.remote_snapshot(key).await {
                    Ok(remote) => remote,
                    Err(e) => {
                        warn!(key, error = %e, "cannot check for a newer workspace snapshot; using the local copy");
                        return Ok(Prepared::Existing);
                    }
                };
                match remote {
                    Some(remote) if state.snapshot.as_ref().map(|s| &s.id) != Some(&remote.id) => {
                        info!(key, snapshot = %remote.id, "a newer workspace snapshot exists; restoring it");
                        self.restore(key, Some(remote)).await
                    }
                    _ => Ok(Prepared::Existing),
                }
            }
            None => {
                let remote = self.remote_snapshot(key).await?;
                self.restore(key, remote).await
            }
        }
    }

    /// Replace the local directory with the stored snapshot, or with an empty directory when
    /// there is none.
    async fn restore(&self, key: &str, meta: Option<Snapshot>) -> Result<Prepared, WorkspaceError> {
        let archive = self.blobs.get(&Self::archive_key(key)).await?;
        if archive.is_none() && meta.is_some() {
            return Err(WorkspaceError::Corrupt {
                key: Self::archive_key(key),
                problem: "the snapshot's archive is missing from the blob store".into(),
            });
        }
        let root = self.root.clone();
        let target = self.root.join(key);
        let key_owned = key.to_string();
        // A snapshot that is larger than the limit was saved under a larger limit; allow some
        // room so that lowering the limit does not make it unrestorable, but stop runaway
        // archives.
        let cap = self
            .max_bytes
            .max(meta.as_ref().map(|m| m.bytes).unwrap_or(0))
            .saturating_mul(2)
            .max(64 * 1024 * 1024);
        let compressed_bytes = archive.as_ref().map(|a| a.len() as u64).unwrap_or(0);
        let (scan, unpacked) = blocking(move || {
            fs::create_dir_all(&root).map_err(io_error(format!("creating {}", root.display())))?;
            let tmp = root.join(format!(".restore-{}", uuid::Uuid::new_v4().simple()));
            fs::create_dir(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;
            let unpacked = match &archive {
                Some(archive) => match unpack(archive, &tmp, cap) {
                    Ok(n) => n,
                    Err(problem) => {
                        let _ = fs::remove_dir_all(&tmp);
                        return Err(WorkspaceError::Corrupt {
                            key: Self::archive_key(&key_owned),
                            problem: problem.to_string(),
                        });
                    }
                },
                None => 0,
            };
            replace_dir(&root, &tmp, &target)?;
            Ok((scan_dir(&target)?, unpacked))
        })
        .await?;
        let restored = archive_restored(meta, compressed_bytes, &scan);
        self.write_state(
            key,
            &LocalState {
                snapshot: restored.clone(),
                fingerprint: Some(format!("{:016x}", scan.fingerprint)),
            },
        )
        .await?;
        Ok(match restored {
            Some(snapshot) => Prepared::Restored {
                bytes: unpacked,
                compressed_bytes: snapshot.compressed_bytes,
            },
            None => Prepared::Created,
        })
    }

    /// What the workspace holds now.
    pub async fn scan(&self, key: &str) -> Result<Scan, WorkspaceError> {
        let dir = self.root.join(key);
        blocking(move || scan_dir(&dir)).await
    }

    /// True when the workspace differs from what the blob store has.
    pub async fn changed(&self, key: &str, scan: &Scan) -> bool {
        let recorded = self.local_state(key).await.and_then(|s| s.fingerprint);
        recorded.as_deref() != Some(format!("{:016x}", scan.fingerprint).as_str())
    }

    /// Write the workspace to the blob store (archive, then the record naming it) and note it
    /// locally. `scan` is what [`Workspaces::scan`] said after the run.
    pub async fn snapshot(&self, key: &str, scan: &Scan) -> Result<Snapshot, WorkspaceError> {
        if scan.bytes > self.max_bytes {
            return Err(WorkspaceError::TooLarge {
                bytes: scan.bytes,
                limit: self.max_bytes,
            });
        }
        let dir = self.root.join(key);
        let archive =
            blocking(move || pack(&dir).map_err(io_error(format!("packing {}", dir.display()))))
                .await?;
        let snapshot = Snapshot {
            id: uuid::Uuid::new_v4().simple().to_string(),
            bytes: scan.bytes,
            compressed_bytes: archive.len() as u64,
            files: scan.files,
            saved_at_ms: now_ms(),
        };
        self.blobs
            .put(&Self::archive_key(key), archive, "application/zstd")
            .await?;
        let meta = serde_json::to_vec(&snapshot).map_err(|e| WorkspaceError::Io {
            what: "encoding the snapshot record".into(),
            source: io::Error::other(e),
        })?;
        self.blobs
            .put(&Self::meta_key(key), Bytes::from(meta), "application/json")
            .await?;
        self.write_state(
            key,
            &LocalState {
                snapshot: Some(snapshot.clone()),
                fingerprint: Some(format!("{:016x}", scan.fingerprint)),
            },
        )
        .await?;
        Ok(snapshot)
    }

    /// The last snapshot this machine restored or saved for `key`.
    pub async fn last_snapshot(&self, key: &str) -> Option<Snapshot> {
        self.local_state(key).await.and_then(|s| s.snapshot)
    }

    /// Files under `out/` that are new or changed between two scans, read (without following
    /// links). At most `max_files` files of at most `max_file_bytes` each; the names of the
    /// others come back as skipped.
    pub async fn out_files(
        &self,
        key: &str,
        before: &Scan,
        after: &Scan,
        max_files: usize,
        max_file_bytes: u64,
    ) -> (Vec<OutFile>, Vec<String>) {
        let dir = self.root.join(key).join("out");
        let changed: Vec<(PathBuf, u64)> = after
            .out
            .iter()
            .filter(|(path, entry)| before.out.get(*path) != Some(entry))
            .map(|(path, (size, _))| (path.clone(), *size))
            .collect();
        let result = blocking(move || {
            let mut files = Vec::new();
            let mut skipped = Vec::new();
            for (path, size) in changed {
                // Read by the exact path; the lossy form only names the attachment.
                let name = path.to_string_lossy().into_owned();
                if files.len() >= max_files {
                    skipped.push(format!("{name} (more than {max_files} files)"));
                    continue;
                }
                if size > max_file_bytes {
                    skipped.push(format!(
                        "{name} ({} MB, over the {} MB attachment limit)",
                        mb(size),
                        mb(max_file_bytes)
                    ));
                    continue;
                }
                match read_no_follow(&dir.join(&path), max_file_bytes) {
                    Ok(bytes) => files.push(OutFile {
                        mime: mime_for(&name).to_string(),
                        name,
                        bytes: Bytes::from(bytes),
                    }),
                    Err(e) => skipped.push(format!("{name} (unreadable: {e})")),
                }
            }
            Ok((files, skipped))
        })
        .await;
        result.unwrap_or_else(|e: WorkspaceError| (Vec::new(), vec![format!("out/ ({e})")]))
    }

    /// Remove this machine's copy of a workspace (the snapshot stays in the blob store).
    pub async fn forget_local(&self, key: &str) -> Result<(), WorkspaceError> {
        let dir = self.root.join(key);
        let state = self.state_path(key);
        blocking(move || {
            match fs::remove_file(&state) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("removing {}", state.display()))(e)),
            }
            match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(format!("removing {}", dir.display()))(e)),
            }
        })
        .await
    }
}

/// The snapshot a restore produced: the stored record when there was one, or a record made up
/// from the archive itself (a crash between the archive and its record).
fn archive_restored(
    meta: Option<Snapshot>,
    compressed_bytes: u64,
    scan: &Scan,
) -> Option<Snapshot> {
    match meta {
        Some(meta) => Some(meta),
        None if compressed_bytes > 0 => Some(Snapshot {
            id: "unrecorded".into(),
            bytes: scan.bytes,
            compressed_bytes,
            files: scan.files,
            saved_at_ms: 0,
        }),
        None => None,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, WorkspaceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| WorkspaceError::Io {
            what: "workspace task".into(),
            source: io::Error::other(e),
        })?
}

/// Put `fresh` where `target` is, atomically from a reader's point of view: the old directory
/// is renamed away first and deleted after.
fn replace_dir(root: &Path, fresh: &Path, target: &Path) -> Result<(), WorkspaceError> {
    let trash = root.join(format!(".trash-{}", uuid::Uuid::new_v4().simple()));
    let had_old = match fs::rename(target, &trash) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(io_error(format!("moving {} away", target.display()))(e)),
    };
    fs::rename(fresh, target).map_err(io_error(format!("renaming into {}", target.display())))?;
    if had_old && let Err(e) = fs::remove_dir_all(&trash) {
        warn!(path = %trash.display(), error = %e, "cannot remove an old workspace copy");
    }
    Ok(())
}

fn scan_dir(dir: &Path) -> Result<Scan, WorkspaceError> {
    let mut scan = Scan::default();
    let mut hash: u64 = fnv1a(b"ecdysis-workspace-v1");
    let mut mix = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    walk(dir, |relative, meta| {
        let kind = if meta.is_dir() {
            b'd'
        } else if meta.is_file() {
            b'f'
        } else if meta.file_type().is_symlink() {
            b'l'
        } else {
            b'o'
        };
        let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        mix(relative.as_os_str().as_bytes());
        mix(&[0, kind]);
        mix(&meta.len().to_le_bytes());
        mix(&mtime.to_le_bytes());
        mix(&(meta.mode() & 0o7777).to_le_bytes());
        if kind == b'l'
            && let Ok(target) = fs::read_link(dir.join(relative))
        {
            mix(target.as_os_str().as_encoded_bytes());
        }
        scan.files += 1;
        if kind == b'f' {
            scan.bytes += meta.len();
            if let Ok(name) = relative.strip_prefix("out")
                && !name.as_os_str().is_empty()
            {
                scan.out.insert(name.to_path_buf(), (meta.len(), mtime));
            }
        }
        Ok(())
    })
    .map_err(io_error(format!("scanning {}", dir.display())))?;
    scan.fingerprint = hash;
    Ok(scan)
}

fn read_no_follow(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.by_ref().take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other("grew past the attachment limit"));
    }
    Ok(bytes)
}

/// The MIME type of a file by its extension (images are shown inline by the platforms);
/// `application/octet-stream` when the extension says nothing.
pub fn mime_for(name: &str) -> &'static str {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::blob::LocalBlobStore;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn channel(platform: &str, channel: &str) -> ChannelRef {
        ChannelRef {
            platform: platform.into(),
            workspace: "T1".into(),
            channel: channel.into(),
        }
    }

    #[test]
    fn keys_are_safe_and_distinct() {
        let a = channel_key(&channel("slack", "C1"));
        let b = channel_key(&channel("slack", "C1/../x"));
        let c = channel_key(&channel("slack", "C1_.._x"));
        assert!(a.starts_with("slack-T1-C1-"), "{a}");
        for key in [&a, &b, &c] {
            assert!(
                crate::storage::blob::validate_key(&format!("workspaces/{key}.tar.zst")).is_ok()
            );
            assert!(!key.contains('/') && !key.starts_with('.'));
        }
        assert_ne!(b, c, "sanitising alike must not collide");
        assert_eq!(a, channel_key(&channel("slack", "C1")));
    }

    async fn workspaces(dir: &Path, max: u64) -> Workspaces {
        let blobs = Arc::new(LocalBlobStore::open(&dir.join("blobs")).await.unwrap());
        Workspaces::open(&dir.join("ws"), blobs, max).await.unwrap()
    }

    #[tokio::test]
    async fn snapshot_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ws = workspaces(dir.path(), 1 << 30).await;
        let key = channel_key(&channel("web", "a"));
        assert_eq!(ws.prepare(&key).await.unwrap(), Prepared::Created);
        let root = ws.reference(&key).dir;
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::write(root.join("src/deep/file.txt"), "hello").unwrap();
        fs::set_permissions(
            root.join("src/deep/file.txt"),
            fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        symlink("deep/file.txt", root.join("src/link")).unwrap();
        symlink("/etc/shadow", root.join("dangling-outside")).unwrap();
        let scan = ws.scan(&key).await.unwrap();
        assert!(ws.changed(&key, &scan).await);
        let saved = ws.snapshot(&key, &scan).await.unwrap();
        assert_eq!(saved.bytes, 5);
        assert!(!ws.changed(&key, &ws.scan(&key).await.unwrap()).await);

        // A new machine: nothing local.
        ws.forget_local(&key).await.unwrap();
        let restored = ws.prepare(&key).await.unwrap();
        assert!(
            matches!(restored, Prepared::Restored { bytes: 5, .. }),
            "{restored:?}"
        );
        assert_eq!(
            fs::read_to_string(root.join("src/deep/file.txt")).unwrap(),
            "hello"
        );
        assert_eq!(
            fs::metadata(root.join("src/deep/file.txt")).unwrap().mode() & 0o777,
            0o751
        );
        assert_eq!(
            fs::read_link(root.join("src/link")).unwrap(),
            PathBuf::from("deep/file.txt")
        );
        assert_eq!(
            fs::read_link(root.join("dangling-outside")).unwrap(),
            PathBuf::from("/etc/shadow")
        );
        // Restored means current: no snapshot needed, and the next prepare keeps it.
        assert!(!ws.changed(&key, &ws.scan(&key).await.unwrap()).await);
        assert_eq!(ws.prepare(&key).await.unwrap(), Prepared::Existing);
    }

    #[tokio::test]
    async fn a_newer_snapshot_from_another_machine_wins() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(
            LocalBlobStore::open(&dir.path().join("blobs"))
                .await
                .unwrap(),
        );
        let one = Workspaces::open(&dir.path().join("one"), blobs.clone(), 1 << 30)
            .await
            .unwrap();
        let two = Workspaces::open(&dir.path().join("two"), blobs, 1 << 30)
            .await
            .unwrap();
        let key = channel_key(&channel("web", "shared"));
        one.prepare(&key).await.unwrap();
        fs::write(one.reference(&key).dir.join("v"), "1").unwrap();
        one.snapshot(&key, &one.scan(&key).await.unwrap())
            .await
            .unwrap();
        assert!(matches!(
            two.prepare(&key).await.unwrap(),
            Prepared::Restored { .. }
        ));
        fs::write(two.reference(&key).dir.join("v"), "2").unwrap();
        two.snapshot(&key, &two.scan(&key).await.unwrap())
            .await
            .unwrap();
        assert!(matches!(
            one.prepare(&key).await.unwrap(),
            Prepared::Restored { .. }
        ));
        assert_eq!(
            fs::read_to_string(one.reference(&key).dir.join("v")).unwrap(),
            "2"
        );
    }

    #[tokio::test]
    async fn too_large_is_refused_and_out_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let ws = workspaces(dir.path(), 10).await;
        let key = channel_key(&channel("web", "b"));
        ws.prepare(&key).await.unwrap();
        let root = ws.reference(&key).dir;
        let before = ws.scan(&key).await.unwrap();
        fs::create_dir_all(root.join("out")).unwrap();
        fs::write(root.join("out/plot.png"), b"\x89PNG....").unwrap();
        fs::write(root.join("out/big.bin"), vec![0u8; 100]).unwrap();
        symlink("/etc/passwd", root.join("out/link.txt")).unwrap();
        let after = ws.scan(&key).await.unwrap();
        let e = ws.snapshot(&key, &after).await.unwrap_err();
        assert!(matches!(e, WorkspaceError::TooLarge { .. }), "{e}");
        let (files, skipped) = ws.out_files(&key, &before, &after, 10, 50).await;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "plot.png");
        assert_eq!(files[0].mime, "image/png");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].starts_with("big.bin"));
        // Unchanged files are not posted again.
        let (again, _) = ws.out_files(&key, &after, &after, 10, 50).await;
        assert!(again.is_empty());
    }

    /// `out/` files are read by their exact names: a file under a directory named byte 0xFF
    /// is not read through a symlink named U+FFFD (the same name, made lossy) to the host.
    #[tokio::test]
    async fn out_files_are_read_by_their_exact_names() {
        use std::ffi::OsStr;
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("x"), "host secret").unwrap();
        let ws = workspaces(dir.path(), 1 << 30).await;
        let key = channel_key(&channel("web", "exact"));
        ws.prepare(&key).await.unwrap();
        let out = ws.reference(&key).dir.join("out");
        let before = ws.scan(&key).await.unwrap();
        fs::create_dir_all(out.join(OsStr::from_bytes(b"\xff"))).unwrap();
        fs::write(out.join(OsStr::from_bytes(b"\xff/x")), "workspace file").unwrap();
        symlink(&host, out.join("\u{FFFD}")).unwrap();
        let after = ws.scan(&key).await.unwrap();
        let (files, skipped) = ws.out_files(&key, &before, &after, 10, 1 << 20).await;
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "\u{FFFD}/x");
        assert_eq!(&files[0].bytes[..], b"workspace file");
    }
}
