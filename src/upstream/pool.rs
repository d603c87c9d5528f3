//! The pool of upstreams this node streams to.
//!
//! Each [`Upstream`] has a bounded queue of events that its stream task feeds into the `Connect`
//! stream. The balancer hands events only to *usable* upstreams: ready (health SERVING) and with an
//! open stream. Every change of the pool or of an upstream's state bumps a watch, so a socket that
//! waits for capacity (inbound backpressure) wakes up when something changes.

use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use super::{
    queue::{QueueRx, QueueTx, queue},
    rpc::Rpc,
    window::Delivery,
};
use crate::socket::event::Event;

/// One upstream as this node sees it.
#[derive(Debug)]
pub struct Upstream {
    /// Its id in the registry (`host:port` unless given).
    pub id: String,
    /// Its gRPC URI.
    pub uri: String,
    /// The queue the stream task drains into the stream.
    tx: QueueTx,
    /// Health says SERVING.
    ready: AtomicBool,
    /// The `Connect` stream is open.
    open: AtomicBool,
    /// Cancelled when the upstream is removed: its tasks stop.
    pub stop: CancellationToken,
    /// Events handed to it.
    pub messages_sent: AtomicU64,
    /// How far it confirmed what its streams wrote (acks, health checks): the replay window's
    /// state.
    pub delivery: Delivery,
    /// Bumped when the health checks find the upstream dead (no answer at all, several times in
    /// a row): its stream is then given up and reopened, so what it held goes elsewhere.
    lost: watch::Sender<u64>,
    /// The last error seen on its stream or health check, for operators.
    last_error: Mutex<Option<String>>,
    /// Which RPC its streams use (`ConnectBatch` unless it answered `UNIMPLEMENTED`).
    pub rpc: Rpc,
    /// The pool's change signal.
    changed: watch::Sender<u64>,
}

impl Upstream {
    /// Whether the balancer may hand it events: ready and streaming.
    pub fn is_usable(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.open.load(Ordering::Acquire)
    }

    /// Whether health says SERVING.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Events waiting in its queue.
    pub fn queued(&self) -> usize {
        self.tx.queued()
    }

    /// Whether its stream is open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The last error seen, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes an error for operators.
    pub fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// Sets readiness; a change wakes waiting sockets. Returns whether it changed (the health
    /// task then sets `ppp_upstream_ready`).
    pub fn set_ready(&self, ready: bool) -> bool {
        let changed = self.ready.swap(ready, Ordering::AcqRel) != ready;
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
        changed
    }

    /// Sets whether the stream is open; a change wakes waiting sockets.
    pub fn set_open(&self, open: bool) {
        if self.open.swap(open, Ordering::AcqRel) != open {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The health checks found the upstream dead: its stream gives up.
    pub fn set_lost(&self) {
        self.lost.send_modify(|v| *v += 1);
    }

    /// A receiver that changes when the health checks find the upstream dead.
    pub fn lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// Hands an event over without waiting; gives it back when the queue is full.
    ///
    /// # Errors
    /// The event, when it was not taken.
    // The event is handed back, not boxed: boxing would cost an allocation per message.
    #[allow(clippy::result_large_err)]
    pub fn try_forward(&self, event: Event) -> Result<(), Event> {
        self.tx.try_send(event)?;
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hands all of `events` over without waiting, in one go, or none of them.
    ///
    /// # Errors
    /// The events, when the queue has no room for all of them.
    pub fn try_forward_all(&self, events: Vec<Event>) -> Result<(), Vec<Event>> {
        let n = events.len() as u64;
        self.tx.try_send_all(events)?;
        self.messages_sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for room in the queue and reserves it; `None` if the queue is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: a reservation not yet returned is released.
    pub async fn reserve(self: Arc<Self>) -> Option<(Arc<Self>, OwnedSemaphorePermit)> {
        let permit = self.tx.reserve().await?;
        Some((self, permit))
    }

    /// Hands an event over through a reservation from [`Upstream::reserve`].
    pub fn forward_reserved(&self, permit: OwnedSemaphorePermit, event: Event) {
        self.tx.send_reserved(permit, event);
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pool: upstreams ordered by id (the same order on every node). A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct UpstreamPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    /// The upstreams, ordered by id; replaced whole on change so readers take a snapshot.
    list: RwLock<Arc<[Arc<Upstream>]>>,
    /// Bumped when the pool or an upstream's state changes.
    changed: watch::Sender<u64>,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new() -> Self {
        let inner = PoolInner { list: RwLock::new(Arc::from(Vec::new())), changed: watch::Sender::new(0) };
        Self { inner: Arc::new(inner) }
    }

    /// The upstreams now, ordered by id.
    pub fn snapshot(&self) -> Arc<[Arc<Upstream>]> {
        self.inner.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The upstream with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Upstream>> {
        self.snapshot().iter().find(|u| u.id == id).cloned()
    }

    /// A receiver that sees every change of the pool or of an upstream's state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Adds an upstream, not yet ready nor open; returns it and its queue's receiving end for
    /// the stream task. An upstream with the same id is replaced (and stopped).
    pub fn insert(&self, id: String, uri: String) -> (Arc<Upstream>, QueueRx) {
        let (tx, rx) = queue();
        let upstream = Arc::new(Upstream {
            id,
            uri,
            tx,
            ready: AtomicBool::new(false),
            open: AtomicBool::new(false),
            stop: CancellationToken::new(),
            messages_sent: AtomicU64::new(0),
            delivery: Delivery::default(),
            lost: watch::Sender::new(0),
            last_error: Mutex::new(None),
            rpc: Rpc::default(),
            changed: self.inner.changed.clone(),
        });
        self.update(|list| {
            if let Some(old) = list.iter().position(|u| u.id == upstream.id) {
                list.remove(old).stop.cancel();
            }
            list.push(upstream.clone());
            list.sort_by(|a, b| a.id.cmp(&b.id));
        });
        (upstream, rx)
    }

    /// Removes an upstream and stops its tasks; returns it if it was there.
    pub fn remove(&self, id: &str) -> Option<Arc<Upstream>> {
        let mut removed = None;
        self.update(|list| {
            if let Some(i) = list.iter().position(|u| u.id == id) {
                removed = Some(list.remove(i));
            }
        });
        if let Some(u) = &removed {
            u.stop.cancel();
        }
        removed
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<Upstream>>)) {
        let mut guard = self.inner.list.write().unwrap_or_else(|e| e.into_inner());
        let mut list = guard.to_vec();
        f(&mut list);
        *guard = Arc::from(list);
        drop(guard);
        self.inner.changed.send_modify(|v| *v += 1);
    }
}
