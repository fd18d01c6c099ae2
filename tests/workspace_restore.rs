//! Restoring workspace snapshots through the public `Workspaces` API (issue 19, finding 1): what
//! a chat user can put in their workspace, or what a snapshot in the blob store holds, cannot
//! change anything on the host outside the workspace.
//!
//! The workspace is written here directly, as a `/run` command would leave it
//! (`mkdir -p $(printf '\xff')/pwned && chmod 0777 ... && ln -s /some/host/dir
//! $(printf '\xef\xbf\xbd')`); the restore is the real one a new machine or another instance
//! runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ecdysis::sandbox::{Prepared, Snapshot, WorkspaceError, Workspaces, channel_key};
use ecdysis::storage::blob::{BlobStore, LocalBlobStore};
use ecdysis_chat::ChannelRef;

/// A directory of the host outside every workspace: mode 0700, one file.
fn host_dir(base: &Path) -> PathBuf {
    let host = base.join("host");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("keep"), "host file").unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(0o700)).unwrap();
    host
}

fn assert_untouched(host: &Path) {
    assert_eq!(
        fs::symlink_metadata(host).unwrap().mode() & 0o7777,
        0o700,
        "the host directory's mode changed"
    );
    let names: Vec<OsString> = fs::read_dir(host)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![OsString::from("keep")],
        "the host directory changed"
    );
}

fn key(name: &str) -> String {
    channel_key(&ChannelRef {
        platform: "web".into(),
        workspace: "local".into(),
        channel: name.into(),
    })
}

async fn blobs(base: &Path) -> Arc<dyn BlobStore> {
    Arc::new(LocalBlobStore::open(&base.join("blobs")).await.unwrap())
}

/// The review's repro, end to end: save the workspace, then restore it the two ways a restore
/// happens (this machine lost its copy; another instance restores the newer snapshot).
#[tokio::test]
async fn a_0xff_directory_and_a_fffd_symlink_restore_without_touching_the_host() {
    let temp = tempfile::tempdir().unwrap();
    let host = host_dir(temp.path());
    let blobs = blobs(temp.path()).await;
    let one = Workspaces::open(&temp.path().join("one"), blobs.clone(), 1 << 30)
        .await
        .unwrap();
    let key = key("collision");
    assert_eq!(one.prepare(&key).await.unwrap(), Prepared::Created);
    let root = one.reference(&key).dir;
    let ff = OsStr::from_bytes(b"\xff");
    let fffd = OsStr::from_bytes("\u{FFFD}".as_bytes());
    fs::create_dir_all(root.join(ff).join("pwned")).unwrap();
    for dir in [root.join(ff), root.join(ff).join("pwned")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    symlink(&host, root.join(fffd)).unwrap();
    let scan = one.scan(&key).await.unwrap();
    one.snapshot(&key, &scan).await.unwrap();

    // Another instance on the same blob store, and this one after losing its copy.
    let two = Workspaces::open(&temp.path().join("two"), blobs, 1 << 30)
        .await
        .unwrap();
    one.forget_local(&key).await.unwrap();
    for ws in [&two, &one] {
        let restored = ws.prepare(&key).await.unwrap();
        assert!(
            matches!(restored, Prepared::Restored { .. }),
            "{restored:?}"
        );
        assert_untouched(&host);
        let root = ws.reference(&key).dir;
        let dir = fs::symlink_metadata(root.join(ff)).unwrap();
        assert!(dir.is_dir(), "the 0xFF directory is a directory again");
        assert_eq!(dir.mode() & 0o7777, 0o777);
        assert!(root.join(ff).join("pwned").is_dir());
        assert_eq!(fs::read_link(root.join(fffd)).unwrap(), host);
        let mut names: Vec<OsString> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![fffd.to_os_string(), ff.to_os_string()]);
    }
}

/// One entry of a hand-made archive: kind, name, link target, mode.
type Entry<'a> = (tar::EntryType, &'a [u8], &'a [u8], u32);

