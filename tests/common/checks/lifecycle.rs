//! What the cluster keeps in Redis and how it comes back: the upstream registry shared by every
//! node, a restart with the same id, a drain, Redis losing its data, Redis paused.

use std::{collections::HashMap, time::Duration};

use ppp::proto;
use redis::AsyncCommands;

use super::{events, one_registered_socket};
use crate::common::{
    admin::AdminNode,
    client::Client,
    node::start_node,
    topology::{FaultRedis, K, TestRedis, cluster_config},
    upstream::TestUpstream,
    wait::eventually,
};

/// An upstream added through one node's admin API (`POST /v1/upstreams`) is in `K:upstreams`
/// and in every node's pool (`K:ch:control` tells them); one removed through another's
/// (`DELETE`) is gone everywhere.
pub async fn the_upstream_registry_is_shared_by_every_node<R: TestRedis>(redis: &R) {
    let a = TestUpstream::start(true).await;
    let n1 = AdminNode::start(cluster_config(redis, "n1", &[&a])).await;
    let n2 = AdminNode::start(cluster_config(redis, "n2", &[])).await;
    let (pool1, pool2) = (n1.node.upstreams().clone(), n2.node.upstreams().clone());
    let a_id = a.id();
    eventually("n2 learned a from the registry", || pool2.get(&a_id).is_some_and(|u| u.is_usable())).await;
    let b = TestUpstream::start(true).await;
    let body = serde_json::json!({ "id": "b", "uri": b.uri() });
    n2.json(reqwest::Method::POST, "/v1/upstreams", body).await.expect(201);
    eventually("n1 learned b", || pool1.get("b").is_some()).await;
    n1.delete(&format!("/v1/upstreams/{a_id}")).await.expect(204);
    eventually("n2 forgot a", || pool2.get(&a_id).is_none()).await;
    let registry: HashMap<String, String> = redis.conn().await.hgetall(format!("{K}upstreams")).await.unwrap();
    assert_eq!(registry, [("b".to_owned(), b.uri())].into(), "K:upstreams");
}

/// The previous run of `n1`, killed a moment ago and still registered with three sockets: the
/// new run reaps it first (a `closed`/`node_lost` for each), then registers its own.
pub async fn a_node_restarted_with_the_same_id_reaps_its_previous_run_first<R: TestRedis>(redis: &R) {
    let mut r = redis.conn().await;
    let _: () = r.zadd(format!("{K}nodes"), "n1", ppp::socket::unix_ms()).await.unwrap();
    let _: () = r.hset(format!("{K}node:n1"), "run_id", "the-old-run").await.unwrap();
    for s in ["old1", "old2", "old3"] {
        let _: () = r.sadd(format!("{K}node:n1:sockets"), s).await.unwrap();
        let _: () = r.hset(format!("{K}socket:{s}"), "node", "n1").await.unwrap();
    }
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(redis, "n1", &[&up])).await;
    let _c = Client::connect(&node).await;
    let new = up.wait_opened(1).await[0].clone();
    up.wait_for("the old run's closed", |_| up.closed().len() >= 3).await;
    let mut closed = up.closed();
    closed.sort();
    let lost = |s: &str| (s.to_owned(), "node_lost".to_owned());
    assert_eq!(closed, [lost("old1"), lost("old2"), lost("old3")]);
    redis.wait_exists("the new run's socket", &format!("{K}socket:{new}")).await;
    let members: Vec<String> = r.smembers(format!("{K}node:n1:sockets")).await.unwrap();
    assert_eq!(members, [new]);
    let run: String = r.hget(format!("{K}node:n1"), "run_id").await.unwrap();
    let hello = up.events().into_iter().find_map(|e| match e.event {
        Some(proto::node_event::Event::Hello(h)) => Some(h),
        _ => None,
    });
    assert_eq!(hello.map(|h| h.run_id), Some(run.clone()));
    assert_ne!(run, "the-old-run");
}

/// A node shut down (drained) closes its sockets with `shutdown` and leaves nothing behind.
pub async fn a_drained_node_leaves_the_cluster_cleanly<R: TestRedis>(redis: &R) {
    let (_up, node, mut c, _) = one_registered_socket(redis).await;
    node.shutdown().await;
    c.closed().await;
    let mut r = redis.conn().await;
    assert!(r.zscore::<_, _, Option<i64>>(format!("{K}nodes"), "n1").await.unwrap().is_none());
    assert!(!r.exists::<_, bool>(format!("{K}node:n1")).await.unwrap());
    assert_eq!(r.zcard::<_, usize>(format!("{K}sockets")).await.unwrap(), 0);
    assert!(events(redis).await.iter().any(|e| e.get::<String>("reason").as_deref() == Some("shutdown")));
}

/// Redis emptied under a node (`FLUSHALL` on every primary): the node registers its socket again
/// from its own truth, and seeds the registry again rather than obey an empty one.
pub async fn after_redis_loses_its_data_the_node_registers_its_sockets_and_the_registry_again<R: FaultRedis>(
    redis: &R,
) {
    let (up, node, mut c, id) = one_registered_socket(redis).await;
    let key = format!("{K}socket:{id}");
    let before: Vec<String> = events(redis).await.into_iter().map(|e| e.id).collect();
    redis.flush_all().await;
    // The next heartbeat finds the node missing from K:nodes and resyncs from its own truth.
    redis.wait_exists("socket registered again", &key).await;
    let after = events(redis).await;
    assert!(after.iter().all(|e| !before.contains(&e.id)), "Redis kept its data: {before:?}");
    let mut r = redis.conn().await;
    let members: Vec<String> = r.smembers(format!("{K}node:n1:sockets")).await.unwrap();
    assert_eq!(members, [id]);
    // A registry change makes every node re-read it: the empty registry is seeded again, not obeyed.
    redis.publish(&format!("{K}ch:control"), &[]).await;
    node.add_upstream(Some("probe".into()), up.uri()).await.unwrap();
    node.remove_upstream("probe").await.unwrap();
    let upstreams: HashMap<String, String> = r.hgetall(format!("{K}upstreams")).await.unwrap();
    assert_eq!(upstreams.get(&up.id()), Some(&up.uri()), "{upstreams:?}");
    c.write(b"still served\n").await;
    assert_eq!(c.line().await, "still served");
}

/// Redis frozen (SIGSTOP) under a node: sockets open and are served at once, the node says it is
/// not ready, and once Redis answers again it is ready and has registered what opened meanwhile.
pub async fn a_paused_redis_stalls_nothing_and_the_node_catches_up<R: FaultRedis>(redis: &R) {
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(redis, "n1", &[&up])).await;
    let mut c = Client::connect(&node).await;
    up.wait_opened(1).await;
    eventually("ready", || node.is_ready()).await;
    redis.pause().await;
    let started = tokio::time::Instant::now();
    let mut during = Client::connect(&node).await;
    let during_id = up.wait_opened(2).await[1].clone();
    for i in 0..20 {
        c.write(format!("p{i}\n").as_bytes()).await;
        assert_eq!(c.line().await, format!("p{i}"));
    }
    during.write(b"x\n").await;
    assert_eq!(during.line().await, "x");
    assert!(started.elapsed() < Duration::from_secs(2), "the data path waited for Redis");
    // Cut off from its cluster, the node says it is not ready (and serves on).
    eventually("not ready while Redis is paused", || !node.is_ready()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.resume();
    eventually("ready again", || node.is_ready()).await;
    redis.wait_exists("socket opened during the pause registered", &format!("{K}socket:{during_id}")).await;
}
