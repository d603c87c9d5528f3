//! The cluster on a Redis primary and replica watched by three Sentinels (`--redis-mode
//! sentinel`): it works as on one Redis, and a failover (the primary killed with SIGKILL) loses
//! nothing.

#[allow(dead_code)]
mod common;

use common::*;

#[tokio::test]
async fn nodes_on_a_sentinel_set_share_sockets_commands_listing_and_reaping() {
    let redis = RedisSentinelSet::start().await;
    the_cluster_works(&redis).await;
}

#[tokio::test]
async fn a_sentinel_failover_under_load_loses_no_socket_event_or_command() {
    let mut redis = RedisSentinelSet::start().await;
    let figures = a_failover_loses_nothing(&mut redis).await;
    println!("{}", figures.line("sentinel"));
    assert_eq!((figures.sockets_lost, figures.events_lost), (0, 0), "{figures:?}");
    assert_eq!(figures.broadcasts_lost, 0, "a broadcast answered OK missed a socket: {figures:?}");
    assert_eq!(figures.admin_status, 503, "a cross-node send in the gap is a 503: {figures:?}");
}
