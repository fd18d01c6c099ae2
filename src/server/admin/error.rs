//! What an admin request can end in besides its page: each variant knows its HTTP answer, so
//! handlers return `Result<_, AdminError>` and use `?`.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};

use super::layout::plain_text;

/// Why an admin request was not answered with its page.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A page asked for by someone not logged in: go to the login form.
    #[error("not logged in")]
    Login,
    /// Anything else asked for by someone not logged in.
    #[error(
        "admin access needs ECDYSIS_ADMIN_TOKEN: send `Authorization: Bearer <token>` or log in at /admin/login"
    )]
    Unauthorized,
    /// A form post without the session's CSRF token.
    #[error(
        "the form is stale or came from another site (CSRF check failed); reload the page and try again"
    )]
    Csrf,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(&'static str),
    /// The request body could not be read (too large, cut off).
    #[error(transparent)]
    Body(#[from] BytesRejection),
    /// A failure whose detail goes to the log only (it may name internal things).
    #[error("cannot {what}")]
    Internal {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Login => {
                return (StatusCode::SEE_OTHER, [(LOCATION, "/admin/login")]).into_response();
            }
            AdminError::Body(rejection) => rejection.status(),
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Csrf => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Internal { what, source } => {
                tracing::error!(error = %source, "admin: cannot {what}");
                return plain_text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot {what}; the error is logged"),
                );
            }
        };
        plain_text(status, &self.to_string())
    }
}

/// Turns a storage (or any) failure into [`AdminError::Internal`], naming what could not be done.
pub trait Cannot<T> {
    fn cannot(self, what: &'static str) -> Result<T, AdminError>;
}

impl<T, E> Cannot<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn cannot(self, what: &'static str) -> Result<T, AdminError> {
        self.map_err(|source| AdminError::Internal {
            what,
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (AdminError::Login, StatusCode::SEE_OTHER),
            (AdminError::Unauthorized, StatusCode::UNAUTHORIZED),
            (AdminError::Csrf, StatusCode::FORBIDDEN),
            (AdminError::NotFound("no such note"), StatusCode::NOT_FOUND),
            (
                AdminError::BadRequest("bad".into()),
                StatusCode::BAD_REQUEST,
            ),
            (AdminError::Conflict("not failed"), StatusCode::CONFLICT),
        ];
        for (error, status) in cases {
            assert_eq!(error.into_response().status(), status);
        }
        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk on fire"));
        let error = failed.cannot("read the note").unwrap_err();
        assert!(
            std::error::Error::source(&error).is_some_and(|s| s.to_string() == "disk on fire"),
            "the cause is kept"
        );
        assert_eq!(
            error.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
