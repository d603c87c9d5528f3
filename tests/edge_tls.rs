//! Downstream TLS (`--tls-cert`, `--tls-key`) over real loopback sockets: rustls clients trusting
//! a CA made for the test, the SNI name in `opened`, in Redis and in the admin API, TLS 1.2,
//! handshakes that fail or never finish closing only their socket, and a certificate replaced
//! while sockets are open.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::*;
use ppp::config::Config;
use redis::AsyncCommands;
use rustls::version::{TLS12, TLS13};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

/// `config` serving TLS with the certificate files `ca` writes.
fn tls_config(config: Config, ca: &TestCa) -> Config {
    let (cert, key) = ca.paths();
    Config { tls_cert: Some(cert), tls_key: Some(key), ..config }
}

#[tokio::test]
async fn a_tls_client_echoes_and_its_server_name_is_in_opened_redis_and_the_admin_api() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let admin = AdminNode::start(tls_config(cluster_config(&redis, "tls-node", &[&up]), &ca)).await;
    let connector = ca.connector(&[&TLS13]);
    let mut named = TlsClient::connect(admin.node.local_addr(), &connector, DEVICE_NAME).await;
    assert_eq!(named.echo("hello over tls").await, "hello over tls");
    assert_eq!(named.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let info = opened_from(&up, named.local_addr).await;
    assert_eq!(info.tls_server_name, DEVICE_NAME);
    // By IP address a client sends no SNI: no name anywhere.
    let mut unnamed = TlsClient::connect(admin.node.local_addr(), &connector, "127.0.0.1").await;
    assert_eq!(unnamed.echo("no name").await, "no name");
    let plain = opened_from(&up, unnamed.local_addr).await;
    assert_eq!(plain.tls_server_name, "");

    let mut conn = redis.conn().await;
    let key = |id: &str| format!("ppp:{{default}}:socket:{id}");
    redis.wait_exists("the named socket's hash", &key(&info.id)).await;
    redis.wait_exists("the unnamed socket's hash", &key(&plain.id)).await;
    let stored: Option<String> = conn.hget(key(&info.id), "tls_server_name").await.unwrap();
    assert_eq!(stored.as_deref(), Some(DEVICE_NAME));
    let stored: Option<String> = conn.hget(key(&plain.id), "tls_server_name").await.unwrap();
    assert_eq!(stored, None, "the field is only there when set");

    let one = admin.get(&format!("/v1/sockets/{}", info.id)).await.expect(200).clone();
    assert_eq!(one["tls_server_name"], DEVICE_NAME);
    // The listing is read from Redis in cluster mode.
    let page = admin.get("/v1/sockets").await.expect(200).clone();
    let listed = |id: &str| page["sockets"].as_array().unwrap().iter().find(|s| s["id"] == id).cloned().unwrap();
    assert_eq!(listed(&info.id)["tls_server_name"], DEVICE_NAME);
    assert!(listed(&plain.id).get("tls_server_name").is_none(), "absent, not null: {page}");
    let doc = admin.get("/v1/openapi.json").await.expect(200).clone();
    let record = &doc["components"]["schemas"]["SocketRecord"];
    assert_eq!(record["properties"]["tls_server_name"]["type"], "string", "{record}");
    assert!(!record["required"].as_array().unwrap().iter().any(|r| r == "tls_server_name"));

    // A client that leaves without TLS's close_notify (dropping the socket) closed, not erred.
    drop(unnamed);
    assert_eq!(close_reason(&up, &plain.id).await, "client_closed");
}

#[tokio::test]
async fn a_tls_1_2_client_works() {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let node = start_node(tls_config(test_config(&[&up]), &ca)).await;
    let mut c = TlsClient::connect(node.local_addr(), &ca.connector(&[&TLS12]), DEVICE_NAME).await;
    assert_eq!(c.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(c.echo("twelve").await, "twelve");
    assert_eq!(opened_from(&up, c.local_addr).await.tls_server_name, DEVICE_NAME);
}

#[tokio::test]
async fn failed_and_unfinished_handshakes_close_only_their_socket() {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let admin = AdminNode::start(tls_config(test_config(&[&up]), &ca)).await;
    let addr = admin.node.local_addr();
    let closed = r#"ppp_sockets_closed_total{reason="tls_handshake"}"#;
    let timeouts = r#"ppp_tls_handshakes_total{outcome="timeout"}"#;
    let (closed_before, timeouts_before) = (admin.metric(closed).await, admin.metric(timeouts).await);
    let mut good = TlsClient::connect(addr, &ca.connector(&[&TLS13]), DEVICE_NAME).await;

    let started = Instant::now();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // The start of a ClientHello record, and then nothing.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();

    wait_closed(&mut garbage).await;
    assert!(started.elapsed() < Duration::from_secs(2), "garbage is refused at once");
    assert_eq!(good.echo("meanwhile").await, "meanwhile");
    wait_closed(&mut silent).await;
    wait_closed(&mut partial).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4500) && took < Duration::from_secs(8), "closed after {took:?}");
    assert_eq!(good.echo("still here").await, "still here");

    assert!(admin.metric(closed).await - closed_before >= 3.0);
    assert!(admin.metric(timeouts).await - timeouts_before >= 2.0);
    assert_eq!(opened_infos(&up).len(), 1, "a socket that never finished its handshake was never opened");
}

