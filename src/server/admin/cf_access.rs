//! Cloudflare Access in front of `/admin`: a request that came through Access carries the
//! signed JWT of the person who logged in there (`Cf-Access-Jwt-Assertion`, or the
//! `CF_Authorization` cookie). It is an admin login when the JWT is signed by one of the team's
//! keys (`https://<team>.cloudflareaccess.com/cdn-cgi/access/certs`, cached, fetched again
//! for a key id not seen yet), names this application's audience tag
//! (`ECDYSIS_CF_ACCESS_AUD`) and the team as issuer, and has not expired. Anything else that
//! looks like such a token is refused (401), never treated as a missing one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::Mutex;

/// The header Cloudflare Access adds to every request it lets through.
pub const HEADER: &str = "cf-access-jwt-assertion";
/// The cookie Access sets in the browser (the same JWT).
const COOKIE: &str = "CF_Authorization";
/// How long the team's keys are used before they are fetched again (Access rotates them
/// every six weeks, keeping the old key valid for a week).
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id fetches the keys again at most this often (a flood of forged tokens
/// does not become a flood of requests to Cloudflare).
const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// Why a token was refused (for the log; the caller only sees 401).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the token is not a valid Access JWT: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token names no key id")]
    NoKeyId,
    #[error("no key `{0}` in the team's certs")]
    UnknownKey(String),
    #[error("cannot fetch the team's certs: {0}")]
    Certs(String),
}

/// Where to check tokens: the team's URL and this application's audience tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessSettings {
    /// `https://<team>.cloudflareaccess.com`, without a trailing slash (the tokens' issuer).
    pub team_url: String,
    pub audience: String,
}

impl AccessSettings {
    /// From `ECDYSIS_CF_ACCESS_TEAM` (a team name, its `….cloudflareaccess.com` host, or a
    /// URL) and `ECDYSIS_CF_ACCESS_AUD`.
    pub fn new(team: &str, audience: &str) -> Self {
        let team = team.trim().trim_end_matches('/');
        let team_url = if team.starts_with("https://") || team.starts_with("http://") {
            team.to_string()
        } else if team.contains('.') {
            format!("https://{team}")
        } else {
            format!("https://{team}.cloudflareaccess.com")
        };
        Self {
            team_url,
            audience: audience.trim().to_string(),
        }
    }
}

/// Who logged in through Access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessIdentity {
    /// Access's stable user id (`sub`).
    pub subject: String,
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct Certs {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// Checks Access JWTs against the team's keys.
pub struct CfAccess {
    settings: AccessSettings,
    validation: Validation,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

impl CfAccess {
    pub fn new(settings: AccessSettings) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.set_issuer(&[settings.team_url.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            settings,
            validation,
            http,
            keys: Mutex::new(Keys::default()),
        }
    }

    /// The Access JWT a request carries, if any.
    pub fn token(headers: &HeaderMap) -> Option<&str> {
        if let Some(value) = headers.get(HEADER).and_then(|v| v.to_str().ok()) {
            return Some(value.trim());
        }
        ecdysis_web::session::cookie(headers, COOKIE)
    }

    /// Check a token: who it names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<AccessIdentity, AccessError> {
        let header = decode_header(token)?;
        let kid = header.kid.ok_or(AccessError::NoKeyId)?;
        let key = self.key(&kid).await?;
        let data = decode::<Claims>(token, &key, &self.validation)?;
        Ok(AccessIdentity {
            subject: data.claims.sub,
            email: data.claims.email,
        })
    }

    /// The key with id `kid`, from the cache or, when it is stale or lacks that id, from the
    /// team's certs.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AccessError> {
        let mut keys = self.keys.lock().await;
        let age = keys.fetched.map(|at| at.elapsed());
        let fresh = age.is_some_and(|age| age < KEYS_TTL);
        if fresh && let Some(key) = keys.by_id.get(kid) {
            return Ok(key.clone());
        }
        let may_fetch = age.is_none_or(|age| age >= REFETCH_EVERY);
        if may_fetch {
            match self.fetch().await {
                Ok(by_id) => {
                    keys.by_id = by_id;
                    keys.fetched = Some(Instant::now());
                }
                // Stale keys still check tokens while Cloudflare cannot be reached.
                Err(e) if !keys.by_id.is_empty() => {
                    tracing::warn!(error = %e, "cannot refresh the Access keys; using the cached ones");
                }
                Err(e) => return Err(e),
            }
        }
        keys.by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| AccessError::UnknownKey(kid.to_string()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, AccessError> {
        let url = format!("{}/cdn-cgi/access/certs", self.settings.team_url);
        let certs: Certs = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AccessError::Certs(e.to_string()))?
            .json()
            .await
            .map_err(|e| AccessError::Certs(e.to_string()))?;
        let mut by_id = HashMap::new();
        for jwk in certs.keys {
            let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
                continue;
            };
            if jwk.kty != "RSA" {
                continue;
            }
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    by_id.insert(kid, key);
                }
                Err(error) => tracing::warn!(kid, %error, "an Access key is unreadable"),
            }
        }
        if by_id.is_empty() {
            return Err(AccessError::Certs(format!("{url} lists no RSA keys")));
        }
        Ok(by_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names_hosts_and_urls() {
        let url = |team: &str| AccessSettings::new(team, "aud").team_url;
        assert_eq!(url("acme"), "https://acme.cloudflareaccess.com");
        assert_eq!(
            url("acme.cloudflareaccess.com/"),
            "https://acme.cloudflareaccess.com"
        );
        assert_eq!(url("http://127.0.0.1:9/"), "http://127.0.0.1:9");
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(CfAccess::token(&headers), None);
        headers.insert("cookie", "a=b; CF_Authorization=xyz".parse().unwrap());
        assert_eq!(CfAccess::token(&headers), Some("xyz"));
        headers.insert(HEADER, "abc".parse().unwrap());
        assert_eq!(CfAccess::token(&headers), Some("abc"));
    }
}
