//! Stock gRPC servers as upstreams, with no setting asked of them (DESIGN §3, "Works with every
//! stock gRPC server"): the Python example on grpcio's asyncio server with default options, and
//! the Go example on `grpc.NewServer()` with no options, each its own process. grpcio and grpc-go
//! send response headers only with their first message, and their default ping policy allows one
//! ping without data per 5 minutes: the node must neither wait for the headers nor ping more.
//!
//! For each language: echo within a second of the node's start; a quiet stream with
//! `--health-interval 60s` is never reset over 75 s (one `hello`); two upstreams split
//! round-robin evenly; `send` to another socket, `broadcast`, `set_labels` with a receipt and
//! `close` work.

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::{
    external::{ExternalUpstream, Lang},
    *,
};
use ppp::{Node, config::Config};
use tokio::net::TcpListener;

/// A node config for stock upstreams: loopback, their URIs, the default health interval.
fn config(upstreams: &[&ExternalUpstream]) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some("interop-node".to_owned()),
        upstream: upstreams.iter().map(|u| u.uri()).collect(),
        drain_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// The socket id in a `/whoami` answer (`you are <id>, seq …`).
fn whoami_id(answer: &str) -> String {
    let rest = answer.strip_prefix("you are ").unwrap_or_else(|| panic!("not a /whoami answer: {answer}"));
    rest.split(',').next().unwrap_or_default().to_owned()
}

