//! The Redis nodes share, whatever its topology, as the tests see it: [`TestRedis`] (one
//! `redis-server`, a Sentinel set or a Redis Cluster: how a node reaches it, how a test reads
//! it) and [`FaultRedis`] (one server or a Redis Cluster, emptied or frozen), so that one check
//! (`super::checks`) runs on each.

use ppp::{
    cluster::redis::connection::RedisConn,
    config::{Config, RedisMode},
};
use redis::AsyncCommands;

use super::{
    node::test_config, redis_cluster::RedisClusterSet, redis_sentinel::RedisSentinelSet, redis_server::RedisServer,
    upstream::TestUpstream, wait::eventually_async,
};

/// `K:` with the default prefix and cluster: every key's start.
pub const K: &str = "ppp:{default}:";

/// A Redis the nodes of a test share.
#[allow(async_fn_in_trait)] // Only these tests use it, with static dispatch.
pub trait TestRedis {
    /// `--redis-mode` for it.
    const MODE: RedisMode;
    /// `--redis` for it.
    fn urls(&self) -> Vec<String>;
    /// A connection that reaches the cluster's keys wherever they are now, as `redis-cli` would.
    async fn conn(&self) -> RedisConn;
    /// A plain connection to the server that holds the cluster's keys now.
    async fn keys_server(&self) -> redis::aio::MultiplexedConnection;

    /// How many times the server that holds the cluster's keys ran `command` (`INFO
    /// commandstats`), e.g. `incrby`.
    async fn calls(&self, command: &str) -> u64 {
        let mut c = self.keys_server().await;
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Waits until `key` exists.
    async fn wait_exists(&self, what: &str, key: &str) {
        eventually_async(what, || async { self.conn().await.exists::<_, bool>(key).await.unwrap_or(false) }).await;
    }

    /// How many subscriptions the server that holds the cluster's keys has on `channel` (`PUBSUB
    /// SHARDNUMSUB` on a Redis Cluster, whose nodes subscribe there, on the slot's primary;
    /// `PUBSUB NUMSUB` elsewhere).
    async fn subscribers(&self, channel: &str) -> usize {
        let mut c = self.keys_server().await;
        let counts: Vec<(String, usize)> = Self::numsub(channel).query_async(&mut c).await.unwrap();
        counts.first().map_or(0, |(_, n)| *n)
    }

    /// `PUBSUB SHARDNUMSUB {channel}` on a Redis Cluster, `PUBSUB NUMSUB {channel}` elsewhere:
    /// see [`Self::subscribers`].
    fn numsub(channel: &str) -> redis::Cmd {
        let kind = if Self::MODE == RedisMode::Cluster { "SHARDNUMSUB" } else { "NUMSUB" };
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg(kind).arg(channel);
        cmd
    }

    /// Publishes `payload` on `channel` as the nodes do: `SPUBLISH` on a Redis Cluster (the
    /// nodes' subscriptions there are sharded), `PUBLISH` elsewhere; returns how many
    /// subscriptions received it.
    async fn publish(&self, channel: &str, payload: &[u8]) -> usize {
        let name = if Self::MODE == RedisMode::Cluster { "SPUBLISH" } else { "PUBLISH" };
        let mut c = self.conn().await;
        redis::cmd(name).arg(channel).arg(payload).query_async(&mut c).await.unwrap()
    }
}

/// A Redis a test can empty, freeze, and change the users of, without a failover: one server,
/// or a Redis Cluster.
#[allow(async_fn_in_trait)] // Only these tests use it, with static dispatch.
pub trait FaultRedis: TestRedis {
    /// Runs `ACL {args}` on every server (ACLs are each server's own), e.g. to take a user's
    /// channels away: Redis then disconnects that user's subscriptions to them.
    async fn acl(&self, args: &[&str]);
    /// Empties it (`FLUSHALL` on every primary): Redis lost its data.
    async fn flush_all(&self);
    /// Freezes (SIGSTOP) the server that holds the cluster's keys: connections stay open,
    /// nothing is answered, nobody takes over.
    async fn pause(&self);
    /// Thaws it (SIGCONT).
    fn resume(&self);
}

/// `urls` with `user` and `password` in each (`redis://user:password@host:port`).
pub fn urls_as(urls: Vec<String>, user: &str, password: &str) -> Vec<String> {
    urls.into_iter().map(|u| u.replacen("redis://", &format!("redis://{user}:{password}@"), 1)).collect()
}

/// A test config for a cluster member on `redis`.
pub fn cluster_config<R: TestRedis>(redis: &R, node_id: &str, upstreams: &[&TestUpstream]) -> Config {
    Config { redis: redis.urls(), redis_mode: R::MODE, node_id: Some(node_id.to_owned()), ..test_config(upstreams) }
}

impl TestRedis for RedisServer {
    const MODE: RedisMode = RedisMode::Standalone;

    fn urls(&self) -> Vec<String> {
        vec![self.url()]
    }

    async fn conn(&self) -> RedisConn {
        RedisConn::Single(RedisServer::conn(self).await)
    }

    async fn keys_server(&self) -> redis::aio::MultiplexedConnection {
        RedisServer::conn(self).await
    }
}

impl FaultRedis for RedisServer {
    async fn acl(&self, args: &[&str]) {
        let () = redis::cmd("ACL").arg(args).query_async(&mut RedisServer::conn(self).await).await.unwrap();
    }

    async fn flush_all(&self) {
        let () = redis::cmd("FLUSHALL").query_async(&mut RedisServer::conn(self).await).await.unwrap();
    }

    async fn pause(&self) {
        RedisServer::pause(self);
    }

    fn resume(&self) {
        RedisServer::resume(self);
    }
}

impl TestRedis for RedisSentinelSet {
    const MODE: RedisMode = RedisMode::Sentinel;

    fn urls(&self) -> Vec<String> {
        RedisSentinelSet::urls(self)
    }

    async fn conn(&self) -> RedisConn {
        RedisConn::Single(self.primary_conn().await)
    }

    async fn keys_server(&self) -> redis::aio::MultiplexedConnection {
        self.primary_conn().await
    }
}

impl TestRedis for RedisClusterSet {
    const MODE: RedisMode = RedisMode::Cluster;

    fn urls(&self) -> Vec<String> {
        RedisClusterSet::urls(self)
    }

    async fn conn(&self) -> RedisConn {
        RedisConn::Cluster(RedisClusterSet::conn(self).await)
    }

    async fn keys_server(&self) -> redis::aio::MultiplexedConnection {
        self.primary_conn_of(&format!("{K}nodes")).await
    }
}

impl FaultRedis for RedisClusterSet {
    async fn acl(&self, args: &[&str]) {
        for mut c in self.every_node().await {
            let () = redis::cmd("ACL").arg(args).query_async(&mut c).await.unwrap();
        }
    }

    async fn flush_all(&self) {
        RedisClusterSet::flush_all(self).await;
    }

    async fn pause(&self) {
        let slot = self.slot_of(&format!("{K}nodes")).await;
        self.pause_primary_of_slot(slot).await;
    }

    fn resume(&self) {
        self.resume_all();
    }
}
