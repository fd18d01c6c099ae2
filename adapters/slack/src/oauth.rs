//! The OAuth install for many workspaces: `/slack/install` sends the browser to Slack's
//! authorize page with a random, single-use, expiring `state` (also kept in a cookie, so the
//! callback must come from the browser that started the install); `/slack/oauth/callback`
//! checks both, trades the code for the workspace's bot token (`oauth.v2.access`) and stores
//! the installation.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use ecdysis_chat::request::{cookie, secret_eq};
use url::Url;

use crate::manifest::BOT_SCOPES;
use crate::{Installation, Slack};

/// How long an install may take between `/slack/install` and the callback.
pub(crate) const STATE_TTL_MS: i64 = 10 * 60 * 1000;
const STATE_COOKIE: &str = "ecdysis_slack_state";

fn page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:16px system-ui;max-width:36em;margin:4em auto;padding:0 1em}}</style>\
         </head><body><h1>{t}</h1><p>{d}</p></body></html>",
        t = html_escape(title),
        d = html_escape(detail)
    );
    (status, [(CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn random_state() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

/// `GET /slack/install`.
pub(crate) async fn install(State(slack): State<Slack>, headers: HeaderMap) -> Response {
    let settings = &slack.inner.settings;
    let (Some(client_id), Some(_)) = (&settings.client_id, &settings.client_secret) else {
        return page(
            StatusCode::NOT_FOUND,
            "Slack install is not set up",
            "Set SLACK_CLIENT_ID and SLACK_CLIENT_SECRET to let workspaces install the app.",
        );
    };
    let state = random_state();
    if let Err(e) = slack
        .inner
        .installations
        .put_state(&state, crate::now_ms() + STATE_TTL_MS)
        .await
    {
        tracing::error!(error = %e, "cannot store an OAuth state");
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start the install",
            "The server could not store the install request. Try again.",
        );
    }
    let mut url: Url = slack.inner.api.authorize_url();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("scope", &BOT_SCOPES.join(","))
        .append_pair("state", &state);
    // With one allowed workspace, Slack's page preselects it.
    if let [team] = settings.allowed_teams.as_slice() {
        url.query_pairs_mut().append_pair("team", team);
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    // Lax: the callback is a top-level navigation from slack.com, which Lax cookies follow.
    let cookie = format!(
        "{STATE_COOKIE}={state}; Path=/slack; HttpOnly; SameSite=Lax; Max-Age={}{}",
        STATE_TTL_MS / 1000,
        if secure { "; Secure" } else { "" }
    );
    let (Ok(location), Ok(cookie)) = (
        HeaderValue::from_str(url.as_str()),
        HeaderValue::from_str(&cookie),
    ) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start the install",
            "The authorize URL is not a valid header.",
        );
    };
    (
        StatusCode::FOUND,
        [
            (LOCATION, location),
            (SET_COOKIE, cookie),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

/// `GET /slack/oauth/callback?code=…&state=…`.
pub(crate) async fn callback(
    State(slack): State<Slack>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let settings = &slack.inner.settings;
    let (Some(client_id), Some(client_secret)) = (&settings.client_id, &settings.client_secret)
    else {
        return page(
            StatusCode::NOT_FOUND,
            "Slack install is not set up",
            "Set SLACK_CLIENT_ID and SLACK_CLIENT_SECRET to let workspaces install the app.",
        );
    };
    if let Some(error) = query.get("error") {
        return page(
            StatusCode::BAD_REQUEST,
            "The app was not installed",
            &format!("Slack said: {error}."),
        );
    }
    let (Some(state), Some(code)) = (query.get("state"), query.get("code")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "The app was not installed",
            "The link lacks its code or state. Start again at /slack/install.",
        );
    };
    let same_browser =
        cookie(&headers, STATE_COOKIE).is_some_and(|c| secret_eq(c.as_bytes(), state.as_bytes()));
    if !same_browser {
        return page(
            StatusCode::BAD_REQUEST,
            "The app was not installed",
            "This install was not started in this browser. Start again at /slack/install.",
        );
    }
    match slack
        .inner
        .installations
        .take_state(state, crate::now_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return page(
                StatusCode::BAD_REQUEST,
                "The app was not installed",
                "This install link expired or was already used. Start again at /slack/install.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check an OAuth state");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The app was not installed",
                "The server could not check the install request. Try again.",
            );
        }
    }
    let granted = match slack
        .inner
        .api
        .oauth_access(client_id, client_secret, code)
        .await
    {
        Ok(granted) => granted,
        Err(e) => {
            tracing::warn!(error = %e, "oauth.v2.access failed");
            return page(
                StatusCode::BAD_GATEWAY,
                "The app was not installed",
                &format!("Slack refused the install ({e}). Start again at /slack/install."),
            );
        }
    };
    if !slack.team_allowed(&granted.team_id) {
        // The token Slack just granted is dropped, never stored: the workspace gets nothing.
        tracing::warn!(
            team = %granted.team_id,
            "refused a Slack install from a workspace not in ECDYSIS_SLACK_ALLOWED_TEAMS"
        );
        let name = if granted.team_name.is_empty() {
            granted.team_id.clone()
        } else {
            format!("{} ({})", granted.team_name, granted.team_id)
        };
        return page(
            StatusCode::FORBIDDEN,
            "This workspace may not install ecdysis",
            &format!(
                "This ecdysis server accepts only the workspaces its operator listed, and {name} is not one of them. Nothing was installed; the operator can add the workspace to ECDYSIS_SLACK_ALLOWED_TEAMS. You may remove the app from the workspace's app settings."
            ),
        );
    }
    let installation = Installation {
        team_id: granted.team_id,
        team_name: granted.team_name,
        bot_user_id: granted.bot_user_id,
        bot_token: granted.bot_token,
        app_id: granted.app_id,
        scopes: granted.scopes,
        installed_by: granted.installed_by,
    };
    if let Err(e) = slack.inner.installations.save(&installation).await {
        tracing::error!(error = %e, team = %installation.team_id, "cannot store an installation");
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The app was not installed",
            "The server could not store the installation. Try again.",
        );
    }
    tracing::info!(team = %installation.team_id, "installed into a Slack workspace");
    let name = if installation.team_name.is_empty() {
        installation.team_id.clone()
    } else {
        installation.team_name.clone()
    };
    let mut response = page(
        StatusCode::OK,
        "ecdysis is installed",
        &format!("ecdysis is now in {name}. Mention it in a channel, or send it a direct message."),
    );
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("ecdysis_slack_state=; Path=/slack; HttpOnly; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_random_and_pages_escaped() {
        assert_eq!(random_state().len(), 48);
        assert_ne!(random_state(), random_state());
        assert_eq!(html_escape("<b>&"), "&lt;b&gt;&amp;");
    }
}