async fn echo_within_a_second_of_start(lang: Lang) {
    let up = ExternalUpstream::start(lang, lang.name()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let node = Node::start(config(&[&up]), listener).await.unwrap();
    let mut c = Client::connect(&node).await;
    c.write(b"hello stock server\n").await;
    assert_eq!(c.line().await, "hello stock server");
    let took = started.elapsed();
    // Before the node stopped waiting for response headers, a grpcio or grpc-go upstream never
    // got a message (the node gave the stream up after 5 s, again and again).
    assert!(took < Duration::from_secs(1), "{lang:?}: the first echo took {took:?}:\n{}", up.log());
    assert_eq!(up.hellos(), 1, "{lang:?}: one stream:\n{}", up.log());
}

#[tokio::test]
async fn python_echoes_within_a_second_of_start() {
    echo_within_a_second_of_start(Lang::Python).await;
}

#[tokio::test]
async fn go_echoes_within_a_second_of_start() {
    echo_within_a_second_of_start(Lang::Go).await;
}

/// One silent socket for 75 s on a node that checks health once a minute: with the node's old
/// 10 s keepalive, grpc-go ended the connection after ~40 s (`too_many_pings`).
async fn a_quiet_stream_is_never_reset(lang: Lang) {
    let up = ExternalUpstream::start(lang, lang.name()).await;
    let node = start_node(Config { health_interval: Duration::from_secs(60), ..config(&[&up]) }).await;
    let mut c = Client::connect(&node).await;
    c.write(b"before\n").await;
    assert_eq!(c.line().await, "before");
    let pool = node.upstreams().clone();
    let quiet_until = Instant::now() + Duration::from_secs(75);
    while Instant::now() < quiet_until {
        let upstream = &pool.snapshot()[0];
        assert!(upstream.is_open(), "{lang:?}: the stream broke: {:?}\n{}", upstream.last_error(), up.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.write(b"after\n").await;
    assert_eq!(c.line().await, "after");
    assert_eq!(up.hellos(), 1, "{lang:?}: the stream was opened again:\n{}", up.log());
    assert_eq!(pool.snapshot()[0].last_error(), None, "{lang:?}");
}

#[tokio::test]
async fn quiet_streams_to_stock_servers_are_never_reset() {
    // Both languages at once: the 75 s are the test's point, not its cost.
    tokio::join!(a_quiet_stream_is_never_reset(Lang::Python), a_quiet_stream_is_never_reset(Lang::Go));
}

async fn two_upstreams_split_round_robin_evenly(lang: Lang) {
    let a = ExternalUpstream::start(lang, &format!("{}-a", lang.name())).await;
    let b = ExternalUpstream::start(lang, &format!("{}-b", lang.name())).await;
    let node = start_node(config(&[&a, &b])).await;
    let mut c = Client::connect(&node).await;
    let n = 200;
    c.write("/whoami\n".repeat(n).as_bytes()).await;
    let (mut by_a, mut by_b) = (0usize, 0usize);
    for _ in 0..n {
        let answer = c.line().await;
        match answer.rsplit_once(' ').map(|(_, name)| name) {
            Some(name) if name == format!("({})", a.name) => by_a += 1,
            Some(name) if name == format!("({})", b.name) => by_b += 1,
            _ => panic!("{lang:?}: not a /whoami answer: {answer}"),
        }
    }
    // Each event goes to the next upstream: the socket's `opened` took one turn.
    assert!(by_a.abs_diff(by_b) <= 2, "{lang:?}: {by_a} answers from {}, {by_b} from {}", a.name, b.name);
}

#[tokio::test]
async fn two_python_upstreams_split_round_robin_evenly() {
    two_upstreams_split_round_robin_evenly(Lang::Python).await;
}

#[tokio::test]
async fn two_go_upstreams_split_round_robin_evenly() {
    two_upstreams_split_round_robin_evenly(Lang::Go).await;
}

async fn commands_work(lang: Lang) {
    let up = ExternalUpstream::start(lang, lang.name()).await;
    let node = start_node(config(&[&up])).await;
    let mut a = Client::connect(&node).await;
    let mut b = Client::connect(&node).await;
    a.write(b"/whoami\n").await;
    let a_id = whoami_id(&a.line().await);
    b.write(b"/whoami\n").await;
    let b_id = whoami_id(&b.line().await);

    // `send` to another socket, with a receipt.
    a.write(format!("/to {b_id} hi there\n").as_bytes()).await;
    assert_eq!(b.line().await, format!("from {a_id}: hi there"));
    let receipt = a.line().await;
    assert!(receipt.starts_with("receipt ") && receipt.contains("STATUS_OK"), "{lang:?}: {receipt}");

    // `broadcast`: both sockets.
    a.write(b"/broadcast lunch?\n").await;
    assert_eq!(a.line().await, format!("broadcast from {a_id}: lunch?"));
    assert_eq!(b.line().await, format!("broadcast from {a_id}: lunch?"));

    // `set_labels` with a receipt; the labels travel with the next message.
    b.write(b"/label user=ada\n").await;
    let receipt = b.line().await;
    assert!(receipt.starts_with("receipt ") && receipt.contains("STATUS_OK"), "{lang:?}: {receipt}");
    b.write(b"/whoami\n").await;
    let answer = b.line().await;
    assert!(answer.contains("labels [user=ada]"), "{lang:?}: {answer}");

    // A receipt that says no: an unknown socket.
    a.write(b"/to 0190-bad hi\n").await;
    let receipt = a.line().await;
    assert!(receipt.contains("STATUS_FAILED"), "{lang:?}: {receipt}");

    // `close`: the node closes the socket.
    a.write(b"/close\n").await;
    assert!(a.closed().await.is_empty(), "{lang:?}: nothing after the close");
    b.write(b"still here\n").await;
    assert_eq!(b.line().await, "still here");
}

#[tokio::test]
async fn python_upstream_commands_work() {
    commands_work(Lang::Python).await;
}

#[tokio::test]
async fn go_upstream_commands_work() {
    commands_work(Lang::Go).await;
}

/// The 30-line upstreams `docs/protocol.md` quotes work as quoted.
async fn a_minimal_upstream_echoes(lang: Lang) {
    let up = ExternalUpstream::start(lang, lang.name()).await;
    let node = start_node(config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    c.write(b"one\ntwo\n").await;
    assert_eq!(c.line().await, "one", "{lang:?}:\n{}", up.log());
    assert_eq!(c.line().await, "two");
}

#[tokio::test]
async fn the_minimal_python_upstream_of_the_docs_echoes() {
    a_minimal_upstream_echoes(Lang::PythonMinimal).await;
}

#[tokio::test]
async fn the_minimal_rust_upstream_of_the_docs_echoes() {
    a_minimal_upstream_echoes(Lang::RustMinimal).await;
}
