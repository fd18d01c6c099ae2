//! SQLite's durable commits without the writer waiting for the disk. The writer commits with
//! `synchronous = NORMAL` (the write-ahead log is written, not synced) and hands the batch's
//! synced writes to this thread, which syncs the log once for everything handed over since its
//! last sync and only then answers them. The writer runs its next batch meanwhile, so a sync
//! no longer stalls it, and one sync covers every commit that queued up during the last one.
//!
//! A sync covers every commit made before it started: the log is one file, appended in order,
//! and the sync flushes the file whichever descriptor wrote it. That is what
//! `synchronous = FULL` gives inside the commit. SQLite creates the log with the first write
//! and removes it only when the last connection closes (the writer's stays open while this
//! thread runs), so a log that is not there has nothing to sync.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::StoreError;
use super::writer::Job;

/// The sending end of the sync thread's queue.
pub(super) struct WalSyncer {
    queue: mpsc::Sender<Vec<Box<dyn Job>>>,
}

impl WalSyncer {
    /// Start the thread that syncs the log of the database `file`; `syncs` counts its syncs.
    pub(super) fn start(file: &Path, syncs: Arc<AtomicU64>) -> io::Result<WalSyncer> {
        // The log lives next to the database: that the database is where we look proves the
        // path (a log missing later then means nothing was written yet).
        std::fs::metadata(file)?;
        let log = wal_file(file);
        let (queue, waiting) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || run(&log, &waiting, &syncs))?;
        Ok(WalSyncer { queue })
    }

    /// Answer `jobs`, all committed, once the log is on disk.
    pub(super) fn finish_when_synced(&self, jobs: Vec<Box<dyn Job>>) {
        if let Err(mpsc::SendError(jobs)) = self.queue.send(jobs) {
            let closed = Arc::new(StoreError::Closed);
            for job in jobs {
                job.finish(Err(closed.clone()));
            }
        }
    }
}

/// SQLite's name for the write-ahead log of `file`.
fn wal_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Sync for whatever has queued, answer it, and again, until the writer is gone.
fn run(log: &Path, waiting: &mpsc::Receiver<Vec<Box<dyn Job>>>, syncs: &AtomicU64) {
    while let Ok(mut jobs) = waiting.recv() {
        while let Ok(more) = waiting.try_recv() {
            jobs.extend(more);
        }
        let synced = sync(log).map_err(|e| Arc::new(StoreError::Sync(e)));
        syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &synced {
            tracing::error!(error = %e, writes = jobs.len(), "committed writes are not on disk");
        }
        for job in jobs {
            job.finish(synced.clone());
        }
    }
}

/// Put the log on disk; no log yet means nothing to put there.
fn sync(log: &Path) -> io::Result<()> {
    match File::open(log) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_named_like_sqlite_names_it() {
        assert_eq!(
            wal_file(Path::new("/data/ecdysis.db")),
            PathBuf::from("/data/ecdysis.db-wal")
        );
        assert_eq!(wal_file(Path::new("e.db")), PathBuf::from("e.db-wal"));
    }

    #[test]
    fn a_database_that_is_not_there_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing.db");
        let started = WalSyncer::start(&missing, Arc::default());
        assert_eq!(started.err().unwrap().kind(), io::ErrorKind::NotFound);
    }
}
