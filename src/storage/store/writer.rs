//! Group commit: every write of the store goes through a bounded queue to a writer task, which
//! runs what has queued up in one transaction, commits it once (one `fsync` on SQLite, whose
//! `synchronous = FULL` makes each commit durable), and only then answers every caller. Under
//! load a commit carries many writes; alone, a write is its own transaction as before.
//!
//! A write is [`Durability::Synced`] (the default: its commit is on disk before the caller
//! hears back) or [`Durability::Lazy`] (the store's own bookkeeping on the way from an accepted
//! event to its reply: claims, leases, completions). A batch of lazy writes only commits (SQLite
//! `synchronous = NORMAL`, Postgres `synchronous_commit = off`); it survives a crash of the
//! process but not of the machine, until the next synced commit, which puts every earlier
//! commit on disk with it (the log is written in order). So an event is on disk before its
//! acknowledgement, and everything its processing wrote is on disk before its reply is handed
//! to the platform (claiming a reply for delivery is a synced write).
//!
//! A write that fails rolls its batch back; the batch's writes then run again one transaction
//! each, so one bad write never fails the others. A commit that fails (the disk, the connection)
//! fails every write of its batch: none of them is acknowledged, and none is run twice.
//!
//! SQLite has one writer task (its single write connection). Postgres has several, each on its
//! own connection; a batch takes conversation locks in one global order (writes carry their
//! conversation as a key and a batch runs sorted by it), so two batches never deadlock on them.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::db::{Pools, Tx, WriteFn};
use super::ids::UnixMs;
use super::{Clock, Result, StoreError};

/// Writes waiting for a writer. Internal writes (claims, completions, deliveries) wait for room;
/// new events are refused once fewer than [`RESERVED`] places are left (back-pressure: the
/// platform gets a "busy" answer at once instead of a wait with no bound), so the work that
/// drains the queue always finds room.
const QUEUE: usize = 4096;
const RESERVED: usize = 1024;

/// What a write does when the queue is (nearly) full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Wait for room (the store's own work, bounded by its callers).
    Wait,
    /// Refuse with [`StoreError::Busy`] (new work from outside).
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
trait Job: Send {
    /// Run on the batch's transaction; false when the write failed (its error is kept).
    fn run<'t>(&'t mut self, tx: &'t mut Tx) -> BoxFuture<'t, bool>;

    /// Answer the caller: `Ok` when the transaction the write last ran in ended as it should
    /// (committed, or rolled back because this write failed), else why it did not commit.
    fn finish(self: Box<Self>, ended: Result<(), Arc<sqlx::Error>>);

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

    fn finish(self: Box<Self>, ended: Result<(), Arc<sqlx::Error>>) {
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

/// The queue's sending end, held by the store.
pub(crate) struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Start `tasks` writer tasks on `pools`, each committing batches of at most `batch` writes.
    pub(crate) fn start(pools: Pools, clock: Arc<Clock>, tasks: usize, batch: usize) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..tasks.max(1) {
            let task = WriterTask {
                pools: pools.clone(),
                clock: clock.clone(),
                receiver: receiver.clone(),
                batch: batch.max(1),
            };
            tokio::spawn(task.run());
        }
        Writer { queue }
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
            Admission::Wait => self.queue.send(job).await.map_err(|_| StoreError::Closed)?,
            Admission::Refuse => {
                if self.queue.capacity() <= RESERVED {
                    return Err(StoreError::Busy);
                }
                self.queue.try_send(job).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                    mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
                })?;
            }
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

struct WriterTask {
    pools: Pools,
    clock: Arc<Clock>,
    receiver: Arc<Mutex<mpsc::Receiver<Box<dyn Job>>>>,
    batch: usize,
}

