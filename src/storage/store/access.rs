//! What the guard rails remember: when a user was last told "no" (so a refusal goes out at
//! most once an hour), DM pairing codes and the users an admin paired, and which budget
//! warnings were given (once per budget and period).

use async_trait::async_trait;
use serde::Serialize;

use super::db::{Columns, on_reader, rows};
use super::{Result, SqlStore, UnixMs};

/// A DM pairing code and whom it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PairingCode {
    pub code: String,
    pub platform: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub workspace: String,
    pub channel: String,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
    pub approved_at: Option<UnixMs>,
    pub approved_by: Option<String>,
}

/// A user an admin paired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PairedUser {
    pub platform: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub approved_by: String,
    pub approved_at: UnixMs,
}

/// A code to hand out when a user has none pending (see [`AccessLog::pairing_code`]).
#[derive(Clone, Debug)]
pub struct NewPairing {
    pub code: String,
    pub platform: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub workspace: String,
    pub channel: String,
    /// How long the code stays valid, from now.
    pub valid_ms: i64,
}

/// Why a pairing code could not be approved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Approved now: the user is paired.
    Approved(PairingCode),
    /// It was approved before (by `approved_by`); nothing changed.
    AlreadyApproved(PairingCode),
    /// It expired before anyone approved it.
    Expired(PairingCode),
    /// No such code.
    Unknown,
}

/// The guard rails' durable state.
#[async_trait]
pub trait AccessLog: Send + Sync {
    /// Whether `user` should be told about `kind` (`refused`, `pairing`, `rate`) now: true, and
    /// the time noted, when they were not told within `quiet_ms`; false otherwise.
    async fn note_notice(
        &self,
        platform: &str,
        user_id: &str,
        kind: &str,
        quiet_ms: i64,
    ) -> Result<bool>;

    /// The user's pending, unexpired pairing code, or `new` stored as their code.
    async fn pairing_code(&self, new: &NewPairing) -> Result<PairingCode>;

    /// Approve a pairing code (case-insensitive) on behalf of `admin`, pairing its user.
    async fn approve_pairing(&self, code: &str, admin: &str) -> Result<Approval>;

    /// Codes neither approved nor expired, the newest first.
    async fn pending_pairings(&self) -> Result<Vec<PairingCode>>;

    /// Whether an admin paired this user.
    async fn is_paired(&self, platform: &str, user_id: &str) -> Result<bool>;

    /// Every paired user, the newest first.
    async fn paired_users(&self) -> Result<Vec<PairedUser>>;

    /// Forget a pairing; false when the user was not paired.
    async fn unpair(&self, platform: &str, user_id: &str) -> Result<bool>;

    /// True the first time it is called for a budget `scope` and the period starting at
    /// `period_start` (the 80 % warning is given once).
    async fn first_budget_warning(&self, scope: &str, period_start: UnixMs) -> Result<bool>;
}

fn pairing_from_row(row: &impl Columns) -> Result<PairingCode> {
    Ok(PairingCode {
        code: row.col("code")?,
        platform: row.col("platform")?,
        user_id: row.col("user_id")?,
        user_name: row.col("user_name")?,
        workspace: row.col("workspace")?,
        channel: row.col("channel")?,
        created_at: row.col("created_at")?,
        expires_at: row.col("expires_at")?,
        approved_at: row.col("approved_at")?,
        approved_by: row.col("approved_by")?,
    })
}

const PAIRING_COLUMNS: &str = "code, platform, user_id, user_name, workspace, channel, created_at, expires_at, approved_at, approved_by";

