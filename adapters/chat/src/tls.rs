//! The TLS client settings of outbound connections that are not a platform SDK's own (MCP
//! servers over HTTPS, a remote browser and the Discord gateway over `wss://`): rustls with the
//! ring provider named explicitly, trusting the webpki roots.

use std::sync::Arc;

/// A rustls client configuration with ring and the webpki roots.
pub fn client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
