//! The cluster at work: a socket registered under every key and removed when it closes;
//! commands, labels, closes and broadcasts (selective, by scope) reaching sockets on another
//! node; a burst of cross-node sends in order; the shared round-robin counter, fair and leased
//! in blocks.

use std::collections::HashMap;

use ppp::proto::{self, Status, upstream_command::Command};
use redis::AsyncCommands;

use super::{events, one_registered_socket};
use crate::common::{
    client::Client,
    node::start_node,
    topology::{K, TestRedis, cluster_config},
    upstream::{TestUpstream, send_cmd, send_command, with_id},
    wait::{eventually, eventually_async},
};

/// Nodes `n1` and `n2` with one socket each (`first` on n1, `second` on n2), both registered.
pub async fn two_nodes_one_socket_each<R: TestRedis>(
    redis: &R,
    up: &TestUpstream,
) -> (ppp::Node, ppp::Node, Client, String, Client, String) {
    let n1 = start_node(cluster_config(redis, "n1", &[up])).await;
    let n2 = start_node(cluster_config(redis, "n2", &[up])).await;
    let on_n1 = Client::connect(&n1).await;
    let first = up.wait_opened(1).await[0].clone();
    let on_n2 = Client::connect(&n2).await;
    let second = up.wait_opened(2).await[1].clone();
    for id in [&first, &second] {
        redis.wait_exists("registered", &format!("{K}socket:{id}")).await;
    }
    (n1, n2, on_n1, first, on_n2, second)
}

/// Commands reach sockets on either node with their receipts (`UnknownSocket` for a socket no
/// node holds); a broadcast reaches both.
pub async fn commands_and_broadcasts_reach_sockets_on_other_nodes_with_receipts<R: TestRedis>(redis: &R) {
    let up = TestUpstream::start(false).await;
    let (_n1, _n2, mut on_n1, first, mut on_n2, second) = two_nodes_one_socket_each(redis, &up).await;
    // Commands go out on whichever stream; both nodes have one to this upstream.
    up.command(with_id("to-first", send_command(&first, "hello first"))).await;
    up.command(with_id("to-second", send_command(&second, "hello second"))).await;
    assert_eq!(on_n1.line().await, "hello first");
    assert_eq!(on_n2.line().await, "hello second");
    up.command(with_id("nobody", send_command(&uuid::Uuid::now_v7().to_string(), "x"))).await;
    let broadcast = Command::Broadcast(proto::Broadcast { scope: 0, payload: "everyone".into(), ..Default::default() });
    up.command(with_id("all", broadcast)).await;
    assert_eq!(on_n1.line().await, "everyone");
    assert_eq!(on_n2.line().await, "everyone");
    up.wait_for("receipts", |_| up.results().len() == 4).await;
    let results: HashMap<_, _> = up.results().into_iter().map(|r| (r.command_id.clone(), r.status)).collect();
    assert_eq!(results["to-first"], Status::Ok as i32);
    assert_eq!(results["to-second"], Status::Ok as i32);
    assert_eq!(results["nobody"], Status::UnknownSocket as i32);
    assert_eq!(results["all"], Status::Ok as i32);
}