#[tokio::test]
async fn a_new_certificate_is_used_by_new_handshakes_while_old_sockets_keep_theirs() {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    let first = ca.write();
    let admin = AdminNode::start(tls_config(test_config(&[&up]), &ca)).await;
    let (addr, connector) = (admin.node.local_addr(), ca.connector(&[&TLS13]));
    let mut old = TlsClient::connect(addr, &connector, DEVICE_NAME).await;
    assert_eq!(old.server_cert, first);
    assert_eq!(old.echo("before").await, "before");
    let old_id = opened_from(&up, old.local_addr).await.id;

    let second = ca.write();
    assert_ne!(first, second);
    eventually_async("a new handshake gets the new certificate", || async {
        TlsClient::connect(addr, &connector, DEVICE_NAME).await.server_cert == second
    })
    .await;
    assert_eq!(old.echo("after the swap").await, "after the swap");

    // A bad file is logged and counted; the certificate in use stays.
    let failed = r#"ppp_tls_reloads_total{result="failed"}"#;
    let failed_before = admin.metric(failed).await;
    replace(&ca.paths().0, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    eventually_async("the bad file is refused", || async { admin.metric(failed).await > failed_before }).await;
    assert_eq!(TlsClient::connect(addr, &connector, DEVICE_NAME).await.server_cert, second);
    assert_eq!(old.echo("still the old session").await, "still the old session");
    assert!(!up.closed().iter().any(|(id, _)| *id == old_id), "the old socket was never dropped");
}

#[tokio::test]
async fn bad_tls_settings_are_refused_at_start_with_the_reason() {
    let ca = TestCa::new();
    ca.write();
    let (cert, key) = ca.paths();
    let start = |config: Config| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ppp::Node::start(config, listener).await.err().expect("refused").to_string()
    };
    let base = test_config(&[]);
    let only_cert = Config { tls_cert: Some(cert.clone()), ..base.clone() };
    assert!(start(only_cert).await.contains("--tls-key"));
    let missing = Config { tls_cert: Some(cert.clone()), tls_key: Some(key.with_extension("gone")), ..base.clone() };
    assert!(start(missing).await.contains("key.gone"));
    let (_, other_key, _) = ca.issue();
    let other = key.with_extension("other");
    std::fs::write(&other, other_key).unwrap();
    let mismatched = Config { tls_cert: Some(cert.clone()), tls_key: Some(other), ..base.clone() };
    let error = start(mismatched).await;
    assert!(error.contains("key"), "{error}");
    let not_pem = Config { tls_cert: Some(key.clone()), tls_key: Some(key), ..base };
    let error = start(not_pem).await;
    assert!(error.contains("CERTIFICATE"), "{error}");
}

#[tokio::test]
async fn a_drain_refuses_sockets_still_in_their_handshake_instead_of_waiting_for_them() {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let node = start_node(tls_config(test_config(&[&up]), &ca)).await;
    let mut stalled = TcpStream::connect(node.local_addr()).await.unwrap();
    // Accepted after the stalled one (one accept loop, in order): so that one is in its handshake.
    let mut open = TlsClient::connect(node.local_addr(), &ca.connector(&[&TLS13]), DEVICE_NAME).await;
    assert_eq!(open.echo("held").await, "held");
    let shutdowns = || {
        let text = ppp::metrics::install().unwrap().render();
        let series = r#"ppp_sockets_closed_total{reason="shutdown"} "#;
        text.lines().find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let before = shutdowns();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), node.shutdown()).await.expect("the drain does not wait 5 s for it");
    wait_closed(&mut stalled).await;
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(shutdowns() - before >= 2.0, "the open socket and the one in its handshake");
    assert_eq!(opened_infos(&up).len(), 1, "only the socket that finished its handshake was opened");
    let id = opened_infos(&up)[0].id.clone();
    assert_eq!(close_reason(&up, &id).await, "shutdown");
}
