//! TLS to upstreams: what an `https://` upstream's stream is dialled with.
//!
//! The server is verified against the system's trusted roots (read with `rustls-native-certs`,
//! as an OpenSSL-based client would find them: `SSL_CERT_FILE`, `/etc/ssl/certs`, …) plus the
//! CA of `--upstream-ca`; with `--upstream-cert` and `--upstream-key` the node presents a client
//! certificate (mTLS). Every file is read once, at start, so a bad file stops the node with its
//! name rather than failing each upstream later; the roots are read once too, not for every
//! upstream. `http://` upstreams are dialled in cleartext (h2c) whatever these settings are.
//!
//! The roots are loaded here and not with tonic's `tls-native-roots` feature: that one reads the
//! system store for every endpoint and refuses to build one when the store is empty (a slim
//! container without `ca-certificates`), even when `--upstream-ca` would be enough.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, pem::PemObject},
};
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, warn};

/// Longest a TLS handshake with an upstream may take (the TCP connect has its own timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the upstream TLS settings cannot be used. Upstream-side errors: each names the file or the
/// upstream it is about. Loading errors are fatal at start; [`UpstreamTlsError::NoRoots`] and
/// [`UpstreamTlsError::Endpoint`] are an upstream's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// A file could not be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// The flag that names it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind its flag wants.
    #[error("{flag} {}: {reason}", path.display())]
    Pem {
        /// The flag that names it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("--upstream-cert and --upstream-key go together: set both, or neither")]
    HalfIdentity,
    /// An `https://` upstream, and nothing to verify it with.
    #[error("upstream `{uri}`: no trusted root certificate (the system has none; set --upstream-ca)")]
    NoRoots {
        /// The upstream.
        uri: String,
    },
    /// tonic refused the TLS settings for this upstream.
    #[error("upstream `{uri}`: TLS: {source}")]
    Endpoint {
        /// The upstream.
        uri: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// The TLS settings of every `https://` upstream: roots and, for mTLS, the client identity. A
/// cheap `Clone` handle.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The system's roots and `--upstream-ca`'s certificates.
    roots: Vec<TrustAnchor<'static>>,
    /// `--upstream-cert` and `--upstream-key`, PEM, as tonic takes them.
    identity: Option<Identity>,
}

impl UpstreamTls {
    /// Reads the system's roots and the given files: `ca` (PEM certificates, trusted besides the
    /// system's roots), `cert` and `key` (the client certificate chain and its private key, PEM;
    /// both or neither).
    ///
    /// # Errors
    /// [`UpstreamTlsError`] naming the flag and the file that cannot be used.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, UpstreamTlsError> {
        let mut roots = system_roots();
        if let Some(path) = ca {
            let (added, ignored) = roots.add_parsable_certificates(certificates("--upstream-ca", path)?);
            if added == 0 {
                let reason = format!("none of its {ignored} certificates can be a trust anchor");
                return Err(UpstreamTlsError::Pem { flag: "--upstream-ca", path: path.to_owned(), reason });
            }
        }
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(identity(cert, key)?),
            _ => return Err(UpstreamTlsError::HalfIdentity),
        };
        Ok(Self { inner: Arc::new(Inner { roots: roots.roots, identity }) })
    }

    /// Whether the node presents a client certificate to `https://` upstreams.
    pub fn has_identity(&self) -> bool {
        self.inner.identity.is_some()
    }

    /// Sets TLS on an `https://` endpoint; any other endpoint is returned as it is.
    ///
    /// # Errors
    /// [`UpstreamTlsError::NoRoots`] when nothing could verify the upstream;
    /// [`UpstreamTlsError::Endpoint`] when tonic refuses the settings.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, UpstreamTlsError> {
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let uri = endpoint.uri().to_string();
        if self.inner.roots.is_empty() {
            return Err(UpstreamTlsError::NoRoots { uri });
        }
        let mut config =
            ClientTlsConfig::new().trust_anchors(self.inner.roots.iter().cloned()).timeout(HANDSHAKE_TIMEOUT);
        if let Some(identity) = &self.inner.identity {
            config = config.identity(identity.clone());
        }
        endpoint.tls_config(config).map_err(|source| UpstreamTlsError::Endpoint { uri, source })
    }
}

/// The system's trusted roots; none (with a warning) when the store cannot be read: an upstream
/// may still be verified with `--upstream-ca`.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "could not read some of the system's trusted roots");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    debug!(added, ignored, "system roots for https:// upstreams");
    roots
}

/// Every certificate of a PEM file; at least one.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let text = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpstreamTlsError::Pem { flag, path: path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        let reason = "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned();
        return Err(UpstreamTlsError::Pem { flag, path: path.to_owned(), reason });
    }
    Ok(certs)
}

/// The client identity: a certificate chain and its private key, checked now so a bad file is
/// named at start, and kept as the PEM text tonic takes.
fn identity(cert: &Path, key: &Path) -> Result<Identity, UpstreamTlsError> {
    certificates("--upstream-cert", cert)?;
    let key_pem = read("--upstream-key", key)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| UpstreamTlsError::Pem {
        flag: "--upstream-key",
        path: key.to_owned(),
        reason: format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM) in it: {e}"),
    })?;
    Ok(Identity::from_pem(read("--upstream-cert", cert)?, key_pem))
}

/// A file's bytes.
fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, UpstreamTlsError> {
    std::fs::read(path).map_err(|source| UpstreamTlsError::Read { flag, path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_is_named_with_its_flag() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = UpstreamTls::load(Some(missing), None, None).unwrap_err().to_string();
        assert!(e.starts_with("--upstream-ca /nonexistent/ca.pem:"), "{e}");
        let not_pem = std::env::temp_dir().join(format!("ppp-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let e = UpstreamTls::load(Some(&not_pem), None, None).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = UpstreamTls::load(None, Some(&not_pem), None).unwrap_err();
        assert!(matches!(e, UpstreamTlsError::HalfIdentity), "{e}");
        let _ = std::fs::remove_file(&not_pem);
    }

    #[test]
    fn http_endpoints_are_left_alone() {
        let tls = UpstreamTls::default();
        let plain = Endpoint::from_static("http://127.0.0.1:1");
        assert!(tls.apply(plain).is_ok());
        let e = tls.apply(Endpoint::from_static("https://127.0.0.1:1")).unwrap_err();
        assert!(matches!(e, UpstreamTlsError::NoRoots { .. }), "{e}");
    }
}
