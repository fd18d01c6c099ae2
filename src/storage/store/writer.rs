//! Group commit: every write of the store goes through a bounded queue to a writer task (new
//! events in a lane of their own, ahead of the store's own writes), which runs what has queued
//! up in one transaction, commits it once, and answers every caller once the commit is durable.
//! Under load a commit carries many writes; alone, a write is its own transaction as before.
//!
//! A write is [`Durability::Synced`] (the default: its commit is on disk before the caller
//! hears back) or [`Durability::Lazy`] (the store's own bookkeeping on the way from an accepted
//! event to its reply: claims, leases, completions). A lazy write is answered once committed;
//! it survives a crash of the process but not of the machine, until the next synced commit,
//! which puts every earlier commit on disk with it (the log is written in order). On SQLite
//! every commit writes the log without syncing it (`synchronous = NORMAL`) and the synced
//! writes wait for a sync thread ([`WalSyncer`]), so the writer goes on with the next batch
//! while the disk works and one sync covers every commit made meanwhile; on Postgres a lazy
//! batch commits with `synchronous_commit = off`. So an event is on disk before its
//! acknowledgement, and everything its processing wrote is on disk before its reply is handed
//! to the platform (claiming a reply for delivery is a synced write).
//!
//! On SQLite a thread of its own copies the log back into the database as it grows (see
//! [`Checkpointer`]), so the writer seldom pauses for that.
//!
//! Every transaction ends with the backend's statements due before a commit (on SQLite, the
//! full-text indexing of new notes, once per transaction: see `dialect::SQLITE_BEFORE_COMMIT`).
//!
//! A write that fails rolls its batch back; the batch's writes then run again one transaction
//! each, so one bad write never fails the others. A commit that fails (the disk, the connection)
//! fails every write of its batch: none of them is acknowledged, and none is run twice.
//!
//! SQLite has one writer task, on a thread of its own that owns the single write connection:
//! each statement runs there directly, so a batch of a few hundred statements costs one hand-off
//! between threads, not one per statement (sqlx's SQLite driver hands every statement to a
//! worker thread and back: with the machine busy, those hand-offs were most of the cost of an
//! event). Postgres has several, each on its
//! own connection; a batch takes conversation locks in one global order (writes carry their
//! conversation as a key and a batch runs sorted by it), so two batches never deadlock on them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::checkpoint::Checkpointer;
use super::db::{Pools, Tx, TxConn, WriteFn};
use super::ids::UnixMs;
use super::wal_appends;
use super::wal_sync::WalSyncer;
use super::{Clock, Result, StoreError};

/// Writes waiting for a writer. New events (the platform waits for their acknowledgement)
/// queue in a lane of their own, which a writer empties first into every batch; the store's
/// own writes (claims, completions, deliveries) queue in the other and wait for room. A new
/// event finding its lane full is refused at once (back-pressure: the platform gets a "busy"
/// answer instead of a wait with no bound), and the work that drains the queues always finds
/// room in its own.
const ACCEPT_QUEUE: usize = 3072;
const INTERNAL_QUEUE: usize = 4096;
/// At most this many of the store's own writes go into one batch, so a new event waits for a
/// short batch at most before its own begins (a 256-write batch took 20–30 ms).
const INTERNAL_PER_BATCH: usize = 48;

/// Which lane a write queues in, and what it does when that lane is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The store's own work (bounded by its callers): wait for room.
    Wait,
    /// New work from outside, ahead of the store's own: refused with [`StoreError::Busy`] when
    /// its lane is full.
    Refuse,
}

/// Whether a write's commit must be on disk before its caller hears back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// On disk before the answer (acknowledgements, anything a user or platform sees next).
    Synced,
    /// Committed, and on disk with the next synced commit (see the module comment).
    Lazy,
}

/// One write waiting in the queue, its arguments and its caller's answer inside.
pub(super) trait Job: Send {
    /// Run on the batch's transaction; false when the write failed (its error is kept).
    fn run<'t>(&'t mut self, tx: &'t mut Tx) -> BoxFuture<'t, bool>;

