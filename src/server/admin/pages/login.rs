//! Logging in with the admin token, and out.

use axum::extract::State;
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ecdysis_web::guard::ClientAddr;
use maud::{Markup, html};
use serde::Deserialize;

use crate::server::admin::auth::Caller;
use crate::server::admin::caller::FormPost;
use crate::server::admin::error::AdminError;
use crate::server::admin::layout::{page, plain_text, see_other};
use crate::server::admin::{Admin, now_secs};

fn login_form(wrong: bool) -> Markup {
    html! {
        @if wrong { p.bad { "Wrong token." } }
        form method="post" action="/admin/login" {
            p { label {
                "Admin token (" code { "ECDYSIS_ADMIN_TOKEN" } ")" br;
                input type="password" name="token" autocomplete="current-password" autofocus required size="48";
            } }
            p { button type="submit" { "Log in" } }
        }
    }
}

pub async fn form(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !matches!(
        admin.sessions.caller(&headers, now_secs()),
        Caller::Anonymous
    ) {
        return see_other("/admin");
    }
    page("Log in", None, login_form(false)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn submit(
    State(admin): State<Admin>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Result<Response, AdminError> {
    // Per client: someone else's wrong guesses do not lock this client out.
    if let Err(wait) = admin.sessions.logins().check(client) {
        let mut response = plain_text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from your address; try again later",
        );
        if let Ok(seconds) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(RETRY_AFTER, seconds);
        }
        return Ok(response);
    }
    if !admin.sessions.token_matches(form.token.trim()) {
        tracing::warn!(%client, "admin: failed login");
        admin.sessions.logins().failed(client);
        return Ok(page("Log in", None, login_form(true)).with_status(StatusCode::UNAUTHORIZED));
    }
    admin.sessions.logins().succeeded(client);
    let session = admin
        .sessions
        .new_session(now_secs())
        .ok_or_else(|| AdminError::Internal {
            what: "start a session",
            source: "the system has no randomness to give".into(),
        })?;
    Ok(with_cookie(
        see_other("/admin"),
        &admin.sessions.set_cookie(Some(&session), &headers),
    ))
}

pub async fn logout(State(admin): State<Admin>, headers: HeaderMap, _: FormPost) -> Response {
    with_cookie(
        see_other("/admin/login"),
        &admin.sessions.set_cookie(None, &headers),
    )
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(cookie) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}
