//! The bus as readiness and receipts see it: each node has exactly one subscription to the
//! broadcast channel; a node that does not hear the bus is not ready, and a broadcast meanwhile
//! answers `STATUS_FAILED` with how many nodes it reached (the admin API: 503) rather than OK;
//! a member that died and is not reaped yet is named as the reason.
//!
//! A node's subscription is taken away the way a failover takes it, but for that node only and
//! for as long as the test wants: its Redis user loses the broadcast channel (`ACL SETUSER …
//! resetchannels`), so Redis disconnects its subscription and refuses a new one until the
//! channel is given back. A runtime settings change published meanwhile (on the control
//! channel, taken away the same way) reaches the node once it is back.

use std::time::Duration;

use ppp::{
    config::Config,
    proto::{self, CommandResult, Status, upstream_command::Command},
};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{
    admin::{AdminNode, Answer},
    client::Client,
    topology::{FaultRedis, K, TestRedis, cluster_config, urls_as},
    upstream::{TestUpstream, with_id},
    wait::eventually_async,
};

/// The series that counts failed broadcasts.
const FAILED_BROADCASTS: &str = "ppp_commands_total{command=\"broadcast\",status=\"failed\"}";

/// A broadcast of `payload` to every socket.
fn everyone(payload: &str) -> Command {
    Command::Broadcast(proto::Broadcast { scope: 0, payload: payload.to_owned().into(), ..Default::default() })
}

/// The receipt of the command `id`, once it is there.
async fn receipt(up: &TestUpstream, id: &str) -> CommandResult {
    up.wait_for(id, |_| up.results().iter().any(|r| r.command_id == id)).await;
    up.results().into_iter().find(|r| r.command_id == id).unwrap()
}

/// `POST /v1/broadcast` of `payload` on `node`.
async fn admin_broadcast(node: &AdminNode, payload: &str) -> Answer {
    node.json(Method::POST, "/v1/broadcast", json!({ "payload": payload })).await
}

/// Waits until every node answers `/readyz` with 200 and `K:nodes` lists `count` members.
async fn all_ready<R: TestRedis>(redis: &R, nodes: &[&AdminNode], count: usize) {
    for node in nodes {
        eventually_async("ready", || async { node.get("/readyz").await.status == 200 }).await;
    }
    eventually_async("every node in K:nodes", || async {
        redis.conn().await.zcard::<_, usize>(format!("{K}nodes")).await.unwrap_or(0) == count
    })
    .await;
}

/// Three nodes with a socket each; n3's Redis user loses the broadcast channel: n3 is not ready,
/// a broadcast from n2 (through the upstream) gets `STATUS_FAILED` "reached 2 of 3 nodes" and
/// one from n1's admin API a 503 saying so, both counted; n3's socket never gets them. With
/// the channel back, n3 subscribes again, is ready, and broadcasts are OK on all three, and
/// stay OK while n3 drains and leaves.
pub async fn a_broadcast_that_misses_a_node_fails_with_the_count_and_that_node_is_not_ready<R: FaultRedis>(redis: &R) {
    let broadcast_channel = format!("{K}ch:broadcast");
    redis.acl(&["SETUSER", "n3", "on", ">n3-secret", "~*", "&*", "+@all"]).await;
    let up = TestUpstream::start(false).await;
    let as_n3 = Config { redis: urls_as(redis.urls(), "n3", "n3-secret"), ..cluster_config(redis, "n3", &[&up]) };
    // Started first, so the upstream's latest stream (on which it sends) is n2's.
    let n3 = AdminNode::start(as_n3).await;
    let n1 = AdminNode::start(cluster_config(redis, "n1", &[&up])).await;
    let n2 = AdminNode::start(cluster_config(redis, "n2", &[&up])).await;
    let mut clients = Vec::new();
    for (i, node) in [&n1, &n2, &n3].into_iter().enumerate() {
        clients.push(Client::connect(&node.node).await);
        up.wait_opened(i + 1).await;
    }
    all_ready(redis, &[&n1, &n2, &n3], 3).await;
    assert_eq!(redis.subscribers(&broadcast_channel).await, 3, "exactly one subscription per node");
    up.command(with_id("before", everyone("before"))).await;
    for c in &mut clients {
        assert_eq!(c.line().await, "before");
    }
    assert_eq!(receipt(&up, "before").await.status, Status::Ok as i32);

    let channels = [&format!("&{K}ch:node:*"), &format!("&{K}ch:control")];
    redis.acl(&["SETUSER", "n3", "resetchannels", channels[0], channels[1]]).await;
    eventually_async("n3 not ready", || async { n3.get("/readyz").await.status == 503 }).await;
    assert!(n3.get("/readyz").await.text.contains("bus"), "{}", n3.get("/readyz").await.text);
    assert_eq!(redis.subscribers(&broadcast_channel).await, 2);
    for node in [&n1, &n2] {
        node.get("/readyz").await.expect(200);
    }
    let failed_before = n1.metric(FAILED_BROADCASTS).await;
    up.command(with_id("gap", everyone("in the gap"))).await;
    let gap = receipt(&up, "gap").await;
    assert_eq!(gap.status, Status::Failed as i32, "{gap:?}");
    assert!(gap.detail.contains("the broadcast reached 2 of 3 nodes"), "{}", gap.detail);
    let answer = admin_broadcast(&n1, "admin in the gap").await;
    answer.expect(503);
    assert!(answer.json["error"].as_str().unwrap().contains("reached 2 of 3 nodes"), "{}", answer.text);
    for c in &mut clients[..2] {
        assert_eq!((c.line().await, c.line().await), ("in the gap".to_owned(), "admin in the gap".to_owned()));
    }
    let counted = n1.metric(FAILED_BROADCASTS).await - failed_before;
    assert!(counted >= 2.0, "{counted} failed broadcasts counted");

    redis.acl(&["SETUSER", "n3", "allchannels"]).await;
    eventually_async("n3 ready again", || async { n3.get("/readyz").await.status == 200 }).await;
    assert_eq!(redis.subscribers(&broadcast_channel).await, 3, "one subscription per node again");
    up.command(with_id("after", everyone("after"))).await;
    assert_eq!(receipt(&up, "after").await.status, Status::Ok as i32);
    admin_broadcast(&n1, "admin after").await.expect(202);
    // n3's socket never got the broadcasts it missed: these are its next lines.
    for c in &mut clients {
        assert_eq!((c.line().await, c.line().await), ("after".to_owned(), "admin after".to_owned()));
    }
    broadcasts_stay_ok_while_a_node_leaves(redis, n3, &n1).await;
}

