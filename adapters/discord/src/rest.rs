//! The REST client: serenity's `Http`, pointed at `api_url`.

use std::sync::Arc;

use serenity::http::{Http, HttpBuilder};
use serenity::model::id::ApplicationId;

use crate::{DiscordError, Settings};

/// Discord's own REST base; any other `api_url` is used through serenity's proxy setting.
pub(crate) const DISCORD_COM: &str = "https://discord.com";

/// Build the REST client. With an `api_url` other than Discord's, requests go there and
/// serenity's in-process rate limiter is off: a proxy (or a test fake) owns rate limiting, as
/// serenity recommends for `HttpBuilder::proxy`.
pub(crate) fn http(settings: &Settings) -> Arc<Http> {
    Arc::new(builder(settings).build())
}

/// The builder behind [`http`].
fn builder(settings: &Settings) -> HttpBuilder {
    let token = settings.token.clone().unwrap_or_default();
    let mut builder = HttpBuilder::new(token);
    let base = settings.api_url.trim_end_matches('/');
    if !base.is_empty() && base != DISCORD_COM {
        builder = builder.proxy(base).ratelimiter_disabled(true);
    }
    if let Some(id) = settings.application_id.filter(|id| *id != 0) {
        builder = builder.application_id(ApplicationId::new(id));
    }
    builder
}

/// `GET /users/@me`: who the token belongs to (`ecdysis doctor`). Returns `name (id)`.
pub async fn current_user(settings: &Settings) -> Result<String, DiscordError> {
    if settings.token.is_none() {
        return Err(DiscordError::Config("DISCORD_TOKEN is not set".into()));
    }
    let user = http(settings).get_current_user().await?;
    Ok(format!("{} ({})", user.name, user.id))
}
