//! A Redis failover under load, the same for every [`HaRedis`]: two nodes with four sockets each,
//! every socket writing a line every 10 ms, a cross-node send every 50 ms; the primary holding the
//! cluster's keys is killed with SIGKILL. Nothing may be lost: no socket closed, every line at the
//! upstream, every cross-node send answered (OK, or FAILED during the gap, and counted), nobody
//! reaped; afterwards the nodes are registered again with every socket (one opened during the
//! gap too) and cross-node sends succeed again. [`FailoverFigures`] says how long it took.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ppp::proto::{Status, node_event::Event};
use redis::AsyncCommands;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    admin::AdminNode,
    client::Client,
    ha::{HaRedis, NODE_TTL, ha_config},
    recorder::{Arrived, Recording},
    topology::K,
    upstream::{TestUpstream, send_command, with_id},
    wait::{DEADLINE, eventually_async},
};

/// Sockets per node.
const SOCKETS: usize = 4;
/// Receipts in a row that must succeed for the cross-node sends to count as recovered.
const RECOVERED_AFTER: usize = 20;

/// What a failover cost.
#[derive(Debug)]
pub struct FailoverFigures {
    /// Primary killed → the replica said it was the primary.
    pub promoted: Duration,
    /// Primary killed → every Sentinel named the new primary (every cluster node said ok).
    pub announced: Duration,
    /// Primary killed → the first receipt of the cross-node sends that all succeeded since.
    pub recovered: Duration,
    /// Cross-node sends answered FAILED.
    pub failed: usize,
    /// Cross-node sends in all.
    pub sent: usize,
    /// The answer to the admin API's cross-node send right after the kill.
    pub admin_status: u16,
    /// Sockets closed.
    pub sockets_lost: usize,
    /// Lines written by clients that the upstream did not get.
    pub events_lost: usize,
}

impl FailoverFigures {
    /// One line for the test log (and docs/benchmarks.md).
    pub fn line(&self, topology: &str) -> String {
        let after_promotion = self.recovered.saturating_sub(self.promoted).as_millis();
        format!(
            "FAILOVER {topology}: replica promoted after {} ms, announced after {} ms; cross-node sends OK again \
             after {} ms ({after_promotion} ms after the promotion); {}/{} cross-node sends failed; admin send \
             in the gap: {}; sockets lost: {}; events lost: {}",
            self.promoted.as_millis(),
            self.announced.as_millis(),
            self.recovered.as_millis(),
            self.failed,
            self.sent,
            self.admin_status,
            self.sockets_lost,
            self.events_lost,
        )
    }
}

/// The load: lines from every socket, cross-node sends to one socket.
struct Load {
    /// Stops it.
    stop: CancellationToken,
    /// Each socket's id and its writer task (which returns the client, still connected, and
    /// how many lines it wrote).
    writers: Vec<(String, JoinHandle<(Client, usize)>)>,
    /// Cross-node sends so far.
    sent: Arc<AtomicUsize>,
    /// The sending task.
    sender: JoinHandle<()>,
}

impl Load {
    /// Starts writing on every client and sending to `target` (on n1) through the upstream's
    /// latest stream (n2's): a cross-node send every 50 ms.
    fn start(clients: Vec<(Client, String)>, recording: Recording, target: &str) -> Self {
        let stop = CancellationToken::new();
        let writers = clients
            .into_iter()
            .enumerate()
            .map(|(i, (client, id))| (id, tokio::spawn(write_lines(client, i, stop.clone()))))
            .collect();
        let sent = Arc::new(AtomicUsize::new(0));
        let sender = tokio::spawn(send_commands(recording, target.to_owned(), sent.clone(), stop.clone()));
        Self { stop, writers, sent, sender }
    }

    /// Stops it; returns how many lines each socket wrote, the cross-node sends, and the
    /// clients (still connected).
    async fn stop(self) -> (HashMap<String, usize>, usize, Vec<Client>) {
        self.stop.cancel();
        self.sender.await.unwrap();
        let (mut written, mut clients) = (HashMap::new(), Vec::new());
        for (id, writer) in self.writers {
            let (client, n) = writer.await.unwrap();
            written.insert(id, n);
            clients.push(client);
        }
        (written, self.sent.load(Ordering::Relaxed), clients)
    }
}