/// A socket's hash, its node's set, the cluster-wide index, the registry and the node's own hash
/// are in Redis; a label becomes a `label:{name}` field; once the client is gone every trace of
/// the socket is, and `K:events` tells the story.
pub async fn a_socket_is_registered_under_every_key_and_removed_when_it_closes<R: TestRedis>(redis: &R) {
    let (up, node, mut c, id) = one_registered_socket(redis).await;
    registered_under_every_key(redis, &node, &up, &id).await;
    let socket_key = format!("{K}socket:{id}");

    // Labels appear as label:{name} fields.
    let labels = Command::SetLabels(proto::SetLabels {
        socket_id: id.clone(),
        labels: [("user".to_owned(), "ada".to_owned())].into(),
        replace: false,
    });
    up.command(with_id("l", labels)).await;
    eventually_async("label field", || async {
        redis.conn().await.hget::<_, _, Option<String>>(&socket_key, "label:user").await.unwrap().as_deref()
            == Some("ada")
    })
    .await;

    c.write(b"bye\n").await;
    assert_eq!(c.line().await, "bye");
    drop(c);
    eventually_async("socket removed", || async { !redis.conn().await.exists::<_, bool>(&socket_key).await.unwrap() })
        .await;
    let members: Vec<String> = redis.conn().await.smembers(format!("{K}node:n1:sockets")).await.unwrap();
    assert!(members.is_empty());
    let kinds: Vec<(String, String)> = events(redis)
        .await
        .iter()
        .map(|e| (e.get::<String>("type").unwrap(), e.get::<String>("reason").unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        vec![("node_up".into(), "".into()), ("opened".into(), "".into()), ("closed".into(), "client_closed".into())]
    );
}

/// Checks every key that registers socket `id` of `node` (`n1`), and the node itself.
async fn registered_under_every_key<R: TestRedis>(redis: &R, node: &ppp::Node, up: &TestUpstream, id: &str) {
    let mut r = redis.conn().await;
    let hash: HashMap<String, String> = r.hgetall(format!("{K}socket:{id}")).await.unwrap();
    assert_eq!(hash["node"], "n1");
    assert_eq!(hash["local"], node.local_addr().to_string());
    assert!(hash["connected_at"].parse::<i64>().unwrap() > 0);
    assert!(hash.contains_key("remote") && hash.contains_key("last_seen"));
    let members: Vec<String> = r.smembers(format!("{K}node:n1:sockets")).await.unwrap();
    assert_eq!(members, [id]);
    let indexed: Vec<String> = r.zrange(format!("{K}sockets"), 0, -1).await.unwrap();
    assert_eq!(indexed, [id]);
    let upstreams: HashMap<String, String> = r.hgetall(format!("{K}upstreams")).await.unwrap();
    assert_eq!(upstreams[&up.id()], up.uri());
    eventually_async("heartbeat", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>(format!("{K}nodes"), "n1").await.unwrap().is_some()
    })
    .await;
    let info: HashMap<String, String> = r.hgetall(format!("{K}node:n1")).await.unwrap();
    assert_eq!(info["listen"], node.local_addr().to_string());
    assert_eq!(info["version"], ppp::VERSION);
}

/// 3000 sends to each of two sockets on two nodes, half of them crossing: every one arrives, in
/// order, with its receipt; once the sockets are gone their nodes say so.
pub async fn a_burst_of_cross_node_sends_arrives_in_order_with_every_receipt<R: TestRedis>(redis: &R) {
    let up = TestUpstream::start(false).await;
    let (_n1, _n2, mut on_n1, first, mut on_n2, second) = two_nodes_one_socket_each(redis, &up).await;
    // The commands go out on one node's stream: for that node one of the two sockets is on the
    // other node, so half the burst crosses, pipelined, and must keep its order.
    const N: usize = 3000;
    for i in 0..N {
        for (name, socket) in [("a", &first), ("b", &second)] {
            let send = Command::Send(proto::Send { socket_id: socket.clone(), payload: format!("{i}").into() });
            up.command(with_id(&format!("{name}{i}"), send)).await;
        }
    }
    for i in 0..N {
        assert_eq!(on_n1.line().await, i.to_string());
        assert_eq!(on_n2.line().await, i.to_string());
    }
    up.wait_for("every receipt", |_| up.results().len() == 2 * N).await;
    assert!(up.results().iter().all(|r| r.status == Status::Ok as i32));
    // Once the socket is gone, its node says so (and the cached owner is dropped).
    drop(on_n1);
    drop(on_n2);
    up.wait_for("closed", |_| up.closed().len() == 2).await;
    for socket in [&first, &second] {
        let send = Command::Send(proto::Send { socket_id: socket.clone(), payload: "late".into() });
        up.command(with_id(&format!("late-{socket}"), send)).await;
    }
    up.wait_for("late receipts", |_| up.results().len() == 2 * N + 2).await;
    let late: Vec<_> = up.results().into_iter().filter(|r| r.command_id.starts_with("late-")).collect();
    assert!(late.iter().all(|r| r.status == Status::UnknownSocket as i32), "{late:?}");
}

