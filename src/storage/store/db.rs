//! The one handle both backends share: their pools, a transaction on either, and the macro
//! that runs one read on whichever backend is open.
//!
//! Every query of the store is written once, with `$N` placeholders (both SQLite drivers read
//! them as well as Postgres does) and SQL both databases accept. The few statements that
//! really differ live in [`super::dialect`]. Writes run through [`Tx::query`](super::query),
//! reads through [`on_reader!`]. Rows are read through [`Columns`], so the code that turns a
//! row into a value is written once too.
//!
//! SQLite runs every write on one connection (writes queue in-process instead of failing with
//! `SQLITE_BUSY`), rusqlite's, on the writer's own thread (see [`super::writer`]); reads go
//! through sqlx's pool. Postgres uses one sqlx pool for both.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::ConversationRef;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Postgres, Row as _, Sqlite, Transaction, Type};

use super::clock::Clock;
use super::ids::UnixMs;
use super::writer::{Admission, Durability, Writer};
use super::{Result, StoreError, dialect, migrate};

/// Writes SQLite commits at once, at most (its single writer).
const SQLITE_BATCH: usize = 256;
/// Postgres writer tasks (connections writing at once) and writes per transaction.
const POSTGRES_WRITERS: usize = 4;
const POSTGRES_BATCH: usize = 64;

/// The open database and the writer that commits its writes.
pub(crate) struct Db {
    pub(crate) pools: Pools,
    writer: Writer,
}

/// The connection pools of one backend.
#[derive(Clone)]
pub(crate) enum Pools {
    Sqlite {
        read: SqlitePool,
        /// The database file: the writer opens its one connection on it.
        file: PathBuf,
    },
    Postgres {
        pool: PgPool,
    },
}

/// A transaction on either backend, with the time the write it belongs to started.
pub(crate) struct Tx {
    pub(crate) conn: TxConn,
    /// The store's clock, read once per transaction.
    pub(crate) now: UnixMs,
}

pub(crate) enum TxConn {
    /// The writer's own connection, lent to the transaction (see [`super::writer`]).
    Sqlite(rusqlite::Connection),
    Postgres(Transaction<'static, Postgres>),
}

/// Run `$body` once for whichever backend `$db` is, with `$c` bound to the pool that serves
/// reads. With a [`super::dialect::Sql`] pair, `$sql` is bound to that backend's text.
macro_rules! on_reader {
    ($db:expr, |$c:ident| $body:expr) => {
        match &$db.pools {
            $crate::storage::store::db::Pools::Sqlite { read: $c, .. } => $body,
            $crate::storage::store::db::Pools::Postgres { pool: $c } => $body,
        }
    };
    ($db:expr, $pair:expr, |$c:ident, $sql:ident| $body:expr) => {
        match &$db.pools {
            $crate::storage::store::db::Pools::Sqlite { read: $c, .. } => {
                let $sql = $pair.sqlite;
                $body
            }
            $crate::storage::store::db::Pools::Postgres { pool: $c } => {
                let $sql = $pair.postgres;
                $body
            }
        }
    };
}

pub(crate) use on_reader;

/// A value both backends can decode (SQLite's write connection through rusqlite).
pub(crate) trait Value:
    for<'r> Decode<'r, Sqlite>
    + Type<Sqlite>
    + for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + rusqlite::types::FromSql
{
}

impl<T> Value for T where
    T: for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + rusqlite::types::FromSql
{
}

/// A column name or position, on both backends.
pub(crate) trait Index: ColumnIndex<SqliteRow> + ColumnIndex<PgRow> {
    /// The column's position among `names`.
    fn position(&self, names: &[String]) -> Option<usize>;
    /// The column, for messages.
    fn describe(&self) -> String;
}

impl Index for &str {
    fn position(&self, names: &[String]) -> Option<usize> {
        names.iter().position(|name| name == self)
    }

    fn describe(&self) -> String {
        format!("`{self}`")
    }
}

impl Index for usize {
    fn position(&self, _names: &[String]) -> Option<usize> {
        Some(*self)
    }

