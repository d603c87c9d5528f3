//! Downstream TLS (`--tls-cert`, `--tls-key`) over real loopback sockets: rustls clients trusting
//! a CA made for the test, the SNI name in `opened`, in Redis and in the admin API, TLS 1.2,
//! handshakes that fail or never finish closing only their socket, a certificate replaced
//! while sockets are open, messages over many records, and `close_notify` when the node closes.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::*;
use ppp::{
    Node,
    config::{Config, Framing},
    proto::{self, upstream_command::Command},
};
use redis::AsyncCommands;
use rustls::version::{TLS12, TLS13};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// `config` serving TLS with the certificate files `ca` writes.
fn tls_config(config: Config, ca: &TestCa) -> Config {
    let (cert, key) = ca.paths();
    Config { tls_cert: Some(cert), tls_key: Some(key), ..config }
}

/// An echoing upstream, a test CA with its certificate written, and a node serving TLS with it.
async fn echo_tls_node() -> (TestUpstream, TestCa, Node) {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let node = start_node(tls_config(test_config(&[&up]), &ca)).await;
    (up, ca, node)
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
    let (up, ca, node) = echo_tls_node().await;
    let mut c = TlsClient::connect(node.local_addr(), &ca.connector(&[&TLS12]), DEVICE_NAME).await;
    assert_eq!(c.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(c.echo("twelve").await, "twelve");
    assert_eq!(opened_from(&up, c.local_addr).await.tls_server_name, DEVICE_NAME);
}

#[tokio::test]
async fn a_message_larger_than_a_record_crosses_both_ways_over_tls_1_2_and_1_3() {
    let (up, ca, node) = echo_tls_node().await;
    // 300 KB: many 16 KiB records in, and more than one write's worth out.
    let long: String = (0..300_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for version in [&TLS12, &TLS13] {
        let mut c = TlsClient::connect(node.local_addr(), &ca.connector(&[version]), DEVICE_NAME).await;
        assert_eq!(c.echo(&long).await, long);
        assert_eq!(c.echo("short after long").await, "short after long");
        // The last line, then close_notify: the line is a message, the close the client's.
        let id = opened_from(&up, c.local_addr).await.id;
        c.writer.write_all(b"bye\n").await.unwrap();
        c.writer.shutdown().await.unwrap();
        assert_eq!(close_reason(&up, &id).await, "client_closed");
        assert!(up.data().iter().any(|d| d.socket_id == id && d.payload == "bye"));
    }
}

#[tokio::test]
async fn an_openssl_client_speaks_tls_1_2_and_1_3_with_the_node() {
    let (up, ca, node) = echo_tls_node().await;
    let ca_file = ca.write_ca();
    for version in ["-tls1_2", "-tls1_3"] {
        let mut openssl = tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-verify_return_error",
                version,
                "-servername",
                DEVICE_NAME,
                "-connect",
            ])
            .arg(node.local_addr().to_string())
            .arg("-CAfile")
            .arg(&ca_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl on PATH (scripts/test.sh installs it)");
        let mut stdin = openssl.stdin.take().unwrap();
        stdin.write_all(format!("hello from openssl {version}\n").as_bytes()).await.unwrap();
        let mut stdout = tokio::io::BufReader::new(openssl.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, stdout.read_line(&mut line)).await.expect("an echo in time").unwrap();
        assert_eq!(line, format!("hello from openssl {version}\n"));
        drop(stdin); // The end of its input ends the session.
        tokio::time::timeout(DEADLINE, openssl.wait()).await.expect("openssl ends").unwrap();
    }
    let infos = opened_infos(&up);
    assert_eq!(infos.len(), 2);
    assert!(infos.iter().all(|i| i.tls_server_name == DEVICE_NAME), "{infos:?}");
    for info in infos {
        assert_eq!(close_reason(&up, &info.id).await, "client_closed");
    }
}

/// A TCP stream that writes at most a few bytes at a time: TLS records reach the node in pieces.
struct Trickle(TcpStream);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..buf.len().min(7)])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn records_that_arrive_a_few_bytes_at_a_time_are_put_together() {
    let (up, ca, node) = echo_tls_node().await;
    for version in [&TLS12, &TLS13] {
        let tcp = TcpStream::connect(node.local_addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from(DEVICE_NAME).unwrap();
        let stream = ca.connector(&[version]).connect(name, Trickle(tcp)).await.expect("a handshake in pieces");
        let (read, mut write) = tokio::io::split(stream);
        let mut read = tokio::io::BufReader::new(read);
        for line in ["one", "two, a little longer", &"three ".repeat(500)] {
            write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
            write.flush().await.unwrap();
            let mut echoed = String::new();
            tokio::time::timeout(DEADLINE, read.read_line(&mut echoed)).await.expect("an echo in time").unwrap();
            assert_eq!(echoed.trim_end(), line.trim_end());
        }
    }
    assert!(opened_infos(&up).iter().all(|i| i.tls_server_name == DEVICE_NAME));
}

#[tokio::test]
async fn raw_reads_over_tls_are_cut_to_max_frame_and_lose_nothing() {
    let up = TestUpstream::start(false).await;
    let ca = TestCa::new();
    ca.write();
    let config = Config { framing: Framing::Raw, max_frame: 1000, ..tls_config(test_config(&[&up]), &ca) };
    let node = start_node(config).await;
    let mut c = TlsClient::connect(node.local_addr(), &ca.connector(&[&TLS13]), DEVICE_NAME).await;
    // Records of 16 KiB, each more than a read may take: the rest waits for the next read.
    let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    c.write(&sent).await;
    let received = || up.data().iter().flat_map(|d| d.payload.to_vec()).collect::<Vec<u8>>();
    up.wait_for("every byte", |_| received().len() >= sent.len()).await;
    assert_eq!(received(), sent);
    assert!(up.data().iter().all(|d| d.payload.len() <= 1000), "one read is one message of at most --max-frame");
}

#[tokio::test]
async fn a_socket_the_node_closes_gets_what_was_queued_then_close_notify() {
    let (up, ca, node) = echo_tls_node().await;
    for version in [&TLS12, &TLS13] {
        let mut c = TlsClient::connect(node.local_addr(), &ca.connector(&[version]), DEVICE_NAME).await;
        let id = opened_from(&up, c.local_addr).await.id;
        up.command(send_cmd(&id, "last words")).await;
        let close = Command::Close(proto::Close { socket_id: id.clone(), reason: "bye".into() });
        up.command(with_id("", close)).await;
        assert_eq!(c.line().await, "last words");
        // Without close_notify, rustls would report an unexpected end of the stream instead.
        let mut rest = String::new();
        let end = tokio::time::timeout(DEADLINE, c.reader.read_line(&mut rest)).await.expect("closed in time");
        assert_eq!(end.expect("a clean end: close_notify"), 0);
        assert_eq!(close_reason(&up, &id).await, "upstream");
    }
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
    let (up, ca, node) = echo_tls_node().await;
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
