//! The checks in front of every browser-facing route (web chat page, its API and live updates,
//! `/login`, `/admin`, artifacts), against cross-site requests and DNS rebinding:
//!
//! - `Host` must be one of this server's names: a loopback name (`localhost`, `127.0.0.1`,
//!   `[::1]`), the listen address, or the host of `ECDYSIS_PUBLIC_URL` (421 otherwise). A page
//!   on `evil.example` whose name was rebound to this server sends `Host: evil.example`.
//! - A present `Origin` must be this server's own origin (403 otherwise): another site's page
//!   may make the browser send a request, but the browser names the page's origin.
//! - Bearer tokens count as login attempts: wrong ones are counted per client, and a client
//!   over the limit gets 429 (see [`LoginLimiter`]).
//!
//! Platform webhooks (`/slack/*`, `/discord/*`) and `/healthz`, `/readyz`, `/metrics` are called
//! by servers with their own `Host` and are not behind this guard.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{HOST, ORIGIN, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::limiter::LoginLimiter;
use crate::session::{bearer, secret_eq};

/// The names this server answers browsers to, and the token guesses it counts.
#[derive(Debug)]
pub struct Guard {
    /// Exact `host[:port]` names (lowercase) besides the loopback names.
    hosts: Vec<String>,
    /// Any IP literal with this port (a wildcard listener is reached by every address it has).
    any_ip_port: Option<u16>,
    /// No name is known (a wildcard listener without a public URL): any `Host`; the admin
    /// token, required off loopback, guards such a server.
    any_host: bool,
    /// `scheme://host[:port]` of the public URL.
    public_origin: Option<String>,
    token: Option<String>,
    logins: Arc<LoginLimiter>,
}

impl Guard {
    /// The guard of a server listening on `listen`, reached from outside at `public_origin`
    /// (`https://ecdysis.example.com`), with the admin token `token` and the shared limits.
    pub fn new(
        listen: SocketAddr,
        public_origin: Option<&str>,
        token: Option<String>,
        logins: Arc<LoginLimiter>,
    ) -> Self {
        let public_origin = public_origin
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty());
        let mut hosts = Vec::new();
        if let Some(origin) = &public_origin
            && let Some((_, authority)) = origin.split_once("://")
        {
            hosts.push(authority.to_string());
        }
        let wildcard = listen.ip().is_unspecified();
        if !wildcard {
            hosts.push(authority(listen.ip(), listen.port()));
        }
        Self {
            hosts,
            any_ip_port: wildcard.then_some(listen.port()),
            any_host: wildcard && public_origin.is_none(),
            public_origin,
            token,
            logins,
        }
    }

    /// True when any `Host` is taken (see [`Guard::new`]); `serve` warns about it.
    pub fn accepts_any_host(&self) -> bool {
        self.any_host
    }

    /// Whether `host` (a `Host` header value) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // A loopback name cannot be pointed at this server by anyone else's DNS.
        if name == "localhost" || parse_ip(name).is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        if self.any_host || self.hosts.contains(&host) {
            return true;
        }
        // An IP literal involves no DNS, so no rebinding.
        self.any_ip_port
            .is_some_and(|p| port == Some(p) && parse_ip(name).is_some())
    }

    /// Whether a request with `Host: host` may come from `origin` (an `Origin` header value):
    /// this server's own origin as the browser sees it, or the public URL's.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let host = host.trim().to_ascii_lowercase();
        if self.public_origin.as_deref() == Some(origin.as_str()) {
            return true;
        }
        match origin.split_once("://") {
            Some(("http" | "https", authority)) => authority == host,
            _ => false,
        }
    }

    /// Whether the public URL is https (session cookies are then always `Secure`).
    pub fn public_https(&self) -> bool {
        self.public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://"))
    }
}

