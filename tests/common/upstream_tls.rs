//! TLS to upstreams in tests: [`TestPki`], a CA made at run time (rcgen) that issues server and
//! client certificates as PEM files in a temporary folder, and [`TlsUpstream`], the recording
//! upstream served over TLS (tonic's `ServerTlsConfig`), optionally requiring a client
//! certificate signed by a given CA (mTLS).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ppp::{UPSTREAM_SERVICE, proto::upstream_server::UpstreamServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use super::{
    process::TempDir,
    recorder::{Acks, Recording, RecordingService},
};

/// A certificate and its key, as PEM files.
pub struct Pem {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A CA made for one test: its certificate in `ca.pem`, and the leaf certificates it issues.
pub struct TestPki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl TestPki {
    /// A new CA named `name` (its files go to a new temporary folder).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = TempDir::new(&format!("ppp-pki-{name}"));
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Self { dir, issuer: Issuer::new(params, key), ca_pem }
    }

    /// The CA's certificate file, for `--upstream-ca`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `{file}.pem`/`{file}.key`.
    pub fn server(&self, file: &str) -> Pem {
        self.leaf(file, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for `--upstream-cert`/`--upstream-key`), written as
    /// `{file}.pem`/`{file}.key`.
    pub fn client(&self, file: &str) -> Pem {
        self.leaf(file, &["ppp-node"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem =
            Pem { cert: self.dir.path().join(format!("{file}.pem")), key: self.dir.path().join(format!("{file}.key")) };
        std::fs::write(&pem.cert, cert.pem()).unwrap();
        std::fs::write(&pem.key, key.serialize_pem()).unwrap();
        pem
    }

    /// The folder the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The recording upstream, echoing every `data` back, served over TLS on a free loopback port;
/// stopped on drop.
pub struct TlsUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    recording: Recording,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsUpstream {
    /// Serves with `server`'s certificate; with `client_ca`, only to clients presenting a
    /// certificate that CA signed.
    pub async fn start(server: &Pem, client_ca: Option<&TestPki>) -> Self {
        let identity = Identity::from_pem(std::fs::read(&server.cert).unwrap(), std::fs::read(&server.key).unwrap());
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca.ca_pem()));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health),
        );
        let recording = Recording::new(true, Acks::Never, 100_000);
        let service = UpstreamServer::new(RecordingService(recording.clone()));
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = server => {}
                _ = stopped => {}
            }
        });
        Self { addr, recording, stop: Some(stop) }
    }

    /// Its URI for `--upstream`: `https://localhost:{port}` (the name its certificate holds).
    pub fn uri(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Its id in the registry.
    pub fn id(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// What it recorded.
    pub fn recording(&self) -> &Recording {
        &self.recording
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
