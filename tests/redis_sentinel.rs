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
    a_failover_loses_nothing(&mut redis).await.assert_nothing_lost("sentinel");
}