/// The middleware: `Host`, then `Origin`, then the bearer-guess limit.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| header(headers, HOST).map(str::to_string));
    let Some(host) = host.filter(|h| guard.host_allowed(h)) else {
        tracing::warn!(host = ?header(headers, HOST), "refused a request for another host name");
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this server does not answer to that host name (set ECDYSIS_PUBLIC_URL to the address you use)",
        );
    };
    if let Some(origin) = headers.get(ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| guard.origin_allowed(o, &host));
        if !allowed {
            tracing::warn!(origin = ?origin, "refused a cross-origin request");
            return refuse(StatusCode::FORBIDDEN, "cross-origin requests are refused");
        }
    }
    if let (Some(token), Some(given)) = (&guard.token, bearer(headers)) {
        let client = client_ip(request.extensions());
        if let Err(wait) = guard.logins.check(client) {
            return too_many(wait);
        }
        if !secret_eq(given.as_bytes(), token.as_bytes()) {
            tracing::warn!(%client, "wrong bearer token");
            guard.logins.failed(client);
        }
    }
    next.run(request).await
}

/// The 429 answer for a client over its login limit.
pub fn too_many(wait: Duration) -> Response {
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins from your address; try again later",
    );
    let seconds = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn header(headers: &HeaderMap, name: axum::http::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The address of the client that sent a request: the TCP peer, as the listener recorded it
/// (`ConnectInfo`); unknown (`0.0.0.0`, one shared bucket) when served without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(ClientAddr(client_ip(&parts.extensions)))
    }
}

fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn authority(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// `name` and port of `host[:port]` / `[v6][:port]`; `None` when malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some((name, port));
    }
    match host.rsplit_once(':') {
        Some((name, port)) => Some((name, Some(port.parse().ok()?))),
        None => Some((host, None)),
    }
    .filter(|(name, _)| !name.is_empty())
}

fn parse_ip(name: &str) -> Option<IpAddr> {
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str, public: Option<&str>) -> Guard {
        Guard::new(
            listen.parse().unwrap(),
            public,
            None,
            Arc::new(LoginLimiter::default()),
        )
    }

    #[test]
    fn loopback_listener_answers_loopback_names_only() {
        let g = guard("127.0.0.1:8080", None);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "localhost",
            "127.0.0.1:9999",
        ] {
            assert!(g.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example:8080",
            "127.0.0.1.nip.io:8080",
            "",
            ":8080",
            "[::1",
            "10.0.0.1:8080",
        ] {
            assert!(!g.host_allowed(host), "{host}");
        }
        assert!(!g.accepts_any_host());
    }

    #[test]
    fn public_url_and_listen_address_are_names() {
        let g = guard("10.0.0.5:8080", Some("https://Chat.Example.com/"));
        assert!(g.host_allowed("chat.example.com"));
        assert!(g.host_allowed("10.0.0.5:8080"));
        assert!(!g.host_allowed("chat.example.com.evil:443"));
        assert!(!g.host_allowed("10.0.0.6:8080"));
        assert!(g.public_https());
        let g = guard("0.0.0.0:8080", Some("https://chat.example.com"));
        assert!(g.host_allowed("192.168.1.9:8080"));
        assert!(!g.host_allowed("192.168.1.9:9090"));
        assert!(!g.host_allowed("evil.example:8080"));
        // A wildcard listener without a public URL knows no names.
        let g = guard("0.0.0.0:8080", None);
        assert!(g.accepts_any_host());
        assert!(g.host_allowed("app.fly.dev"));
    }

    #[test]
    fn origin_must_be_our_own() {
        let g = guard("127.0.0.1:8080", Some("https://chat.example.com"));
        assert!(g.origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(g.origin_allowed("http://LOCALHOST:8080", "localhost:8080"));
        assert!(g.origin_allowed("https://chat.example.com", "127.0.0.1:8080"));
        assert!(!g.origin_allowed("http://evil.example", "127.0.0.1:8080"));
        assert!(!g.origin_allowed("http://localhost:3000", "localhost:8080"));
        assert!(!g.origin_allowed("null", "127.0.0.1:8080"));
        assert!(!g.origin_allowed("file://127.0.0.1:8080", "127.0.0.1:8080"));
    }
}
