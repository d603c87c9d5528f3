//! Downstream TLS (`--tls-cert`, `--tls-key`): the rustls server configuration, the certificate
//! that is re-read while the node runs, and the handshake.
//!
//! - **Protocols**: TLS 1.3 and 1.2 only, with rustls's default cipher suites for the `ring`
//!   provider (AES-GCM and ChaCha20-Poly1305, forward-secret ECDHE key exchange only; no CBC, no
//!   RSA key exchange, nothing older than 1.2). rustls's defaults are the safe set its authors
//!   maintain: overriding them could only add weaker ones.
//! - **Resumption is off** (no TLS 1.3 tickets, no TLS 1.2 session cache): a per-node cache of a
//!   few hundred sessions means nothing for tens of thousands of long-lived sockets, a client
//!   that reconnects after its node died lands on another node anyway, and not sending two
//!   tickets after every handshake makes handshakes cheaper.
//! - **Reload**: the files are read again every [`RELOAD_INTERVAL`] and on SIGHUP; when their
//!   contents changed and make a valid certificate and matching key, new handshakes get it. The
//!   certificate lives behind [`CertSlot`], which the acceptor asks at every handshake: sockets
//!   already open keep their session and are never dropped. A file that does not load is logged
//!   (and counted) and the old certificate kept.
//! - **Handshake**: in the socket's own task, within [`HANDSHAKE_TIMEOUT`]; a failure closes only
//!   that socket (reason `tls_handshake`), counted by outcome.
//! - **Sessions** use rustls's unbuffered API (`tls/session.rs`; the reader's and writer's
//!   halves are in `tls/halves.rs`): the node owns the buffers and frees them when they are
//!   empty, so an idle TLS socket holds rustls's keys and state but no buffer (rustls's buffered
//!   connection keeps 4 KiB for the connection's life). What a session holds:
//!   `docs/architecture.md`, "What an idle socket holds".

mod halves;
mod session;

use std::{
    cell::Cell,
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use self::{
    halves::{TlsInbound, TlsOutbound},
    session::TlsSocket,
};
use crate::metrics as m;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the certificate and key files are read again to see whether they changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Largest certificate or key file read (a chain is a few KiB).
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// Why the certificate or key could not be loaded. Node-side (a configuration problem): fatal
/// at start-up, logged with the old certificate kept on a reload.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("node: TLS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of what it should.
    #[error("node: TLS file {path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key is not usable, or is not the certificate's.
    #[error("node: TLS key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("node: TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why a handshake failed. Downstream-side: the socket is closed with reason `tls_handshake`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not finished within [`HANDSHAKE_TIMEOUT`].
    #[error("downstream: no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    /// The client sent something that is not a TLS handshake we can do, refused ours, or left.
    #[error("downstream: TLS handshake failed: {0}")]
    Failed(io::Error),
}

impl HandshakeError {
    /// The `outcome` label of [`m::TLS_HANDSHAKES`].
    pub fn outcome(&self) -> &'static str {
        let Self::Failed(e) = self else { return "timeout" };
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(_)) => "peer_alert",
            Some(_) => "protocol_error",
            None if e.kind() == io::ErrorKind::UnexpectedEof => "client_closed",
            None if e.kind() == io::ErrorKind::InvalidData => "protocol_error",
            None => "client_closed",
        }
    }
}

/// The certificate new handshakes get: swapped on reload, read at every handshake.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        HELLO_NAME.set(Some(hello.server_name().map(Box::from)));
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

thread_local! {
    /// The SNI name of the last ClientHello [`CertSlot`] saw on this thread (`Some(None)`: the
    /// client sent none). rustls's unbuffered connection does not tell the name, and the
    /// resolver is the one place that sees it: rustls calls it from within the handshake step
    /// that processes the ClientHello, synchronously, so on the thread making that step, and
    /// [`with_hello_name`] takes it right after.
    static HELLO_NAME: Cell<Option<Option<Box<str>>>> = const { Cell::new(None) };
}

/// Runs `step` (a step of a handshake) and returns, with what it gave, the SNI name of the
/// ClientHello it processed, if it processed one.
fn with_hello_name<T>(step: impl FnOnce() -> T) -> (T, Option<Option<Box<str>>>) {
    HELLO_NAME.take();
    let out = step();
    (out, HELLO_NAME.take())
}

