//! The checks of `tests/cluster.rs` that hold on every Redis a cluster runs on ([`TestRedis`]):
//! each is one test's body, run by `tests/cluster.rs` on one `redis-server` and by
//! `tests/redis_cluster.rs` on a Redis Cluster. [`traffic`]: sockets registered under every key,
//! commands, labels, closes and broadcasts across nodes, a burst in order, the shared
//! round-robin; [`lifecycle`]: the shared upstream registry, a restart with the same id, a drain,
//! Redis losing its data, Redis paused; [`bus`]: one subscription per node, a node that does not
//! hear the bus is not ready, and a broadcast that misses a node fails with the count.
//!
//! Callers name them by path (`checks::a_drained_node_leaves_the_cluster_cleanly(&redis)`), so
//! a test and the check it runs can share a name.

pub mod bus;
pub mod lifecycle;
pub mod traffic;

use redis::{AsyncCommands, streams::StreamId};

// What `checks::…` names; a binary that runs none of them is not wrong.
#[allow(unused_imports)]
pub use self::{bus::*, lifecycle::*, traffic::*};
use super::{
    client::Client,
    node::start_node,
    topology::{K, TestRedis, cluster_config},
    upstream::TestUpstream,
};

/// Every entry of `K:events`, oldest first.
async fn events<R: TestRedis>(redis: &R) -> Vec<StreamId> {
    let events = redis.conn().await.xrange_all::<_, redis::streams::StreamRangeReply>(format!("{K}events")).await;
    events.unwrap().ids
}

/// Node `n1` with one socket, registered, streaming to an echo upstream: the upstream, the node,
/// the client and the socket's id.
async fn one_registered_socket<R: TestRedis>(redis: &R) -> (TestUpstream, ppp::Node, Client, String) {
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(redis, "n1", &[&up])).await;
    let client = Client::connect(&node).await;
    let id = up.wait_opened(1).await[0].clone();
    redis.wait_exists("registered", &format!("{K}socket:{id}")).await;
    (up, node, client, id)
}