    /// Answer the caller: `Ok` when the transaction the write last ran in ended as it should
    /// (committed, or rolled back because this write failed), else why it did not commit.
    fn finish(self: Box<Self>, ended: Ended);

    /// The conversation the write locks, if any (the batch's order).
    fn key(&self) -> Option<&str>;

    /// Whether the write's commit must be synced.
    fn durability(&self) -> Durability;
}

struct WriteJob<A, R, F> {
    args: A,
    f: F,
    key: Option<String>,
    durability: Durability,
    result: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<A, R, F> Job for WriteJob<A, R, F>
where
    A: Send + Sync + 'static,
    R: Send + 'static,
    F: WriteFn<A, R>,
{
    fn run<'t>(&'t mut self, tx: &'t mut Tx) -> BoxFuture<'t, bool> {
        Box::pin(async move {
            let result = (self.f)(tx, &self.args).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn finish(self: Box<Self>, ended: Ended) {
        let answer = match (ended, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Corrupt("a write was never run".into())),
            (Err(e), _) => Err(StoreError::Commit(e)),
        };
        // The caller may have gone away (its request was dropped); the write stands.
        let _ = self.reply.send(answer);
    }

    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn durability(&self) -> Durability {
        self.durability
    }
}

/// The queues' sending ends, held by the store.
pub(crate) struct Writer {
    accepts: mpsc::Sender<Box<dyn Job>>,
    internal: mpsc::Sender<Box<dyn Job>>,
    /// How many times SQLite's log was synced (see [`WalSyncer`]).
    #[cfg(test)]
    syncs: Arc<AtomicU64>,
}

/// The queues' receiving ends, shared by the writer tasks (one takes a batch at a time).
struct Lanes {
    accepts: mpsc::Receiver<Box<dyn Job>>,
    internal: mpsc::Receiver<Box<dyn Job>>,
}

impl Lanes {
    /// The next batch: the first write to arrive, then every new event waiting and as many of
    /// the store's own writes as fit. `None` once both lanes are closed and empty.
    async fn next_batch(&mut self, size: usize) -> Option<Vec<Box<dyn Job>>> {
        let first = tokio::select! {
            biased;
            Some(job) = self.accepts.recv() => job,
            Some(job) = self.internal.recv() => job,
            else => return None,
        };
        let mut batch = vec![first];
        fill(&mut batch, &mut self.accepts, size);
        let limit = size.min(batch.len() + INTERNAL_PER_BATCH);
        fill(&mut batch, &mut self.internal, limit);
        Some(batch)
    }
}

/// Move writes already waiting in `lane` into `batch` until it holds `limit`.
fn fill(batch: &mut Vec<Box<dyn Job>>, lane: &mut mpsc::Receiver<Box<dyn Job>>, limit: usize) {
    while batch.len() < limit {
        match lane.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

impl Writer {
    /// Start `tasks` writer tasks on `pools`, each committing batches of at most `batch` writes
    /// and running `before_commit` in every transaction just before it commits.
    /// SQLite has one, on a thread of its own with the one write connection: its statements
    /// run there directly, without a hand-off to another thread per statement.
    pub(crate) fn start(
        pools: &Pools,
        clock: Arc<Clock>,
        tasks: usize,
        batch: usize,
        before_commit: &'static [&'static str],
    ) -> Result<Self> {
        let syncs = Arc::new(AtomicU64::new(0));
        let (accepts, accepts_rx) = mpsc::channel(ACCEPT_QUEUE);
        let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
        let lanes = Arc::new(Mutex::new(Lanes {
            accepts: accepts_rx,
            internal: internal_rx,
        }));
        match pools {
            Pools::Sqlite { file, .. } => {
                let cannot_start = |e: std::io::Error| StoreError::Open {
                    url: file.display().to_string(),
                    problem: format!("cannot start the writer: {e}"),
                };
                let task = WriterTask {
                    target: Target::Sqlite(Some(open_sqlite_writer(file)?)),
                    syncer: Some(WalSyncer::start(file, syncs.clone()).map_err(cannot_start)?),
                    checkpointer: Some(
                        Checkpointer::start(open_sqlite_checkpoints(file)?)
                            .map_err(cannot_start)?,
                    ),
                    clock,
                    lanes,
                    batch: batch.max(1),
                    before_commit,
                };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(cannot_start)?;
                std::thread::Builder::new()
                    .name("sqlite-writer".into())
                    .spawn(move || runtime.block_on(task.run()))
                    .map_err(cannot_start)?;
            }
            Pools::Postgres { pool } => {
                for _ in 0..tasks.max(1) {
                    let task = WriterTask {
                        target: Target::Postgres(pool.clone()),
                        syncer: None,
                        checkpointer: None,
                        clock: clock.clone(),
                        lanes: lanes.clone(),
                        batch: batch.max(1),
                        before_commit,
                    };
                    tokio::spawn(task.run());
                }
            }
        }
        Ok(Writer {
            accepts,
            internal,
            #[cfg(test)]
            syncs,
        })
    }

    /// How many times SQLite's log was synced so far.
    #[cfg(test)]
    fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queue a write and wait until it is committed (or failed).
    pub(crate) async fn write<A, R>(
        &self,
        admission: Admission,
        durability: Durability,
        key: Option<String>,
        args: A,
        f: impl WriteFn<A, R>,
    ) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            args,
            f,
            key,
            durability,
            result: None,
            reply,
        };
        let job: Box<dyn Job> = Box::new(job);
        match admission {
            Admission::Wait => self
                .internal
                .send(job)
                .await
                .map_err(|_| StoreError::Closed)?,
            Admission::Refuse => self.accepts.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?,
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The SQLite write connection: foreign keys on, a write-ahead log, waiting (not failing)
/// while another process holds the database, and room for every statement of the store in its
/// cache of prepared statements.
fn open_sqlite_writer(file: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    // Through the VFS that writes the log once per commit (see `wal_appends`).
    let conn = rusqlite::Connection::open_with_flags_and_vfs(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        wal_appends::vfs()?,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    // Commits write the log without syncing it; synced writes wait for the sync thread.
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")?;
    // The writer checkpoints itself once the log holds this many pages, between two commits
    // (most of the copying is done before by the checkpoint thread: see `checkpoint.rs`). With
    // the writer doing all of it, SQLite's 1,000 made that copy most of the writer's time at
    // full speed: 10,000 measured 9.0–9.5k events/s against 7.2k, and a log of up to ~40 MB on
    // disk. 20,000 was no faster.
    conn.execute_batch("PRAGMA wal_autocheckpoint = 10000")?;
    conn.set_prepared_statement_cache_capacity(256);
    // Plans are made once, whatever values are bound: otherwise a statement whose plan could
    // depend on a bound value (a partial index's condition) was prepared again each time that
    // value changed, as the claim of events was on every call (1 % of the writer's time).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// The connection of the checkpoint thread (see [`Checkpointer`]).
fn open_sqlite_checkpoints(file: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Ok(rusqlite::Connection::open_with_flags(file, flags)?)
}

/// Where a writer task's transactions run.
enum Target {
    /// SQLite's one write connection, lent to each transaction and given back at its end
    /// (`None` only while lent).
    Sqlite(Option<rusqlite::Connection>),
    Postgres(PgPool),
}

/// Why a transaction could not start or end; shared by every write of its batch.
pub(super) type Ended = std::result::Result<(), Arc<StoreError>>;

struct WriterTask {
    target: Target,
    /// SQLite's syncs of the log, on a thread of their own (see [`WalSyncer`]).
    syncer: Option<WalSyncer>,
    /// SQLite's checkpoints, on a thread of their own (see [`Checkpointer`]).
    checkpointer: Option<Checkpointer>,
    clock: Arc<Clock>,
    lanes: Arc<Mutex<Lanes>>,
    batch: usize,
    /// Statements every transaction runs last, before its commit (see
    /// `dialect::SQLITE_BEFORE_COMMIT`).
    before_commit: &'static [&'static str],
}

impl WriterTask {
    async fn run(mut self) {
        loop {
            let batch = self.lanes.lock().await.next_batch(self.batch).await;
            let Some(mut batch) = batch else {
                return;
            };
            // Stable: a conversation's writes keep their order, and locks are taken in one order.
            batch.sort_by(|a, b| a.key().cmp(&b.key()));
            self.commit(batch).await;
        }
    }

    /// A transaction at the given durability (see the module comment), timed now.
    async fn begin(&mut self, durability: Durability) -> Result<Tx, Arc<StoreError>> {
        let now = UnixMs(self.clock.now());
        let conn = match &mut self.target {
            Target::Sqlite(slot) => {
                let conn = slot.take().ok_or_else(|| {
                    Arc::new(StoreError::Corrupt("the write connection was lost".into()))
                })?;
                // Every commit is `synchronous = NORMAL`; a synced one is then synced apart.
                if let Err(e) = conn.execute_batch("BEGIN") {
                    *slot = Some(conn);
                    return Err(Arc::new(e.into()));
                }
                TxConn::Sqlite(conn)
            }
            Target::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(|e| Arc::new(e.into()))?;
                if durability == Durability::Lazy {
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| Arc::new(e.into()))?;
                }
                TxConn::Postgres(tx)
            }
        };
        Ok(Tx { conn, now })
    }

    /// Commit `tx`, or roll it back; SQLite's connection goes back to its slot either way.
    async fn end(&mut self, tx: Tx, commit: bool) -> Ended {
        match tx.conn {
            TxConn::Sqlite(conn) => {
                let ended = if commit {
                    let committed = conn.execute_batch("COMMIT");
                    if committed.is_ok()
                        && let Some(checkpointer) = &self.checkpointer
                    {
                        checkpointer.committed();
                    }
                    committed.map_err(|e| Arc::new(e.into()))
                } else {
                    Ok(())
                };
                if (!commit || ended.is_err())
                    && !conn.is_autocommit()
                    && let Err(e) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %e, "a write transaction did not roll back");
                }
                if let Target::Sqlite(slot) = &mut self.target {
                    *slot = Some(conn);
                }
                ended
            }
            TxConn::Postgres(t) => {
                if commit {
                    t.commit().await.map_err(|e| Arc::new(e.into()))
                } else {
                    // Dropping the transaction rolls it back.
                    Ok(())
                }
            }
        }
    }

    /// Answer the writes of a transaction that `ended` so: synced writes of a SQLite commit once
    /// the log is on disk, everything else at once.
    fn answer(&self, jobs: Vec<Box<dyn Job>>, ended: Ended) {
        let Some(syncer) = self.syncer.as_ref().filter(|_| ended.is_ok()) else {
            for job in jobs {
                job.finish(ended.clone());
            }
            return;
        };
        let (synced, lazy): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .partition(|job| job.durability() == Durability::Synced);
        for job in lazy {
            job.finish(Ok(()));
        }
        if !synced.is_empty() {
            syncer.finish_when_synced(synced);
        }
    }

    /// Run a batch in one transaction and answer its writes.
    async fn commit(&mut self, mut batch: Vec<Box<dyn Job>>) {
        let durability = if batch.iter().any(|j| j.durability() == Durability::Synced) {
            Durability::Synced
        } else {
            Durability::Lazy
        };
        let mut tx = match self.begin(durability).await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a write transaction");
                for job in batch {
                    job.finish(Err(e.clone()));
                }
                return;
            }
        };
        let mut failed = false;
        for job in batch.iter_mut() {
            if !job.run(&mut tx).await {
                failed = true;
                break;
            }
        }
        // When the statements before the commit fail, the batch is rolled back as for a failed
        // write, and each write runs again alone with them: only the one they fail with fails.
        let mut unfinished = None;
        if !failed && let Err(e) = run_before_commit(self.before_commit, &mut tx).await {
            tracing::warn!(error = %e, writes = batch.len(), "the statements before a commit failed");
            unfinished = Some(Arc::new(e));
            failed = true;
        }
        if !failed {
            let ended = self.end(tx, true).await;
            if let Err(e) = &ended {
                tracing::error!(error = %e, writes = batch.len(), "a write transaction did not commit");
            }
            self.answer(batch, ended);
            return;
        }
        // Roll back. Each write runs again on its own, so the one that failed fails alone (with
        // its own error) and the others are written.
        let _rolled_back = self.end(tx, false).await;
        if batch.len() == 1 {
            let ended = unfinished.map_or(Ok(()), Err);
            for job in batch {
                job.finish(ended.clone());
            }
            return;
        }
        for mut job in batch {
            let mut tx = match self.begin(job.durability()).await {
                Ok(tx) => tx,
                Err(e) => {
                    job.finish(Err(e));
                    continue;
                }
            };
            if !job.run(&mut tx).await {
                let _rolled_back = self.end(tx, false).await;
                job.finish(Ok(()));
            } else if let Err(e) = run_before_commit(self.before_commit, &mut tx).await {
                let _rolled_back = self.end(tx, false).await;
                job.finish(Err(Arc::new(e)));
            } else {
                let ended = self.end(tx, true).await;
                self.answer(vec![job], ended);
            }
        }
    }
}

