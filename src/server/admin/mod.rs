//! The admin UI at `/admin`: server-rendered pages (no scripts, no build step) over the store,
//! the blob store and the bus — adapters and their health, conversations with transcripts and
//! artifacts, memory notes (edit, delete), usage, the access policy and budgets (approve DM
//! pairing codes), the inbox (retry a failed event), scheduled jobs (cancel one), sandbox
//! workspaces and installations; and the same as JSON under `/api/admin/*` ([`api`]).
//!
//! Off (every `/admin` path is 404) unless `ECDYSIS_ADMIN_TOKEN` is set. Access: the token as a
//! bearer header, or the login form's signed session cookie (see [`auth`]). Pages for anyone
//! else redirect to the login form; other requests get 401 (see [`caller`]). Every POST checks
//! a CSRF token. The routes sit behind the browser guard (`Host` and `Origin` checks, see
//! [`ecdysis_web::guard`]). Pages are maud templates ([`layout`]): every value is escaped.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use ecdysis_web::limiter::LoginLimiter;

use crate::bus::Bus;
use crate::engine::guard::{Budgets, GuardSettings};
use crate::engine::profile::Profile;
use crate::mcp::McpHub;
use crate::schedule::Scheduler;
use crate::storage::blob::BlobStore;
use crate::storage::store::Store;

mod api;
pub mod auth;
mod caller;
pub mod cf_access;
mod error;
mod layout;
mod pages;

use auth::Sessions;

/// Largest admin form body (a note's new text).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the admin pages read and act on.
#[derive(Clone)]
pub struct AdminParts {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<dyn BlobStore>,
    /// Adapter health, and waking the workers after a retry.
    pub bus: Bus,
    /// The configured agent profiles (`[[profile]]`).
    pub profiles: Arc<[Profile]>,
    /// The MCP servers and their state.
    pub mcp: McpHub,
    /// Scheduled jobs (cancelling one).
    pub scheduler: Arc<Scheduler>,
    /// The guard rails in force (access policy, budgets, rate limits).
    pub guards: GuardSettings,
    /// Spending against the budgets.
    pub budgets: Arc<Budgets>,
}

/// How admin access works here.
pub struct AdminAccess {
    /// `ECDYSIS_ADMIN_TOKEN`; without one (admin through Cloudflare Access only), a random
    /// token nobody knows keys the sessions.
    pub token: Option<String>,
    /// `ECDYSIS_CF_ACCESS_TEAM` and `ECDYSIS_CF_ACCESS_AUD`: logins through Cloudflare Access.
    pub cloudflare: Option<cf_access::AccessSettings>,
    /// The public URL is https: session cookies are always `Secure`.
    pub https: bool,
    /// Failed logins per client, shared with the web chat.
    pub logins: Arc<LoginLimiter>,
}

/// The admin pages' state.
#[derive(Clone)]
pub struct Admin {
    parts: AdminParts,
    sessions: Arc<Sessions>,
    cloudflare: Option<Arc<cf_access::CfAccess>>,
}

impl Admin {
    /// Who is asking: the admin token, a login session, or (when configured) a Cloudflare
    /// Access JWT, checked against the team's keys.
    async fn caller(&self, headers: &axum::http::HeaderMap) -> auth::Caller {
        let caller = self.sessions.caller(headers, now_secs());
        if !matches!(caller, auth::Caller::Anonymous) {
            return caller;
        }
        let (Some(cloudflare), Some(token)) =
            (&self.cloudflare, cf_access::CfAccess::token(headers))
        else {
            return caller;
        };
        match cloudflare.verify(token).await {
            Ok(identity) => {
                tracing::debug!(subject = %identity.subject, email = ?identity.email, "admin through Cloudflare Access");
                auth::Caller::Access {
                    subject: identity.subject,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a Cloudflare Access token was refused");
                auth::Caller::Refused
            }
        }
    }
}

/// The `/admin` routes.
pub fn router(parts: AdminParts, access: AdminAccess) -> Router {
    let token = access.token.unwrap_or_else(|| {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        hex::encode(secret)
    });
    let admin = Admin {
        parts,
        sessions: Arc::new(Sessions::new(&token, access.logins, access.https)),
        cloudflare: access
            .cloudflare
            .map(|settings| Arc::new(cf_access::CfAccess::new(settings))),
    };
    Router::new()
        .route("/admin", get(pages::overview::show))
        .route("/admin/", get(pages::overview::show))
        .route(
            "/admin/login",
            get(pages::login::form).post(pages::login::submit),
        )
        .route("/admin/logout", post(pages::login::logout))
        .route("/admin/conversations", get(pages::conversations::list))
        .route(
            "/admin/conversations/{id}",
            get(pages::conversations::transcript),
        )
        .route("/admin/memory", get(pages::memory::channels))
        .route("/admin/memory/notes", get(pages::memory::notes))
        .route("/admin/notes/{id}", post(pages::memory::edit))
        .route("/admin/notes/{id}/delete", post(pages::memory::delete))
        .route("/admin/usage", get(pages::usage::show))
        .route("/admin/access", get(pages::access::show))
        .route(
            "/admin/pairings/{code}/approve",
            post(pages::access::approve),
        )
        .route("/admin/paired/unpair", post(pages::access::unpair))
        .route("/admin/inbox", get(pages::inbox::show))
        .route("/admin/inbox/{id}/retry", post(pages::inbox::retry))
        .route("/admin/schedules", get(pages::schedules::list))
        .route(
            "/admin/schedules/{id}/cancel",
            post(pages::schedules::cancel),
        )
        .route("/admin/workspaces", get(pages::stored::workspaces))
        .route("/admin/installations", get(pages::stored::installations))
        .route("/admin/artifacts/{id}", get(pages::conversations::artifact))
        .route("/api/admin/overview", get(api::overview))
        .route("/api/admin/conversations", get(api::conversations))
        .route("/api/admin/conversations/{id}", get(api::transcript))
        .route("/api/admin/memory", get(api::memory))
        .route("/api/admin/memory/notes", get(api::notes))
        .route("/api/admin/usage", get(api::usage))
        .route("/api/admin/access", get(api::access))
        .route("/api/admin/inbox", get(api::inbox))
        .route("/api/admin/schedules", get(api::schedules))
        .route("/api/admin/installations", get(api::installations))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admin)
}

fn now_secs() -> i64 {
    ecdysis_chat::time::now_ms() / 1000
}
