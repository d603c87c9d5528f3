//! Cluster mode: nodes sharing state through a real `redis-server`, inspected with plain Redis
//! commands as `redis-cli` would. The checks that hold on any Redis live in `common::checks`
//! (`tests/redis_cluster.rs` runs them on a Redis Cluster); the rest need one server to kill,
//! restart, or reach through a fault proxy.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;

use common::{checks, *};
use ppp::proto::{self, Status, upstream_command::Command};
use redis::AsyncCommands;

#[tokio::test]
async fn a_socket_is_registered_under_every_key_and_removed_when_it_closes() {
    let redis = RedisServer::start().await;
    checks::a_socket_is_registered_under_every_key_and_removed_when_it_closes(&redis).await;
}

#[tokio::test]
async fn commands_and_broadcasts_reach_sockets_on_other_nodes_with_receipts() {
    let redis = RedisServer::start().await;
    checks::commands_and_broadcasts_reach_sockets_on_other_nodes_with_receipts(&redis).await;
}

#[tokio::test]
async fn a_burst_of_cross_node_sends_arrives_in_order_with_every_receipt() {
    let redis = RedisServer::start().await;
    checks::a_burst_of_cross_node_sends_arrives_in_order_with_every_receipt(&redis).await;
}

#[tokio::test]
async fn a_broadcast_that_misses_a_node_fails_with_the_count_and_that_node_is_not_ready() {
    let redis = RedisServer::start().await;
    checks::a_broadcast_that_misses_a_node_fails_with_the_count_and_that_node_is_not_ready(&redis).await;
}

#[tokio::test]
async fn a_runtime_change_made_while_a_node_was_off_the_bus_reaches_it_when_it_is_back() {
    let redis = RedisServer::start().await;
    checks::a_runtime_change_made_while_a_node_was_off_the_bus_reaches_it_when_it_is_back(&redis).await;
}

#[tokio::test]
async fn a_broadcast_fails_naming_a_dead_node_until_it_is_reaped() {
    let redis = RedisServer::start().await;
    checks::a_broadcast_fails_naming_a_dead_node_until_it_is_reaped(&redis).await;
}

#[tokio::test]
async fn the_upstream_registry_is_shared_by_every_node() {
    let redis = RedisServer::start().await;
    checks::the_upstream_registry_is_shared_by_every_node(&redis).await;
}

#[tokio::test]
async fn a_dead_node_is_reaped_exactly_once_with_a_closed_event_per_socket() {
    let redis = RedisServer::start().await;
    let mut r = redis.conn().await;
    // A node that stopped beating a minute ago, holding two sockets.
    let old = ppp::socket::unix_ms() - 60_000;
    let _: () = r.zadd("ppp:{default}:nodes", "ghost", old).await.unwrap();
    let _: () = r.hset("ppp:{default}:node:ghost", "listen", "10.0.0.9:7999").await.unwrap();
    for s in ["s1", "s2"] {
        let _: () = r.sadd("ppp:{default}:node:ghost:sockets", s).await.unwrap();
        let _: () = r.hset(format!("ppp:{{default}}:socket:{s}"), "node", "ghost").await.unwrap();
        let _: () = r.zadd("ppp:{default}:sockets", s, old).await.unwrap();
    }
    let up = TestUpstream::start(true).await;
    let config = |id: &str| ppp::config::Config {
        node_ttl: std::time::Duration::from_secs(2),
        ..cluster_config(&redis, id, &[&up])
    };
    let _n1 = start_node(config("n1")).await;
    let _n2 = start_node(config("n2")).await;
    eventually_async("ghost reaped", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "ghost").await.unwrap().is_none()
    })
    .await;
    // Give the other node a heartbeat or two to (not) reap it again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let events = r.xrange_all::<_, redis::streams::StreamRangeReply>("ppp:{default}:events").await.unwrap().ids;
    let lost: Vec<String> = events
        .iter()
        .filter(|e| e.get::<String>("reason").as_deref() == Some("node_lost"))
        .map(|e| e.get::<String>("socket").unwrap())
        .collect();
    assert_eq!(lost.len(), 2, "one closed event per socket, exactly once");
    let down = events.iter().filter(|e| e.get::<String>("type").as_deref() == Some("node_down")).count();
    assert_eq!(down, 1);
    assert!(!r.exists::<_, bool>("ppp:{default}:socket:s1").await.unwrap());
    assert!(!r.exists::<_, bool>("ppp:{default}:node:ghost").await.unwrap());
    assert_eq!(r.zcard::<_, usize>("ppp:{default}:sockets").await.unwrap(), 0);
    // The upstreams hear it too: one `closed` per socket, once across the cluster.
    up.wait_for("closed at the upstream", |_| up.closed().len() >= 2).await;
    let mut closed = up.closed();
    closed.sort();
    assert_eq!(closed, [("s1".to_owned(), "node_lost".to_owned()), ("s2".to_owned(), "node_lost".to_owned())]);
    eventually_async("the reap job is done", || async {
        redis.conn().await.zcard::<_, usize>("ppp:{default}:reaps").await.unwrap() == 0
    })
    .await;
}

