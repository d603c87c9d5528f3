//! The admin API in cluster mode: two nodes and a real `redis-server`. Every answer is
//! cluster-wide: node 1 lists, reads and commands the sockets node 2 holds.

#[allow(dead_code)]
mod common;

use common::*;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;

fn admin_config(redis: &RedisServer, node: &str, up: &TestUpstream) -> ppp::config::Config {
    // `last_seen` and the counters reach Redis every quarter of --idle-after.
    ppp::config::Config { idle_after: std::time::Duration::from_secs(1), ..cluster_config(redis, node, &[up]) }
}

async fn two_nodes() -> (RedisServer, TestUpstream, AdminNode, AdminNode) {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let n1 = AdminNode::start(admin_config(&redis, "n1", &up)).await;
    let n2 = AdminNode::start(admin_config(&redis, "n2", &up)).await;
    (redis, up, n1, n2)
}

#[tokio::test]
async fn a_socket_on_another_node_is_listed_read_and_commanded() {
    let (redis, up, n1, n2) = two_nodes().await;
    let mut c = Client::connect(&n2.node).await;
    let id = up.wait_opened(1).await[0].clone();
    redis.wait_exists("socket hash", &format!("ppp:{{default}}:socket:{id}")).await;
    c.write(b"hi\n").await;
    assert_eq!(c.line().await, "hi");

    // Listed and read from node 1, as Redis knows it.
    assert_eq!(n1.all_socket_ids("?node=n2").await, vec![id.clone()]);
    assert!(n1.all_socket_ids("?node=n1").await.is_empty());
    let path = format!("/v1/sockets/{id}");
    let s = n1.get(&path).await;
    let s = s.expect(200);
    assert_eq!(s["node"], "n2");
    assert_eq!(s["remote_addr"], c.writer.local_addr().unwrap().to_string());
    assert_eq!(s["local_addr"], n2.node.local_addr().to_string());
    eventually_async("counters in Redis", || async {
        let s = n1.get(&path).await.json;
        s["messages_in"] == 1 && s["messages_out"] == 1 && s["bytes_in"] == 2
    })
    .await;

    // Commands from node 1 reach the socket on node 2.
    n1.send(n1.req(Method::POST, &format!("{path}/messages")).body("from n1")).await.expect(202);
    assert_eq!(c.line().await, "from n1");
    n1.json(Method::PATCH, &format!("{path}/labels"), json!({"user": "ada"})).await.expect(202);
    eventually_async("label in the listing", || async {
        n1.all_socket_ids("?label=user=ada").await == vec![id.clone()]
    })
    .await;
    assert_eq!(n1.get(&path).await.json["labels"], json!({"user": "ada"}));
    n1.delete(&path).await.expect(202);
    c.closed().await;
    up.wait_for("closed admin", |_| up.closed().contains(&(id.clone(), "admin".to_owned()))).await;
    eventually_async("gone from the cluster", || async { n1.get(&path).await.status == 404 }).await;
    n1.delete(&path).await.expect(404);
    n1.send(n1.req(Method::POST, &format!("{path}/messages")).body("x")).await.expect(404);
}