    fn describe(&self) -> String {
        format!("#{self}")
    }
}

/// A row of either backend: the one way row-reading code gets at its columns.
pub(crate) trait Columns {
    fn col<T: Value>(&self, index: impl Index) -> Result<T>;
}

impl Columns for SqliteRow {
    fn col<T: Value>(&self, index: impl Index) -> Result<T> {
        Ok(self.try_get(index)?)
    }
}

impl Columns for PgRow {
    fn col<T: Value>(&self, index: impl Index) -> Result<T> {
        Ok(self.try_get(index)?)
    }
}

/// Read every row with `read`, stopping at the first column that does not decode.
pub(crate) fn rows<R: Columns, T>(rows: &[R], read: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(read).collect()
}

/// A write: `f` runs on a transaction with `args`; it may run again (on a new transaction) when
/// the transaction it ran in is rolled back, so it must not do anything but SQL.
pub(crate) trait WriteFn<A, R>:
    for<'t> Fn(&'t mut Tx, &'t A) -> BoxFuture<'t, Result<R>> + Send + Sync + 'static
{
}

impl<A, R, F> WriteFn<A, R> for F where
    F: for<'t> Fn(&'t mut Tx, &'t A) -> BoxFuture<'t, Result<R>> + Send + Sync + 'static
{
}

/// The URL for messages: the password hidden, and nothing of a URL that does not parse (it
/// could hold a password that cannot be told apart).
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(_) => crate::config::redact(url),
        Err(_) => "(unparseable URL)".into(),
    }
}

impl Db {
    /// Open (SQLite: creating the file and its directory if needed) and migrate.
    pub(crate) async fn open(url: &str, clock: Arc<Clock>) -> Result<Self> {
        let pools = if url.starts_with("sqlite:") {
            Self::open_sqlite(url).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::open_postgres(url).await?
        } else {
            return Err(StoreError::Open {
                url: crate::config::redact(url),
                problem: "unsupported scheme (use sqlite:// or postgres://)".into(),
            });
        };
        Self::with_pools(pools, clock)
    }

    /// Start the writers of `pools`: SQLite's one write connection, or a few Postgres
    /// connections (the pool keeps the rest for reads).
    fn with_pools(pools: Pools, clock: Arc<Clock>) -> Result<Self> {
        let before_commit = match pools {
            Pools::Sqlite { .. } => dialect::SQLITE_BEFORE_COMMIT,
            Pools::Postgres { .. } => &[],
        };
        Self::with_writer(pools, clock, before_commit)
    }

    /// [`Db::with_pools`], with the statements its writer runs before each commit.
    fn with_writer(
        pools: Pools,
        clock: Arc<Clock>,
        before_commit: &'static [&'static str],
    ) -> Result<Self> {
        let (tasks, batch) = match pools {
            Pools::Sqlite { .. } => (1, SQLITE_BATCH),
            Pools::Postgres { .. } => (POSTGRES_WRITERS, POSTGRES_BATCH),
        };
        let writer = Writer::start(&pools, clock, tasks, batch, before_commit)?;
        Ok(Db { pools, writer })
    }

    async fn open_sqlite(url: &str) -> Result<Pools> {
        let open_error = |problem: String| StoreError::Open {
            url: url.to_string(),
            problem,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_error(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit is on disk before it is acknowledged; group commit (see
            // [`super::writer`]) makes that one sync per batch of writes, and batches of
            // bookkeeping only (lazy writes) skip the sync until the next synced commit.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = options.get_filename().to_path_buf();
        // A connection in this process cannot go stale: no ping before each use.
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        migrate::sqlite().run(&read).await?;
        Ok(Pools::Sqlite { read, file })
    }

    async fn open_postgres(url: &str) -> Result<Pools> {
        let open_error = |problem: String| StoreError::Open {
            url: shown_url(url),
            problem,
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        migrate::postgres().run(&pool).await?;
        Ok(Pools::Postgres { pool })
    }

    /// `sqlite` or `postgres`.
    pub(crate) fn backend(&self) -> &'static str {
        match self.pools {
            Pools::Sqlite { .. } => "sqlite",
            Pools::Postgres { .. } => "postgres",
        }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.pools, Pools::Postgres { .. })
    }

    /// Check that the database answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        on_reader!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Run a write (`f` on `args`) in a transaction, committed durably before this returns;
    /// concurrent writes share a transaction (see [`super::writer`]).
    pub(crate) async fn write<A, R>(&self, args: A, f: impl WriteFn<A, R>) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.writer
            .write(Admission::Wait, Durability::Synced, None, args, f)
            .await
    }

    /// [`Db::write`] for the store's own bookkeeping between an accepted event and its reply
    /// (claims, leases, completions): committed, and on disk with the next synced commit,
    /// which comes before any reply leaves (see [`super::writer`]).
    pub(crate) async fn write_lazy<A, R>(&self, args: A, f: impl WriteFn<A, R>) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.writer
            .write(Admission::Wait, Durability::Lazy, None, args, f)
            .await
    }

    /// [`Db::write`] for a write that adds to `conversation` (on Postgres it locks the
    /// conversation's row; writes of a batch take those locks in one order).
    pub(crate) async fn write_to<A, R>(
        &self,
        conversation: &ConversationRef,
        args: A,
        f: impl WriteFn<A, R>,
    ) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.write_to_as(Durability::Synced, conversation, args, f)
            .await
    }

    /// [`Db::write_to`] for bookkeeping, lazily synced like [`Db::write_lazy`].
    pub(crate) async fn write_to_lazy<A, R>(
        &self,
        conversation: &ConversationRef,
        args: A,
        f: impl WriteFn<A, R>,
    ) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.write_to_as(Durability::Lazy, conversation, args, f)
            .await
    }

    /// [`Db::write_to`] with the durability chosen by the caller.
    pub(crate) async fn write_to_as<A, R>(
        &self,
        durability: Durability,
        conversation: &ConversationRef,
        args: A,
        f: impl WriteFn<A, R>,
    ) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        let key = lock_key(conversation);
        self.writer
            .write(Admission::Wait, durability, Some(key), args, f)
            .await
    }

    /// [`Db::write_to`] for new work from outside (an event to accept): refused at once with
    /// [`StoreError::Busy`] when the write queue is nearly full, instead of waiting.
    pub(crate) async fn accept_to<A, R>(
        &self,
        conversation: &ConversationRef,
        args: A,
        f: impl WriteFn<A, R>,
    ) -> Result<R>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        let key = lock_key(conversation);
        self.writer
            .write(Admission::Refuse, Durability::Synced, Some(key), args, f)
            .await
    }
}

