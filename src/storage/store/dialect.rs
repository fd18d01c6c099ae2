//! The statements SQLite and Postgres really disagree on, side by side; everything else in the
//! store is written once.
//!
//! - **Claiming** (events and replies): Postgres locks the chosen rows with
//!   `FOR UPDATE SKIP LOCKED`, so workers of several instances never claim the same row; SQLite
//!   has one writer, so the plain `UPDATE … WHERE id = (SELECT …)` is already exclusive.
//! - **Full-text search**: FTS5 (`MATCH`, `bm25`) against a `tsvector` column (`@@`, `ts_rank`);
//!   SQLite indexes new notes once per transaction, just before its commit.
//! - **Attachment order**: SQLite's implicit `rowid` against the `seq` column Postgres needs.
//! - **Leader leases**: Postgres takes the time from the database's clock, so instances on
//!   machines with skewed clocks agree; SQLite has a single machine.
//! - **An inserted row's id**: Postgres returns it (`RETURNING id`); SQLite runs the insert
//!   without that clause and reads `last_insert_rowid()` ([`sqlite_without_returning_id`]):
//!   SQLite runs `RETURNING` as a trigger filling a temporary table, so the statement opens that
//!   table and keeps a statement journal (a copy of every page it changes). Without it the bus
//!   bench went from 4,400–4,850 to 5,300–5,750 events/s end to end.
//! - **Conversation locking** is not a text but a rule, [`locks_conversations`]. (Each
//!   conversation's head, its oldest unfinished event, is kept by triggers in each backend's
//!   migration 0006.)

use super::db::{Db, Pools};

/// One statement in each backend's words.
#[derive(Clone, Copy)]
pub(crate) struct Sql {
    pub(crate) sqlite: &'static str,
    pub(crate) postgres: &'static str,
}

/// Whether adding to a conversation must lock its row (Postgres): inbox ids come from a
/// sequence, so two transactions adding to one conversation could otherwise commit out of id
/// order and a worker could run the later event first. SQLite's single writer commits in order,
/// so it may skip the row when it already knows the conversation's id.
pub(crate) fn locks_conversations(db: &Db) -> bool {
    db.is_postgres()
}

/// An `INSERT … RETURNING id` as SQLite runs it: the same statement without its last clause
/// (the caller reads the id with `last_insert_rowid()`). `None` when the statement does not end
/// with `RETURNING id`.
pub(crate) fn sqlite_without_returning_id(sql: &str) -> Option<&str> {
    let body = sql.trim_end().strip_suffix("RETURNING id")?;
    body.trim_start()
        .starts_with("INSERT")
        .then_some(body.trim_end())
}

/// Lease a conversation's next event when it is its head, pending and due (a completion goes
/// on with it). `$1` owner, `$2` lease until, `$3` conversation, `$4` now. Postgres returns the
/// row; SQLite's update returns nothing (see [`sqlite_without_returning_id`]) and
/// [`SQLITE_CLAIMED_NEXT`] reads it back: the claim leaves the head where it is.
pub(crate) const CLAIM_NEXT: Sql = Sql {
    sqlite: "UPDATE inbox
             SET status = 'leased', lease_owner = $1, lease_until = $2, attempts = attempts + 1
             WHERE id = (SELECT head_id FROM conversations WHERE id = $3)
               AND status = 'pending' AND available_at <= $4",
    postgres: "UPDATE inbox
               SET status = 'leased', lease_owner = $1, lease_until = $2,
                   attempts = attempts + 1
               WHERE id = (SELECT head_id FROM conversations WHERE id = $3)
                 AND status = 'pending' AND available_at <= $4
               RETURNING id, conversation_id, payload, attempts, received_at",
};

/// The event [`CLAIM_NEXT`] leased, read back on SQLite (same arguments).
pub(crate) const SQLITE_CLAIMED_NEXT: &str =
    "SELECT id, conversation_id, payload, attempts, received_at
     FROM inbox WHERE id = (SELECT head_id FROM conversations WHERE id = $3)";

/// What SQLite's writer runs in every transaction just before it commits (Postgres: nothing).
/// New notes wait in `memory_fts_pending` until then and reach the full-text index with one
/// statement per transaction: FTS5 writes the terms it holds in memory to a new segment
/// whenever a later statement of the transaction begins, so indexing each note as it was
/// inserted made one tiny segment (and later merges) per note (see migration 0019).
pub(crate) const SQLITE_BEFORE_COMMIT: &[&str] = &[
    "INSERT INTO memory_fts (rowid, text, fts_scope)
     SELECT n.id, n.text, n.fts_scope
     FROM memory_fts_pending p CROSS JOIN memory_notes n ON n.id = p.note_id",
    "DELETE FROM memory_fts_pending",
];

