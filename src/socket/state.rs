//! The state of one socket that its reader and writer share with the node: counters, labels,
//! the bounded outbound queue, and the close reason.

use std::{
    collections::VecDeque,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{CloseReason, LabelError, Labels, MAX_LABELS, SocketId, validate_labels};

/// Why a payload could not be queued for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue was full: the socket is being closed as a slow consumer.
    #[error("the socket's write queue is full (slow consumer); it is being closed")]
    SlowConsumer,
    /// The socket is already closing.
    #[error("the socket is closing")]
    Closing,
}

/// A socket's outbound queue.
#[derive(Debug, Default)]
struct Outbound {
    /// Payloads waiting for the writer.
    queue: VecDeque<Bytes>,
    /// Their bytes.
    bytes: usize,
    /// Set by the writer when it stops: nothing more is taken.
    sealed: bool,
}

/// The bounds of a socket's outbound queue (`--write-queue`, `--write-queue-bytes`): whichever is
/// hit first makes the socket a slow consumer, so a stalled client costs at most that much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Most payloads queued.
    pub messages: usize,
    /// Most payload bytes queued. One payload larger than this still goes into an empty queue
    /// (it is bounded by the largest command an upstream may send), or it could never be sent.
    pub bytes: usize,
}

/// The state of one socket that its reader and writer tasks share with the node (commands, the
/// table, the backend). Cheap to share behind an `Arc`.
pub struct SocketState {
    /// The socket's id.
    pub id: SocketId,
    /// The id rendered once, since every inbound message carries it.
    pub id_str: Arc<str>,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The node's address the client connected to.
    pub local_addr: SocketAddr,
    /// The name the client asked for in its TLS handshake (SNI), when it came over TLS with one.
    pub tls_server_name: Option<Box<str>>,
    /// Accept time, unix ms.
    pub connected_at_ms: i64,
    /// Last inbound message, unix ms (starts at `connected_at_ms`): decides active/inactive.
    last_seen_ms: AtomicI64,
    /// Inbound messages, which is also the `seq` of the last one.
    pub messages_in: AtomicU64,
    /// Inbound payload bytes.
    pub bytes_in: AtomicU64,
    /// Outbound messages written.
    pub messages_out: AtomicU64,
    /// Outbound payload bytes written.
    pub bytes_out: AtomicU64,
    /// Labels, copy-on-write: readers (every inbound message) clone an `Arc`, writers swap it.
    /// `None` while the socket has none: an empty map would cost every socket an allocation.
    labels: RwLock<Option<Arc<Labels>>>,
    /// The outbound queue, bounded by `--write-queue`. A plain deque rather than a channel: it
    /// holds no memory while empty (a channel keeps a block of slots per socket), and the writer
    /// takes everything queued in one go.
    outbound: Mutex<Outbound>,
    /// `--write-queue`.
    outbound_bounds: QueueBounds,
    /// Wakes the writer when something is queued.
    outbound_ready: Notify,
    /// The first close reason wins; set before `closing` is told.
    close_reason: OnceLock<CloseReason>,
    /// Cancelled when the socket must close; both tasks watch it.
    /// Told when the socket must close; both tasks wait on it ([`SocketState::closing`]). A
    /// `Notify` inline, not a `CancellationToken`: that is a heap node per socket.
    close_notify: Notify,
    /// With `--balance sticky`, the id of the upstream this socket is bound to (an id, not the
    /// upstream itself: a socket knows nothing of the pool, and a removed upstream is not kept
    /// alive by the sockets once bound to it).
    pub sticky: Mutex<Option<Arc<str>>>,
}

impl fmt::Debug for SocketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketState").field("id", &self.id).field("remote_addr", &self.remote_addr).finish()
    }
}

impl SocketState {
    /// A new socket whose outbound queue holds at most `bounds`.
    pub fn new(remote_addr: SocketAddr, local_addr: SocketAddr, bounds: QueueBounds) -> Arc<Self> {
        Self::with_tls(remote_addr, local_addr, bounds, None)
    }

    /// [`SocketState::new`] for a socket that came over TLS and asked for `tls_server_name`.
    pub fn with_tls(
        remote_addr: SocketAddr,
        local_addr: SocketAddr,
        bounds: QueueBounds,
        tls_server_name: Option<Box<str>>,
    ) -> Arc<Self> {
        let id = SocketId::new();
        // The accept time is the id's own timestamp, so sockets ordered by id are ordered by
        // `connected_at` too (the admin API pages through them with the id as cursor).
        let now = id.unix_ms();
        let state = Self {
            id,
            id_str: id.to_string().into(),
            remote_addr,
            local_addr,
            tls_server_name,
            connected_at_ms: now,
            last_seen_ms: AtomicI64::new(now),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            labels: RwLock::new(None),
            outbound: Mutex::default(),
            outbound_bounds: bounds,
            outbound_ready: Notify::new(),
            close_reason: OnceLock::new(),
            close_notify: Notify::new(),
            sticky: Mutex::new(None),
        };
        Arc::new(state)
    }

    /// The current labels.
    pub fn labels(&self) -> Arc<Labels> {
        self.labels.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }

