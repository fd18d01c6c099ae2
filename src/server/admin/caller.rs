//! Who is asking, as extractors: handlers name the kind of caller they serve and never check
//! access themselves. A page ([`Viewer`]) sends strangers to the login form; a download
//! ([`Authorized`]) answers them 401; a form post ([`FormPost`]) also needs the session's CSRF
//! token and parses its fields.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Admin;
use super::auth::Caller;
use super::error::AdminError;

/// A logged-in caller of a page; `csrf` goes into the page's forms.
pub struct Viewer {
    pub csrf: String,
}

impl FromRequestParts<Admin> for Viewer {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, AdminError> {
        match admin.caller(&parts.headers).await {
            Caller::Anonymous => Err(AdminError::Login),
            Caller::Refused => Err(AdminError::Unauthorized),
            caller => Ok(Viewer {
                csrf: admin.sessions.csrf_of(&caller),
            }),
        }
    }
}

/// A logged-in caller of something that is not a page (a file): 401 for anyone else.
pub struct Authorized;

impl FromRequestParts<Admin> for Authorized {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, AdminError> {
        match admin.caller(&parts.headers).await {
            Caller::Anonymous | Caller::Refused => Err(AdminError::Unauthorized),
            _ => Ok(Authorized),
        }
    }
}

/// A form without fields of its own (the CSRF token only).
#[derive(Debug, Default, Deserialize)]
pub struct NoFields {}

/// A POST from a logged-in caller whose CSRF token checks out, with its urlencoded fields.
/// A bearer caller needs no CSRF token and may send no body at all (fields then take their
/// `serde` defaults).
pub struct FormPost<T = NoFields>(pub T);

impl<T: DeserializeOwned> FromRequest<Admin> for FormPost<T> {
    type Rejection = AdminError;

    async fn from_request(request: Request, admin: &Admin) -> Result<Self, AdminError> {
        // Access first: a stranger's body is not even read.
        let caller = match admin.caller(request.headers()).await {
            Caller::Anonymous | Caller::Refused => return Err(AdminError::Unauthorized),
            caller => caller,
        };
        let body = Bytes::from_request(request, admin).await?;
        let csrf = url::form_urlencoded::parse(&body)
            .find(|(key, _)| key == "csrf")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        if !admin.sessions.csrf_ok(&caller, &csrf) {
            return Err(AdminError::Csrf);
        }
        serde_urlencoded::from_bytes(&body)
            .map(FormPost)
            .map_err(|e| AdminError::BadRequest(format!("the form is malformed: {e}")))
    }
}
