//! PostgreSQL queries for installations (OAuth installs) and OAuth states.

use sqlx::Row;

use super::PostgresStore;
use crate::store::{Result, StoredInstallation, now_ms};

impl PostgresStore {
    pub(super) async fn save_installation_row(&self, i: &StoredInstallation) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO installations (platform, team_id, team_name, bot_user_id, app_id, scopes,
                 installed_by, token_ciphertext, installed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (platform, team_id) DO UPDATE SET
                 team_name = excluded.team_name, bot_user_id = excluded.bot_user_id,
                 app_id = excluded.app_id, scopes = excluded.scopes,
                 installed_by = excluded.installed_by,
                 token_ciphertext = excluded.token_ciphertext, updated_at = excluded.updated_at",
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
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn installation_row(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>> {
        let row = sqlx::query(
            "SELECT platform, team_id, team_name, bot_user_id, app_id, scopes, installed_by,
                    token_ciphertext, installed_at, updated_at
             FROM installations WHERE platform = $1 AND team_id = $2",
        )
        .bind(platform)
        .bind(team_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| StoredInstallation {
            platform: r.get(0),
            team_id: r.get(1),
            team_name: r.get(2),
            bot_user_id: r.get(3),
            app_id: r.get(4),
            scopes: r.get(5),
            installed_by: r.get(6),
            token_ciphertext: r.get(7),
            installed_at: r.get(8),
            updated_at: r.get(9),
        }))
    }

    pub(super) async fn remove_installation_row(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<bool> {
        let done = sqlx::query("DELETE FROM installations WHERE platform = $1 AND team_id = $2")
            .bind(platform)
            .bind(team_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn put_oauth_state_row(&self, state: &str, expires_at: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Expired states are cleared on the way, so the table stays small.
        sqlx::query("DELETE FROM oauth_states WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO oauth_states (state, expires_at) VALUES ($1, $2)")
            .bind(state)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn take_oauth_state_row(&self, state: &str, now: i64) -> Result<bool> {
        let taken = sqlx::query("DELETE FROM oauth_states WHERE state = $1 RETURNING expires_at")
            .bind(state)
            .fetch_optional(&self.pool)
            .await?;
        Ok(taken.is_some_and(|row| row.get::<i64, _>(0) > now))
    }
}