/// Run the statements due before a commit (see [`WriterTask::before_commit`]) on `tx`.
async fn run_before_commit(statements: &'static [&'static str], tx: &mut Tx) -> Result<()> {
    for &sql in statements {
        tx.query(sql).execute().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use tokio::sync::Notify;

    use super::super::db::Columns;
    use super::*;

    async fn writer(dir: &tempfile::TempDir) -> (Writer, Pools) {
        writer_with(dir, &[]).await
    }

    /// [`writer`], with statements run before each commit, and a table `guard` that refuses
    /// the number 5.
    async fn writer_with(
        dir: &tempfile::TempDir,
        before_commit: &'static [&'static str],
    ) -> (Writer, Pools) {
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let file = options.get_filename().to_path_buf();
        let read = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE t (n INTEGER PRIMARY KEY);
             CREATE TABLE guard (n INTEGER CHECK (n <> 5))",
        )
        .execute(&read)
        .await
        .unwrap();
        let pools = Pools::Sqlite { read, file };
        let writer =
            Writer::start(&pools, Arc::new(Clock::default()), 1, 64, before_commit).unwrap();
        (writer, pools)
    }

    /// Insert `n` into `t` (a second insert of one `n` fails: primary key).
    async fn insert(writer: &Writer, n: i64) -> Result<()> {
        insert_as(writer, Admission::Wait, n).await
    }

    async fn insert_as(writer: &Writer, admission: Admission, n: i64) -> Result<()> {
        writer
            .write(admission, Durability::Synced, None, n, |tx, n| {
                Box::pin(async move {
                    tx.query("INSERT INTO t (n) VALUES ($1)")
                        .bind(*n)
                        .execute()
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn insert_lazily(writer: &Writer, n: i64) -> Result<()> {
        writer
            .write(Admission::Wait, Durability::Lazy, None, n, |tx, n| {
                Box::pin(async move {
                    tx.query("INSERT INTO t (n) VALUES ($1)")
                        .bind(*n)
                        .execute()
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    #[tokio::test]
    async fn synced_writes_are_answered_after_a_sync_and_lazy_ones_without() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        insert_lazily(&writer, 1).await.unwrap();
        insert_lazily(&writer, 2).await.unwrap();
        assert_eq!(writer.syncs(), 0, "lazy commits are not synced");
        insert(&writer, 3).await.unwrap();
        assert_eq!(writer.syncs(), 1, "a synced write waits for its sync");
        assert_eq!(stored(&pools).await, vec![1, 2, 3]);

        // Writes queued together share syncs: 50 concurrent ones need far fewer than 50.
        let writes = (10..60).map(|n| insert(&writer, n));
        for written in futures_util::future::join_all(writes).await {
            written.unwrap();
        }
        let syncs = writer.syncs() - 1;
        assert!((1..25).contains(&syncs), "{syncs} syncs for 50 writes");
        assert_eq!(stored(&pools).await.len(), 53);
    }

    async fn stored(pools: &Pools) -> Vec<i64> {
        let Pools::Sqlite { read, .. } = pools else {
            unreachable!()
        };
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(read)
            .await
            .unwrap()
    }

    /// Writes queued together share a batch; the one that fails fails alone, the others are
    /// committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        insert(&writer, 5).await.unwrap();
        let writer = Arc::new(writer);
        let tasks: Vec<_> = (1..=10)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { (n, insert(&writer, n).await) })
            })
            .collect();
        for task in tasks {
            let (n, result) = task.await.unwrap();
            if n == 5 {
                assert!(matches!(result, Err(StoreError::Sqlite(_))), "{result:?}");
            } else {
                result.unwrap();
            }
        }
        assert_eq!(stored(&pools).await, (1..=10).collect::<Vec<_>>());
    }

    /// Statements run before each commit: when they fail, the batch is rolled back and each
    /// write runs again alone, so only the write they fail with fails (with a commit error),
    /// and the rest of its batch is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_before_a_commit_fail_only_the_write_they_fail_with() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) =
            writer_with(&dir, &["INSERT INTO guard (n) SELECT n FROM t WHERE n = 5"]).await;
        let writer = Arc::new(writer);
        let (held, release) = hold(&writer).await;
        let tasks: Vec<_> = (1..=10)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { (n, insert(&writer, n).await) })
            })
            .collect();
        until_queued(&writer.internal, 10).await;
        release.notify_one();
        held.await.unwrap().unwrap();
        for task in tasks {
            let (n, result) = task.await.unwrap();
            if n == 5 {
                assert!(matches!(result, Err(StoreError::Commit(_))), "{result:?}");
            } else {
                result.unwrap();
            }
        }
        let written: Vec<i64> = (1..=10).filter(|&n| n != 5).collect();
        assert_eq!(stored(&pools).await, written);
        // Alone, the write fails the same way.
        assert!(matches!(
            insert(&writer, 5).await,
            Err(StoreError::Commit(_))
        ));
    }

    /// SQLite's log is copied back into the database by the checkpoint thread, long before
    /// the writer's own limit (10,000 pages; these commits write a few dozen): the database
    /// file, which in WAL mode only checkpoints write, takes the new rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_back_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        let Pools::Sqlite { file, .. } = &pools else {
            unreachable!("a SQLite writer")
        };
        let before = std::fs::read(file).unwrap();
        for n in 1..=20 {
            insert(&writer, n).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read(file).unwrap() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file is as it was before the writes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stored(&pools).await, (1..=20).collect::<Vec<_>>());
    }

    /// Hold the writer inside a write until `release` is notified.
    async fn hold(writer: &Arc<Writer>) -> (tokio::task::JoinHandle<Result<()>>, Arc<Notify>) {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let held = {
            let writer = writer.clone();
            let args = (entered.clone(), release.clone());
            tokio::spawn(async move {
                writer
                    .write(
                        Admission::Wait,
                        Durability::Synced,
                        None,
                        args,
                        |_tx, (entered, release)| {
                            Box::pin(async move {
                                entered.notify_one();
                                release.notified().await;
                                Ok(())
                            })
                        },
                    )
                    .await
            })
        };
        entered.notified().await;
        (held, release)
    }

    /// Wait (bounded) until at least `n` writes wait in `lane`.
    async fn until_queued(lane: &mpsc::Sender<Box<dyn Job>>, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while lane.max_capacity() - lane.capacity() < n {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
    }

    /// With the new events' lane full, new work from outside is refused at once; the store's
    /// own writes still queue, and everything queued is written once the writer moves again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_new_work_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        let writer = Arc::new(writer);
        let (held, release) = hold(&writer).await;
        let accepted: Vec<_> = (0..ACCEPT_QUEUE as i64)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { insert_as(&writer, Admission::Refuse, 100 + n).await })
            })
            .collect();
        until_queued(&writer.accepts, ACCEPT_QUEUE).await;
        let refused = insert_as(&writer, Admission::Refuse, 1).await;
        assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
        let internal = {
            let writer = writer.clone();
            tokio::spawn(async move { insert(&writer, 2).await })
        };
        release.notify_one();
        held.await.unwrap().unwrap();
        for task in accepted {
            task.await.unwrap().unwrap();
        }
        internal.await.unwrap().unwrap();
        assert_eq!(stored(&pools).await.len(), ACCEPT_QUEUE + 1);
    }

    /// New events go ahead of the store's own writes that queued before them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_events_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        let writer = Arc::new(writer);
        let (held, release) = hold(&writer).await;
        let own = 3 * INTERNAL_PER_BATCH as i64;
        let internal: Vec<_> = (0..own)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { insert(&writer, 1000 + n).await })
            })
            .collect();
        until_queued(&writer.internal, own as usize).await;
        // The new event counts, in its own transaction, the store's writes written before it.
        let accepted = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(Admission::Refuse, Durability::Synced, None, (), |tx, _| {
                        Box::pin(async move {
                            let before: i64 = tx
                                .query("SELECT COUNT(*) FROM t WHERE n >= 1000")
                                .fetch_one()
                                .await?
                                .col(0)?;
                            Ok(before)
                        })
                    })
                    .await
            })
        };
        until_queued(&writer.accepts, 1).await;
        release.notify_one();
        held.await.unwrap().unwrap();
        assert_eq!(accepted.await.unwrap().unwrap(), 0);
        for task in internal {
            task.await.unwrap().unwrap();
        }
        assert_eq!(stored(&pools).await.len(), own as usize);
    }

    /// A batch takes every new event waiting but only a bounded share of the store's own
    /// writes, so a new event never waits behind a long batch.
    #[tokio::test]
    async fn a_batch_takes_a_bounded_share_of_the_stores_own_writes() {
        let (accepts, accepts_rx) = mpsc::channel(ACCEPT_QUEUE);
        let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
        let mut lanes = Lanes {
            accepts: accepts_rx,
            internal: internal_rx,
        };
        fn nothing<'t>(_tx: &'t mut Tx, _: &'t ()) -> BoxFuture<'t, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        let job = || -> Box<dyn Job> {
            let (reply, _answer) = oneshot::channel::<Result<()>>();
            Box::new(WriteJob {
                args: (),
                f: nothing,
                key: None,
                durability: Durability::Lazy,
                result: None,
                reply,
            })
        };
        for _ in 0..2 * INTERNAL_PER_BATCH {
            internal.send(job()).await.unwrap();
        }
        for _ in 0..100 {
            accepts.send(job()).await.unwrap();
        }
        let batch = lanes.next_batch(1000).await.unwrap();
        assert_eq!(batch.len(), 100 + INTERNAL_PER_BATCH);
        // Capped by the batch size too.
        let batch = lanes.next_batch(10).await.unwrap();
        assert_eq!(batch.len(), 10);
        drop((accepts, internal));
        let rest = lanes.next_batch(1000).await.unwrap();
        assert_eq!(rest.len(), INTERNAL_PER_BATCH - 10);
        assert!(lanes.next_batch(1000).await.is_none());
    }
}