/// Claim up to `$4` events, oldest first: each the head of its conversation (its oldest
/// unfinished event, see `conversations.head_id`), pending or with an expired lease, and due.
/// `$1` owner, `$2` lease until, `$3` now. The walk visits only conversations that have work.
/// Postgres skips heads another transaction has locked (another instance claiming them).
/// On SQLite, `CROSS JOIN` keeps the conversations' heads the outer loop, walked in order on
/// their index: left to itself the planner walked every open event of the inbox by status
/// (3 ms per claim with 5,000 events waiting, against 0.2 ms).
pub(crate) const CLAIM_EVENTS: Sql = Sql {
    sqlite: "UPDATE inbox
             SET status = 'leased', lease_owner = $1, lease_until = $2, attempts = attempts + 1
             WHERE id IN (
                 SELECT i.id FROM conversations c CROSS JOIN inbox i ON i.id = c.head_id
                 WHERE c.head_id IS NOT NULL
                   AND (i.status = 'pending' OR (i.status = 'leased' AND i.lease_until < $3))
                   AND i.available_at <= $3
                 ORDER BY c.head_id
                 LIMIT $4)
             RETURNING id, conversation_id, payload, attempts, received_at",
    postgres: "UPDATE inbox
               SET status = 'leased', lease_owner = $1, lease_until = $2,
                   attempts = inbox.attempts + 1
               WHERE inbox.id IN (
                   SELECT i.id FROM conversations c JOIN inbox i ON i.id = c.head_id
                   WHERE c.head_id IS NOT NULL
                     AND (i.status = 'pending' OR (i.status = 'leased' AND i.lease_until < $3))
                     AND i.available_at <= $3
                   ORDER BY c.head_id
                   LIMIT $4
                   FOR UPDATE OF i SKIP LOCKED)
               RETURNING id, conversation_id, payload, attempts, received_at",
};

/// Claim undelivered replies, oldest first. `$1` lease until, `$2` now, `$3` event id or NULL,
/// `$4` limit.
pub(crate) const CLAIM_REPLIES: Sql = Sql {
    sqlite: "UPDATE outbox SET lease_until = $1, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM outbox
                 WHERE status = 'pending'
                   AND (lease_until IS NULL OR lease_until < $2)
                   AND (CAST($3 AS BIGINT) IS NULL OR event_id = $3)
                 ORDER BY id
                 LIMIT $4)
             RETURNING id, idempotency_key, event_id, conversation_id, payload, attempts",
    postgres: "WITH picked AS MATERIALIZED (
                   SELECT id FROM outbox
                   WHERE status = 'pending'
                     AND (lease_until IS NULL OR lease_until < $2)
                     AND (CAST($3 AS BIGINT) IS NULL OR event_id = CAST($3 AS BIGINT))
                   ORDER BY id
                   LIMIT $4
                   FOR UPDATE SKIP LOCKED)
               UPDATE outbox o SET lease_until = $1, attempts = o.attempts + 1
               FROM picked p
               WHERE o.id = p.id
               RETURNING o.id, o.idempotency_key, o.event_id, o.conversation_id, o.payload,
                         o.attempts",
};

/// Notes of a channel matching a query made by [`text_query`], best first. `$1` the query,
/// `$2`–`$4` the channel, `$5` limit.
///
/// On SQLite the match is the channel's token (`fts_scope`, see migration 0017) and the
/// query's words together, so a search only touches its own channel's rows however many other
/// channels there are (bm25 gives the token no weight). The best matches are picked inside
/// the full-text index and only they are joined to their rows (joining every match first and
/// sorting after cost 14 ms instead of 11 over 100,000 notes); `CROSS JOIN` keeps the match
/// the outer loop (left to itself the planner may walk the channel's notes and run the match
/// once per note: 570 ms instead of 3 over 10,000 notes). The channel is checked on the rows
/// too, so the token alone never decides whose notes are shown.
pub(crate) const RECALL: Sql = Sql {
    sqlite: "SELECT n.id, n.text, n.created_by, n.created_at
             FROM (SELECT rowid, bm25(memory_fts, 1.0, 0.0) AS score FROM memory_fts
                   WHERE memory_fts MATCH ('fts_scope : \"s' || hex($2 || char(31) || $3 || char(31) || $4)
                                           || '\" AND text : (' || $1 || ')')
                   ORDER BY score, rowid DESC
                   LIMIT $5) f
             CROSS JOIN memory_notes n ON n.id = f.rowid
             WHERE n.platform = $2 AND n.workspace = $3 AND n.channel = $4
             ORDER BY f.score, n.id DESC",
    postgres: "SELECT n.id, n.text, n.created_by, n.created_at
               FROM memory_notes n, to_tsquery('english', $1) q
               WHERE n.search @@ q
                 AND n.platform = $2 AND n.workspace = $3 AND n.channel = $4
               ORDER BY ts_rank(n.search, q) DESC, n.id DESC
               LIMIT $5",
};

