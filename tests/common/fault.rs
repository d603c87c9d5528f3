//! A fault proxy: a TCP relay that sits between a node and Redis, or a node and an upstream, and
//! misbehaves on demand. The test switches its [`Fault`] at run time; every connection, open or
//! new, follows the switch at once.
//!
//! Each accepted connection (the *client* side: the node) gets its own connection to the target
//! and two pumps, one per direction. A pump is a reader and a writer joined by a small queue of
//! chunks, so latency delays each chunk without slowing the stream down, and a black hole holds
//! what was already read instead of dropping it (as the network would: TCP retransmits until the
//! path heals).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Largest chunk read at once.
const CHUNK: usize = 16 << 10;
/// Chunks waiting between a pump's reader and its writer: with [`Fault::Latency`], this many
/// chunks may be in flight, so it bounds the bytes a slow link holds (`CHUNK` times this).
const IN_FLIGHT: usize = 256;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forwards everything as it comes.
    #[default]
    None,
    /// Delays every chunk, in both directions, by this much (the stream keeps its throughput).
    Latency(Duration),
    /// Forwards at most this many bytes per second in each direction.
    Throttle {
        /// The rate.
        bytes_per_sec: u64,
    },
    /// Connections stay open but nothing is forwarded in either direction; new connections are
    /// accepted and get nothing. When the fault is lifted, what was held goes through.
    BlackHole,
    /// Every connection is closed with a reset (`SO_LINGER` 0), and new ones are reset at once.
    Reset,
    /// Stops reading from the client side, so TCP flow control pushes back on it; the other
    /// direction still flows.
    StopReading,
    /// Each connection forwards this many more bytes (both directions together, counted from
    /// when the fault is set or the connection opens), then is reset.
    CutAfter(u64),
}

/// The fault in force, numbered so a connection can tell a new [`Fault::CutAfter`] from the one
/// it is already counting down.
#[derive(Debug, Clone, Default)]
struct Setting {
    fault: Fault,
    generation: u64,
}

/// Counters a test can read.
#[derive(Debug, Default)]
struct Stats {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections being relayed now.
    open: AtomicUsize,
    /// Bytes written to the target.
    to_target: AtomicU64,
    /// Bytes written to the client.
    to_client: AtomicU64,
}