#[tokio::test]
async fn a_heartbeat_that_moves_is_alive_however_old_its_clock_says_it_is() {
    let redis = RedisServer::start().await;
    let mut r = redis.conn().await;
    let up = TestUpstream::start(true).await;
    let config =
        ppp::config::Config { node_ttl: std::time::Duration::from_secs(1), ..cluster_config(&redis, "n1", &[&up]) };
    let _n1 = start_node(config).await;
    // A node whose clock is a minute behind: every score it writes is a minute old, but it moves.
    let _: () = r.sadd("ppp:{default}:node:skewed:sockets", "s1").await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let behind = ppp::socket::unix_ms() - 60_000;
        let _: () = r.zadd("ppp:{default}:nodes", "skewed", behind).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(r.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "skewed").await.unwrap().is_some(), "reaped alive");
    assert!(up.closed().is_empty());
    // It stops beating: dead one --node-ttl later by the watcher's own clock.
    eventually_async("reaped once it stood still", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "skewed").await.unwrap().is_none()
    })
    .await;
    up.wait_for("its socket's closed", |_| up.closed() == [("s1".to_owned(), "node_lost".to_owned())]).await;
}

#[tokio::test]
async fn a_node_restarted_with_the_same_id_reaps_its_previous_run_first() {
    let redis = RedisServer::start().await;
    checks::a_node_restarted_with_the_same_id_reaps_its_previous_run_first(&redis).await;
}

#[tokio::test]
async fn a_drained_node_leaves_the_cluster_cleanly() {
    let redis = RedisServer::start().await;
    checks::a_drained_node_leaves_the_cluster_cleanly(&redis).await;
}

#[tokio::test]
async fn after_redis_loses_its_data_the_node_registers_its_sockets_and_the_registry_again() {
    let redis = RedisServer::start().await;
    checks::after_redis_loses_its_data_the_node_registers_its_sockets_and_the_registry_again(&redis).await;
}

#[tokio::test]
async fn round_robin_is_fair_across_three_nodes_with_one_redis_command_per_32_messages() {
    let redis = RedisServer::start().await;
    checks::round_robin_is_fair_across_three_nodes_with_one_redis_command_per_32_messages(&redis).await;
}

#[tokio::test]
async fn close_labels_and_selective_broadcasts_cross_nodes() {
    let redis = RedisServer::start().await;
    checks::close_labels_and_selective_broadcasts_cross_nodes(&redis).await;
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_loses_no_socket_and_state_is_resynced() {
    let mut redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(&redis, "n1", &[&up])).await;
    let mut early = Client::connect(&node).await;
    let early_id = up.wait_opened(1).await[0].clone();
    let early_key = format!("ppp:{{default}}:socket:{early_id}");
    redis.wait_exists("registered", &early_key).await;

    redis.kill();
    // Sockets keep being served; new ones open, old ones close, all while Redis is away.
    early.write(b"during outage\n").await;
    assert_eq!(early.line().await, "during outage");
    let mut late = Client::connect(&node).await;
    let late_id = up.wait_opened(2).await[1].clone();
    late.write(b"late\n").await;
    assert_eq!(late.line().await, "late");
    drop(early);

    redis.restart().await;
    // Its `closed` goes out once Redis has recorded it (so that, had the node been reaped
    // meanwhile, upstreams would not hear two).
    up.wait_for("early closed", |_| up.closed() == [(early_id.clone(), "client_closed".to_owned())]).await;
    let late_key = format!("ppp:{{default}}:socket:{late_id}");
    redis.wait_exists("late socket registered", &late_key).await;
    let mut r = redis.conn().await;
    assert!(!r.exists::<_, bool>(&early_key).await.unwrap(), "the closed socket is not registered");
    let members: Vec<String> = r.smembers("ppp:{default}:node:n1:sockets").await.unwrap();
    assert_eq!(members, vec![late_id.clone()]);
    eventually_async("registry seeded again", || async {
        let all: HashMap<String, String> = redis.conn().await.hgetall("ppp:{default}:upstreams").await.unwrap();
        all.contains_key(&up.id())
    })
    .await;
    late.write(b"after\n").await;
    assert_eq!(late.line().await, "after");
}

#[tokio::test]
async fn a_paused_redis_stalls_nothing_and_the_node_catches_up() {
    let redis = RedisServer::start().await;
    checks::a_paused_redis_stalls_nothing_and_the_node_catches_up(&redis).await;
}

