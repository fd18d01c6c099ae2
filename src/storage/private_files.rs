//! Files that hold user data are for ecdysis's user alone: the SQLite database is created with
//! mode 0600 before SQLite opens it (SQLite gives its `-wal`, `-shm` and `-journal` files the
//! database file's mode), and one left readable by others (by an older version, or by a
//! `doctor` run) is made private again. The blob directory and the secret key take care of
//! themselves ([`crate::storage::blob::local`], [`crate::storage::secret_box`]). No process-wide umask is set:
//! the sandbox's workspaces must stay reachable for their own users.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// The SQLite database file a URL names; `None` for Postgres and in-memory SQLite.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    if !database_url.starts_with("sqlite:")
        || database_url.contains("mode=memory")
        || database_url.contains(":memory:")
    {
        return None;
    }
    let options = SqliteConnectOptions::from_str(database_url).ok()?;
    let path = Path::new(options.get_filename());
    let name = path.as_os_str();
    (!name.is_empty() && name != ":memory:").then(|| path.to_path_buf())
}

/// Make the SQLite database of `database_url` private before it is opened: create its
/// directory (as before, with the usual mode) and the file itself with mode 0600, and take
/// group and other permissions off an existing database and its companion files. Nothing to
/// do for Postgres.
pub fn prepare_database(database_url: &str) -> io::Result<()> {
    let Some(db) = sqlite_file(database_url) else {
        return Ok(());
    };
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Appending never changes an existing database; `mode` only applies when it is created.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&db)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        make_private(Path::new(&name))?;
    }
    Ok(())
}

/// Take group and other permissions off `path` if it is a file that has some.
fn make_private(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    tracing::info!(path = %path.display(), old_mode = format!("{:o}", mode & 0o777), "made a database file private (mode 0600)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/ecdysis.db", dir.path().display());
        prepare_database(&url).unwrap();
        let db = dir.path().join("sub/ecdysis.db");
        assert_eq!(mode(&db), 0o600);
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    }

    #[test]
    fn an_existing_readable_database_is_made_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ecdysis.db");
        let wal = dir.path().join("ecdysis.db-wal");
        std::fs::write(&db, b"not empty").unwrap();
        std::fs::write(&wal, b"wal").unwrap();
        for path in [&db, &wal] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_database(&format!("sqlite://{}", db.display())).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(std::fs::read(&db).unwrap(), b"not empty");
    }

    #[test]
    fn postgres_and_memory_are_left_alone() {
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        prepare_database("postgres://u@h/db").unwrap();
        assert_eq!(
            sqlite_file("sqlite://./data/ecdysis.db"),
            Some(PathBuf::from("./data/ecdysis.db"))
        );
    }
}
