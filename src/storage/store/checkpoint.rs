//! SQLite's checkpoints (copying the write-ahead log back into the database) done mostly on a
//! thread of their own, so the writer seldom pauses for them. After a commit the writer wakes
//! this thread, which runs a passive checkpoint on a connection of its own at most every
//! [`INTERVAL`]: it copies what the log holds while the writer goes on appending.
//!
//! The writer still checkpoints itself once the log reaches its size limit
//! (`wal_autocheckpoint`): only the writer can start the log again from its beginning (at its
//! next transaction after a complete checkpoint), and a writer that never pauses would
//! otherwise make the log grow without end. By then this thread has copied nearly all of it,
//! so the writer's own checkpoint is short.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

/// The least time between two checkpoints of this thread. Shorter copies the same hot pages
/// (index roots, the conversations table) back more often; longer leaves more for the writer.
/// `cargo bench --bench bus -- serve`, accept p99 at 2,000 events/s: 12.7–13.5 ms with the
/// writer doing every checkpoint, 6.9–9.4 ms at 25 ms, 8.2–10.8 ms at 50 ms, 9.0–9.1 ms at
/// 100 ms, 11.4–11.5 ms at 200 ms; events/s at full speed the same within the machine's noise.
const INTERVAL: Duration = Duration::from_millis(25);

/// The writer's handle: tells the thread that the log grew.
pub(super) struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Start the thread that checkpoints on `conn`, a connection of its own to the database
    /// (already in WAL mode). It ends when this handle is dropped.
    pub(super) fn start(conn: rusqlite::Connection) -> io::Result<Checkpointer> {
        let (wake, woken) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &woken))?;
        Ok(Checkpointer { wake })
    }

    /// A commit was written to the log.
    pub(super) fn committed(&self) {
        // A full channel already holds a wake-up; a closed one means the thread is gone (it
        // panicked), and the writer's own checkpoints go on without it.
        let _ = self.wake.try_send(());
    }
}

/// Checkpoint after each wake-up, at most every [`INTERVAL`], until the writer is gone.
fn run(conn: &rusqlite::Connection, woken: &Receiver<()>) {
    let mut last = Instant::now();
    while woken.recv().is_ok() {
        if let Some(wait) = INTERVAL.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        // Wake-ups that came while waiting are covered by this checkpoint.
        if let Err(TryRecvError::Disconnected) = woken.try_recv() {
            return;
        }
        last = Instant::now();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "a checkpoint of the database failed");
        }
    }
}
