//! In-process nodes for tests: configs on loopback port 0 and a start that waits until the
//! node's upstreams are usable.

use std::time::Duration;

use ppp::{Node, config::Config};
use tokio::net::TcpListener;

use super::{upstream::TestUpstream, wait::eventually};

/// A config for tests: loopback, quick health checks, everything else default.
pub fn test_config(upstreams: &[&TestUpstream]) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some("test-node".to_owned()),
        upstream: upstreams.iter().map(|u| u.uri()).collect(),
        health_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Starts a node on a free port and waits until at least as many upstreams are usable as it has
/// configured (a `dns:///` one may be several).
pub async fn start_node(config: Config) -> Node {
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let expected = config.upstream.len();
    let node = Node::start(config, listener).await.unwrap();
    let pool = node.upstreams().clone();
    eventually("upstreams usable", || pool.snapshot().iter().filter(|u| u.is_usable()).count() >= expected).await;
    node
}
