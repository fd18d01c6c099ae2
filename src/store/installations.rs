//! Installations (OAuth installs of a chat app, one per platform and workspace, the bot token
//! sealed by the caller) and the single-use OAuth `state`s of the install flow.

use super::db::{Columns, on_reader, on_tx, rows};
use super::{Result, SqlStore, StoredInstallation};

const COLUMNS: &str = "platform, team_id, team_name, bot_user_id, app_id, scopes, installed_by,
                       token_ciphertext, installed_at, updated_at";

fn installation_from_row(row: &impl Columns) -> Result<StoredInstallation> {
    Ok(StoredInstallation {
        platform: row.col("platform")?,
        team_id: row.col("team_id")?,
        team_name: row.col("team_name")?,
        bot_user_id: row.col("bot_user_id")?,
        app_id: row.col("app_id")?,
        scopes: row.col("scopes")?,
        installed_by: row.col("installed_by")?,
        token_ciphertext: row.col("token_ciphertext")?,
        installed_at: row.col("installed_at")?,
        updated_at: row.col("updated_at")?,
    })
}

impl SqlStore {
    pub(crate) async fn save_installation_row(&self, i: &StoredInstallation) -> Result<()> {
        self.db
            .write(i.clone(), |tx, i| {
                Box::pin(async move {
                    let now = tx.now;
                    on_tx!(tx, |c| {
                        sqlx::query(
                            "INSERT INTO installations (platform, team_id, team_name, bot_user_id,
                                 app_id, scopes, installed_by, token_ciphertext, installed_at,
                                 updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                             ON CONFLICT (platform, team_id) DO UPDATE SET
                                 team_name = excluded.team_name,
                                 bot_user_id = excluded.bot_user_id,
                                 app_id = excluded.app_id, scopes = excluded.scopes,
                                 installed_by = excluded.installed_by,
                                 token_ciphertext = excluded.token_ciphertext,
                                 updated_at = excluded.updated_at",
                        )
                        .bind(&i.platform)
                        .bind(&i.team_id)
                        .bind(&i.team_name)
                        .bind(&i.bot_user_id)
                        .bind(&i.app_id)
                        .bind(&i.scopes)
                        .bind(&i.installed_by)
                        .bind(&i.token_ciphertext)
                        .bind(now)
                        .execute(c)
                        .await?
                        .rows_affected()
                    });
                    Ok(())
                })
            })
            .await
    }

    pub(crate) async fn installation_row(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>> {
        on_reader!(&self.db, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM installations WHERE platform = $1 AND team_id = $2"
            )))
            .bind(platform)
            .bind(team_id)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(installation_from_row)
            .transpose()
        })
    }

    pub(crate) async fn all_installations(&self) -> Result<Vec<StoredInstallation>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM installations ORDER BY platform, team_id"
            )))
            .fetch_all(pool)
            .await?;
            rows(&found, installation_from_row)
        })
    }

    pub(crate) async fn remove_installation_row(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<bool> {
        self.db
            .write(
                (platform.to_string(), team_id.to_string()),
                |tx, (platform, team_id)| {
                    Box::pin(async move {
                        let done = on_tx!(tx, |c| {
                            sqlx::query(
                                "DELETE FROM installations WHERE platform = $1 AND team_id = $2",
                            )
                            .bind(platform)
                            .bind(team_id)
                            .execute(c)
                            .await?
                            .rows_affected()
                        });
                        Ok(done == 1)
                    })
                },
            )
            .await
    }

    pub(crate) async fn put_oauth_state_row(&self, state: &str, expires_at: i64) -> Result<()> {
        self.db
            .write(
                (state.to_string(), expires_at),
                |tx, (state, expires_at)| {
                    Box::pin(async move {
                        let now = tx.now;
                        // Expired states are cleared on the way, so the table stays small.
                        on_tx!(tx, |c| {
                            sqlx::query("DELETE FROM oauth_states WHERE expires_at <= $1")
                                .bind(now)
                                .execute(c)
                                .await?
                                .rows_affected()
                        });
                        on_tx!(tx, |c| {
                            sqlx::query(
                                "INSERT INTO oauth_states (state, expires_at) VALUES ($1, $2)",
                            )
                            .bind(state)
                            .bind(*expires_at)
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

    pub(crate) async fn take_oauth_state_row(&self, state: &str, now: i64) -> Result<bool> {
        let expires_at: Option<i64> = self
            .db
            .write(state.to_string(), |tx, state| {
                Box::pin(async move {
                    on_tx!(tx, |c| {
                        sqlx::query(
                            "DELETE FROM oauth_states WHERE state = $1 RETURNING expires_at",
                        )
                        .bind(state)
                        .fetch_optional(c)
                        .await?
                        .map(|row| row.col("expires_at"))
                        .transpose()
                    })
                })
            })
            .await?;
        Ok(expires_at.is_some_and(|at| at > now))
    }
}
