//! Data files are private to ecdysis's user: after a real `ecdysis serve` on the embedded
//! defaults stores a note and a file, the SQLite database and its `-wal`/`-shm`, the blob
//! directories and the blob files have no group or other permissions, and (when the test runs
//! as root) another local user cannot read them although the data directory lets it through.
//! Exports and the generated secret key are 0600 too, and a database left readable by an older
//! version is made private on the next start.
//!
//! Storing a file goes through `/run` (its `out/` file and the workspace snapshot are blobs), so
//! bubblewrap is needed: missing in CI is a failure, on a laptop a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::Server;

/// The `nobody` user a local attacker stands for.
const OTHER_UID: u32 = 65_534;

fn bwrap_ready() -> bool {
    common::sandbox::sandbox_ready()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory and file under `root` (not following links).
fn tree(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut files) = (vec![root.to_path_buf()], Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    (dirs, files)
}

/// Whether `nobody` can read `path` (the attack: a local user reading the bot's data).
fn other_user_can_read(path: &Path) -> bool {
    let mut command = Command::new("cat");
    command
        .arg(path)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command.status().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_blobs_and_exports_are_private() {
    if !bwrap_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A data directory others may pass through (today's default, which the sandbox's users
    // need): only the files' own modes keep them out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(dir.path(), &[("ECDYSIS_SANDBOX", "namespace")]).await;
    let data = dir.path().join("data");

    let reply = server
        .ask("modes", "/remember the vault code is 4711")
        .await;
    assert!(!reply.is_empty(), "{}", server.log());
    let reply = server
        .ask(
            "modes",
            "/run mkdir -p out && echo 'quarterly numbers' > out/report.txt && echo done",
        )
        .await;
    assert!(reply.contains("done"), "{reply}\n{}", server.log());

    // The database while `serve` holds it open (WAL mode: -wal and -shm exist).
    let db = data.join("ecdysis.db");
    for path in [
        db.clone(),
        data.join("ecdysis.db-wal"),
        data.join("ecdysis.db-shm"),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let bytes = std::fs::read(&db).unwrap();
    let wal = std::fs::read(data.join("ecdysis.db-wal")).unwrap();
    assert!(
        [bytes, wal]
            .iter()
            .any(|b| b.windows(4).any(|w| w == b"4711")),
        "the note is not in the database files"
    );

    // The blob tree: the report (an artifact) and the workspace snapshot.
    let (dirs, files) = tree(&data.join("blobs"));
    assert!(
        files.len() >= 2,
        "expected the report and the workspace snapshot, found {files:?}"
    );
    let report = files
        .iter()
        .find(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(17)
                .any(|w| w == b"quarterly numbers")
        })
        .expect("the report is stored as a blob");
    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    if is_root() {
        // Another local user reaches the data directory but reads nothing in it.
        assert!(
            other_user_can_read(Path::new("/etc/hostname")) || !Path::new("/etc/hostname").exists(),
            "the check itself is broken"
        );
        for path in [&db, &data.join("ecdysis.db-wal"), report] {
            assert!(!other_user_can_read(path), "{} is readable", path.display());
        }
    }

    // An export of the channel (notes and transcript) is 0600.
    let out = dir.path().join("modes.jsonl");
    let export = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["export", "--channel", "web:local:modes", "--out"])
        .arg(&out)
        .current_dir(dir.path())
        .env("ECDYSIS_DATA_DIR", &data)
        .env_remove("DATABASE_URL")
        .env_remove("ECDYSIS_BLOB_URL")
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("4711"));
    assert_eq!(mode(&out), 0o600);
    // The data directory itself keeps its mode: the sandbox's users pass through it.
    assert_eq!(mode(&data) & 0o001, 0o001, "the data directory was closed");
    drop(server);
}

#[test]
fn a_readable_database_of_an_older_version_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let migrate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
            .arg("migrate")
            .current_dir(dir.path())
            .env("ECDYSIS_DATA_DIR", &data)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    migrate();
    let db = data.join("ecdysis.db");
    assert_eq!(mode(&db), 0o600);
    // What an older version left: world-readable files.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The log may still hold committed pages that `migrate` did not copy back before it
    // exited: create it when missing, never truncate it (that would corrupt the database).
    let wal = data.join("ecdysis.db-wal");
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&wal)
        .unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let owner = std::fs::metadata(&db).unwrap().uid();
    migrate();
    assert_eq!(mode(&db), 0o600);
    assert!(!wal.exists() || mode(&wal) == 0o600, "{:o}", mode(&wal));
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), owner);
}

#[test]
fn the_generated_secret_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data/secret.key");
    ecdysis::storage::secret_box::SecretBox::from_key_file(&key).unwrap();
    assert_eq!(mode(&key), 0o600);
}
