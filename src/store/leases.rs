//! Leader leases: one instance at a time holds a named lease (`slack-socket-mode`,
//! `discord-gateway`, …), renews it well before it runs out, and another takes it over once it
//! has expired. Postgres times them by the database's clock (see [`super::dialect::TRY_LEAD`]).

use super::db::{Columns, on_reader, on_tx, rows};
use super::dialect::TRY_LEAD;
use super::{LeaseInfo, Result, SqlStore};

impl SqlStore {
    pub(crate) async fn lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool> {
        let skew = self.clock.offset();
        self.db
            .write(
                (name.to_string(), owner.to_string(), ttl_ms, skew),
                |tx, (name, owner, ttl_ms, skew)| {
                    Box::pin(async move {
                        let now = tx.now;
                        let held = on_tx!(tx, TRY_LEAD, |c, sql| {
                            sqlx::query(sql)
                                .bind(name)
                                .bind(owner)
                                .bind(*ttl_ms)
                                .bind(now)
                                .bind(*skew)
                                .fetch_optional(c)
                                .await?
                                .is_some()
                        });
                        Ok(held)
                    })
                },
            )
            .await
    }

    pub(crate) async fn unlead(&self, name: &str, owner: &str) -> Result<()> {
        self.db
            .write(
                (name.to_string(), owner.to_string()),
                |tx, (name, owner)| {
                    Box::pin(async move {
                        on_tx!(tx, |c| {
                            sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
                                .bind(name)
                                .bind(owner)
                                .execute(c)
                                .await?
                                .rows_affected()
                        });
                        Ok(())
                    })
                },
            )
            .await
    }

    pub(crate) async fn all_leases(&self) -> Result<Vec<LeaseInfo>> {
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
