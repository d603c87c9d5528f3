//! [`SharedConn`]: the one connection the node's tasks share, opened again (through the
//! [`Topology`]) after any error.
//!
//! No pool: a multiplexed connection pipelines concurrent requests on one socket, and the
//! cluster connection holds one such connection per Redis node, so a pool would only add a
//! health check (`PING`) per checkout and connections Redis must serve.

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{
    connection::{RedisConn, io_error, timed},
    topology::Topology,
};

/// After a failed reconnect, callers fail at once for this long instead of each trying again:
/// during a failover, hot paths get their error (and a command its 503) without a connection
/// attempt apiece.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The one connection the node's tasks share (the heartbeat, the record writer, the counter,
/// commands for other nodes, the admin API's reads). Dropped after any error, so the next call
/// opens a fresh one: on a Sentinel set that asks the Sentinels for the primary again, which is
/// how the node follows a failover (a `READONLY` answer from a demoted primary is an error too).
pub struct SharedConn {
    /// How to open a connection.
    topology: Topology,
    /// The connection, once open.
    conn: Mutex<Option<RedisConn>>,
    /// Held while a connection is being opened, so callers wait for one attempt instead of
    /// making their own; holds when the last attempt failed.
    connecting: tokio::sync::Mutex<Option<Instant>>,
}

impl SharedConn {
    /// A shared connection, opened on first use.
    pub(super) fn new(topology: Topology) -> Self {
        Self { topology, conn: Mutex::new(None), connecting: tokio::sync::Mutex::new(None) }
    }

    /// How connections are opened (the bus subscriber opens its own).
    pub(super) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs `op` on the shared connection, with [`REDIS_TIMEOUT`]; drops the connection if `op`
    /// fails, so the next call starts from a healthy one.
    ///
    /// # Errors
    /// The operation's error, a connection error, or a timeout.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, redis::RedisError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = timed(async { op(self.conn().await?).await }).await;
        if result.is_err() {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }

    /// The open connection, or a new one.
    async fn conn(&self) -> Result<RedisConn, redis::RedisError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let mut failed_at = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        if let Some(at) = failed_at.filter(|at| at.elapsed() < RECONNECT_PAUSE) {
            let ago = at.elapsed().as_millis();
            return Err(io_error("unreachable", format!("Redis unreachable (last attempt {ago} ms ago)")));
        }
        match self.topology.connect().await {
            Ok(conn) => {
                *failed_at = None;
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                *failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// The connection, if one is open.
    fn cached(&self) -> Option<RedisConn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
