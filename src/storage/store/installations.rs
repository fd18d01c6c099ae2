//! Installations (OAuth installs of a chat app, one per platform and workspace, the bot token
//! sealed by the caller) and the single-use OAuth `state`s of the install flow.

use async_trait::async_trait;

use super::db::{Columns, on_reader, rows};
use super::{Result, SqlStore, UnixMs};

/// An OAuth install of a chat app in one workspace (Slack team), with its bot token encrypted
/// by the caller (see `crate::platforms::slack_installations`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredInstallation {
    pub platform: String,
    pub team_id: String,
    pub team_name: String,
    pub bot_user_id: String,
    pub app_id: String,
    pub scopes: String,
    pub installed_by: String,
    /// The encrypted bot token; never the token itself.
    pub token_ciphertext: String,
    pub installed_at: UnixMs,
    pub updated_at: UnixMs,
}

impl std::fmt::Debug for StoredInstallation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredInstallation")
            .field("platform", &self.platform)
            .field("team_id", &self.team_id)
            .field("team_name", &self.team_name)
            .field("bot_user_id", &self.bot_user_id)
            .finish_non_exhaustive()
    }
}

/// Installs of chat apps in workspaces, and the OAuth flow's `state`s.
#[async_trait]
pub trait Installations: Send + Sync {
    /// Store an installation, replacing the workspace's earlier one (a re-install).
    async fn save_installation(&self, installation: &StoredInstallation) -> Result<()>;

    /// The installation of a workspace on a platform.
    async fn installation(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>>;

    /// Delete a workspace's installation; false when there was none.
    async fn remove_installation(&self, platform: &str, team_id: &str) -> Result<bool>;

    /// Every installation, by platform and team; the token stays sealed.
    async fn installations(&self) -> Result<Vec<StoredInstallation>>;

    /// Remember an OAuth `state` until `expires_at` (expired states are cleared on the way).
    async fn put_oauth_state(&self, state: &str, expires_at: UnixMs) -> Result<()>;

    /// Use up an OAuth `state`: true when it existed and had not expired at `now`. It is gone
    /// afterwards either way, so a state works once.
    async fn take_oauth_state(&self, state: &str, now: UnixMs) -> Result<bool>;
}

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

#[async_trait]
impl Installations for SqlStore {
    async fn save_installation(&self, i: &StoredInstallation) -> Result<()> {
        self.db
            .write(i.clone(), |tx, i| {
                Box::pin(async move {
                    let now = tx.now;
                    tx.query(
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
                    .execute()
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn installation(
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

    async fn installations(&self) -> Result<Vec<StoredInstallation>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM installations ORDER BY platform, team_id"
            )))
            .fetch_all(pool)
            .await?;
            rows(&found, installation_from_row)
        })
    }

    async fn remove_installation(&self, platform: &str, team_id: &str) -> Result<bool> {
        self.db
            .write(
                (platform.to_string(), team_id.to_string()),
                |tx, (platform, team_id)| {
                    Box::pin(async move {
                        let done = tx
                            .query("DELETE FROM installations WHERE platform = $1 AND team_id = $2")
                            .bind(platform)
                            .bind(team_id)
                            .execute()
                            .await?
                            .rows_affected();
                        Ok(done == 1)
                    })
                },
            )
            .await
    }

    async fn put_oauth_state(&self, state: &str, expires_at: UnixMs) -> Result<()> {
        self.db
            .write(
                (state.to_string(), expires_at),
                |tx, (state, expires_at)| {
                    Box::pin(async move {
                        let now = tx.now;
                        // Expired states are cleared on the way, so the table stays small.
                        tx.query("DELETE FROM oauth_states WHERE expires_at <= $1")
                            .bind(now)
                            .execute()
                            .await?;
                        tx.query("INSERT INTO oauth_states (state, expires_at) VALUES ($1, $2)")
                            .bind(state)
                            .bind(*expires_at)
                            .execute()
                            .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn take_oauth_state(&self, state: &str, now: UnixMs) -> Result<bool> {
        let expires_at: Option<UnixMs> = self
            .db
            .write(state.to_string(), |tx, state| {
                Box::pin(async move {
                    tx.query("DELETE FROM oauth_states WHERE state = $1 RETURNING expires_at")
                        .bind(state)
                        .fetch_optional()
                        .await?
                        .map(|row| row.col("expires_at"))
                        .transpose()
                })
            })
            .await?;
        Ok(expires_at.is_some_and(|at| at > now))
    }
}