/// Chunks (compaction summaries, archived turns) of a channel matching a query made by
/// [`text_query`], best first, as memory items. `$1` the query, `$2`–`$4` the channel, `$5`
/// limit. Matched within the channel as in [`RECALL`].
pub(crate) const RECALL_CHUNKS: Sql = Sql {
    sqlite: "SELECT 'chunk' AS item_kind, m.kind AS source_kind, m.id, m.text,
                    '' AS created_by, m.created_at
             FROM (SELECT rowid, bm25(memory_chunks_fts, 1.0, 0.0) AS score FROM memory_chunks_fts
                   WHERE memory_chunks_fts MATCH ('fts_scope : \"s' || hex($2 || char(31) || $3 || char(31) || $4)
                                                  || '\" AND text : (' || $1 || ')')
                   ORDER BY score, rowid DESC
                   LIMIT $5) f
             CROSS JOIN memory_chunks m ON m.id = f.rowid
             WHERE m.platform = $2 AND m.workspace = $3 AND m.channel = $4
             ORDER BY f.score, m.id DESC",
    postgres: "SELECT 'chunk' AS item_kind, m.kind AS source_kind, m.id, m.text,
                      '' AS created_by, m.created_at
               FROM memory_chunks m, to_tsquery('english', $1) q
               WHERE m.search @@ q
                 AND m.platform = $2 AND m.workspace = $3 AND m.channel = $4
               ORDER BY ts_rank(m.search, q) DESC, m.id DESC
               LIMIT $5",
};

/// The full-text query matching any word of `query`, for [`RECALL`]: FTS5's `"a" OR "b"`, or
/// `to_tsquery`'s `a | b`. Every term is alphanumeric, so it holds no operator of either
/// language; it is still bound as a parameter. `None` when the query has no words.
pub(crate) fn text_query(db: &Db, query: &str) -> Option<String> {
    let terms = super::query_terms(query);
    if terms.is_empty() {
        return None;
    }
    Some(match db.pools {
        Pools::Sqlite { .. } => terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR "),
        Pools::Postgres { .. } => terms.join(" | "),
    })
}

/// Artifacts of messages `$2`..=`$3` of conversation `$1`, in the order they were written.
pub(crate) const ATTACHMENTS: Sql = Sql {
    sqlite: "SELECT id, conversation_id, message_id, blob_key, name, mime, size, created_at
             FROM artifacts
             WHERE conversation_id = $1 AND message_id BETWEEN $2 AND $3
             ORDER BY rowid",
    postgres: "SELECT id, conversation_id, message_id, blob_key, name, mime, size, created_at
               FROM artifacts
               WHERE conversation_id = $1 AND message_id BETWEEN $2 AND $3
               ORDER BY seq",
};

/// Take, keep or renew a leader lease. `$1` name, `$2` owner, `$3` time to live, `$4` now by
/// the store's clock (SQLite), `$5` how far the store's clock is ahead of the system's
/// (Postgres adds it to the database's clock; zero outside tests). Returns a row when `$2`
/// holds the lease.
pub(crate) const TRY_LEAD: Sql = Sql {
    sqlite: "INSERT INTO leases (name, owner, lease_until, acquired_at)
             VALUES ($1, $2, $4 + $3, $4)
             ON CONFLICT (name) DO UPDATE
             SET owner = excluded.owner, lease_until = excluded.lease_until,
                 acquired_at = CASE WHEN leases.owner = excluded.owner
                                    THEN leases.acquired_at ELSE excluded.acquired_at END
             WHERE leases.owner = excluded.owner OR leases.lease_until < excluded.acquired_at
             RETURNING owner",
    postgres: "WITH now AS (
                   SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
                          + CAST($5 AS BIGINT) AS ms
                   WHERE CAST($4 AS BIGINT) IS NOT NULL)
               INSERT INTO leases (name, owner, lease_until, acquired_at)
               SELECT $1, $2, now.ms + $3, now.ms FROM now
               ON CONFLICT (name) DO UPDATE
               SET owner = excluded.owner, lease_until = excluded.lease_until,
                   acquired_at = CASE WHEN leases.owner = excluded.owner
                                      THEN leases.acquired_at ELSE excluded.acquired_at END
               WHERE leases.owner = excluded.owner OR leases.lease_until < excluded.acquired_at
               RETURNING owner",
};

#[cfg(test)]
mod tests {
    use super::sqlite_without_returning_id;

    #[test]
    fn an_insert_returning_its_id_runs_on_sqlite_without_the_clause() {
        assert_eq!(
            sqlite_without_returning_id(
                "INSERT INTO t (a) VALUES ($1)\n ON CONFLICT (a) DO NOTHING\n RETURNING id  "
            ),
            Some("INSERT INTO t (a) VALUES ($1)\n ON CONFLICT (a) DO NOTHING")
        );
        assert_eq!(
            sqlite_without_returning_id("UPDATE t SET a = 1 RETURNING id"),
            None
        );
        assert_eq!(
            sqlite_without_returning_id("INSERT INTO t (a) VALUES (1) RETURNING id, a"),
            None
        );
    }
}
