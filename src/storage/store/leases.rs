//! Leader leases: one instance at a time holds a named lease (`slack-socket-mode`,
//! `discord-gateway`, …), renews it well before it runs out, and another takes it over once it
//! has expired. Postgres times them by the database's clock (see [`super::dialect::TRY_LEAD`]).

use async_trait::async_trait;
use serde::Serialize;

use super::db::{Columns, on_reader, rows};
use super::dialect::TRY_LEAD;
use super::{Result, SqlStore, UnixMs};

/// A named leader lease (see [`Leases::try_lead`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    pub owner: String,
    pub lease_until: UnixMs,
    pub acquired_at: UnixMs,
}

/// Named leader leases, for work only one instance may do at a time.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Take, keep or renew the named leader lease for `owner`, for `ttl_ms` from now (the
    /// database's clock on Postgres, so machines with skewed clocks agree). True when `owner`
    /// holds it now: it was free, expired, or already `owner`'s.
    async fn try_lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool>;

    /// Give the named lease up if `owner` holds it (another instance may take it at once).
    async fn release_lead(&self, name: &str, owner: &str) -> Result<()>;

    /// Every leader lease, held or expired, by name.
    async fn leases(&self) -> Result<Vec<LeaseInfo>>;
}

#[async_trait]
impl Leases for SqlStore {
    async fn try_lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool> {
        let skew = self.clock.offset();
        self.db
            .write_lazy(
                (name.to_string(), owner.to_string(), ttl_ms, skew),
                |tx, (name, owner, ttl_ms, skew)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let held = tx
                            .query(TRY_LEAD)
                            .bind(name)
                            .bind(owner)
                            .bind(*ttl_ms)
                            .bind(now)
                            .bind(*skew)
                            .fetch_optional()
                            .await?
                            .is_some();
                        Ok(held)
                    })
                },
            )
            .await
    }

    async fn release_lead(&self, name: &str, owner: &str) -> Result<()> {
        self.db
            .write_lazy(
                (name.to_string(), owner.to_string()),
                |tx, (name, owner)| {
                    Box::pin(async move {
                        tx.query("DELETE FROM leases WHERE name = $1 AND owner = $2")
                            .bind(name)
                            .bind(owner)
                            .execute()
                            .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT name, owner, lease_until, acquired_at FROM leases ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(LeaseInfo {
                    name: row.col("name")?,
                    owner: row.col("owner")?,
                    lease_until: row.col("lease_until")?,
                    acquired_at: row.col("acquired_at")?,
                })
            })
        })
    }
}