impl WriterTask {
    async fn run(self) {
        loop {
            let mut batch = Vec::new();
            {
                let mut receiver = self.receiver.lock().await;
                let Some(first) = receiver.recv().await else {
                    return;
                };
                batch.push(first);
                while batch.len() < self.batch {
                    match receiver.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            // Stable: a conversation's writes keep their order, and locks are taken in one order.
            batch.sort_by(|a, b| a.key().cmp(&b.key()));
            self.commit(batch).await;
        }
    }

    async fn begin(&self, durability: Durability) -> Result<Tx, Arc<sqlx::Error>> {
        self.pools
            .begin(UnixMs(self.clock.now()), durability)
            .await
            .map_err(Arc::new)
    }

    /// Run a batch in one transaction and answer its writes.
    async fn commit(&self, mut batch: Vec<Box<dyn Job>>) {
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
        if !failed {
            let ended = tx.commit().await.map_err(Arc::new);
            if let Err(e) = &ended {
                tracing::error!(error = %e, writes = batch.len(), "a write transaction did not commit");
            }
            for job in batch {
                job.finish(ended.clone());
            }
            return;
        }
        // Dropping the transaction rolls it back. Each write runs again on its own, so the one
        // that failed fails alone (with its own error) and the others are written.
        drop(tx);
        if batch.len() == 1 {
            for job in batch {
                job.finish(Ok(()));
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
            if job.run(&mut tx).await {
                let ended = tx.commit().await.map_err(Arc::new);
                job.finish(ended);
            } else {
                drop(tx);
                job.finish(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use tokio::sync::Notify;

    use super::super::db::on_tx;
    use super::*;

    async fn writer(dir: &tempfile::TempDir) -> (Writer, Pools) {
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(&write)
            .await
            .unwrap();
        let read = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        let pools = Pools::Sqlite { write, read };
        let writer = Writer::start(pools.clone(), Arc::new(Clock::default()), 1, 64);
        (writer, pools)
    }

    /// Insert `n` into `t` (a second insert of one `n` fails: primary key).
    async fn insert(writer: &Writer, n: i64) -> Result<()> {
        writer
            .write(Admission::Wait, Durability::Synced, None, n, |tx, n| {
                Box::pin(async move {
                    on_tx!(tx, |c| sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(*n)
                        .execute(c)
                        .await?
                        .rows_affected());
                    Ok(())
                })
            })
            .await
    }

    /// The `synchronous` level a write of `durability` runs at (SQLite: 1 NORMAL, 2 FULL).
    async fn sync_level(writer: &Writer, durability: Durability) -> i64 {
        writer
            .write(Admission::Wait, durability, None, (), |tx, _| {
                Box::pin(async move {
                    let level: i64 = on_tx!(tx, |c| sqlx::query_scalar("PRAGMA synchronous")
                        .fetch_one(c)
                        .await?);
                    Ok(level)
                })
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn lazy_batches_commit_without_sync_and_synced_ones_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _pools) = writer(&dir).await;
        assert_eq!(sync_level(&writer, Durability::Lazy).await, 1, "NORMAL");
        assert_eq!(sync_level(&writer, Durability::Synced).await, 2, "FULL");
        assert_eq!(
            sync_level(&writer, Durability::Lazy).await,
            1,
            "back to NORMAL"
        );
        // A batch with one synced write syncs, whatever else it carries.
        let writer = Arc::new(writer);
        let (lazy, synced) = tokio::join!(
            sync_level(&writer, Durability::Lazy),
            sync_level(&writer, Durability::Synced)
        );
        assert_eq!(synced, 2);
        assert!(lazy == 1 || lazy == 2, "{lazy}");
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
                assert!(matches!(result, Err(StoreError::Db(_))), "{result:?}");
            } else {
                result.unwrap();
            }
        }
        assert_eq!(stored(&pools).await, (1..=10).collect::<Vec<_>>());
    }

    /// With the queue nearly full, new work from outside is refused at once; the store's own
    /// writes still queue, and everything queued is written once the writer moves again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_new_work_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, pools) = writer(&dir).await;
        let writer = Arc::new(writer);
        // Hold the writer inside a write until released.
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
        let queued: Vec<_> = (0..(QUEUE - RESERVED) as i64)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { insert(&writer, 100 + n).await })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while writer.queue.capacity() > RESERVED {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue never filled"
            );
            tokio::task::yield_now().await;
        }
        let refused = writer
            .write(
                Admission::Refuse,
                Durability::Synced,
                None,
                1_i64,
                |_tx, _| Box::pin(async move { Ok(()) }),
            )
            .await;
        assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
        release.notify_one();
        held.await.unwrap().unwrap();
        for task in queued {
            task.await.unwrap().unwrap();
        }
        assert_eq!(stored(&pools).await.len(), QUEUE - RESERVED);
    }
}
