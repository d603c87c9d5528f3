//! The load generator: clients over real TCP, each sending one line at a steady rate and reading
//! the echoes back, recording everything the checker needs.
//!
//! A line is `c{client}.{generation}:{seq}:{uid}`: the client, which of its connections
//! (a client reconnects when the node closes it), the message's number on that connection (from
//! 1, as the node's `SocketData.seq` counts), and an id unique in the run. A client that the node
//! closes reconnects, trying its home node first and then the others, so the load goes on while
//! nodes die.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Longest wait for a TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before a client reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// How long a client that is asked to reconnect waits for its last echoes.
const CHURN_WAIT: Duration = Duration::from_secs(5);

/// One message a client sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its number on the connection, from 1.
    pub seq: u64,
    /// Its id, unique in the run.
    pub uid: String,
    /// When the client started writing it.
    pub at: Instant,
}

/// What happened on one client connection.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// Every message sent, in order.
    pub sent: Vec<Sent>,
    /// Echoes received, by `seq`, with how many times each came.
    pub echoes: HashMap<u64, u32>,
    /// Lines received that were not this connection's (must never happen).
    pub foreign: Vec<String>,
    /// Bytes received (a silent connection must get none).
    pub bytes_in: usize,
    /// When the client saw the node close it (EOF, reset, or a failed write).
    pub closed_by_node: Option<Instant>,
    /// How it saw the close.
    pub close_seen: Option<String>,
    /// When the client closed it itself.
    pub closed_by_client: Option<Instant>,
}

impl ConnState {
    /// Whether the connection is still open on both sides, as far as the client knows.
    pub fn is_open(&self) -> bool {
        self.closed_by_node.is_none() && self.closed_by_client.is_none()
    }

    fn all_echoed(&self) -> bool {
        self.sent.iter().all(|s| self.echoes.contains_key(&s.seq))
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// The line prefix: `c{client}.{generation}`.
    pub key: String,
    /// The node slot it connected to (read only through `Debug`, in a failing report).
    #[allow(dead_code)]
    pub slot: usize,
    /// That slot's node id when it connected.
    pub node_id: String,
    /// The client's address (the node's `SocketInfo.remote_addr`: how it is mapped to its
    /// socket id).
    pub local: SocketAddr,
    /// When the client began to connect: its socket's `opened` arrived at an upstream later.
    pub connecting_at: Instant,
    /// A connection that only listens (a flood socket).
    pub silent: bool,
    /// What happened on it.
    state: Mutex<ConnState>,
}

impl Conn {
    /// What happened on it so far.
    pub fn state(&self) -> ConnState {
        self.state.lock().unwrap().clone()
    }

    fn closed_by_node(&self, how: String) {
        let mut s = self.state.lock().unwrap();
        if s.is_open() {
            s.closed_by_node = Some(Instant::now());
            s.close_seen = Some(how);
        }
    }

    fn closed_by_client(&self) {
        let mut s = self.state.lock().unwrap();
        if s.is_open() {
            s.closed_by_client = Some(Instant::now());
        }
    }
}

/// What the clients share.
struct Shared {
    /// The node slots' listeners.
    addrs: Vec<SocketAddr>,
    /// Each slot's current node id.
    node_ids: Arc<Mutex<Vec<String>>>,
    /// Every connection so far.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Whether clients send (they keep reading either way).
    sending: watch::Sender<bool>,
    /// Tells one client to close its connection (after its echoes) and open a new one.
    churn: Vec<Notify>,
    /// Ends every client: their connections are closed.
    finish: CancellationToken,
    /// Time between two messages of one client.
    period: Duration,
}

/// How a connection ended, for its client.
enum Ended {
    ByNode,
    Churned,
    Finished,
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    /// The clients.
    tasks: Vec<JoinHandle<()>>,
    /// The silent connections' readers.
    silent: Mutex<Vec<JoinHandle<()>>>,
}

impl Load {
    /// Starts `per_node` clients homed on each node slot, each sending `rate` messages a second.
    pub fn start(addrs: Vec<SocketAddr>, node_ids: Arc<Mutex<Vec<String>>>, per_node: usize, rate: u32) -> Self {
        let clients = addrs.len() * per_node;
        let shared = Arc::new(Shared {
            addrs,
            node_ids,
            conns: Mutex::default(),
            sending: watch::Sender::new(true),
            churn: (0..clients).map(|_| Notify::new()).collect(),
            finish: CancellationToken::new(),
            period: Duration::from_secs(1) / rate,
        });
        let tasks = (0..clients).map(|c| tokio::spawn(client(shared.clone(), c, c % shared.addrs.len()))).collect();
        Self { shared, tasks, silent: Mutex::default() }
    }