#[async_trait]
impl AccessLog for SqlStore {
    async fn note_notice(
        &self,
        platform: &str,
        user_id: &str,
        kind: &str,
        quiet_ms: i64,
    ) -> Result<bool> {
        self.db
            .write(
                (
                    platform.to_string(),
                    user_id.to_string(),
                    kind.to_string(),
                    quiet_ms,
                ),
                |tx, (platform, user_id, kind, quiet_ms)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let cutoff = UnixMs(now.0 - *quiet_ms);
                        let changed = tx
                            .query(
                                "INSERT INTO access_notices (platform, user_id, kind, noticed_at)
                                 VALUES ($1, $2, $3, $4)
                                 ON CONFLICT (platform, user_id, kind) DO UPDATE
                                 SET noticed_at = excluded.noticed_at
                                 WHERE access_notices.noticed_at <= $5",
                            )
                            .bind(platform)
                            .bind(user_id)
                            .bind(kind)
                            .bind(now)
                            .bind(cutoff)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(changed > 0)
                    })
                },
            )
            .await
    }

    async fn pairing_code(&self, new: &NewPairing) -> Result<PairingCode> {
        self.db
            .write(new.clone(), |tx, new| {
                Box::pin(async move {
                    let now = tx.now;
                    let existing = {
                        let sql = format!(
                            "SELECT {PAIRING_COLUMNS} FROM pairing_codes
                             WHERE platform = $1 AND user_id = $2 AND approved_at IS NULL
                               AND expires_at > $3
                             ORDER BY created_at DESC LIMIT 1"
                        );
                        match tx.query(sql)
                            .bind(&new.platform)
                            .bind(&new.user_id)
                            .bind(now)
                            .fetch_optional()
                            .await?
                        {
                            Some(row) => Some(pairing_from_row(&row)?),
                            None => None,
                        }
                    };
                    if let Some(existing) = existing {
                        return Ok(existing);
                    }
                    let expires_at = now.plus(new.valid_ms);
                    {
                        // Expired codes of anyone go on the way, so the table stays small.
                        tx.query(
                            "DELETE FROM pairing_codes WHERE approved_at IS NULL AND expires_at <= $1",
                        )
                        .bind(UnixMs(now.0 - 86_400_000))
                        .execute()
                        .await?;
                        tx.query(
                            "INSERT INTO pairing_codes (code, platform, user_id, user_name,
                                                        workspace, channel, created_at, expires_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(&new.code)
                        .bind(&new.platform)
                        .bind(&new.user_id)
                        .bind(&new.user_name)
                        .bind(&new.workspace)
                        .bind(&new.channel)
                        .bind(now)
                        .bind(expires_at)
                        .execute()
                        .await?
                        .rows_affected()
                    };
                    Ok(PairingCode {
                        code: new.code.clone(),
                        platform: new.platform.clone(),
                        user_id: new.user_id.clone(),
                        user_name: new.user_name.clone(),
                        workspace: new.workspace.clone(),
                        channel: new.channel.clone(),
                        created_at: now,
                        expires_at,
                        approved_at: None,
                        approved_by: None,
                    })
                })
            })
            .await
    }

    async fn approve_pairing(&self, code: &str, admin: &str) -> Result<Approval> {
        self.db
            .write(
                (code.trim().to_ascii_uppercase(), admin.to_string()),
                |tx, (code, admin)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let found = {
                            let sql = format!(
                                "SELECT {PAIRING_COLUMNS} FROM pairing_codes WHERE code = $1"
                            );
                            match tx.query(sql).bind(code).fetch_optional().await? {
                                Some(row) => Some(pairing_from_row(&row)?),
                                None => None,
                            }
                        };
                        let Some(mut pairing) = found else {
                            return Ok(Approval::Unknown);
                        };
                        if pairing.approved_at.is_some() {
                            return Ok(Approval::AlreadyApproved(pairing));
                        }
                        if pairing.expires_at <= now {
                            return Ok(Approval::Expired(pairing));
                        }
                        {
                            tx.query(
                                "UPDATE pairing_codes SET approved_at = $1, approved_by = $2
                                 WHERE code = $3",
                            )
                            .bind(now)
                            .bind(admin)
                            .bind(code)
                            .execute()
                            .await?;
                            tx.query(
                                "INSERT INTO paired_users (platform, user_id, user_name,
                                                           approved_by, approved_at)
                                 VALUES ($1, $2, $3, $4, $5)
                                 ON CONFLICT (platform, user_id) DO UPDATE
                                 SET approved_by = excluded.approved_by,
                                     approved_at = excluded.approved_at",
                            )
                            .bind(&pairing.platform)
                            .bind(&pairing.user_id)
                            .bind(&pairing.user_name)
                            .bind(admin)
                            .bind(now)
                            .execute()
                            .await?
                            .rows_affected()
                        };
                        pairing.approved_at = Some(now);
                        pairing.approved_by = Some(admin.clone());
                        Ok(Approval::Approved(pairing))
                    })
                },
            )
            .await
    }

    async fn pending_pairings(&self) -> Result<Vec<PairingCode>> {
        let now = UnixMs(self.clock.now());
        on_reader!(&self.db, |pool| {
            let sql = format!(
                "SELECT {PAIRING_COLUMNS} FROM pairing_codes
                 WHERE approved_at IS NULL AND expires_at > $1
                 ORDER BY created_at DESC LIMIT 200"
            );
            let found = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .fetch_all(pool)
                .await?;
            rows(&found, pairing_from_row)
        })
    }

    async fn is_paired(&self, platform: &str, user_id: &str) -> Result<bool> {
        on_reader!(&self.db, |pool| {
            Ok(sqlx::query(
                "SELECT 1 AS one FROM paired_users WHERE platform = $1 AND user_id = $2",
            )
            .bind(platform)
            .bind(user_id)
            .fetch_optional(pool)
            .await?
            .is_some())
        })
    }

    async fn paired_users(&self) -> Result<Vec<PairedUser>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT platform, user_id, user_name, approved_by, approved_at FROM paired_users
                 ORDER BY approved_at DESC LIMIT 500",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(PairedUser {
                    platform: row.col("platform")?,
                    user_id: row.col("user_id")?,
                    user_name: row.col("user_name")?,
                    approved_by: row.col("approved_by")?,
                    approved_at: row.col("approved_at")?,
                })
            })
        })
    }

    async fn unpair(&self, platform: &str, user_id: &str) -> Result<bool> {
        self.db
            .write(
                (platform.to_string(), user_id.to_string()),
                |tx, (platform, user_id)| {
                    Box::pin(async move {
                        let n = tx
                            .query("DELETE FROM paired_users WHERE platform = $1 AND user_id = $2")
                            .bind(platform)
                            .bind(user_id)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(n > 0)
                    })
                },
            )
            .await
    }

    async fn first_budget_warning(&self, scope: &str, period_start: UnixMs) -> Result<bool> {
        self.db
            .write(
                (scope.to_string(), period_start),
                |tx, (scope, period_start)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let n = tx
                            .query(
                                "INSERT INTO budget_warnings (scope, period_start, warned_at)
                                 VALUES ($1, $2, $3)
                                 ON CONFLICT (scope, period_start) DO NOTHING",
                            )
                            .bind(scope)
                            .bind(*period_start)
                            .bind(now)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(n > 0)
                    })
                },
            )
            .await
    }
}
