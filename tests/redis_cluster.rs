//! The cluster on a Redis Cluster of three primaries and three replicas (`--redis-mode
//! cluster`): every key of a `--cluster` in one slot, pub/sub sharded; it works as on one Redis
//! (the checks of `tests/cluster.rs` that hold on any Redis, `common::checks`, with the primary
//! of the cluster's slot frozen, or every primary emptied, where a check needs it), and a
//! failover of that primary (killed with SIGKILL) loses nothing.

#[allow(dead_code)]
mod common;

use common::{checks, *};

#[tokio::test]
async fn nodes_on_a_redis_cluster_share_sockets_commands_listing_and_reaping() {
    let redis = RedisClusterSet::start().await;
    the_cluster_works(&redis).await;
}

#[tokio::test]
async fn a_socket_is_registered_under_every_key_and_removed_when_it_closes() {
    let redis = RedisClusterSet::start().await;
    checks::a_socket_is_registered_under_every_key_and_removed_when_it_closes(&redis).await;
}

#[tokio::test]
async fn commands_and_broadcasts_reach_sockets_on_other_nodes_with_receipts() {
    let redis = RedisClusterSet::start().await;
    checks::commands_and_broadcasts_reach_sockets_on_other_nodes_with_receipts(&redis).await;
}

#[tokio::test]
async fn close_labels_and_selective_broadcasts_cross_nodes() {
    let redis = RedisClusterSet::start().await;
    checks::close_labels_and_selective_broadcasts_cross_nodes(&redis).await;
}

#[tokio::test]
async fn a_broadcast_that_misses_a_node_fails_with_the_count_and_that_node_is_not_ready() {
    let redis = RedisClusterSet::start().await;
    checks::a_broadcast_that_misses_a_node_fails_with_the_count_and_that_node_is_not_ready(&redis).await;
}

#[tokio::test]
async fn a_runtime_change_made_while_a_node_was_off_the_bus_reaches_it_when_it_is_back() {
    let redis = RedisClusterSet::start().await;
    checks::a_runtime_change_made_while_a_node_was_off_the_bus_reaches_it_when_it_is_back(&redis).await;
}

#[tokio::test]
async fn a_broadcast_fails_naming_a_dead_node_until_it_is_reaped() {
    let redis = RedisClusterSet::start().await;
    checks::a_broadcast_fails_naming_a_dead_node_until_it_is_reaped(&redis).await;
}

#[tokio::test]
async fn a_burst_of_cross_node_sends_arrives_in_order_with_every_receipt() {
    let redis = RedisClusterSet::start().await;
    checks::a_burst_of_cross_node_sends_arrives_in_order_with_every_receipt(&redis).await;
}

#[tokio::test]
async fn round_robin_is_fair_across_three_nodes_with_one_redis_command_per_32_messages() {
    let redis = RedisClusterSet::start().await;
    checks::round_robin_is_fair_across_three_nodes_with_one_redis_command_per_32_messages(&redis).await;
}

#[tokio::test]
async fn the_upstream_registry_is_shared_by_every_node() {
    let redis = RedisClusterSet::start().await;
    checks::the_upstream_registry_is_shared_by_every_node(&redis).await;
}

#[tokio::test]
async fn a_node_restarted_with_the_same_id_reaps_its_previous_run_first() {
    let redis = RedisClusterSet::start().await;
    checks::a_node_restarted_with_the_same_id_reaps_its_previous_run_first(&redis).await;
}

#[tokio::test]
async fn a_drained_node_leaves_the_cluster_cleanly() {
    let redis = RedisClusterSet::start().await;
    checks::a_drained_node_leaves_the_cluster_cleanly(&redis).await;
}

#[tokio::test]
async fn after_redis_loses_its_data_the_node_registers_its_sockets_and_the_registry_again() {
    let redis = RedisClusterSet::start().await;
    checks::after_redis_loses_its_data_the_node_registers_its_sockets_and_the_registry_again(&redis).await;
}

#[tokio::test]
async fn a_paused_redis_stalls_nothing_and_the_node_catches_up() {
    let redis = RedisClusterSet::start().await;
    checks::a_paused_redis_stalls_nothing_and_the_node_catches_up(&redis).await;
}

#[tokio::test]
async fn a_redis_cluster_failover_under_load_loses_no_socket_event_or_command() {
    let mut redis = RedisClusterSet::start().await;
    a_failover_loses_nothing(&mut redis).await.assert_nothing_lost("cluster");
}

/// Every script of `redis/` builds its key names from `K:` (the cluster's hash tag), so all it
/// touches is in the slot of the key it declares: Redis Cluster runs it on that slot's primary.
#[tokio::test]
async fn every_lua_script_runs_on_the_cluster_slot() {
    use redis::{AsyncCommands, Script};
    let redis = RedisClusterSet::start().await;
    let mut c = redis.conn().await;
    let socket = uuid::Uuid::now_v7().to_string();
    let records = Script::new(include_str!("../redis/records.lua"));
    let reaped: Vec<String> = records
        .key(format!("{K}node:n1"))
        .arg(K)
        .arg("n1")
        .arg("run-1")
        .arg(1)
        .arg(1000)
        .arg(&["o", &socket, "10.0.0.1:1", "10.0.0.2:2", "1000", "device.example"])
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert!(reaped.is_empty());
    let touch = Script::new(include_str!("../redis/touch.lua"));
    let _: () =
        touch.key(format!("{K}socket:{socket}")).arg(&["last_seen", "2000"]).invoke_async(&mut c).await.unwrap();
    let seen: String = c.hget(format!("{K}socket:{socket}"), "last_seen").await.unwrap();
    assert_eq!(seen, "2000");
    let _: () = c.zadd(format!("{K}nodes"), "n1", 5).await.unwrap();
    let reap = Script::new(include_str!("../redis/reap.lua"));
    let n: i64 = reap
        .key(format!("{K}nodes"))
        .arg(&[K, "n1", "5", "", "3000", "n2", "1000", "n1/run-1/3000"])
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1, "one socket reaped");
    let list = format!("{K}reap:n1/run-1/3000");
    let announce = Script::new(include_str!("../redis/announce.lua"));
    let batch: Vec<String> = announce
        .key(&list)
        .key(format!("{list}:owner"))
        .key(format!("{list}:sent"))
        .key(format!("{K}reaps"))
        .arg(&["take", "n2", "10000", "16", "n1/run-1/3000", "0"])
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(batch, ["0".to_owned(), socket]);
    let _: () = c.zadd(format!("{K}nodes"), "n2", 6).await.unwrap();
    let broadcast = Script::new(include_str!("../redis/broadcast.lua"));
    let channel = format!("{K}ch:broadcast");
    let published: (usize, Vec<String>) =
        broadcast.key(format!("{K}nodes")).arg(&["SPUBLISH", &channel, "x"]).invoke_async(&mut c).await.unwrap();
    assert_eq!(published, (0, vec!["n2".to_owned()]), "no subscriber, one member");
    let runtime = Script::new(include_str!("../redis/runtime.lua"));
    let control = format!("{K}ch:control");
    let (version, epoch): (u64, String) = runtime
        .key(format!("{K}runtime"))
        .arg(&["SPUBLISH", &control, "x", "n1", "4000", "epoch-1", "balance", "sticky"])
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!((version, epoch.as_str()), (1, "epoch-1"));
    let stored: String = c.hget(format!("{K}runtime"), "balance:version").await.unwrap();
    assert_eq!(stored, "1");
}
