//! One statement, its text and its arguments, run on a write transaction of either backend:
//! `tx.query("UPDATE … WHERE id = $1").bind(id).execute().await?`. Reads run on the pools
//! (`on_reader!`); every write of the store goes through here.
//!
//! On Postgres a statement goes to sqlx as before. On SQLite it runs at once on the writer's
//! own connection (rusqlite, on the writer's thread: see [`super::writer`]), so a batch of
//! writes costs no thread hand-off per statement. Arguments are numbered `$N` on both: SQLite
//! reads `$1` as a parameter named `$1`, bound here by its number.

use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, Value as SqliteValue, ValueRef};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;

use super::db::{Columns, Index, Tx, TxConn, Value};
use super::dialect::{self, Sql};
use super::{Result, StoreError};

/// A statement's text: one for both backends, a [`Sql`] pair, or built at run time.
pub(crate) enum Text {
    Static(&'static str),
    Pair(Sql),
    Owned(String),
}

impl Text {
    /// The statement as SQLite runs it.
    fn sqlite(&self) -> &str {
        match self {
            Text::Static(sql) => sql,
            Text::Pair(pair) => pair.sqlite,
            Text::Owned(sql) => sql,
        }
    }
}

impl From<&'static str> for Text {
    fn from(sql: &'static str) -> Self {
        Text::Static(sql)
    }
}

impl From<Sql> for Text {
    fn from(pair: Sql) -> Self {
        Text::Pair(pair)
    }
}

impl From<String> for Text {
    fn from(sql: String) -> Self {
        Text::Owned(sql)
    }
}

/// One argument, typed as the Rust value it came from (Postgres types its parameters by it; a
/// `None` is a typed `NULL`).
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// A value that can be bound to a statement.
pub(crate) trait IntoArg {
    fn into_arg(self) -> Arg;
}

impl IntoArg for Arg {
    fn into_arg(self) -> Arg {
        self
    }
}

/// `IntoArg` for a type, its `Option`, and references to both, through a variant of [`Arg`].
macro_rules! into_arg {
    ($variant:ident: $($ty:ty => |$v:ident| $convert:expr),* $(,)?) => {$(
        impl IntoArg for $ty {
            fn into_arg(self) -> Arg {
                let $v = self;
                Arg::$variant(Some($convert))
            }
        }
        impl IntoArg for Option<$ty> {
            fn into_arg(self) -> Arg {
                Arg::$variant(self.map(|$v| $convert))
            }
        }
        impl IntoArg for &$ty {
            fn into_arg(self) -> Arg {
                let $v = self.clone();
                Arg::$variant(Some($convert))
            }
        }
        impl IntoArg for &Option<$ty> {
            fn into_arg(self) -> Arg {
                Arg::$variant(self.clone().map(|$v| $convert))
            }
        }
    )*};
}

into_arg!(I64: i64 => |v| v);
into_arg!(I32: i32 => |v| v);
into_arg!(F64: f64 => |v| v);
into_arg!(Bool: bool => |v| v);
into_arg!(Text: String => |v| v);
into_arg!(Bytes: Vec<u8> => |v| v);

impl IntoArg for &str {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self.to_string()))
    }
}

impl IntoArg for Option<&str> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.map(str::to_string))
    }
}

impl IntoArg for Option<&String> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.cloned())
    }
}

impl IntoArg for &[u8] {
    fn into_arg(self) -> Arg {
        Arg::Bytes(Some(self.to_vec()))
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::I64(Some(v)) => ValueRef::Integer(*v),
            Arg::I32(Some(v)) => ValueRef::Integer(i64::from(*v)),
            Arg::F64(Some(v)) => ValueRef::Real(*v),
            Arg::Bool(Some(v)) => ValueRef::Integer(i64::from(*v)),
            Arg::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Arg::Bytes(Some(v)) => ValueRef::Blob(v),
            _ => ValueRef::Null,
        }))
    }
}

/// Bind one argument to a Postgres query.
fn bind_postgres(
    query: Query<'static, sqlx::Postgres, PgArguments>,
    arg: Arg,
) -> Query<'static, sqlx::Postgres, PgArguments> {
    match arg {
        Arg::I64(v) => query.bind(v),
        Arg::I32(v) => query.bind(v),
        Arg::F64(v) => query.bind(v),
        Arg::Bool(v) => query.bind(v),
        Arg::Text(v) => query.bind(v),
        Arg::Bytes(v) => query.bind(v),
    }
}

/// A row a statement returned, from either backend.
pub(crate) enum Row {
    Sqlite(ValuesRow),
    Postgres(PgRow),
}

impl Columns for Row {
    fn col<T: Value>(&self, index: impl Index) -> Result<T> {
        match self {
            Row::Sqlite(row) => row.col(index),
            Row::Postgres(row) => row.col(index),
        }
    }
}

/// A SQLite row read out of its statement: column names and values.
pub(crate) struct ValuesRow {
    names: Arc<[String]>,
    values: Vec<SqliteValue>,
}

impl Columns for ValuesRow {
    fn col<T: Value>(&self, index: impl Index) -> Result<T> {
        let position = index
            .position(&self.names)
            .filter(|&i| i < self.values.len())
            .ok_or_else(|| StoreError::Corrupt(format!("no column {}", index.describe())))?;
        T::column_result(ValueRef::from(&self.values[position])).map_err(|e| {
            StoreError::Corrupt(format!(
                "column {} does not decode: {e}",
                self.names[position]
            ))
        })
    }
}

/// What a statement did.
pub(crate) struct Done {
    rows_affected: u64,
}