/// Downstream TLS: the acceptor and where its certificate comes from. A cheap `Clone` handle
/// (one pointer: every socket's task holds one).
#[derive(Clone)]
pub struct Tls(Arc<Inner>);

/// What [`Tls`] shares.
struct Inner {
    /// What every handshake starts from.
    config: Arc<ServerConfig>,
    /// The certificate the acceptor hands out.
    slot: Arc<CertSlot>,
    /// `--tls-cert`.
    cert_path: Arc<Path>,
    /// `--tls-key`.
    key_path: Arc<Path>,
    /// What the files held when they were loaded at start, which [`Tls::watch`] compares with.
    loaded: PemFiles,
}

impl Tls {
    /// Loads the certificate chain and key and builds the server configuration.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(provider());
        let files = (read_pem(cert_path)?, read_pem(key_path)?);
        let key = certified_key(&files.0, &files.1, cert_path, key_path, &provider)?;
        let slot = Arc::new(CertSlot(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(Self(Arc::new(Inner {
            config: Arc::new(config),
            slot,
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            loaded: files,
        })))
    }

    /// Makes the server side of the handshake on `tcp`, within [`HANDSHAKE_TIMEOUT`]; returns
    /// the socket with its session and the name the client asked for (SNI), if any. Counted in
    /// [`m::TLS_HANDSHAKES`].
    ///
    /// # Errors
    /// [`HandshakeError`]: the socket is to be closed with reason `tls_handshake`.
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> Result<(Box<TlsSocket>, Option<Box<str>>), HandshakeError> {
        let handshake = session::handshake(tcp, self.0.config.clone());
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout),
        };
        let outcome = result.as_ref().map_or_else(HandshakeError::outcome, |_| "ok");
        metrics::counter!(m::TLS_HANDSHAKES, "outcome" => outcome).increment(1);
        result
    }

    /// Reloads the certificate when its files change (read every [`RELOAD_INTERVAL`]) and on
    /// SIGHUP, until `stop` is cancelled.
    pub async fn watch(self, stop: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler: the TLS certificate is reloaded when its files change only");
                None
            }
        };
        let mut last = Some(self.0.loaded.clone());
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            self.reload(&mut last, forced);
        }
    }

    /// Reads both files and, when they changed since `last` (or `forced`), installs what they
    /// hold, or logs why it cannot and keeps the certificate in use. `last` is `None` while the
    /// files cannot be read (so a missing file is logged once, not every second).
    fn reload(&self, last: &mut Option<PemFiles>, forced: bool) {
        let files = self.read_files();
        let unchanged = match (&files, &*last) {
            (Ok(now), Some(before)) => now == before,
            (Err(_), None) => true,
            _ => false,
        };
        if unchanged && !forced {
            return;
        }
        *last = files.as_ref().ok().cloned();
        let provider = provider();
        match files.and_then(|(cert, key)| certified_key(&cert, &key, &self.0.cert_path, &self.0.key_path, &provider)) {
            Ok(key) => {
                *self.0.slot.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                info!(cert = %self.0.cert_path.display(), "TLS certificate loaded; new handshakes use it");
                metrics::counter!(m::TLS_RELOADS, "result" => "ok").increment(1);
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate not reloaded; the one in use is kept");
                metrics::counter!(m::TLS_RELOADS, "result" => "failed").increment(1);
            }
        }
    }

    /// The certificate and key files' bytes.
    fn read_files(&self) -> Result<PemFiles, TlsError> {
        Ok((read_pem(&self.0.cert_path)?, read_pem(&self.0.key_path)?))
    }
}

/// The bytes of the certificate file and of the key file.
type PemFiles = (Vec<u8>, Vec<u8>);

/// ring's provider, with rustls's default cipher suites in rustls's order.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A file's bytes, at most [`MAX_PEM_FILE`] of them.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_err = |source| TlsError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes)).map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::Pem { path: path.to_owned(), what: format!("longer than {MAX_PEM_FILE} bytes") });
    }
    Ok(bytes)
}

/// The chain of `cert` (PEM `CERTIFICATE` blocks, leaf first) with the key of `key` (PKCS#8,
/// PKCS#1 or SEC1 PEM), checked to belong together.
fn certified_key(
    cert: &[u8],
    key: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, what: String| TlsError::Pem { path: path.to_owned(), what };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_path, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(cert_path, "no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem_err(key_path, format!("no private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key { path: key_path.to_owned(), source })
}
