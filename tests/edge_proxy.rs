//! The PROXY protocol (`--proxy-protocol`, `--proxy-from`) over real loopback sockets: a real
//! HAProxy in front of a node with `send-proxy` (v1) and `send-proxy-v2`, its health checks (v2
//! `LOCAL`), headers written a byte at a time by a raw client, sockets without a header or from
//! a peer outside `--proxy-from`, PROXY then TLS, and random headers that disturb nobody.

#[allow(dead_code)]
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use ppp::config::Config;
use redis::AsyncCommands;
use rustls::version::TLS13;
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::TcpStream,
    time::Instant,
};

/// `config` with `--proxy-protocol` (and the default `--proxy-from`, loopback included).
fn proxy_config(config: Config) -> Config {
    Config { proxy_protocol: true, ..config }
}

/// A v1 header from `client` to `to`.
fn v1(client: &str, to: &str) -> Vec<u8> {
    let (client, to): (SocketAddr, SocketAddr) = (client.parse().unwrap(), to.parse().unwrap());
    format!("PROXY TCP4 {} {} {} {}\r\n", client.ip(), to.ip(), client.port(), to.port()).into_bytes()
}

/// A v2 `PROXY` header (IPv4, TCP) from `client` to `to`, with one NOOP TLV.
fn v2(client: &str, to: &str) -> Vec<u8> {
    let (client, to): (std::net::SocketAddrV4, std::net::SocketAddrV4) = (client.parse().unwrap(), to.parse().unwrap());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12 + 4]);
    h.extend(client.ip().octets());
    h.extend(to.ip().octets());
    h.extend(client.port().to_be_bytes());
    h.extend(to.port().to_be_bytes());
    h.extend([0x04, 0, 1, 0]); // PP2_TYPE_NOOP, one byte
    h
}

/// A line client on a socket that already sent its header.
fn client(tcp: TcpStream) -> Client {
    let (r, w) = tcp.into_split();
    Client { reader: BufReader::new(r), writer: w }
}

#[tokio::test]
async fn haproxy_v1_and_v2_carry_the_client_address_to_opened_redis_and_the_admin_api() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let admin = AdminNode::start(proxy_config(cluster_config(&redis, "proxy-node", &[&up]))).await;
    let mut conn = redis.conn().await;
    for options in ["send-proxy", "send-proxy-v2"] {
        let haproxy = Haproxy::start(admin.node.local_addr(), options).await;
        let mut c = Client::connect_to(haproxy.addr).await;
        let me = c.writer.local_addr().unwrap();
        c.write(format!("through haproxy, {options}\n").as_bytes()).await;
        assert_eq!(c.line().await, format!("through haproxy, {options}"));
        // The client's own address, not HAProxy's connection to the node.
        let info = opened_from(&up, me).await;
        assert_eq!(info.local_addr, haproxy.addr.to_string(), "{options}: the address the client connected to");
        let key = format!("ppp:{{default}}:socket:{}", info.id);
        redis.wait_exists("the socket's hash", &key).await;
        let remote: String = conn.hget(&key, "remote").await.unwrap();
        assert_eq!(remote, me.to_string(), "{options}: K:socket:{{id}} remote");
        let record = admin.get(&format!("/v1/sockets/{}", info.id)).await.expect(200).clone();
        assert_eq!(record["remote_addr"], me.to_string(), "{options}: the admin API");
        let page = admin.get("/v1/sockets").await.expect(200).clone();
        let listed = page["sockets"].as_array().unwrap().iter().find(|s| s["id"] == info.id.as_str()).cloned();
        assert_eq!(listed.unwrap()["remote_addr"], me.to_string(), "{options}: the listing, from Redis");
    }
}

