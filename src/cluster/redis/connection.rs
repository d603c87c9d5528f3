//! Connections to Redis: the pool, the one multiplexed connection the hot paths share, and the
//! timeout every round trip gets (a paused or black-holed Redis must not stall a task).

use std::{future::Future, time::Duration};

use deadpool_redis::Pool;

use crate::cluster::BackendError;

/// Longest wait for any Redis round trip: a paused or black-holed Redis must not stall a task.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a Redis operation with [`REDIS_TIMEOUT`]; a timeout is an I/O error like any other.
///
/// # Errors
/// The operation's error, or a timeout.
pub async fn timed<T>(op: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(REDIS_TIMEOUT, op).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "timeout",
            format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
        ))),
    }
}

/// One multiplexed connection taken from the pool and shared by the hot callers (the counter,
/// the record writer, commands for other nodes): it pipelines concurrent requests on one socket,
/// and skips the pool's per-checkout health check (a `PING` round trip each time). Replaced by a
/// fresh one from the pool after any error.
pub struct SharedConn {
    pool: Pool,
    conn: std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl SharedConn {
    /// A shared connection over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool, conn: std::sync::Mutex::new(None) }
    }

    /// Runs `op` on the shared connection, with [`REDIS_TIMEOUT`]; drops the connection if `op`
    /// fails, so the next call starts from a healthy one.
    ///
    /// # Errors
    /// The operation's error, or a timeout.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, redis::RedisError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = timed(async {
            let cached = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let conn = match cached {
                Some(conn) => conn,
                None => {
                    let pooled = self.pool.get().await.map_err(pool_error)?;
                    let conn = (*pooled).clone();
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                    conn
                }
            };
            op(conn).await
        })
        .await;
        if result.is_err() {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }
}

/// A pool error as a Redis error, so callers handle one kind.
pub fn pool_error(e: deadpool_redis::PoolError) -> redis::RedisError {
    match e {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from((redis::ErrorKind::Io, "pool", other.to_string())),
    }
}

/// The client (for the subscriber's dedicated connection) and the pool for a `--redis` URL.
pub(super) fn open(url: &str) -> Result<(redis::Client, Pool), BackendError> {
    // `rediss://` goes through rustls, which needs a process-wide crypto provider; `Err` means
    // one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let invalid = |e: &dyn std::fmt::Display| BackendError::Invalid(format!("--redis: {e}"));
    let client = redis::Client::open(url).map_err(|e| invalid(&e))?;
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| invalid(&e))?;
    Ok((client, pool))
}

/// Runs a registry operation with [`REDIS_TIMEOUT`].
pub(super) async fn within<T>(op: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
    tokio::time::timeout(REDIS_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| Err(BackendError::Unavailable("Redis did not answer in time".to_owned())))
}

pub(super) fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}
