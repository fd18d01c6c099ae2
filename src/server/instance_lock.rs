//! SQLite mode is single-instance: `serve` and `chat` hold an exclusive lock on `<db>.lock`
//! for their whole life, so a second instance on the same file says so and stops instead of
//! competing for the inbox (SQLite has no way for two processes to share its leases safely).
//! The kernel drops the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    #[error(
        "another ecdysis instance{holder} is using the SQLite database {db}: SQLite mode runs one \
         instance at a time. Stop the other one, or use Postgres (DATABASE_URL=postgres://…) to \
         run several instances"
    )]
    Busy { db: String, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Take the instance lock when `database_url` names a SQLite file; `None` for Postgres (which
/// takes any number of instances) and for in-memory SQLite.
pub fn acquire(database_url: &str) -> Result<Option<InstanceLock>, InstanceLockError> {
    if !database_url.starts_with("sqlite:") {
        return Ok(None);
    }
    let Some(db) = crate::storage::store::sqlite_path(database_url) else {
        return Ok(None);
    };
    let name = db.as_os_str().to_string_lossy();
    if name.is_empty() || name == ":memory:" || database_url.contains("mode=memory") {
        return Ok(None);
    }
    let mut lock_name = db.as_os_str().to_owned();
    lock_name.push(".lock");
    let path = PathBuf::from(lock_name);
    lock_file(&path, &db).map(Some)
}

fn lock_file(path: &Path, db: &Path) -> Result<InstanceLock, InstanceLockError> {
    let io = |source| InstanceLockError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(InstanceLockError::Busy {
                db: db.display().to_string(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
            });
        }
        return Err(io(error));
    }
    // Record who holds it, for the message a second instance prints.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(io)?;
    Ok(InstanceLock {
        _file: file,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/x.db", dir.path().display());
        let first = acquire(&url).unwrap().unwrap();
        assert!(first.path().ends_with("x.db.lock"));
        let second = acquire(&url).unwrap_err().to_string();
        assert!(second.contains("another ecdysis instance"), "{second}");
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        drop(first);
        assert!(acquire(&url).unwrap().is_some(), "free again once dropped");
        assert!(acquire("postgres://u@h/db").unwrap().is_none());
    }
}