/// Broadcasts from `from` while `leaving` (n3) drains and leaves the cluster: it leaves
/// `K:nodes` before it stops hearing the bus, so every one is OK; and no snapshot of the server
/// (its subscriptions and `K:nodes` in one `MULTI`) shows n3 a member without its subscription.
async fn broadcasts_stay_ok_while_a_node_leaves<R: TestRedis>(redis: &R, leaving: AdminNode, from: &AdminNode) {
    let done = CancellationToken::new();
    let left = tokio::spawn({
        let done = done.clone();
        async move {
            leaving.node.shutdown().await;
            done.cancel();
        }
    });
    let broadcasting = async {
        let mut statuses = Vec::new();
        while !done.is_cancelled() {
            let answer = admin_broadcast(from, "while n3 leaves").await;
            statuses.push((answer.status, answer.text));
        }
        statuses
    };
    let (mut statuses, ()) = tokio::join!(broadcasting, never_a_member_without_its_subscription(redis, &done));
    left.await.unwrap();
    statuses.push((admin_broadcast(from, "n3 gone").await.status, String::new()));
    assert!(statuses.iter().all(|(status, _)| *status == 202), "{statuses:?}");
}

/// Until `done`, snapshots (one `MULTI`) the broadcast channel's subscriptions and whether n3 is
/// in `K:nodes`: n3 must never be seen a member with only the other two subscribed.
async fn never_a_member_without_its_subscription<R: TestRedis>(redis: &R, done: &CancellationToken) {
    let mut c = redis.keys_server().await;
    let mut snapshot = redis::pipe();
    snapshot.atomic().add_command(R::numsub(&format!("{K}ch:broadcast"))).zscore(format!("{K}nodes"), "n3");
    while !done.is_cancelled() {
        let (counts, member): (Vec<(String, usize)>, Option<i64>) = snapshot.query_async(&mut c).await.unwrap();
        let subscribed = counts.first().map_or(0, |(_, n)| *n);
        assert!(subscribed == 3 || member.is_none(), "n3 in K:nodes with {subscribed} subscriptions");
        tokio::task::yield_now().await;
    }
}

/// A member that stopped beating (its subscription gone with it) makes broadcasts fail, the
/// detail naming it once its heartbeat has stood still for three seconds, until it is reaped;
/// then they are OK again.
pub async fn a_broadcast_fails_naming_a_dead_node_until_it_is_reaped<R: TestRedis>(redis: &R) {
    let up = TestUpstream::start(false).await;
    let config = |id: &str| Config { node_ttl: Duration::from_secs(6), ..cluster_config(redis, id, &[&up]) };
    let n1 = AdminNode::start(config("n1")).await;
    let n2 = AdminNode::start(config("n2")).await;
    all_ready(redis, &[&n1, &n2], 2).await;
    admin_broadcast(&n1, "two nodes").await.expect(202);

    let _: () = redis.conn().await.zadd(format!("{K}nodes"), "ghost", ppp::socket::unix_ms()).await.unwrap();
    let answer = admin_broadcast(&n1, "ghost not heard").await;
    answer.expect(503);
    assert!(answer.text.contains("the broadcast reached 2 of 3 nodes"), "{}", answer.text);
    eventually_async("the detail names the silent member", || async {
        let answer = admin_broadcast(&n1, "ghost silent").await;
        answer.status == 503 && answer.text.contains("ghost (no heartbeat for")
    })
    .await;
    eventually_async("the ghost reaped", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>(format!("{K}nodes"), "ghost").await.unwrap().is_none()
    })
    .await;
    admin_broadcast(&n1, "two nodes again").await.expect(202);
    admin_broadcast(&n2, "from n2 too").await.expect(202);
}

