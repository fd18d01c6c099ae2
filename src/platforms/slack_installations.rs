//! The Slack adapter's [`Installations`] on the store: workspaces installed through OAuth,
//! their bot tokens sealed with the [`SecretBox`], and the single-use OAuth `state`s.

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::BackendError;
use ecdysis_slack::{Installation, Installations};

use crate::storage::secret_box::SecretBox;
use crate::storage::store::{Store, StoredInstallation, UnixMs};

const PLATFORM: &str = "slack";

/// Installations kept in the database.
pub struct SlackInstallations {
    store: Arc<dyn Store>,
    secrets: Arc<SecretBox>,
}

impl SlackInstallations {
    pub fn new(store: Arc<dyn Store>, secrets: Arc<SecretBox>) -> Self {
        Self { store, secrets }
    }

    fn context(team_id: &str) -> String {
        format!("{PLATFORM}:{team_id}")
    }
}

#[async_trait]
impl Installations for SlackInstallations {
    async fn save(&self, installation: &Installation) -> Result<(), BackendError> {
        let token_ciphertext = self
            .secrets
            .seal(
                installation.bot_token.as_bytes(),
                &Self::context(&installation.team_id),
            )
            .map_err(BackendError::new)?;
        let row = StoredInstallation {
            platform: PLATFORM.into(),
            team_id: installation.team_id.clone(),
            team_name: installation.team_name.clone(),
            bot_user_id: installation.bot_user_id.clone(),
            app_id: installation.app_id.clone(),
            scopes: installation.scopes.clone(),
            installed_by: installation.installed_by.clone(),
            token_ciphertext,
            installed_at: UnixMs(0),
            updated_at: UnixMs(0),
        };
        self.store
            .save_installation(&row)
            .await
            .map_err(BackendError::new)
    }

    async fn get(&self, team_id: &str) -> Result<Option<Installation>, BackendError> {
        let Some(row) = self
            .store
            .installation(PLATFORM, team_id)
            .await
            .map_err(BackendError::new)?
        else {
            return Ok(None);
        };
        let token = self
            .secrets
            .open(&row.token_ciphertext, &Self::context(team_id))
            .map_err(BackendError::new)?;
        let bot_token = String::from_utf8(token)
            .map_err(|_| BackendError::new("a stored token is not text"))?;
        Ok(Some(Installation {
            team_id: row.team_id,
            team_name: row.team_name,
            bot_user_id: row.bot_user_id,
            bot_token,
            app_id: row.app_id,
            scopes: row.scopes,
            installed_by: row.installed_by,
        }))
    }

    async fn remove(&self, team_id: &str) -> Result<bool, BackendError> {
        self.store
            .remove_installation(PLATFORM, team_id)
            .await
            .map_err(BackendError::new)
    }

    async fn put_state(&self, state: &str, expires_at_ms: i64) -> Result<(), BackendError> {
        self.store
            .put_oauth_state(state, UnixMs(expires_at_ms))
            .await
            .map_err(BackendError::new)
    }

    async fn take_state(&self, state: &str, now_ms: i64) -> Result<bool, BackendError> {
        self.store
            .take_oauth_state(state, UnixMs(now_ms))
            .await
            .map_err(BackendError::new)
    }
}
