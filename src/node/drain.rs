//! The graceful stop (SIGTERM, `POST /v1/drain`, [`Node::shutdown`]), and [`Drain`], the one
//! place its steps are signalled from (as linkerd2-proxy's `drain` and mini-redis's `shutdown`).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Node;
use crate::socket::CloseReason;

/// Sockets closed at once per drain batch.
const DRAIN_BATCH: usize = 500;

/// The steps of a drain, in order: started → accepting stopped → streams finished → done.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Set by the first caller of [`Node::shutdown`]: only one drain runs.
    begun: AtomicBool,
    /// A drain has started: `/readyz` answers 503, the registry is no longer reconciled.
    started: CancellationToken,
    /// The accept loop stops.
    accepting: CancellationToken,
    /// The upstream streams send what is queued, then end.
    streams: CancellationToken,
    /// The drain is over.
    done: CancellationToken,
    /// Servers that answer through the drain and stop at its very end (the admin API): their
    /// stop signal and their task, awaited so their last answers go out.
    last_words: Mutex<Vec<(CancellationToken, JoinHandle<()>)>>,
}

impl Drain {
    /// Cancelled when the accept loop is to stop.
    pub(crate) fn accepting(&self) -> CancellationToken {
        self.accepting.clone()
    }

    /// Cancelled when the upstream streams are to finish.
    pub(crate) fn streams_finish(&self) -> CancellationToken {
        self.streams.clone()
    }

    /// Whether the accept loop was told to stop.
    pub(crate) fn is_accepting_stopped(&self) -> bool {
        self.accepting.is_cancelled()
    }

    /// Whether a drain has started.
    pub(crate) fn has_started(&self) -> bool {
        self.started.is_cancelled()
    }
}

impl Node {
    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.has_started()
    }

    /// Resolves once a drain has started (by [`Node::shutdown`] or `POST /v1/drain`).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn drain_started(&self) {
        self.inner.drain.started.cancelled().await;
    }

    /// Keeps a server running until the very end of the drain: then `stop` is cancelled and
    /// `task` awaited (the admin API answers through the drain, and its last answers go out).
    pub fn stop_at_drain_end(&self, stop: CancellationToken, task: JoinHandle<()>) {
        self.inner.drain.last_words.lock().unwrap_or_else(|e| e.into_inner()).push((stop, task));
    }

    /// Drains the node: stops accepting, closes its sockets in jittered batches with reason
    /// `shutdown` (queued messages are flushed, upstreams get `closed`), ends the upstream
    /// streams once their queues are sent, all within `--drain-timeout`.
    pub async fn shutdown(&self) {
        let drain = &self.inner.drain;
        if drain.begun.swap(true, Ordering::AcqRel) {
            return drain.done.cancelled().await;
        }
        drain.started.cancel();
        let timeout = self.inner.config.drain_timeout;
        let deadline = Instant::now() + timeout;
        drain.accepting.cancel();
        self.inner.backend.draining().await;
        self.close_sockets(timeout, deadline).await;
        if tokio::time::timeout_at(deadline, self.inner.table.wait_empty()).await.is_err() {
            warn!(left = self.inner.table.len(), "drain timeout: sockets still open");
        }
        drain.streams.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait()).await.is_err() {
            warn!("drain timeout: stopping what is left");
            for up in self.inner.pool.snapshot().iter() {
                up.stop.cancel();
            }
        }
        self.inner.backend.leave().await;
        info!("drained");
        let last_words = std::mem::take(&mut *drain.last_words.lock().unwrap_or_else(|e| e.into_inner()));
        for (stop, task) in last_words {
            stop.cancel();
            let _ = task.await;
        }
        drain.done.cancel();
    }

    /// Closes the sockets with reason `shutdown`, in batches spread over the first half of the
    /// timeout, so that clients reconnecting elsewhere do not all arrive at once.
    async fn close_sockets(&self, timeout: Duration, deadline: Instant) {
        let sockets = self.inner.table.snapshot();
        info!(sockets = sockets.len(), ?timeout, "draining");
        let batches = sockets.len().div_ceil(DRAIN_BATCH).max(1);
        let pause = (timeout / 2 / batches as u32).min(Duration::from_secs(1));
        for (i, batch) in sockets.chunks(DRAIN_BATCH).enumerate() {
            if i > 0 {
                let jitter = rand::rng().random_range(0.5..=1.0);
                tokio::time::sleep_until((Instant::now() + pause.mul_f64(jitter)).min(deadline)).await;
            }
            for socket in batch {
                socket.close(CloseReason::Shutdown);
            }
        }
    }
}