#[tokio::test]
async fn a_node_killed_with_sigkill_is_reaped_exactly_once() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let config = |id: &str| ppp::config::Config {
        node_ttl: std::time::Duration::from_secs(2),
        ..cluster_config(&redis, id, &[&up])
    };
    let _n1 = start_node(config("n1")).await;
    let _n2 = start_node(config("n2")).await;
    let (url, uri) = (redis.url(), up.uri());
    let mut victim = NodeProc::start("victim", &["--redis", &url, "--upstream", &uri], 1).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(tokio::net::TcpStream::connect(victim.listen).await.unwrap());
    }
    eventually_async("victim's sockets registered", || async {
        redis.conn().await.scard::<_, usize>("ppp:{default}:node:victim:sockets").await.unwrap() == 2
    })
    .await;
    victim.kill();
    eventually_async("victim reaped", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "victim").await.unwrap().is_none()
    })
    .await;
    // Two live nodes race to reap; give the loser a few heartbeats to (not) do it again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut r = redis.conn().await;
    let events = r.xrange_all::<_, redis::streams::StreamRangeReply>("ppp:{default}:events").await.unwrap().ids;
    let lost = events.iter().filter(|e| e.get::<String>("reason").as_deref() == Some("node_lost")).count();
    let down = events.iter().filter(|e| e.get::<String>("type").as_deref() == Some("node_down")).count();
    assert_eq!((lost, down), (2, 1));
    assert_eq!(r.scard::<_, usize>("ppp:{default}:node:victim:sockets").await.unwrap(), 0);
}

#[tokio::test]
async fn a_tls_url_is_accepted_and_a_bad_url_is_refused_at_start() {
    let up = TestUpstream::start(true).await;
    // rediss:// (TLS) with a password: the node starts and serves while the cluster is unreachable.
    let config = ppp::config::Config {
        redis: vec!["rediss://:secret@127.0.0.1:1/0".into()],
        node_id: Some("tls".into()),
        ..test_config(&[&up])
    };
    let node = start_node(config).await;
    let mut c = Client::connect(&node).await;
    c.write(b"served without redis\n").await;
    assert_eq!(c.line().await, "served without redis");
    let bad = ppp::config::Config { redis: vec!["http://not-redis".into()], ..test_config(&[]) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = ppp::Node::start(bad, listener).await.err().expect("refused").to_string();
    assert!(error.contains("--redis"), "{error}");
}

#[tokio::test]
async fn a_node_started_before_redis_joins_when_redis_comes_up() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(&redis, "early", &[&up])).await;
    let mut c = Client::connect(&node).await;
    c.write(b"no redis yet\n").await;
    assert_eq!(c.line().await, "no redis yet");
    redis.restart().await;
    eventually_async("joined with its socket and its seed", || async {
        let mut r = redis.conn().await;
        let sockets: usize = r.scard("ppp:{default}:node:early:sockets").await.unwrap();
        let upstreams: HashMap<String, String> = r.hgetall("ppp:{default}:upstreams").await.unwrap();
        sockets == 1 && upstreams.contains_key(&up.id())
    })
    .await;
}

#[tokio::test]
async fn a_node_reaped_while_cut_off_registers_again() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(true).await;
    let node = start_node(cluster_config(&redis, "n1", &[&up])).await;
    let _c = Client::connect(&node).await;
    let id = up.wait_opened(1).await[0].clone();
    let key = format!("ppp:{{default}}:socket:{id}");
    redis.wait_exists("registered", &key).await;
    // What another node's reaper does to a node it believes dead: redis/reap.lua.
    let mut r = redis.conn().await;
    let reaped: i64 = redis::Script::new(include_str!("../redis/reap.lua"))
        .key("ppp:{default}:nodes")
        .arg("ppp:{default}:")
        .arg("n1")
        .arg("")
        .arg("")
        .arg(ppp::socket::unix_ms())
        .arg("elsewhere")
        .arg(1000)
        .arg("n1/test/1")
        .invoke_async(&mut r)
        .await
        .unwrap();
    assert_eq!(reaped, 1);
    eventually_async("registered again with its socket", || async {
        let mut r = redis.conn().await;
        r.exists::<_, bool>(&key).await.unwrap()
            && r.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "n1").await.unwrap().is_some()
            && r.zscore::<_, _, Option<i64>>("ppp:{default}:sockets", &id).await.unwrap().is_some()
    })
    .await;
    // The node itself announces the reaped job's closed (it reaps nobody, but it is a live node)
    // and then, alive, its socket again: `opened` with `resumed`, at the upstream and in K:events.
    let resumed = |events: &[proto::NodeEvent]| {
        events.iter().any(|e| matches!(&e.event, Some(proto::node_event::Event::Opened(o)) if o.resumed))
    };
    up.wait_for("opened again, resumed", resumed).await;
    assert_eq!(up.closed(), [(id.clone(), "node_lost".to_owned())]);
    eventually_async("resumed in K:events", || async {
        let events = redis.conn().await.xrange_all::<_, redis::streams::StreamRangeReply>("ppp:{default}:events").await;
        events.unwrap().ids.iter().any(|e| e.get::<String>("resumed").as_deref() == Some("1"))
    })
    .await;
}