#[tokio::test]
async fn haproxy_health_checks_with_check_send_proxy_do_no_harm() {
    let up = TestUpstream::start(true).await;
    let admin = AdminNode::start(proxy_config(test_config(&[&up]))).await;
    let node = admin.node.local_addr();
    let local = r#"ppp_proxy_headers_total{outcome="local"}"#;
    let before = admin.metric(local).await;
    let haproxy = Haproxy::start(node, "send-proxy-v2 check check-send-proxy inter 100ms").await;
    // Each check is a v2 LOCAL header: a socket of HAProxy's own, with its TCP addresses, that
    // opens and closes like any other (docs/operations.md, "PROXY protocol").
    up.wait_for("three health checks closed", |_| up.closed().len() >= 3).await;
    assert!(admin.metric(local).await - before >= 3.0);
    for check in opened_infos(&up) {
        assert_eq!(check.local_addr, node.to_string(), "LOCAL keeps the TCP addresses: {check:?}");
    }
    // HAProxy resets its check connections: `client_error`, never `proxy_protocol`.
    let ended = |reason: &str| reason == "client_closed" || reason == "client_error";
    assert!(up.closed().iter().all(|(_, reason)| ended(reason)), "{:?}", up.closed());
    // The server is up (HAProxy would refuse clients otherwise) and real clients get through.
    let mut c = Client::connect_to(haproxy.addr).await;
    let me = c.writer.local_addr().unwrap();
    c.write(b"checked and served\n").await;
    assert_eq!(c.line().await, "checked and served");
    assert_eq!(opened_from(&up, me).await.local_addr, haproxy.addr.to_string());
}

#[tokio::test]
async fn a_header_written_a_byte_at_a_time_is_put_together_and_the_bytes_after_it_kept() {
    let up = TestUpstream::start(true).await;
    let node = start_node(proxy_config(test_config(&[&up]))).await;
    for (header, client_addr) in [
        (v1("192.0.2.7:41000", "10.0.0.1:7999"), "192.0.2.7:41000"),
        (v2("198.51.100.9:42000", "10.0.0.1:7999"), "198.51.100.9:42000"),
    ] {
        let mut tcp = TcpStream::connect(node.local_addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (last, head) = header.split_last().unwrap();
        for byte in head {
            tcp.write_all(&[*byte]).await.unwrap();
            // Paces the writer so that the node sees the bytes in separate reads (there is no
            // condition to await: the point is the node's reads, which the client cannot see).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The header's last byte and the client's first message in one write.
        tcp.write_all(&[&[*last], b"first message\n".as_slice()].concat()).await.unwrap();
        let mut c = client(tcp);
        assert_eq!(c.line().await, "first message");
        c.write(b"second\n").await;
        assert_eq!(c.line().await, "second");
        let info = opened_from(&up, client_addr.parse().unwrap()).await;
        assert_eq!(info.local_addr, "10.0.0.1:7999");
    }
}

#[tokio::test]
async fn sockets_without_a_valid_header_are_closed_and_nobody_else_notices() {
    let up = TestUpstream::start(true).await;
    let admin = AdminNode::start(proxy_config(test_config(&[&up]))).await;
    let addr = admin.node.local_addr();
    let closed = r#"ppp_sockets_closed_total{reason="proxy_protocol"}"#;
    let before = admin.metric(closed).await;
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&v1("192.0.2.1:40000", "10.0.0.1:7999")).await.unwrap();
    let mut good = client(good);
    good.write(b"hello\n").await;
    assert_eq!(good.line().await, "hello");

    let started = Instant::now();
    let mut at_once = Vec::new();
    let oversized = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    let mut huge_v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge_v2.extend([0x21, 0x11, 0xff, 0xff]);
    for bytes in [b"hello without a header\n".to_vec(), vec![0x16, 0x03, 0x01, 0x00, 0x05], oversized, huge_v2] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        at_once.push(tcp);
    }
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PROXY TCP4 192.0.2.").await.unwrap();
    for tcp in &mut at_once {
        assert!(wait_closed(tcp).await.is_empty(), "nothing is written to a refused socket");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "bad headers are refused at once");
    good.write(b"meanwhile\n").await;
    assert_eq!(good.line().await, "meanwhile");
    for mut tcp in [silent, partial] {
        wait_closed(&mut tcp).await;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4500) && took < Duration::from_secs(8), "closed after {took:?}");
    assert!(admin.metric(closed).await - before >= 6.0);
    good.write(b"still here\n").await;
    assert_eq!(good.line().await, "still here");
    assert_eq!(opened_infos(&up).len(), 1, "a refused socket is never opened");
}