/// `PATCH /v1/runtime` on `node`, cluster-wide or on that node alone.
async fn patch_runtime(node: &AdminNode, cluster: bool, patch: serde_json::Value) {
    let path = if cluster { "/v1/runtime?cluster=true" } else { "/v1/runtime" };
    node.json(Method::PATCH, path, patch).await.expect(200);
}

/// A cluster-wide runtime settings change made while n2's subscription is down (its Redis user
/// loses the control channel) is not heard by n2 then, and reaches it once it subscribes again,
/// from `K:runtime`; a setting n2 changed for itself alone stays; a node started after the
/// changes starts from its own flags, and follows the next one, as every node follows one made
/// after Redis lost its data.
pub async fn a_runtime_change_made_while_a_node_was_off_the_bus_reaches_it_when_it_is_back<R: FaultRedis>(redis: &R) {
    redis.acl(&["SETUSER", "n2", "on", ">n2-secret", "~*", "&*", "+@all"]).await;
    let up = TestUpstream::start(false).await;
    let n1 = AdminNode::start(cluster_config(redis, "n1", &[&up])).await;
    let as_n2 = Config { redis: urls_as(redis.urls(), "n2", "n2-secret"), ..cluster_config(redis, "n2", &[&up]) };
    let n2 = AdminNode::start(as_n2).await;
    all_ready(redis, &[&n1, &n2], 2).await;
    let flags = n2.get("/v1/runtime").await.json;
    patch_runtime(&n1, true, json!({"balance": "sticky"})).await;
    eventually_async("n2 hears the change", || async { n2.get("/v1/runtime").await.json["balance"] == "sticky" }).await;
    patch_runtime(&n2, false, json!({"idle_timeout": "1m"})).await;

    let channels = [&format!("&{K}ch:node:*"), &format!("&{K}ch:broadcast")];
    redis.acl(&["SETUSER", "n2", "resetchannels", channels[0], channels[1]]).await;
    eventually_async("n2 off the bus", || async { n2.get("/readyz").await.status == 503 }).await;
    patch_runtime(&n1, true, json!({"idle_after": "5s", "max_connections": 777})).await;
    assert_eq!(n1.get("/v1/runtime").await.json["idle_after"], "5s");
    let unheard = n2.get("/v1/runtime").await.json;
    assert_eq!(
        (&unheard["idle_after"], &unheard["max_connections"]),
        (&flags["idle_after"], &flags["max_connections"])
    );

    redis.acl(&["SETUSER", "n2", "allchannels"]).await;
    eventually_async("n2 back on the bus", || async { n2.get("/readyz").await.status == 200 }).await;
    eventually_async("n2 caught up", || async {
        let r = n2.get("/v1/runtime").await.json;
        r["idle_after"] == "5s" && r["max_connections"] == 777
    })
    .await;
    let caught_up = n2.get("/v1/runtime").await.json;
    assert_eq!((&caught_up["balance"], &caught_up["idle_timeout"]), (&json!("sticky"), &json!("1m")), "{caught_up}");
    let stored: std::collections::HashMap<String, String> =
        redis.conn().await.hgetall(format!("{K}runtime")).await.unwrap();
    assert_eq!((stored["version"].as_str(), stored["idle_after"].as_str()), ("2", "5s"), "{stored:?}");
    assert_eq!((stored["idle_after:version"].as_str(), stored["changed_by"].as_str()), ("2", "n1"));

    let n3 = AdminNode::start(cluster_config(redis, "n3", &[&up])).await;
    all_ready(redis, &[&n1, &n2, &n3], 3).await;
    assert_eq!(n3.get("/v1/runtime").await.json, flags, "a node starts from its own flags");
    patch_runtime(&n2, true, json!({"log_filter": "info,ppp=debug"})).await;
    for node in [&n1, &n3] {
        eventually_async("the next change reaches every node", || async {
            node.get("/v1/runtime").await.json["log_filter"] == "info,ppp=debug"
        })
        .await;
    }
    assert_eq!(n3.get("/v1/runtime").await.json["idle_after"], flags["idle_after"], "only what changed");

    // Redis loses its data: the next change starts K:runtime anew (version 1, a new epoch), and
    // still reaches every node, though each saw version 3 of the old one.
    redis.flush_all().await;
    patch_runtime(&n1, true, json!({"idle_after": "3s"})).await;
    for node in [&n2, &n3] {
        eventually_async("a change after Redis lost its data reaches every node", || async {
            node.get("/v1/runtime").await.json["idle_after"] == "3s"
        })
        .await;
    }
    let version: String = redis.conn().await.hget(format!("{K}runtime"), "version").await.unwrap();
    assert_eq!(version, "1");
}