    /// The current labels, shared (for an event); `None` when there are none.
    pub fn labels_shared(&self) -> Option<Arc<Labels>> {
        self.labels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A copy of the current labels (for an event), without allocating when there are none.
    pub fn labels_copy(&self) -> Labels {
        self.labels.read().unwrap_or_else(|e| e.into_inner()).as_deref().cloned().unwrap_or_default()
    }

    /// Whether the socket carries every label of `selector`.
    pub fn matches(&self, selector: &Labels) -> bool {
        let labels = self.labels.read().unwrap_or_else(|e| e.into_inner());
        selector.iter().all(|(k, v)| labels.as_ref().and_then(|l| l.get(k)) == Some(v))
    }

    /// Merges `labels` into the socket's (an empty value removes the label), or replaces them all.
    ///
    /// # Errors
    /// [`LabelError`] when the result would break [`MAX_LABELS`] or
    /// [`MAX_LABEL_LEN`](super::MAX_LABEL_LEN); nothing is changed then.
    pub fn set_labels(&self, labels: Labels, replace: bool) -> Result<Arc<Labels>, LabelError> {
        validate_labels(&labels)?;
        let mut guard = self.labels.write().unwrap_or_else(|e| e.into_inner());
        let mut next = if replace { Labels::new() } else { guard.as_deref().cloned().unwrap_or_default() };
        for (k, v) in labels {
            if v.is_empty() && !replace {
                next.remove(&k);
            } else {
                next.insert(k, v);
            }
        }
        if next.len() > MAX_LABELS {
            return Err(LabelError::TooMany);
        }
        let next = Arc::new(next);
        *guard = (!next.is_empty()).then(|| next.clone());
        Ok(next)
    }

    /// Notes an inbound message of `len` bytes; returns its `seq`.
    pub fn note_inbound(&self, len: usize, now_ms: i64) -> u64 {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        self.messages_in.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Last inbound message (or the connect), unix ms.
    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Whether the socket sent a message within `idle_after` of `now_ms`.
    pub fn is_active(&self, now_ms: i64, idle_after: Duration) -> bool {
        now_ms - self.last_seen_ms() < i64::try_from(idle_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// Queues a payload for the writer. A full queue closes the socket as a slow consumer: it
    /// never makes the caller wait, so one slow client cannot slow anybody else down.
    ///
    /// # Errors
    /// [`QueueError`] when the payload was not queued.
    pub fn enqueue(&self, payload: Bytes) -> Result<(), QueueError> {
        let mut outbound = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        if outbound.sealed || self.close_reason.get().is_some() {
            return Err(QueueError::Closing);
        }
        let bounds = self.outbound_bounds;
        let too_many_bytes = !outbound.queue.is_empty() && outbound.bytes + payload.len() > bounds.bytes;
        if outbound.queue.len() >= bounds.messages || too_many_bytes {
            drop(outbound);
            self.close(CloseReason::SlowConsumer);
            return Err(QueueError::SlowConsumer);
        }
        outbound.bytes += payload.len();
        outbound.queue.push_back(payload);
        drop(outbound);
        self.outbound_ready.notify_one();
        Ok(())
    }

    /// Takes everything queued, for the writer (its memory goes with it).
    pub fn take_outbound(&self) -> VecDeque<Bytes> {
        let mut outbound = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        outbound.bytes = 0;
        std::mem::take(&mut outbound.queue)
    }

    /// Takes everything queued and refuses anything more: the writer's last call.
    pub fn seal_outbound(&self) -> VecDeque<Bytes> {
        let mut outbound = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        outbound.sealed = true;
        outbound.bytes = 0;
        std::mem::take(&mut outbound.queue)
    }

    /// Resolves when something may have been queued since the last `take_outbound`.
    ///
    /// # Cancel safety
    /// Cancel safe; a wake-up that arrives while nobody waits is kept for the next call.
    pub async fn outbound_ready(&self) {
        self.outbound_ready.notified().await;
    }

    /// Asks the socket to close. The first reason given wins; later calls do nothing.
    pub fn close(&self, reason: CloseReason) {
        if self.close_reason.set(reason).is_ok() {
            self.close_notify.notify_waiters();
        }
    }

    /// Resolves once the socket must close.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closing(&self) {
        let notified = self.close_notify.notified();
        tokio::pin!(notified);
        // Registered before the look, so a close between the two is not missed.
        notified.as_mut().enable();
        if self.close_reason.get().is_some() {
            return;
        }
        notified.await;
    }

    /// Why the socket is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Arc<SocketState> {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        SocketState::new(addr, addr, QueueBounds { messages: 2, bytes: 8 })
    }

    #[test]
    fn labels_merge_remove_and_replace() {
        let s = socket();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s.set_labels(l(&[("user", "42"), ("room", "a")]), false).unwrap();
        s.set_labels(l(&[("room", "")]), false).unwrap();
        assert_eq!(*s.labels(), l(&[("user", "42")]));
        s.set_labels(l(&[("kind", "x")]), true).unwrap();
        assert_eq!(*s.labels(), l(&[("kind", "x")]));
        let too_many: Labels = (0..=MAX_LABELS).map(|i| (i.to_string(), "v".to_string())).collect();
        assert!(s.set_labels(too_many, true).is_err());
        assert_eq!(*s.labels(), l(&[("kind", "x")]));
    }

    #[test]
    fn a_queue_over_its_bytes_closes_the_socket_but_one_large_payload_goes_alone() {
        let s = socket();
        s.enqueue(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(s.take_outbound().len(), 1, "a payload over the byte bound goes into an empty queue");
        s.enqueue(Bytes::from_static(b"12345")).unwrap();
        assert_eq!(s.enqueue(Bytes::from_static(b"6789")), Err(QueueError::SlowConsumer));
        assert_eq!(s.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn a_full_queue_closes_the_socket_as_slow_consumer() {
        let s = socket();
        s.enqueue(Bytes::from_static(b"1")).unwrap();
        s.enqueue(Bytes::from_static(b"2")).unwrap();
        assert_eq!(s.enqueue(Bytes::from_static(b"3")), Err(QueueError::SlowConsumer));
        assert_eq!(s.close_reason(), Some(CloseReason::SlowConsumer));
        s.close(CloseReason::Admin);
        assert_eq!(s.close_reason(), Some(CloseReason::SlowConsumer));
    }
}