#[tokio::test]
async fn a_slow_owner_node_does_not_hold_up_commands_for_local_sockets() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(false).await;
    let node = start_node(cluster_config(&redis, "n1", &[&up])).await;
    let mut local = Client::connect(&node).await;
    let local_id = up.wait_opened(1).await[0].clone();
    // A "node" that holds a socket, listens on its channel, and never answers.
    let mute = uuid::Uuid::now_v7().to_string();
    let _: () = redis.conn().await.hset(format!("ppp:{{default}}:socket:{mute}"), "node", "mute").await.unwrap();
    let mut listener = redis::Client::open(redis.url()).unwrap().get_async_pubsub().await.unwrap();
    listener.subscribe("ppp:{default}:ch:node:mute").await.unwrap();
    for i in 0..3 {
        let send = Command::Send(proto::Send { socket_id: mute.clone(), payload: "x".into() });
        up.command(with_id(&format!("mute-{i}"), send)).await;
    }
    let started = tokio::time::Instant::now();
    up.command(send_cmd(&local_id, "not held up")).await;
    assert_eq!(local.line().await, "not held up");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    // The mute node's commands fail, each with its reason, in order.
    up.wait_for("receipts", |_| up.results().len() == 3).await;
    let results = up.results();
    assert!(results.iter().all(|r| r.status == Status::Failed as i32 && r.detail.contains("did not answer")));
    assert_eq!(results.iter().map(|r| r.command_id.as_str()).collect::<Vec<_>>(), ["mute-0", "mute-1", "mute-2"]);
}

/// A node cut off from Redis (not from its upstreams and clients) for longer than `--node-ttl`:
/// another node reaps it and announces `closed` (`node_lost`) for its sockets. A socket that
/// closed meanwhile must not get a second `closed` from the node itself; one still open is
/// announced again (`opened`, `resumed`). Every life of a socket ends with exactly one `closed`.
#[tokio::test]
async fn a_node_cut_off_and_reaped_never_gets_a_socket_two_closed_events() {
    use common::fault::{Fault, FaultProxy};
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let up = TestUpstream::start(true).await;
    let ttl = std::time::Duration::from_secs(2);
    let cut_config = ppp::config::Config {
        redis: vec![format!("redis://{}", proxy.addr())],
        node_ttl: ttl,
        ..cluster_config(&redis, "cut", &[&up])
    };
    let cut = start_node(cut_config).await;
    let _reaper = start_node(ppp::config::Config { node_ttl: ttl, ..cluster_config(&redis, "reaper", &[&up]) }).await;
    let mut stays = Client::connect(&cut).await;
    let goes = Client::connect(&cut).await;
    let ids = up.wait_opened(2).await;
    eventually_async("both registered", || async {
        redis.conn().await.scard::<_, usize>("ppp:{default}:node:cut:sockets").await.unwrap() == 2
    })
    .await;

    proxy.set(Fault::BlackHole);
    // Closed while cut off: its `closed` waits, since the node may be reaped meanwhile.
    drop(goes);
    eventually_async("reaped while cut off", || async {
        redis.conn().await.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", "cut").await.unwrap().is_none()
    })
    .await;
    up.wait_for("node_lost for both", |_| up.closed().iter().filter(|(_, r)| r == "node_lost").count() == 2).await;
    proxy.set(Fault::None);

    let resumed = |events: &[proto::NodeEvent]| {
        events.iter().any(|e| matches!(&e.event, Some(proto::node_event::Event::Opened(o)) if o.resumed))
    };
    up.wait_for("the open socket announced again", resumed).await;
    stays.write(b"still here\n").await;
    assert_eq!(stays.line().await, "still here");
    // Give the released closed events a moment to (not) arrive twice.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let closed = up.closed();
    for id in &ids {
        let n = closed.iter().filter(|(s, _)| s == id).count();
        assert_eq!(n, 1, "{id}: {closed:?}");
    }
    let reopened: Vec<String> = up
        .events()
        .into_iter()
        .filter_map(|e| match e.event {
            Some(proto::node_event::Event::Opened(o)) if o.resumed => o.socket.map(|s| s.id),
            _ => None,
        })
        .collect();
    assert_eq!(reopened.len(), 1);
    assert!(ids.contains(&reopened[0]));
}