/// Labels set on a socket of another node select it for a broadcast; a scope that matches no
/// socket reaches none; a close crosses too.
pub async fn close_labels_and_selective_broadcasts_cross_nodes<R: TestRedis>(redis: &R) {
    let up = TestUpstream::start(false).await;
    let (_n1, _n2, mut on_n1, first, mut on_n2, second) = two_nodes_one_socket_each(redis, &up).await;
    // The test upstream sends on n2's stream (the latest): `first` lives on n1.
    let labels = Command::SetLabels(proto::SetLabels {
        socket_id: first.clone(),
        labels: [("room".to_owned(), "1".to_owned())].into(),
        replace: false,
    });
    up.command(with_id("label", labels)).await;
    up.wait_for("label receipt", |_| up.results().len() == 1).await;
    assert_eq!(up.results()[0].status, Status::Ok as i32);
    let selective = Command::Broadcast(proto::Broadcast {
        scope: proto::Scope::All as i32,
        payload: "room 1 only".into(),
        selector: [("room".to_owned(), "1".to_owned())].into(),
    });
    up.command(with_id("room", selective)).await;
    assert_eq!(on_n1.line().await, "room 1 only");
    let inactive = Command::Broadcast(proto::Broadcast {
        scope: proto::Scope::Inactive as i32,
        payload: "inactive only".into(),
        ..Default::default()
    });
    up.command(with_id("inactive", inactive)).await;
    let close = Command::Close(proto::Close { socket_id: first.clone(), reason: "bye".into() });
    up.command(with_id("close", close)).await;
    assert!(on_n1.closed().await.is_empty());
    up.wait_for("closed", |_| up.closed().iter().any(|(id, r)| *id == first && r == "upstream")).await;
    // `second` saw neither broadcast: the next line it gets is this one.
    up.command(send_cmd(&second, "only this")).await;
    assert_eq!(on_n2.line().await, "only this");
    up.wait_for("receipts", |_| up.results().len() == 4).await;
    assert!(up.results().iter().all(|r| r.status == Status::Ok as i32), "{:?}", up.results());
}

/// Three nodes, two upstreams, 10,000 messages: split within 1%, with one `INCRBY K:rr` per
/// block of 32.
pub async fn round_robin_is_fair_across_three_nodes_with_one_redis_command_per_32_messages<R: TestRedis>(redis: &R) {
    let a = TestUpstream::start(false).await;
    let b = TestUpstream::start(false).await;
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(start_node(cluster_config(redis, id, &[&a, &b])).await);
    }
    let before = redis.calls("incrby").await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Client::connect(node).await);
    }
    eventually("opened", || a.opened().len() + b.opened().len() == 3).await;
    let per_client = 10_000 / 3 + 1;
    for c in &mut clients {
        let lines: String = (0..per_client).map(|i| format!("m{i}\n")).collect();
        c.write(lines.as_bytes()).await;
    }
    let total = per_client * 3;
    eventually("all messages", || a.data().len() + b.data().len() == total).await;
    let (da, db) = (a.data().len(), b.data().len());
    assert!(da.abs_diff(db) * 100 <= total, "split {da}/{db} is not within 1%");
    let incrby = redis.calls("incrby").await - before;
    // Each node may hold one block fetched ahead and unused.
    assert!(incrby <= (total as u64 + 6) / 32 + 6, "{incrby} INCRBY for {total} messages");
    let rr: u64 = redis.conn().await.get(format!("{K}rr")).await.unwrap();
    assert!(rr >= 32, "K:rr is the shared counter: {rr}");
}