#[tokio::test]
async fn nodes_states_and_broadcasts_are_cluster_wide() {
    let (_redis, up, n1, n2) = two_nodes().await;
    let mut a = Client::connect(&n1.node).await;
    let mut b = Client::connect(&n2.node).await;
    let ids = up.wait_opened(2).await;
    eventually_async("both listed", || async { n2.all_socket_ids("").await.len() == 2 }).await;
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(n2.all_socket_ids("?limit=1").await, sorted);

    let nodes = n1.get("/v1/nodes").await;
    let nodes = nodes.expect(200)["nodes"].as_array().unwrap().clone();
    let names: Vec<_> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2"]);
    assert_eq!(nodes[1]["admin"], n2.base.trim_start_matches("http://"));
    assert!(nodes.iter().all(|n| n["heartbeat_age_ms"].as_i64().unwrap() < 10_000 && n["draining"] == false));

    // State from Redis: b talks, a stays silent past --idle-after (1 s).
    b.write(b"x\n").await;
    assert_eq!(b.line().await, "x");
    let start = tokio::time::Instant::now();
    loop {
        b.write(b"y\n").await;
        b.line().await;
        let inactive = n1.all_socket_ids("?state=inactive").await;
        let active = n1.all_socket_ids("?state=active").await;
        if inactive.len() == 1 && active.len() == 1 && active[0] != inactive[0] {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "a inactive, b active: {inactive:?} {active:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    n1.json(Method::POST, "/v1/broadcast", json!({"payload": "everyone"})).await.expect(202);
    assert_eq!(a.line().await, "everyone");
    assert_eq!(b.line().await, "everyone");
}

#[tokio::test]
async fn upstreams_and_runtime_settings_are_cluster_wide() {
    let (redis, _up, n1, n2) = two_nodes().await;
    let second = TestUpstream::start(true).await;
    n1.json(Method::POST, "/v1/upstreams", json!({"id": "second", "uri": second.uri()})).await.expect(201);
    eventually_async("n2 streams to the new upstream", || async {
        let list = n2.get("/v1/upstreams").await.json;
        list["upstreams"].as_array().unwrap().iter().any(|u| u["id"] == "second" && u["ready"] == true)
    })
    .await;
    let registry: std::collections::HashMap<String, String> =
        redis.conn().await.hgetall("ppp:{default}:upstreams").await.unwrap();
    assert_eq!(registry["second"], second.uri());
    n1.delete("/v1/upstreams/second").await.expect(204);
    eventually("n2 stops streaming to it", || n2.node.upstreams().get("second").is_none()).await;

    // Without ?cluster=true only the node asked changes; with it, every node.
    n1.json(Method::PATCH, "/v1/runtime", json!({"idle_after": "7s"})).await.expect(200);
    assert_eq!(n2.get("/v1/runtime").await.json["idle_after"], "1s");
    n1.json(Method::PATCH, "/v1/runtime?cluster=true", json!({"idle_after": "5s", "balance": "sticky"}))
        .await
        .expect(200);
    eventually_async("n2 took the change", || async {
        let r = n2.get("/v1/runtime").await.json;
        r["idle_after"] == "5s" && r["balance"] == "sticky"
    })
    .await;
    assert_eq!(n1.get("/v1/runtime").await.json["idle_after"], "5s");
    n1.json(Method::PATCH, "/v1/runtime?cluster=maybe", json!({})).await.expect(400);
}

#[tokio::test]
async fn an_unreachable_owner_or_redis_is_a_503() {
    let (mut redis, _up, n1, _n2) = two_nodes().await;
    // A socket Redis says a node holds that no longer listens.
    let ghost = "0190b3a1-0000-7000-8000-00000000abcd";
    let _: () = redis.conn().await.hset(format!("ppp:{{default}}:socket:{ghost}"), "node", "ghost").await.unwrap();
    let path = format!("/v1/sockets/{ghost}");
    n1.send(n1.req(Method::POST, &format!("{path}/messages")).body("x")).await.expect(503);
    n1.delete(&path).await.expect(503);
    n1.json(Method::PATCH, &format!("{path}/labels"), json!({"a": "b"})).await.expect(503);
    assert_eq!(n1.get(&path).await.expect(200)["node"], "ghost");

    redis.kill();
    eventually_async("not ready", || async { n1.get("/readyz").await.status == 503 }).await;
    n1.get("/readyz").await.expect(503);
    n1.get("/v1/sockets").await.expect(503);
    n1.get("/v1/nodes").await.expect(503);
    n1.get("/v1/upstreams").await.expect(503);
    n1.get(&path).await.expect(503);
    n1.json(Method::POST, "/v1/upstreams", json!({"uri": "http://127.0.0.1:1"})).await.expect(503);
    n1.get("/healthz").await.expect(200);
    redis.restart().await;
    eventually_async("ready again", || async { n1.get("/readyz").await.status == 200 }).await;
}