#[tokio::test]
async fn a_peer_outside_proxy_from_is_closed_even_with_a_valid_header() {
    let up = TestUpstream::start(true).await;
    let config = Config { proxy_from: vec!["10.0.0.0/8".parse().unwrap()], ..proxy_config(test_config(&[&up])) };
    let admin = AdminNode::start(config).await;
    let untrusted = r#"ppp_proxy_headers_total{outcome="untrusted"}"#;
    let before = admin.metric(untrusted).await;
    let mut tcp = TcpStream::connect(admin.node.local_addr()).await.unwrap();
    tcp.write_all(&[v2("192.0.2.1:40000", "10.0.0.1:7999"), b"hello\n".to_vec()].concat()).await.unwrap();
    assert!(wait_closed(&mut tcp).await.is_empty());
    assert!(admin.metric(untrusted).await > before);
    assert!(opened_infos(&up).is_empty());
}

#[tokio::test]
async fn the_proxy_header_comes_first_then_tls() {
    let up = TestUpstream::start(true).await;
    let ca = TestCa::new();
    ca.write();
    let (cert, key) = ca.paths();
    let config = Config { tls_cert: Some(cert), tls_key: Some(key), ..proxy_config(test_config(&[&up])) };
    let node = start_node(config).await;
    let connector = ca.connector(&[&TLS13]);

    // A raw client: the header, then the handshake on the same socket.
    let mut tcp = TcpStream::connect(node.local_addr()).await.unwrap();
    tcp.write_all(&v2("203.0.113.5:43000", "10.0.0.1:443")).await.unwrap();
    let mut c = TlsClient::over(tcp, &connector, DEVICE_NAME).await.unwrap();
    assert_eq!(c.echo("proxied and encrypted").await, "proxied and encrypted");
    let info = opened_from(&up, "203.0.113.5:43000".parse().unwrap()).await;
    assert_eq!((info.local_addr.as_str(), info.tls_server_name.as_str()), ("10.0.0.1:443", DEVICE_NAME));

    // And through HAProxy, which passes TLS through untouched.
    let haproxy = Haproxy::start(node.local_addr(), "send-proxy-v2").await;
    let mut c = TlsClient::connect(haproxy.addr, &connector, DEVICE_NAME).await;
    assert_eq!(c.echo("via haproxy").await, "via haproxy");
    assert_eq!(opened_from(&up, c.local_addr).await.tls_server_name, DEVICE_NAME);
}

#[tokio::test]
async fn random_headers_never_disturb_another_socket() {
    let up = TestUpstream::start(true).await;
    let node = start_node(proxy_config(test_config(&[&up]))).await;
    let addr = node.local_addr();
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&v1("192.0.2.1:40000", "10.0.0.1:7999")).await.unwrap();
    let mut good = client(good);
    for seed in 0..200u64 {
        let prefix: &[u8] = if seed % 2 == 0 { b"PROXY " } else { b"\r\n\r\n\0\r\nQUIT\n" };
        let bytes = [prefix, &noise(seed, (seed as usize * 7) % 300)].concat();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(&bytes).await;
        drop(tcp);
        if seed % 50 == 0 {
            good.write(format!("after {seed}\n").as_bytes()).await;
            assert_eq!(good.line().await, format!("after {seed}"));
        }
    }
    // Every socket's task ended cleanly (a panicking one would leave its socket in the table).
    let table = node.sockets().clone();
    eventually("only the good socket left", || table.len() == 1).await;
    good.write(b"the end\n").await;
    assert_eq!(good.line().await, "the end");
}
