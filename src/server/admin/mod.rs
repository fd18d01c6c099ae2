//! The admin UI at `/admin`: server-rendered pages (no scripts, no build step) over the store,
//! the blob store and the bus — adapters and their health, conversations with transcripts and
//! artifacts, memory notes (edit, delete), usage, the inbox (retry a failed event), scheduled
//! jobs (cancel one), sandbox workspaces and installations.
//!
//! Off (every `/admin` path is 404) unless `ECDYSIS_ADMIN_TOKEN` is set. Access: the token as a
//! bearer header, or the login form's signed session cookie (see [`auth`]). Pages for anyone
//! else redirect to the login form; other requests get 401. Every POST checks a CSRF token.
//! The routes sit behind the browser guard (`Host` and `Origin` checks, see
//! [`ecdysis_web::guard`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use ecdysis_web::limiter::LoginLimiter;

use crate::server::app::App;

pub mod auth;
mod html;
mod pages;
mod schedules;

use auth::{Caller, Sessions};

/// Largest admin form body (a note's new text).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The admin pages' state.
#[derive(Clone)]
pub struct Admin {
    app: App,
    sessions: Arc<Sessions>,
}

/// The `/admin` routes, or `None` when no admin token is configured (admin off). Failed
/// logins count in `logins`, shared with the web chat.
pub fn router(app: &App, logins: Arc<LoginLimiter>) -> Option<Router> {
    let token = app.config.admin_token.clone()?;
    let https = app
        .config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let admin = Admin {
        app: app.clone(),
        sessions: Arc::new(Sessions::new(&token, logins, https)),
    };
    Some(
        Router::new()
            .route("/admin", get(pages::overview))
            .route("/admin/", get(pages::overview))
            .route("/admin/login", get(pages::login_form).post(pages::login))
            .route("/admin/logout", post(pages::logout))
            .route("/admin/conversations", get(pages::conversations))
            .route("/admin/conversations/{id}", get(pages::conversation))
            .route("/admin/memory", get(pages::memory))
            .route("/admin/memory/notes", get(pages::channel_notes))
            .route("/admin/notes/{id}", post(pages::edit_note))
            .route("/admin/notes/{id}/delete", post(pages::delete_note))
            .route("/admin/usage", get(pages::usage))
            .route("/admin/inbox", get(pages::inbox))
            .route("/admin/inbox/{id}/retry", post(pages::retry))
            .route("/admin/schedules", get(schedules::list))
            .route("/admin/schedules/{id}/cancel", post(schedules::cancel))
            .route("/admin/workspaces", get(pages::workspaces))
            .route("/admin/installations", get(pages::installations))
            .route("/admin/artifacts/{id}", get(pages::artifact))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(admin),
    )
}

fn now_secs() -> i64 {
    crate::storage::store::now_ms() / 1000
}

impl Admin {
    /// The caller, or why they are not let in: pages (GET) redirect to the login form,
    /// anything else gets 401.
    fn require(&self, headers: &HeaderMap, page: bool) -> Result<Caller, Denied> {
        match self.sessions.caller(headers, now_secs()) {
            Caller::Anonymous if page => Err(Denied::Login),
            Caller::Anonymous => Err(Denied::Unauthorized),
            caller => Ok(caller),
        }
    }

    /// The CSRF token to put into this caller's forms.
    fn csrf(&self, caller: &Caller) -> String {
        match caller {
            Caller::Session { id } => self.sessions.csrf(id),
            _ => String::new(),
        }
    }
}

/// A request that is not let in.
enum Denied {
    /// A page: go to the login form.
    Login,
    Unauthorized,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Login => (StatusCode::SEE_OTHER, [(LOCATION, "/admin/login")]).into_response(),
            Denied::Unauthorized => text(
                StatusCode::UNAUTHORIZED,
                "admin access needs ECDYSIS_ADMIN_TOKEN: send `Authorization: Bearer <token>` or log in at /admin/login",
            ),
        }
    }
}

/// A page, with headers that keep it from being framed, cached or scripted.
fn html_page(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    security_headers(headers);
    response
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with
    // the pages' own form posts, which the cross-origin guard rightly refuses. Other sites still
    // get no referrer.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// A plain-text answer (errors), with the same headers.
fn text(status: StatusCode, message: &str) -> Response {
    let mut response = (status, message.to_string()).into_response();
    security_headers(response.headers_mut());
    response
}

/// A failure whose detail goes to the log only (it may name internal things).
fn internal(what: &str, error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "admin: cannot {what}");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("cannot {what}; the error is logged"),
    )
}

/// After a change: back to a page (303, so a reload does not post again).
fn see_other(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(to) => (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response(),
        Err(_) => (StatusCode::SEE_OTHER, [(LOCATION, "/admin")]).into_response(),
    }
}
