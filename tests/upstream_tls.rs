//! TLS to upstreams: `https://` upstreams verified against `--upstream-ca`, mTLS with
//! `--upstream-cert`/`--upstream-key`, and what an operator sees when it does not work (the
//! upstream is not ready, `GET /v1/upstreams` shows why). CA and certificates are made at run
//! time; every upstream is a real tonic server over TLS on loopback.

#[allow(dead_code)]
mod common;

use common::{upstream_tls::*, *};
use ppp::{Node, config::Config};
use tokio::net::TcpListener;

/// A node config trusting `pki`'s CA, optionally presenting `client`.
fn tls_config(pki: &TestPki, client: Option<&Pem>) -> Config {
    Config {
        upstream_ca: Some(pki.ca_path()),
        upstream_cert: client.map(|c| c.cert.clone()),
        upstream_key: client.map(|c| c.key.clone()),
        ..test_config(&[])
    }
}

/// Sends a line through the node and expects it back from the upstream.
async fn expect_echo(node: &Node, text: &str) {
    let mut c = Client::connect(node).await;
    c.write(format!("{text}\n").as_bytes()).await;
    assert_eq!(c.line().await, text);
}

/// Waits until `GET /v1/upstreams` shows the upstream not ready with a `last_error`, and
/// returns that error.
async fn not_ready_error(admin: &AdminNode, id: &str) -> String {
    let started = tokio::time::Instant::now();
    loop {
        let list = admin.get("/v1/upstreams").await;
        let entry = list.expect(200)["upstreams"].as_array().unwrap().iter().find(|u| u["id"] == id).cloned();
        let entry = entry.expect("the upstream is listed");
        assert_eq!(entry["ready"], false, "{entry}");
        if let Some(error) = entry["last_error"].as_str() {
            return error.to_owned();
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for a last_error: {entry}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_https_upstream_signed_by_the_upstream_ca_echoes() {
    let pki = TestPki::new("private");
    let up = TlsUpstream::start(&pki.server("upstream"), None).await;
    let config = Config { upstream: vec![up.uri()], ..tls_config(&pki, None) };
    let node = start_node(config).await;
    expect_echo(&node, "over tls").await;
    assert!(!up.recording().events().is_empty());
}

#[tokio::test]
async fn mtls_works_with_the_client_certificate_and_the_upstream_is_not_ready_without() {
    let pki = TestPki::new("mtls");
    let up = TlsUpstream::start(&pki.server("upstream"), Some(&pki)).await;
    let client = pki.client("node");
    let with = start_node(Config { upstream: vec![up.uri()], ..tls_config(&pki, Some(&client)) }).await;
    expect_echo(&with, "with a client certificate").await;

    let without = AdminNode::start(tls_config(&pki, None)).await;
    let added = without.json(reqwest::Method::POST, "/v1/upstreams", serde_json::json!({ "uri": up.uri() })).await;
    added.expect(201);
    let error = not_ready_error(&without, &up.id()).await;
    assert!(error.to_lowercase().contains("certificate"), "the error says a certificate is missing: {error}");
    assert!(without.node.upstreams().snapshot().iter().all(|u| !u.is_usable()));
}

#[tokio::test]
async fn an_upstream_signed_by_another_ca_is_not_ready_with_a_clear_error() {
    let trusted = TestPki::new("trusted");
    let other = TestPki::new("other");
    let up = TlsUpstream::start(&other.server("upstream"), None).await;
    let admin = AdminNode::start(tls_config(&trusted, None)).await;
    let added = admin.json(reqwest::Method::POST, "/v1/upstreams", serde_json::json!({ "uri": up.uri() })).await;
    added.expect(201);
    let error = not_ready_error(&admin, &up.id()).await;
    assert!(error.contains("UnknownIssuer") || error.contains("unknown issuer"), "the error names the cause: {error}");
}

#[tokio::test]
async fn tls_files_are_checked_at_start_and_named() {
    let pki = TestPki::new("start");
    let client = pki.client("node");
    let start = |config: Config| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Node::start(config, listener).await.err().map(|e| e.to_string()).unwrap_or_default()
    };
    let half = Config { upstream_key: None, ..tls_config(&pki, Some(&client)) };
    let error = start(half).await;
    assert!(error.contains("--upstream-cert and --upstream-key go together"), "{error}");

    let missing = pki.dir().join("missing.pem");
    let error = start(Config { upstream_ca: Some(missing.clone()), ..test_config(&[]) }).await;
    assert!(error.contains("--upstream-ca") && error.contains(&missing.display().to_string()), "{error}");

    // A certificate where the key should be.
    let swapped = Config { upstream_key: Some(client.cert.clone()), ..tls_config(&pki, Some(&client)) };
    let error = start(swapped).await;
    assert!(error.contains("--upstream-key") && error.contains("no private key"), "{error}");
}