/// The order a batch takes conversation locks in (see [`super::writer`]).
fn lock_key(conversation: &ConversationRef) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        conversation.platform,
        conversation.workspace,
        conversation.channel,
        conversation.thread.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
pub(crate) mod testing {
    //! Opening a store at an older migration, for tests of the migrations themselves.

    use super::*;

    /// A Postgres URL whose connections live in a new, empty schema; `None` (the test is
    /// skipped) without the test server, outside CI.
    pub(crate) async fn fresh_postgres() -> Option<String> {
        use sqlx::Connection;
        let Ok(base) = std::env::var("ECDYSIS_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "ECDYSIS_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipping: ECDYSIS_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
    }

    /// Open `url` migrated only up to `version`.
    pub(crate) async fn open_at(url: &str, version: i64) -> Db {
        let clock = Arc::new(Clock::default());
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .unwrap()
                .create_if_missing(true)
                .foreign_keys(true);
            let file = options.get_filename().to_path_buf();
            let read = SqlitePool::connect_with(options).await.unwrap();
            migrate::sqlite().run_to(version, &read).await.unwrap();
            // The statements before a commit need the tables of migration 19.
            let before_commit = if version >= 19 {
                dialect::SQLITE_BEFORE_COMMIT
            } else {
                &[]
            };
            Db::with_writer(Pools::Sqlite { read, file }, clock, before_commit).unwrap()
        } else {
            let pool = PgPool::connect(url).await.unwrap();
            migrate::postgres().run_to(version, &pool).await.unwrap();
            Db::with_pools(Pools::Postgres { pool }, clock).unwrap()
        }
    }

    impl Db {
        /// Run raw SQL through the writer (test set-up).
        pub(crate) async fn exec(&self, sql: &'static str) {
            self.write(sql, |tx, sql| {
                Box::pin(async move {
                    tx.query(*sql).execute().await?;
                    Ok(())
                })
            })
            .await
            .unwrap();
        }

        /// SQLite: rows whose foreign key points nowhere, and whether the writer's connection
        /// enforces foreign keys.
        pub(crate) async fn sqlite_integrity(&self) -> (usize, bool) {
            assert!(!self.is_postgres(), "not SQLite");
            self.write((), |tx, _| {
                Box::pin(async move {
                    let broken = tx.query("PRAGMA foreign_key_check").fetch_all().await?;
                    let on: i64 = tx.query("PRAGMA foreign_keys").fetch_one().await?.col(0)?;
                    Ok((broken.len(), on == 1))
                })
            })
            .await
            .unwrap()
        }

        pub(crate) async fn close(&self) {
            match &self.pools {
                Pools::Sqlite { read, .. } => read.close().await,
                Pools::Postgres { pool } => pool.close().await,
            }
        }
    }
}