/// Writes `w{tag}-{n}` every 10 ms until stopped (reading whatever comes back meanwhile);
/// returns the client and how many lines it wrote.
async fn write_lines(mut client: Client, tag: usize, stop: CancellationToken) -> (Client, usize) {
    let Client { reader, writer } = &mut client;
    let mut written = 0;
    let mut line = String::new();
    while !stop.is_cancelled() {
        if writer.write_all(format!("w{tag}-{written}\n").as_bytes()).await.is_err() {
            break;
        }
        written += 1;
        let pause = tokio::time::sleep(Duration::from_millis(10));
        tokio::select! {
            () = stop.cancelled() => {}
            () = pause => {}
            _ = reader.read_line(&mut line) => line.clear(),
        }
    }
    (client, written)
}

/// Sends `x{n}` to `target` every 50 ms on the upstream's latest stream until stopped.
async fn send_commands(recording: Recording, target: String, sent: Arc<AtomicUsize>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let stream = recording.streams().last().cloned();
        if let Some(tx) = stream {
            let n = sent.load(Ordering::Relaxed);
            let command = with_id(&format!("x{n}"), send_command(&target, format!("x{n}")));
            if tx.send(Ok(command)).await.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// The receipts of the cross-node sends that arrived after `since`: (when, OK).
fn receipts(recording: &Recording, since: Instant) -> Vec<(Instant, bool)> {
    let result = |a: &super::recorder::Arrival| match &a.what {
        Arrived::Event(e) => match &e.event {
            Some(Event::Result(r)) if r.command_id.starts_with('x') => Some((a.at, r.status == Status::Ok as i32)),
            _ => None,
        },
        Arrived::Acked { .. } => None,
    };
    recording.arrivals().iter().filter(|a| a.at >= since).filter_map(result).collect()
}

/// When the cross-node sends succeeded again: the first of the (at least [`RECOVERED_AFTER`])
/// receipts since the last failure, all OK.
fn recovered_at(receipts: &[(Instant, bool)]) -> Option<Instant> {
    let after = receipts.iter().rposition(|(_, ok)| !ok).map_or(0, |i| i + 1);
    (receipts.len() - after >= RECOVERED_AFTER).then(|| receipts[after].0)
}

/// Two nodes with [`SOCKETS`] sockets each, all registered; returns them and the clients with
/// their ids (n1's first).
async fn two_loaded_nodes<R: HaRedis>(redis: &R, up: &TestUpstream) -> (AdminNode, AdminNode, Vec<(Client, String)>) {
    let n1 = AdminNode::start(ha_config(redis, "n1", &[up])).await;
    let n2 = AdminNode::start(ha_config(redis, "n2", &[up])).await;
    let mut clients = Vec::new();
    for i in 0..SOCKETS * 2 {
        let node = if i < SOCKETS { &n1 } else { &n2 };
        let client = Client::connect(&node.node).await;
        clients.push((client, up.wait_opened(i + 1).await[i].clone()));
    }
    for (_, id) in &clients {
        redis.wait_exists("registered", &format!("{K}socket:{id}")).await;
    }
    (n1, n2, clients)
}

/// The failover under load (see the module's doc); returns what it cost.
pub async fn a_failover_loses_nothing<R: HaRedis>(redis: &mut R) -> FailoverFigures {
    let up = TestUpstream::start(false).await;
    let (n1, n2, clients) = two_loaded_nodes(redis, &up).await;
    let target = clients[0].1.clone();
    let load = Load::start(clients, up.recording(), &target);
    let start = Instant::now();
    eventually_async("cross-node sends succeed", || async {
        recovered_at(&receipts(&up.recording(), start)).is_some()
    })
    .await;

    let killed = Instant::now();
    redis.kill_primary().await;
    let path = format!("/v1/sockets/{target}/messages");
    let admin_status = n2.send(n2.req(reqwest::Method::POST, &path).body("in the gap\n")).await.status;
    let during = Client::connect(&n1.node).await;
    let gap_socket = up.wait_opened(SOCKETS * 2 + 1).await[SOCKETS * 2].clone();
    let (promoted, announced) = redis.wait_promoted().await;
    eventually_async("cross-node sends succeed again", || async {
        recovered_at(&receipts(&up.recording(), killed)).is_some()
    })
    .await;
    let recovered = recovered_at(&receipts(&up.recording(), killed)).unwrap();
    let (written, sent, _clients) = load.stop().await;

    let answered = || receipts(&up.recording(), start).len();
    eventually_async("every cross-node send answered", || async { answered() == sent }).await;
    let failed = receipts(&up.recording(), start).iter().filter(|(_, ok)| !ok).count();
    let events_lost = lines_lost(&up, &written).await;
    registered_again(redis, &n1, &n2, &gap_socket).await;
    nobody_reaped(redis, &up).await;
    let counted = failed_sends_counted(&n2).await;
    assert!(counted >= failed as u64, "{counted} failed sends counted in /metrics, {failed} answered FAILED");
    drop(during);
    FailoverFigures {
        promoted: promoted - killed,
        announced: announced - killed,
        recovered: recovered - killed,
        failed,
        sent,
        admin_status,
        sockets_lost: up.closed().len(),
        events_lost,
    }
}

/// Waits (up to the deadline) for the upstream to have every line written; returns how many
/// it does not have.
async fn lines_lost(up: &TestUpstream, written: &HashMap<String, usize>) -> usize {
    let lost = || {
        let mut got: HashMap<String, usize> = HashMap::new();
        for d in up.data() {
            *got.entry(d.socket_id).or_default() += 1;
        }
        written.iter().map(|(id, n)| n.saturating_sub(got.get(id).copied().unwrap_or(0))).sum::<usize>()
    };
    let _ = tokio::time::timeout(DEADLINE, async {
        while lost() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    lost()
}

/// Waits until both nodes are registered on the new primary with every socket they hold (the
/// one opened during the gap too).
async fn registered_again<R: HaRedis>(redis: &R, n1: &AdminNode, n2: &AdminNode, gap_socket: &str) {
    for (id, node) in [("n1", n1), ("n2", n2)] {
        let mut held: Vec<String> = node.node.sockets().snapshot().iter().map(|s| s.id_str.to_string()).collect();
        held.sort();
        let key = format!("{K}node:{id}:sockets");
        eventually_async("registered again with every socket", || async {
            let mut conn = redis.conn().await;
            let mut in_redis: Vec<String> = conn.smembers(&key).await.unwrap_or_default();
            in_redis.sort();
            let beat: Option<i64> = conn.zscore(format!("{K}nodes"), id).await.unwrap_or(None);
            in_redis == held && beat.is_some()
        })
        .await;
    }
    let key = format!("{K}socket:{gap_socket}");
    assert!(redis.conn().await.exists::<_, bool>(&key).await.unwrap(), "the socket opened in the gap is registered");
}

/// Checks, a `--node-ttl` after the failover, that nobody was reaped.
async fn nobody_reaped<R: HaRedis>(redis: &R, up: &TestUpstream) {
    tokio::time::sleep(NODE_TTL).await;
    let mut conn = redis.conn().await;
    let nodes: Vec<String> = conn.zrange(format!("{K}nodes"), 0, -1).await.unwrap();
    assert_eq!(nodes.len(), 2, "both nodes still registered: {nodes:?}");
    let events = conn.xrange_all::<_, redis::streams::StreamRangeReply>(format!("{K}events")).await.unwrap().ids;
    let down = events.iter().filter(|e| e.get::<String>("type").as_deref() == Some("node_down")).count();
    assert_eq!(down, 0, "a node was reaped because of the failover");
    assert!(up.closed().is_empty(), "sockets closed: {:?}", up.closed());
}

/// `ppp_commands_total{command="send",status="failed"}` as a node's `/metrics` says.
async fn failed_sends_counted(node: &AdminNode) -> u64 {
    let text = node.get("/metrics").await.text;
    let prefix = "ppp_commands_total{command=\"send\",status=\"failed\"} ";
    text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}
