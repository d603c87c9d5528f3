//! TLS for tests: a CA made at run time (rcgen), server certificates it signs written as the
//! PEM files `--tls-cert` and `--tls-key` read, and a rustls client that trusts only that CA.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore, SupportedProtocolVersion,
    pki_types::{CertificateDer, ServerName},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{process::TempDir, wait::DEADLINE};

/// The name test clients ask for (SNI).
pub const DEVICE_NAME: &str = "device.example";

/// A test CA, with a folder for the certificate files it writes.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "ppp test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer, dir: TempDir::new("ppp-tls") }
    }

    /// A new certificate for [`DEVICE_NAME`], `localhost` and 127.0.0.1 with a fresh key, as PEM (chain,
    /// key) and the leaf's DER (to tell certificates apart).
    pub fn issue(&self) -> (String, String, CertificateDer<'static>) {
        let params =
            CertificateParams::new(vec![DEVICE_NAME.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// Where [`TestCa::write`] puts the certificate and the key.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.path().join("cert.pem"), self.dir.path().join("key.pem"))
    }

    /// Writes the CA's own certificate (PEM) next to the node's files, for clients that read it
    /// from a file (`openssl s_client -CAfile`); returns its path.
    pub fn write_ca(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        replace(&path, self.issuer.pem().as_bytes());
        path
    }

    /// Issues a certificate and (re)writes the files, each replaced at once (written aside, then
    /// renamed), as a certificate manager does; returns the leaf's DER.
    pub fn write(&self) -> CertificateDer<'static> {
        let (cert, key, der) = self.issue();
        let (cert_path, key_path) = self.paths();
        replace(&cert_path, cert.as_bytes());
        replace(&key_path, key.as_bytes());
        der
    }

    /// A client configuration trusting this CA only, speaking `versions`.
    pub fn connector(&self, versions: &[&'static SupportedProtocolVersion]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes `bytes` to `path` in one step (a rename), so a reader never sees half a file.
pub fn replace(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// A line client over TLS.
pub struct TlsClient {
    pub reader: BufReader<ReadHalf<TlsStream<TcpStream>>>,
    pub writer: WriteHalf<TlsStream<TcpStream>>,
    /// The leaf certificate the node presented.
    pub server_cert: CertificateDer<'static>,
    /// The client's own address (what the node reports as `remote_addr` without a balancer).
    pub local_addr: SocketAddr,
    /// The TLS version the handshake settled on.
    pub version: Option<rustls::ProtocolVersion>,
}

impl TlsClient {
    /// Connects to `addr` and makes the handshake asking for `name`.
    pub async fn connect(addr: SocketAddr, connector: &TlsConnector, name: &str) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::over(tcp, connector, name).await.expect("a TLS handshake")
    }

    /// Makes the handshake on a connected socket (after a PROXY header, say).
    pub async fn over(tcp: TcpStream, connector: &TlsConnector, name: &str) -> std::io::Result<Self> {
        tcp.set_nodelay(true)?;
        let local_addr = tcp.local_addr()?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let stream = tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await.expect("handshake in time")?;
        let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let version = stream.get_ref().1.protocol_version();
        let (r, w) = tokio::io::split(stream);
        Ok(Self { reader: BufReader::new(r), writer: w, server_cert, local_addr, version })
    }

    /// Writes bytes and flushes them.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    /// Reads one line (without `\n`); fails the test after the deadline or at EOF.
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        let n =
            tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line)).await.expect("a line in time").unwrap();
        assert!(n > 0, "unexpected EOF");
        line.trim_end_matches('\n').to_owned()
    }

    /// Writes a line and returns the line that comes back.
    pub async fn echo(&mut self, line: &str) -> String {
        self.write(format!("{line}\n").as_bytes()).await;
        self.line().await
    }
}

/// Waits for the node to close a raw socket (EOF or reset), returning what it sent first.
pub async fn wait_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut rest)).await.expect("close in time");
    let _ = read; // A reset is a close too.
    rest
}