    /// Every connection so far.
    pub fn conns(&self) -> Vec<Arc<Conn>> {
        self.shared.conns.lock().unwrap().clone()
    }

    /// Echoes received so far.
    pub fn echoed(&self) -> usize {
        self.conns().iter().map(|c| c.state.lock().unwrap().echoes.len()).sum()
    }

    /// Waits until every client is connected and `echoes` more echoes came back.
    pub async fn wait_flowing(&self, echoes: usize) {
        let want = self.echoed() + echoes;
        let clients = self.shared.churn.len();
        let started = Instant::now();
        while self.echoed() < want || self.open_loaded() < clients {
            assert!(started.elapsed() < Duration::from_secs(20), "the load did not start flowing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Open connections that send.
    fn open_loaded(&self) -> usize {
        self.conns().iter().filter(|c| !c.silent && c.state.lock().unwrap().is_open()).count()
    }

    /// Makes `n` clients close their connection (once their echoes are back) and open a new one.
    pub fn churn(&self, n: usize) {
        for notify in self.shared.churn.iter().take(n) {
            notify.notify_one();
        }
    }

    /// Stops sending (connections stay open and keep reading).
    pub fn stop_sending(&self) {
        self.shared.sending.send_replace(false);
    }

    /// Waits until every open connection has all its echoes, or `deadline` passed; returns
    /// whether it settled (when not, the checker says what is missing).
    pub async fn settle(&self, deadline: Duration) -> bool {
        let started = Instant::now();
        loop {
            let settled = self.conns().iter().all(|c| {
                let s = c.state.lock().unwrap();
                !s.is_open() || s.all_echoed()
            });
            if settled {
                return true;
            }
            if started.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens `n` connections to node `slot` that only listen (a flood); returns them.
    pub async fn open_silent(&self, slot: usize, n: usize) -> Vec<Arc<Conn>> {
        let mut opened = Vec::new();
        for i in 0..n {
            let connecting_at = Instant::now();
            let stream = TcpStream::connect(self.shared.addrs[slot]).await.expect("the node's listener accepts");
            let node_id = self.shared.node_ids.lock().unwrap()[slot].clone();
            let conn = Arc::new(Conn {
                key: format!("silent{slot}.{i}"),
                slot,
                node_id,
                local: stream.local_addr().unwrap(),
                connecting_at,
                silent: true,
                state: Mutex::default(),
            });
            self.shared.conns.lock().unwrap().push(conn.clone());
            let (read, write) = stream.into_split();
            let finish = self.shared.finish.clone();
            let c = conn.clone();
            let task = tokio::spawn(async move {
                let _write = write; // Held, so the client side stays open.
                tokio::select! {
                    () = read_loop(&c, read) => {}
                    () = finish.cancelled() => c.closed_by_client(),
                }
            });
            self.silent.lock().unwrap().push(task);
            opened.push(conn);
        }
        opened
    }

    /// Closes every connection and stops the clients.
    pub async fn finish(self) {
        self.shared.finish.cancel();
        let silent = std::mem::take(&mut *self.silent.lock().unwrap());
        for task in self.tasks.into_iter().chain(silent) {
            let _ = task.await;
        }
    }
}

/// One client: connects, sends and reads until the node closes the connection, then again.
async fn client(shared: Arc<Shared>, client: usize, home: usize) {
    let mut generation = 0;
    // Spread the clients' ticks over the period.
    let phase = shared.period.mul_f64(client as f64 / shared.churn.len() as f64);
    while !shared.finish.is_cancelled() {
        let Some((stream, slot, connecting_at)) = connect(&shared, home).await else {
            tokio::select! {
                () = shared.finish.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_PAUSE) => continue,
            }
        };
        generation += 1;
        let conn = Arc::new(Conn {
            key: format!("c{client}.{generation}"),
            slot,
            node_id: shared.node_ids.lock().unwrap()[slot].clone(),
            local: stream.local_addr().unwrap(),
            connecting_at,
            silent: false,
            state: Mutex::default(),
        });
        shared.conns.lock().unwrap().push(conn.clone());
        match serve(&shared, &conn, stream, phase, &shared.churn[client]).await {
            Ended::Finished => return,
            Ended::ByNode | Ended::Churned => {}
        }
        tokio::select! {
            () = shared.finish.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// Connects to the home node, or else to the next one that accepts; returns the stream, the
/// node slot, and when the successful attempt began.
async fn connect(shared: &Shared, home: usize) -> Option<(TcpStream, usize, Instant)> {
    let n = shared.addrs.len();
    for slot in (0..n).map(|i| (home + i) % n) {
        let connecting_at = Instant::now();
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.addrs[slot])).await {
            let _ = stream.set_nodelay(true);
            return Some((stream, slot, connecting_at));
        }
    }
    None
}

/// Runs one connection until the node closes it, the client is told to churn, or the load ends.
async fn serve(shared: &Shared, conn: &Conn, stream: TcpStream, phase: Duration, churn: &Notify) -> Ended {
    let (read, write) = stream.into_split();
    let reader = read_loop(conn, read);
    let writer = write_loop(shared, conn, write, phase);
    tokio::pin!(reader, writer);
    let ended = tokio::select! {
        () = &mut reader => return Ended::ByNode,
        () = &mut writer => return Ended::ByNode,
        () = shared.finish.cancelled() => Ended::Finished,
        () = churn.notified() => Ended::Churned,
    };
    if let Ended::Churned = ended {
        // Stop sending (the writer is no longer polled) and wait for the last echoes.
        let echoed = async {
            let started = Instant::now();
            while !conn.state.lock().unwrap().all_echoed() && started.elapsed() < CHURN_WAIT {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            () = &mut reader => return Ended::ByNode,
            () = echoed => {}
        }
    }
    conn.closed_by_client();
    ended
}

/// Sends one line per period while sending is on; returns when a write fails (the node closed
/// the connection).
async fn write_loop(shared: &Shared, conn: &Conn, mut write: OwnedWriteHalf, phase: Duration) {
    let mut ticker = tokio::time::interval_at(Instant::now() + phase, shared.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = shared.sending.subscribe();
    let mut seq = 0;
    loop {
        ticker.tick().await;
        if sending.wait_for(|on| *on).await.is_err() {
            return std::future::pending().await;
        }
        seq += 1;
        let uid = uuid::Uuid::now_v7().simple().to_string();
        let line = format!("{}:{seq}:{uid}\n", conn.key);
        conn.state.lock().unwrap().sent.push(Sent { seq, uid, at: Instant::now() });
        if let Err(e) = write.write_all(line.as_bytes()).await {
            conn.closed_by_node(format!("write failed: {}", e.kind()));
            return;
        }
    }
}

/// Reads lines until EOF or an error, recording echoes; marks the connection closed by the node.
async fn read_loop(conn: &Conn, read: OwnedReadHalf) {
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let prefix = format!("{}:", conn.key);
    loop {
        line.clear();
        let how = match reader.read_line(&mut line).await {
            Ok(0) => "eof".to_owned(),
            Ok(n) => {
                let mut s = conn.state.lock().unwrap();
                s.bytes_in += n;
                let seq = line.strip_prefix(&prefix).and_then(|rest| rest.split(':').next()?.parse::<u64>().ok());
                match seq {
                    Some(seq) => *s.echoes.entry(seq).or_default() += 1,
                    None => s.foreign.push(line.chars().take(120).collect()),
                }
                continue;
            }
            Err(e) => format!("read failed: {}", e.kind()),
        };
        conn.closed_by_node(how);
        return;
    }
}

/// A client that sends big lines as fast as it can and never reads: a slow consumer. Returns
/// its address (to find its socket) and whether a write failed, which is how it learns that the
/// node closed it, before `deadline`.
pub async fn slow_consumer(addr: SocketAddr, line_len: usize, deadline: Duration) -> (SocketAddr, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("the node accepts");
    let local = stream.local_addr().unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    let mut line = Vec::new();
    let mut written = 0;
    while started.elapsed() < deadline {
        if written == line.len() {
            n += 1;
            line = format!("slow:{n}:{}\n", "x".repeat(line_len)).into_bytes();
            written = 0;
        }
        // Not `write_all` under a timeout: a cancelled `write` wrote nothing, so lines stay whole.
        match tokio::time::timeout(Duration::from_millis(200), stream.write(&line[written..])).await {
            Ok(Ok(k)) => written += k,
            Ok(Err(_)) => return (local, true),
            // The node is not reading (inbound backpressure, or it is closing): try again.
            Err(_) => {}
        }
    }
    (local, false)
}
