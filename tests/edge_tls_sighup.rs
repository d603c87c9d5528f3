//! SIGHUP reloads the TLS certificate even when its files look unchanged (their contents are
//! compared every second; a SIGHUP reads them again regardless). Alone in its binary: the signal
//! goes to the whole test process, and the reload counter it checks is the process's.

#[allow(dead_code)]
mod common;

use common::*;
use ppp::config::Config;
use rustls::version::TLS13;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_sockets_keep_their_session() {
    // Installed first, so that no SIGHUP sent below can take the test process down, whenever
    // the node's own handler is installed.
    let _ours = signal(SignalKind::hangup()).unwrap();
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    let cert = ca.write();
    let (cert_path, key_path) = ca.paths();
    let config = Config { tls_cert: Some(cert_path), tls_key: Some(key_path), ..test_config(&[&up]) };
    let admin = AdminNode::start(config).await;
    let connector = ca.connector(&[&TLS13]);
    let mut open = TlsClient::connect(admin.node.local_addr(), &connector, DEVICE_NAME).await;
    assert_eq!(open.echo("before").await, "before");

    let reloads = r#"ppp_tls_reloads_total{result="ok"}"#;
    let before = admin.metric(reloads).await;
    eventually_async("a SIGHUP reloads the certificate", || async {
        // Again until it is seen: the node's handler may not be installed yet.
        assert!(common::process::signal(std::process::id(), "-HUP"));
        admin.metric(reloads).await > before
    })
    .await;
    assert_eq!(open.echo("after").await, "after");
    let fresh = TlsClient::connect(admin.node.local_addr(), &connector, DEVICE_NAME).await;
    assert_eq!(fresh.server_cert, cert, "the same files, the same certificate");
}
