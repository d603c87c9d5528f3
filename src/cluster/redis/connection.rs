//! Connections to Redis: [`RedisConn`], the one connection type every caller uses whatever the
//! topology; how a Redis Cluster client is set up; and the timeout every round trip gets (a
//! paused or black-holed Redis must not stall a task).

use std::{future::Future, time::Duration};

use redis::{
    Cmd, ConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};

use crate::cluster::BackendError;

/// Longest wait for any Redis round trip: a paused or black-holed Redis must not stall a task.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a cluster connection waits to connect to one Redis node.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a cluster connection waits for one answer before it retries (on a fresh view of the
/// cluster, after a failover).
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Retries of one cluster request, waiting 20 ms, 40 ms, … up to [`CLUSTER_MAX_RETRY_WAIT_MS`]
/// in between (redis-rs's default starts at 1.28 s, longer than a failover).
const CLUSTER_RETRIES: u32 = 8;
/// The longest wait between two retries of a cluster request.
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 400;

/// Runs a Redis operation with [`REDIS_TIMEOUT`]; a timeout is an I/O error like any other.
///
/// # Errors
/// The operation's error, or a timeout.
pub async fn timed<T>(op: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(REDIS_TIMEOUT, op).await {
        Ok(result) => result,
        Err(_) => Err(io_error("timeout", format!("Redis did not answer within {REDIS_TIMEOUT:?}"))),
    }
}

/// An I/O error: what callers see when Redis cannot be reached.
pub(super) fn io_error(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what, detail))
}

/// A connection to Redis, whatever the topology: to one server (standalone, or the primary the
/// Sentinels named), or to a Redis Cluster (which routes each command to its slot's primary and
/// follows `MOVED`, `ASK` and failovers itself). Cheap to clone: clones share the socket(s).
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs a registry operation with [`REDIS_TIMEOUT`].
pub(super) async fn within<T>(op: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
    tokio::time::timeout(REDIS_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| Err(BackendError::Unavailable("Redis did not answer in time".to_owned())))
}

/// A Redis error as the backend reports it: the cluster state is unavailable.
pub(super) fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// A cluster client over `seeds` with short timeouts and retries (a failover must not hold a
/// request past [`REDIS_TIMEOUT`]); with `pushes`, on RESP3, sending them there.
pub(super) fn cluster_client(
    seeds: &[ConnectionInfo],
    pushes: Option<tokio::sync::mpsc::UnboundedSender<PushInfo>>,
) -> RedisResult<ClusterClient> {
    let builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(REDIS_TIMEOUT))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(10)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .retry_wait_formula(20, 2);
    match pushes {
        Some(tx) => builder.use_protocol(ProtocolVersion::RESP3).push_sender(tx).build(),
        None => builder.build(),
    }
}