impl Done {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement bound to a transaction, waiting for its arguments.
#[must_use = "a query does nothing until it is executed or fetched"]
pub(crate) struct TxQuery<'t> {
    tx: &'t mut Tx,
    text: Text,
    args: Vec<Arg>,
}

impl Tx {
    /// A statement on this transaction.
    pub(crate) fn query(&mut self, text: impl Into<Text>) -> TxQuery<'_> {
        TxQuery {
            tx: self,
            text: text.into(),
            args: Vec::new(),
        }
    }
}

impl TxQuery<'_> {
    /// The next argument (`$1`, then `$2`, …).
    pub(crate) fn bind(mut self, value: impl IntoArg) -> Self {
        self.args.push(value.into_arg());
        self
    }

    pub(crate) async fn execute(self) -> Result<Done> {
        Ok(self.run(false).await?.0)
    }

    pub(crate) async fn fetch_all(self) -> Result<Vec<Row>> {
        Ok(self.run(true).await?.1)
    }

    pub(crate) async fn fetch_optional(self) -> Result<Option<Row>> {
        Ok(self.run(true).await?.1.into_iter().next())
    }

    pub(crate) async fn fetch_one(self) -> Result<Row> {
        self.fetch_optional()
            .await?
            .ok_or(StoreError::Db(sqlx::Error::RowNotFound))
    }

    /// Run an `INSERT … RETURNING id` (with or without `ON CONFLICT … DO NOTHING`): the new
    /// row's id, `None` when a conflict left the row out. SQLite runs it without the clause
    /// (see [`dialect::sqlite_without_returning_id`]).
    pub(crate) async fn insert_id(self) -> Result<Option<i64>> {
        let TxQuery { tx, text, args } = self;
        let TxConn::Sqlite(conn) = &mut tx.conn else {
            let query = TxQuery { tx, text, args };
            return query
                .fetch_optional()
                .await?
                .map(|row| row.col(0))
                .transpose();
        };
        let sql = text.sqlite();
        let insert = dialect::sqlite_without_returning_id(sql)
            .ok_or_else(|| StoreError::Corrupt(format!("not an INSERT … RETURNING id: {sql}")))?;
        let (done, _) = run_sqlite(conn, insert, &args, false)?;
        // Changes and the rowid are the statement's own, never those of a trigger it fired.
        Ok((done.rows_affected() > 0).then(|| conn.last_insert_rowid()))
    }

    /// Run an update that returns the rows it changed: on Postgres its own `RETURNING`; on
    /// SQLite the update alone, then `sqlite_read_back` (a `SELECT` of those rows with the
    /// same arguments) when it changed any. The writer is alone on SQLite, so nothing changes
    /// them in between.
    pub(crate) async fn fetch_updated(self, sqlite_read_back: &'static str) -> Result<Vec<Row>> {
        let TxQuery { tx, text, args } = self;
        let TxConn::Sqlite(conn) = &mut tx.conn else {
            return TxQuery { tx, text, args }.fetch_all().await;
        };
        let (updated, _) = run_sqlite(conn, text.sqlite(), &args, false)?;
        if updated.rows_affected() == 0 {
            return Ok(Vec::new());
        }
        let (_, rows) = run_sqlite(conn, sqlite_read_back, &args, true)?;
        Ok(rows.into_iter().map(Row::Sqlite).collect())
    }

    async fn run(self, want_rows: bool) -> Result<(Done, Vec<Row>)> {
        let TxQuery { tx, text, args } = self;
        match &mut tx.conn {
            TxConn::Sqlite(conn) => {
                let (done, rows) = run_sqlite(conn, text.sqlite(), &args, want_rows)?;
                Ok((done, rows.into_iter().map(Row::Sqlite).collect()))
            }
            TxConn::Postgres(t) => {
                let mut query = match text {
                    Text::Static(sql) => sqlx::query(sql),
                    Text::Pair(pair) => sqlx::query(pair.postgres),
                    Text::Owned(sql) => sqlx::query(sqlx::AssertSqlSafe(sql)),
                };
                for arg in args {
                    query = bind_postgres(query, arg);
                }
                if want_rows {
                    let rows = query.fetch_all(&mut **t).await?;
                    let done = Done {
                        rows_affected: rows.len() as u64,
                    };
                    Ok((done, rows.into_iter().map(Row::Postgres).collect()))
                } else {
                    let result = query.execute(&mut **t).await?;
                    let done = Done {
                        rows_affected: result.rows_affected(),
                    };
                    Ok((done, Vec::new()))
                }
            }
        }
    }
}

/// Run one statement on the SQLite write connection: bind `$N` to `args[N - 1]`, step it to
/// the end, keep its rows when asked.
fn run_sqlite(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg],
    want_rows: bool,
) -> Result<(Done, Vec<ValuesRow>)> {
    let mut statement = conn.prepare_cached(sql)?;
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .and_then(|digits| digits.parse::<usize>().ok())
            .unwrap_or(index);
        let arg = args.get(number.wrapping_sub(1)).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "statement wants argument ${number}, {} bound",
                args.len()
            ))
        })?;
        statement.raw_bind_parameter(index, arg)?;
    }
    let writes = !statement.readonly();
    let columns = statement.column_count();
    let names: Arc<[String]> = if want_rows {
        statement
            .column_names()
            .into_iter()
            .map(str::to_string)
            .collect()
    } else {
        Arc::from(Vec::new())
    };
    let mut found = Vec::new();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        if want_rows {
            let values = (0..columns)
                .map(|i| row.get::<_, SqliteValue>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            found.push(ValuesRow {
                names: names.clone(),
                values,
            });
        }
    }
    drop(rows);
    let rows_affected = if writes {
        conn.changes()
    } else {
        found.len() as u64
    };
    Ok((Done { rows_affected }, found))
}
