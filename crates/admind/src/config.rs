//! `[admin_api]` in the shared config file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The Admin API server's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminApiConfig {
    /// Where to listen, `IP:port`.
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The host name clients sign requests for (Duo's "API hostname"); without it, the
    /// `Host` header's name is used.
    #[serde(default)]
    pub hostname: Option<String>,
}

impl AdminApiConfig {
    /// Refuses half a TLS setup, and plain HTTP anywhere but on a loopback address:
    /// integration keys sign requests but do not encrypt them, and the answers carry codes.
    pub fn check(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (None, None) if self.listen.ip().is_loopback() => Ok(()),
            (None, None) => Err(format!(
                "[admin_api] listen = \"{}\" is not a loopback address: set tls_cert and tls_key",
                self.listen
            )),
            _ => Err("[admin_api] tls_cert and tls_key go together".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(s: &str) -> AdminApiConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn plain_http_only_on_loopback_and_tls_needs_both_files() {
        assert!(parse("listen = \"127.0.0.1:8443\"").check().is_ok());
        assert!(parse("listen = \"[::1]:8443\"").check().is_ok());
        assert!(parse("listen = \"0.0.0.0:8443\"").check().is_err());
        assert!(
            parse("listen = \"192.0.2.1:443\"\ntls_cert = \"c\"\ntls_key = \"k\"")
                .check()
                .is_ok()
        );
        assert!(
            parse("listen = \"192.0.2.1:443\"\ntls_cert = \"c\"")
                .check()
                .is_err()
        );
        assert!(toml::from_str::<AdminApiConfig>("listen = \"127.0.0.1:1\"\nport = 3").is_err());
    }
}
