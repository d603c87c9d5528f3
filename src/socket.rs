//! Sockets: ids, labels, close reasons, and the state a socket's tasks share with the rest of the
//! node.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::upstream::pool::Upstream;

mod close;

pub use self::close::CloseReason;

/// A socket's labels: business metadata (user id, device kind) set by upstreams or admins.
pub type Labels = HashMap<String, String>;

/// Most labels one socket may carry; a `set_labels` beyond it fails. Bounds the memory an
/// upstream can make the node spend per socket.
pub const MAX_LABELS: usize = 64;
/// Longest label name or value, in bytes.
pub const MAX_LABEL_LEN: usize = 1024;

/// Checks labels against [`MAX_LABELS`] and [`MAX_LABEL_LEN`], and that no name is empty.
///
/// # Errors
/// A message naming what is wrong.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    if let Some(k) = labels.iter().find(|(k, v)| k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN).map(|(k, _)| k) {
        let name: String = k.chars().take(64).collect();
        return Err(format!("label `{name}` (name or value) is longer than {MAX_LABEL_LEN} bytes"));
    }
    if labels.keys().any(String::is_empty) {
        return Err("label names must not be empty".to_owned());
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("a socket carries at most {MAX_LABELS} labels"));
    }
    Ok(())
}

/// A socket's id: a UUID v7, so ids sort by connect time. Displayed hyphenated, lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub Uuid);

impl SocketId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The time in the id (unix ms); now for an id that holds none (not a v7 UUID).
    pub fn unix_ms(&self) -> i64 {
        self.0.get_timestamp().map_or_else(unix_ms, |t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
    }
}

impl Default for SocketId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SocketId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Milliseconds since the Unix epoch, now (by this host's clock, shifted by
/// `PPP_TEST_CLOCK_OFFSET_MS` when a test sets it to stand for a host whose clock is off).
pub fn unix_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    now.saturating_add(clock_offset_ms())
}

/// The test-only clock offset (`PPP_TEST_CLOCK_OFFSET_MS`, read once; 0 unless set).
fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| std::env::var("PPP_TEST_CLOCK_OFFSET_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

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
    /// Set by the writer when it stops: nothing more is taken.
    sealed: bool,
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
    labels: RwLock<Arc<Labels>>,
    /// The outbound queue, bounded by `--write-queue`. A plain deque rather than a channel: it
    /// holds no memory while empty (a channel keeps a block of slots per socket), and the writer
    /// takes everything queued in one go.
    outbound: Mutex<Outbound>,
    /// `--write-queue`.
    outbound_capacity: usize,
    /// Wakes the writer when something is queued.
    outbound_ready: Notify,
    /// The first close reason wins; set before `closing` is cancelled.
    close_reason: OnceLock<CloseReason>,
    /// Cancelled when the socket must close; both tasks watch it.
    pub closing: CancellationToken,
    /// With `--balance sticky`, the upstream this socket is bound to.
    pub sticky: Mutex<Option<Arc<Upstream>>>,
}

impl fmt::Debug for SocketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketState").field("id", &self.id).field("remote_addr", &self.remote_addr).finish()
    }
}

impl SocketState {
    /// A new socket with an outbound queue of `write_queue` messages.
    pub fn new(remote_addr: SocketAddr, local_addr: SocketAddr, write_queue: usize) -> Arc<Self> {
        Self::with_tls(remote_addr, local_addr, write_queue, None)
    }

    /// [`SocketState::new`] for a socket that came over TLS and asked for `tls_server_name`.
    pub fn with_tls(
        remote_addr: SocketAddr,
        local_addr: SocketAddr,
        write_queue: usize,
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
            labels: RwLock::new(Arc::default()),
            outbound: Mutex::default(),
            outbound_capacity: write_queue,
            outbound_ready: Notify::new(),
            close_reason: OnceLock::new(),
            closing: CancellationToken::new(),
            sticky: Mutex::new(None),
        };
        Arc::new(state)
    }

    /// The current labels.
    pub fn labels(&self) -> Arc<Labels> {
        self.labels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Merges `labels` into the socket's (an empty value removes the label), or replaces them all.
    ///
    /// # Errors
    /// A message when the result would break [`MAX_LABELS`] or [`MAX_LABEL_LEN`]; nothing is
    /// changed then.
    pub fn set_labels(&self, labels: Labels, replace: bool) -> Result<Arc<Labels>, String> {
        validate_labels(&labels)?;
        let mut guard = self.labels.write().unwrap_or_else(|e| e.into_inner());
        let mut next = if replace { Labels::new() } else { (**guard).clone() };
        for (k, v) in labels {
            if v.is_empty() && !replace {
                next.remove(&k);
            } else {
                next.insert(k, v);
            }
        }
        if next.len() > MAX_LABELS {
            return Err(format!("a socket carries at most {MAX_LABELS} labels"));
        }
        let next = Arc::new(next);
        *guard = next.clone();
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
        if outbound.queue.len() >= self.outbound_capacity {
            drop(outbound);
            self.close(CloseReason::SlowConsumer);
            return Err(QueueError::SlowConsumer);
        }
        outbound.queue.push_back(payload);
        drop(outbound);
        self.outbound_ready.notify_one();
        Ok(())
    }

    /// Takes everything queued, for the writer (its memory goes with it).
    pub fn take_outbound(&self) -> VecDeque<Bytes> {
        std::mem::take(&mut self.outbound.lock().unwrap_or_else(|e| e.into_inner()).queue)
    }

    /// Takes everything queued and refuses anything more: the writer's last call.
    pub fn seal_outbound(&self) -> VecDeque<Bytes> {
        let mut outbound = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        outbound.sealed = true;
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
            self.closing.cancel();
        }
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
        SocketState::new(addr, addr, 2)
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