/// A zstd-compressed tar of `entries`, names copied byte for byte as a hand-made (or older)
/// archive has them.
fn archive(entries: &[Entry<'_>]) -> Bytes {
    let mut builder = tar::Builder::new(Vec::new());
    for (kind, path, link, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(0);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        header.as_old_mut().name[..path.len()].copy_from_slice(path);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        builder.append(&header, &[][..]).unwrap();
    }
    Bytes::from(zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap())
}

/// Put `archive` in the blob store as the channel's snapshot.
async fn store_snapshot(blobs: &Arc<dyn BlobStore>, key: &str, archive: Bytes) {
    let meta = Snapshot {
        id: uuid::Uuid::new_v4().simple().to_string(),
        bytes: 0,
        compressed_bytes: archive.len() as u64,
        files: 3,
        saved_at_ms: 1,
    };
    blobs
        .put(
            &format!("workspaces/{key}.tar.zst"),
            archive,
            "application/zstd",
        )
        .await
        .unwrap();
    blobs
        .put(
            &format!("workspaces/{key}.json"),
            Bytes::from(serde_json::to_vec(&meta).unwrap()),
            "application/json",
        )
        .await
        .unwrap();
}

/// Snapshots saved before this fix named both entries U+FFFD; restoring one now keeps
/// everything inside the workspace.
#[tokio::test]
async fn a_snapshot_saved_with_lossy_names_restores_inside_the_workspace() {
    let temp = tempfile::tempdir().unwrap();
    let host = host_dir(temp.path());
    let blobs = blobs(temp.path()).await;
    let ws = Workspaces::open(&temp.path().join("ws"), blobs.clone(), 1 << 30)
        .await
        .unwrap();
    let key = key("old-format");
    let fffd = "\u{FFFD}".as_bytes();
    let pwned = "\u{FFFD}/pwned".as_bytes();
    let host_bytes = host.as_os_str().as_bytes();
    store_snapshot(
        &blobs,
        &key,
        archive(&[
            (tar::EntryType::Symlink, fffd, host_bytes, 0o777),
            (tar::EntryType::Directory, fffd, b"", 0o777),
            (tar::EntryType::Directory, pwned, b"", 0o777),
        ]),
    )
    .await;
    let restored = ws.prepare(&key).await.unwrap();
    assert!(
        matches!(restored, Prepared::Restored { .. }),
        "{restored:?}"
    );
    assert_untouched(&host);
    let root = ws.reference(&key).dir;
    assert!(
        fs::symlink_metadata(root.join(OsStr::from_bytes(fffd)))
            .unwrap()
            .is_dir()
    );
}

/// A snapshot that names paths outside the workspace is refused as corrupt: nothing is
/// written outside, and no half-restored directory is left behind.
#[tokio::test]
async fn a_snapshot_reaching_outside_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let host = host_dir(temp.path());
    let blobs = blobs(temp.path()).await;
    let ws_root = temp.path().join("ws");
    let ws = Workspaces::open(&ws_root, blobs.clone(), 1 << 30)
        .await
        .unwrap();
    let host_bytes = host.as_os_str().as_bytes();
    let escape = [host_bytes, b"/pwned"].concat();
    let cases: Vec<Vec<Entry<'_>>> = vec![
        vec![(tar::EntryType::Directory, b"../../pwned", b"", 0o777)],
        vec![(tar::EntryType::Directory, &escape, b"", 0o777)],
        vec![
            (tar::EntryType::Symlink, b"link", host_bytes, 0o777),
            (tar::EntryType::Directory, b"link/pwned", b"", 0o777),
        ],
        vec![(tar::EntryType::Link, b"hard", &escape, 0o644)],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let key = key(&format!("crafted-{i}"));
        store_snapshot(&blobs, &key, archive(entries)).await;
        let e = ws.prepare(&key).await.unwrap_err();
        assert!(matches!(e, WorkspaceError::Corrupt { .. }), "case {i}: {e}");
        assert_untouched(&host);
        assert!(!temp.path().join("pwned").exists(), "case {i}");
        let leftovers: Vec<OsString> = fs::read_dir(&ws_root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.as_bytes().starts_with(b".restore-"))
            .collect();
        assert!(leftovers.is_empty(), "case {i}: {leftovers:?}");
    }
}
