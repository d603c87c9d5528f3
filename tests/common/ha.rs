//! What the Redis HA tests share (`tests/redis_sentinel.rs`, `tests/redis_cluster.rs`):
//! [`HaRedis`], a Redis that fails over (a Sentinel set or a Redis Cluster), nodes configured for
//! it, and the two scenarios each topology runs: the cluster at work ([`the_cluster_works`]:
//! commands and broadcasts across nodes with receipts, the admin API's cluster-wide listing, the
//! reaper) and a failover under load (`super::failover`).

use std::time::Duration;

use ppp::{
    config::Config,
    proto::{self, Status, upstream_command::Command},
};
use redis::AsyncCommands;
use tokio::time::Instant;

use super::{
    admin::AdminNode,
    client::Client,
    node_process::NodeProc,
    redis_cluster::RedisClusterSet,
    redis_sentinel::RedisSentinelSet,
    topology::{K, TestRedis, cluster_config},
    upstream::{TestUpstream, send_command, with_id},
    wait::eventually_async,
};

/// `--node-ttl` of the nodes under test: short, so the reaper test is quick, and so that a
/// failover gap well over it would get nodes reaped were it counted.
pub const NODE_TTL: Duration = Duration::from_secs(3);

/// A Redis that fails over.
#[allow(async_fn_in_trait)] // Only these tests use it, with static dispatch.
pub trait HaRedis: TestRedis {
    /// Kills (SIGKILL) the primary that holds the cluster's keys.
    async fn kill_primary(&mut self);
    /// Waits until Redis promoted a replica; returns when the replica said it was the primary,
    /// and when every Sentinel named it (every cluster node said the cluster was ok).
    async fn wait_promoted(&mut self) -> (Instant, Instant);
}

/// A node config for `redis`.
pub fn ha_config<R: HaRedis>(redis: &R, node_id: &str, upstreams: &[&TestUpstream]) -> Config {
    Config {
        node_ttl: NODE_TTL,
        // `last_seen` refreshed every 500 ms: `redis/touch.lua` runs on the topology too.
        idle_after: Duration::from_secs(2),
        ..cluster_config(redis, node_id, upstreams)
    }
}

/// The flags of a node process for `redis`, streaming to `upstream`.
pub fn ha_args<R: HaRedis>(redis: &R, upstream: &TestUpstream) -> Vec<String> {
    let mut args: Vec<String> = vec!["--redis-mode".into(), R::MODE.as_str().into(), "--node-ttl".into(), "3s".into()];
    args.extend(["--upstream".to_owned(), upstream.uri()]);
    args.extend(redis.urls().into_iter().flat_map(|url| ["--redis".to_owned(), url]));
    args
}

/// Connects a client to `node` and returns it with its socket's id (the `nth` socket the
/// upstream heard of, from 1).
async fn connect(node: &AdminNode, up: &TestUpstream, nth: usize) -> (Client, String) {
    let client = Client::connect(&node.node).await;
    let id = up.wait_opened(nth).await[nth - 1].clone();
    (client, id)
}

/// Two nodes with a socket each: commands and broadcasts reach sockets on the other node with
/// receipts, the admin API lists the whole cluster from either node, and a node killed with
/// SIGKILL is reaped (`closed`/`node_lost` in `K:events` and at the upstream).
pub async fn the_cluster_works<R: HaRedis>(redis: &R) {
    let up = TestUpstream::start(false).await;
    let n1 = AdminNode::start(ha_config(redis, "n1", &[&up])).await;
    let n2 = AdminNode::start(ha_config(redis, "n2", &[&up])).await;
    let (mut on_n1, first) = connect(&n1, &up, 1).await;
    let (mut on_n2, second) = connect(&n2, &up, 2).await;
    for id in [&first, &second] {
        redis.wait_exists("registered", &format!("{K}socket:{id}")).await;
    }
    // The upstream sends on n2's stream (the latest): `first` lives on n1.
    up.command(with_id("to-first", send_command(&first, "hello first"))).await;
    up.command(with_id("to-second", send_command(&second, "hello second"))).await;
    assert_eq!(on_n1.line().await, "hello first");
    assert_eq!(on_n2.line().await, "hello second");
    let broadcast = Command::Broadcast(proto::Broadcast { scope: 0, payload: "everyone".into(), ..Default::default() });
    up.command(with_id("all", broadcast)).await;
    assert_eq!((on_n1.line().await, on_n2.line().await), ("everyone".to_owned(), "everyone".to_owned()));
    up.wait_for("receipts", |_| up.results().len() == 3).await;
    assert!(up.results().iter().all(|r| r.status == Status::Ok as i32), "{:?}", up.results());

    let mut listed = n1.all_socket_ids("").await;
    listed.sort();
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(listed, both, "GET /v1/sockets lists the whole cluster");
    let nodes = n2.get("/v1/nodes").await.expect(200)["nodes"].clone();
    let node_ids: Vec<&str> = nodes.as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(node_ids, ["n1", "n2"]);
    let path = format!("/v1/sockets/{second}/messages");
    n1.send(n1.req(reqwest::Method::POST, &path).body("from n1's admin API\n")).await.expect(202);
    assert_eq!(on_n2.line().await, "from n1's admin API");

    a_killed_node_is_reaped(redis, &up).await;
}

/// A node process with one socket, killed with SIGKILL: the live nodes reap it once.
async fn a_killed_node_is_reaped<R: HaRedis>(redis: &R, up: &TestUpstream) {
    let args = ha_args(redis, up);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut victim = NodeProc::start("victim", &args, 1).await;
    let _client = tokio::net::TcpStream::connect(victim.listen).await.unwrap();
    let key = format!("{K}node:victim:sockets");
    eventually_async("the victim's socket registered", || async {
        redis.conn().await.scard::<_, usize>(&key).await.unwrap_or(0) == 1
    })
    .await;
    victim.kill();
    eventually_async("the victim reaped", || async {
        let events = redis.conn().await.xrange_all::<_, redis::streams::StreamRangeReply>(format!("{K}events")).await;
        let lost = events.map(|e| e.ids).unwrap_or_default().iter().any(|e| {
            e.get::<String>("reason").as_deref() == Some("node_lost")
                && e.get::<String>("node").as_deref() == Some("victim")
        });
        let beat: Option<i64> = redis.conn().await.zscore(format!("{K}nodes"), "victim").await.unwrap_or(None);
        lost && beat.is_none()
    })
    .await;
    up.wait_for("the victim's socket closed at the upstream", |_| up.closed().iter().any(|(_, r)| r == "node_lost"))
        .await;
}

impl HaRedis for RedisSentinelSet {
    async fn kill_primary(&mut self) {
        RedisSentinelSet::kill_primary(self);
    }

    async fn wait_promoted(&mut self) -> (Instant, Instant) {
        RedisSentinelSet::wait_promoted(self).await
    }
}

impl HaRedis for RedisClusterSet {
    async fn kill_primary(&mut self) {
        let slot = self.slot_of(&format!("{K}nodes")).await;
        let (_, replica) = self.kill_primary_of_slot(slot).await;
        self.failing_over = Some(replica);
    }

    async fn wait_promoted(&mut self) -> (Instant, Instant) {
        let replica = self.failing_over.take().expect("a primary was killed");
        RedisClusterSet::wait_promoted(self, replica).await
    }
}