/// A running fault proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// Where it forwards to.
    target: SocketAddr,
    /// The fault in force; every connection watches it.
    setting: watch::Sender<Setting>,
    /// Counters.
    stats: Arc<Stats>,
    /// Stops the accept loop and every connection.
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target` without faults.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().unwrap();
        let setting = watch::Sender::new(Setting::default());
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let relay = Relay { target, setting: setting.subscribe(), stats: stats.clone(), stop: stop.clone() };
        tokio::spawn(relay.accept_loop(listener));
        Self { addr, target, setting, stats, stop }
    }

    /// Where the node should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches the fault; open connections follow at once.
    pub fn set(&self, fault: Fault) {
        self.setting.send_modify(|s| {
            s.fault = fault;
            s.generation += 1;
        });
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.setting.borrow().fault.clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Connections being relayed now.
    pub fn open_connections(&self) -> usize {
        self.stats.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far: (client to target, target to client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.stats.to_target.load(Ordering::Relaxed), self.stats.to_client.load(Ordering::Relaxed))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the accept loop and every connection share.
#[derive(Clone)]
struct Relay {
    /// Where connections are relayed to.
    target: SocketAddr,
    /// The fault in force.
    setting: watch::Receiver<Setting>,
    /// Counters.
    stats: Arc<Stats>,
    /// Cancelled when the proxy is dropped.
    stop: CancellationToken,
}

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the client (the node) to the target.
    ToTarget,
    /// From the target back to the client.
    ToClient,
}

/// What a pump's reader hands its writer.
enum Chunk {
    /// Bytes to write once they are due.
    Data {
        /// When (now, or later under [`Fault::Latency`]).
        due: Instant,
        /// What.
        bytes: Bytes,
    },
    /// The reader saw EOF: shut the write side down (after everything before it).
    Eof,
    /// A [`Fault::CutAfter`] budget ran out: reset the connection (after everything before it).
    Cut,
}

/// A connection's [`Fault::CutAfter`] budget, shared by its two directions: (the fault's
/// generation, bytes left).
#[derive(Default)]
struct Budget(Mutex<Option<(u64, u64)>>);

impl Budget {
    /// Bytes left under the `CutAfter(limit)` of `generation` (a new generation starts afresh).
    fn left(&self, generation: u64, limit: u64) -> u64 {
        self.take(generation, limit, 0);
        self.0.lock().unwrap().map_or(limit, |(_, left)| left)
    }

    /// Takes up to `wanted` bytes from the budget; returns how many may go.
    fn take(&self, generation: u64, limit: u64, wanted: usize) -> usize {
        let mut budget = self.0.lock().unwrap();
        let left = match *budget {
            Some((g, left)) if g == generation => left,
            _ => limit,
        };
        let allowed = left.min(wanted as u64);
        *budget = Some((generation, left - allowed));
        allowed as usize
    }
}

impl Relay {
    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                a = listener.accept() => a,
            };
            // An accept error (out of descriptors) is the test's problem, not the proxy's.
            let Ok((client, _)) = accepted else { continue };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().connection(client));
        }
    }

    /// Relays one connection until both directions ended, it is reset, or the proxy stops.
    async fn connection(mut self, mut client: TcpStream) {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(self.stats.clone());
        let _ = client.set_nodelay(true);
        // A black hole: accepted, but the target hears nothing until it is lifted.
        let fault = tokio::select! {
            () = self.stop.cancelled() => return,
            s = self.setting.wait_for(|s| s.fault != Fault::BlackHole) => match s {
                Ok(s) => s.fault.clone(),
                Err(_) => return,
            },
        };
        if fault == Fault::Reset {
            return reset(client, None);
        }
        // A target that refuses is mirrored as a reset, as the client would see it directly.
        let Ok(mut target) = TcpStream::connect(self.target).await else { return reset(client, None) };
        let _ = target.set_nodelay(true);
        let cut = CancellationToken::new();
        let budget = Budget::default();
        {
            let (cr, cw) = client.split();
            let (tr, tw) = target.split();
            let up = self.pump(Direction::ToTarget, cr, tw, &budget, &cut);
            let down = self.pump(Direction::ToClient, tr, cw, &budget, &cut);
            tokio::select! {
                _ = futures_util::future::join(up, down) => {}
                () = self.stop.cancelled() => {}
            }
        }
        if cut.is_cancelled() {
            reset(client, Some(target));
        }
    }

    /// Moves bytes one way until EOF went through or the connection is reset.
    async fn pump(
        &self,
        direction: Direction,
        from: ReadHalf<'_>,
        to: WriteHalf<'_>,
        budget: &Budget,
        cut: &CancellationToken,
    ) {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let reader = self.read_side(direction, from, tx, budget, cut);
        let writer = self.write_side(direction, to, rx, cut);
        tokio::select! {
            _ = futures_util::future::join(reader, writer) => {}
            () = cut.cancelled() => {}
        }
    }

    /// Reads chunks as the fault allows and queues them for the writer.
    async fn read_side(
        &self,
        direction: Direction,
        mut from: ReadHalf<'_>,
        tx: mpsc::Sender<Chunk>,
        budget: &Budget,
        cut: &CancellationToken,
    ) {
        let mut setting = self.setting.clone();
        loop {
            let now = setting.borrow_and_update().clone();
            let held = match now.fault {
                Fault::Reset => return cut.cancel(),
                Fault::CutAfter(n) if budget.left(now.generation, n) == 0 => return cut.cancel(),
                Fault::BlackHole => true,
                Fault::StopReading => direction == Direction::ToTarget,
                _ => false,
            };
            if held {
                if setting.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let limit = match now.fault {
                Fault::Throttle { bytes_per_sec } => (bytes_per_sec as usize / 20).clamp(1, CHUNK),
                _ => CHUNK,
            };
            let mut buf = BytesMut::with_capacity(limit);
            let mut limited = (&mut from).take(limit as u64);
            let read = tokio::select! {
                biased;
                changed = setting.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                // Cancel safe: a read that did not complete took nothing.
                r = limited.read_buf(&mut buf) => r,
            };
            match read {
                Ok(0) => {
                    let _ = tx.send(Chunk::Eof).await;
                    return;
                }
                Ok(_) => {}
                Err(_) => return cut.cancel(),
            }
            let mut bytes = buf.freeze();
            let mut then_cut = false;
            if let Fault::CutAfter(n) = now.fault {
                let allowed = budget.take(now.generation, n, bytes.len());
                then_cut = allowed < bytes.len() || budget.left(now.generation, n) == 0;
                bytes.truncate(allowed);
            }
            let delay = match now.fault {
                Fault::Latency(d) => d,
                _ => Duration::ZERO,
            };
            let len = bytes.len();
            if len > 0 && tx.send(Chunk::Data { due: Instant::now() + delay, bytes }).await.is_err() {
                return;
            }
            if then_cut {
                let _ = tx.send(Chunk::Cut).await;
                return;
            }
            if let Fault::Throttle { bytes_per_sec } = now.fault {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / bytes_per_sec.max(1) as f64)).await;
            }
        }
    }

    /// Writes queued chunks when they are due and the fault lets them through.
    async fn write_side(
        &self,
        direction: Direction,
        mut to: WriteHalf<'_>,
        mut rx: mpsc::Receiver<Chunk>,
        cut: &CancellationToken,
    ) {
        let mut setting = self.setting.clone();
        while let Some(chunk) = rx.recv().await {
            let (due, bytes) = match chunk {
                Chunk::Data { due, bytes } => (due, bytes),
                Chunk::Eof => {
                    let _ = to.shutdown().await;
                    return;
                }
                Chunk::Cut => return cut.cancel(),
            };
            tokio::time::sleep_until(due).await;
            match setting.wait_for(|s| s.fault != Fault::BlackHole).await {
                Ok(s) if s.fault == Fault::Reset => return cut.cancel(),
                Ok(_) => {}
                Err(_) => return,
            }
            if to.write_all(&bytes).await.is_err() {
                return cut.cancel();
            }
            let counter = match direction {
                Direction::ToTarget => &self.stats.to_target,
                Direction::ToClient => &self.stats.to_client,
            };
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes both sides with a reset: `SO_LINGER` 0, then close, sends RST instead of FIN.
fn reset(client: TcpStream, target: Option<TcpStream>) {
    let _ = client.set_zero_linger();
    if let Some(t) = &target {
        let _ = t.set_zero_linger();
    }
    drop(client);
    drop(target);
}
