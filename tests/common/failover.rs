//! A Redis failover under load, the same for every [`HaRedis`]: two nodes with four sockets each,
//! every socket writing a line every 10 ms, a cross-node send every 50 ms and a broadcast every
//! 200 ms; the primary holding the cluster's keys is killed with SIGKILL. Nothing may be lost: no
//! socket closed, every line at the upstream, every cross-node send and broadcast answered (OK,
//! or FAILED during the gap, and counted), every broadcast answered OK at every socket, nobody
//! reaped; afterwards the nodes are registered again with every socket (one opened during the
//! gap too) and cross-node sends succeed again. [`FailoverFigures`] says how long it took.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ppp::proto::{self, Status, node_event::Event, upstream_command::Command};
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
    /// Broadcasts answered FAILED (they missed a node that was subscribing again).
    pub broadcasts_failed: usize,
    /// Broadcasts in all.
    pub broadcasts: usize,
    /// Broadcasts answered OK that some socket did not get: silently lost.
    pub broadcasts_lost: usize,
    /// The answer to the admin API's cross-node send right after the kill.
    pub admin_status: u16,
    /// Sockets closed.
    pub sockets_lost: usize,
    /// Lines written by clients that the upstream did not get.
    pub events_lost: usize,
}

impl FailoverFigures {
    /// Prints [`FailoverFigures::line`] and asserts what every topology's failover must give:
    /// no socket and no event lost, no broadcast answered OK that missed a socket, and the
    /// admin API's cross-node send in the gap a 503.
    pub fn assert_nothing_lost(&self, topology: &str) {
        println!("{}", self.line(topology));
        assert_eq!((self.sockets_lost, self.events_lost), (0, 0), "{self:?}");
        assert_eq!(self.broadcasts_lost, 0, "a broadcast answered OK missed a socket: {self:?}");
        assert_eq!(self.admin_status, 503, "a cross-node send in the gap is a 503: {self:?}");
    }

    /// One line for the test log (and docs/benchmarks.md).
    pub fn line(&self, topology: &str) -> String {
        let after_promotion = self.recovered.saturating_sub(self.promoted).as_millis();
        format!(
            "FAILOVER {topology}: replica promoted after {} ms, announced after {} ms; cross-node sends OK again \
             after {} ms ({after_promotion} ms after the promotion); cross-node commands failed during the gap: \
             {}/{} sends, {}/{} broadcasts (OK but missing at a socket: {}); admin send in the gap: {}; sockets \
             lost: {}; events lost: {}",
            self.promoted.as_millis(),
            self.announced.as_millis(),
            self.recovered.as_millis(),
            self.failed,
            self.sent,
            self.broadcasts_failed,
            self.broadcasts,
            self.broadcasts_lost,
            self.admin_status,
            self.sockets_lost,
            self.events_lost,
        )
    }
}

/// The load: lines from every socket, cross-node sends to one socket, broadcasts to all.
struct Load {
    /// Stops the writers.
    stop: CancellationToken,
    /// Stops the sender.
    stop_sending: CancellationToken,
    /// Each socket's id and its writer task (which returns the client, still connected, and
    /// how many lines it wrote).
    writers: Vec<(String, JoinHandle<(Client, usize)>)>,
    /// The broadcasts each socket got, as `writers`.
    heard: Vec<Heard>,
    /// Cross-node sends and broadcasts so far.
    sent: Arc<Sent>,
    /// The sending task.
    sender: JoinHandle<()>,
}

/// The broadcast payloads one socket got.
type Heard = Arc<Mutex<HashSet<String>>>;

/// Commands sent so far.
#[derive(Default)]
struct Sent {
    /// Cross-node sends (`x{n}`).
    sends: AtomicUsize,
    /// Broadcasts (`b{n}`).
    broadcasts: AtomicUsize,
}

impl Load {
    /// Starts writing on every client and sending to `target` (on n1) through the upstream's
    /// latest stream (n2's): a cross-node send every 50 ms, a broadcast every 200 ms.
    fn start(clients: Vec<(Client, String)>, recording: Recording, target: &str) -> Self {
        let (stop, stop_sending) = (CancellationToken::new(), CancellationToken::new());
        let heard: Vec<Heard> = clients.iter().map(|_| Heard::default()).collect();
        let writers = clients
            .into_iter()
            .zip(&heard)
            .enumerate()
            .map(|(i, ((client, id), heard))| (id, tokio::spawn(write_lines(client, i, heard.clone(), stop.clone()))))
            .collect();
        let sent = Arc::new(Sent::default());
        let sender = tokio::spawn(send_commands(recording, target.to_owned(), sent.clone(), stop_sending.clone()));
        Self { stop, stop_sending, writers, heard, sent, sender }
    }

    /// Stops sending; returns the cross-node sends and the broadcasts sent.
    async fn stop_sending(&mut self) -> (usize, usize) {
        self.stop_sending.cancel();
        (&mut self.sender).await.unwrap();
        (self.sent.sends.load(Ordering::Relaxed), self.sent.broadcasts.load(Ordering::Relaxed))
    }

    /// Waits (up to the deadline) for every socket to have every broadcast of `ok`; returns how
    /// many (broadcast, socket) pairs are missing.
    async fn broadcasts_missing(&self, ok: &[String]) -> usize {
        let missing = || {
            let heard = self.heard.iter().map(|h| h.lock().unwrap().clone()).collect::<Vec<_>>();
            ok.iter().map(|b| heard.iter().filter(|h| !h.contains(b)).count()).sum::<usize>()
        };
        let _ = tokio::time::timeout(DEADLINE, async {
            while missing() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        missing()
    }

    /// Stops the writers; returns how many lines each socket wrote, and the clients (still
    /// connected).
    async fn stop(self) -> (HashMap<String, usize>, Vec<Client>) {
        self.stop.cancel();
        let (mut written, mut clients) = (HashMap::new(), Vec::new());
        for (id, writer) in self.writers {
            let (client, n) = writer.await.unwrap();
            written.insert(id, n);
            clients.push(client);
        }
        (written, clients)
    }
}

/// Writes `w{tag}-{n}` every 10 ms until stopped, reading what comes back meanwhile (and noting
/// the broadcasts in `heard`); returns the client and how many lines it wrote.
async fn write_lines(mut client: Client, tag: usize, heard: Heard, stop: CancellationToken) -> (Client, usize) {
    let Client { reader, writer } = &mut client;
    let mut written = 0;
    // `read_until` keeps what it read when the select drops it (`read_line` does not).
    let mut line = Vec::new();
    while !stop.is_cancelled() {
        if writer.write_all(format!("w{tag}-{written}\n").as_bytes()).await.is_err() {
            break;
        }
        written += 1;
        let pause = tokio::time::sleep(Duration::from_millis(10));
        tokio::select! {
            () = stop.cancelled() => {}
            () = pause => {}
            _ = reader.read_until(b'\n', &mut line) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text.starts_with('b') {
                    heard.lock().unwrap().insert(text);
                }
                line.clear();
            }
        }
    }
    (client, written)
}

/// Sends `x{n}` to `target` every 50 ms, and broadcasts `b{n}` every fourth time, on the
/// upstream's latest stream until stopped.
async fn send_commands(recording: Recording, target: String, sent: Arc<Sent>, stop: CancellationToken) {
    let mut tick = 0usize;
    while !stop.is_cancelled() {
        let stream = recording.streams().last().cloned();
        if let Some(tx) = stream {
            let n = sent.sends.load(Ordering::Relaxed);
            let command = with_id(&format!("x{n}"), send_command(&target, format!("x{n}")));
            if tx.send(Ok(command)).await.is_ok() {
                sent.sends.fetch_add(1, Ordering::Relaxed);
            }
            if tick % 4 == 3 {
                let n = sent.broadcasts.load(Ordering::Relaxed);
                let b = proto::Broadcast { scope: 0, payload: format!("b{n}").into(), ..Default::default() };
                if tx.send(Ok(with_id(&format!("b{n}"), Command::Broadcast(b)))).await.is_ok() {
                    sent.broadcasts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tick += 1;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// The receipts of the commands whose ids start with `kind` (`x` sends, `b` broadcasts) that
/// arrived after `since`: (when, id, OK).
fn receipts(recording: &Recording, since: Instant, kind: char) -> Vec<(Instant, String, bool)> {
    let result = |a: &super::recorder::Arrival| match &a.what {
        Arrived::Event(e) => match &e.event {
            Some(Event::Result(r)) if r.command_id.starts_with(kind) => {
                Some((a.at, r.command_id.clone(), r.status == Status::Ok as i32))
            }
            _ => None,
        },
        Arrived::Acked { .. } => None,
    };
    recording.arrivals().iter().filter(|a| a.at >= since).filter_map(result).collect()
}

/// When the cross-node sends succeeded again: the first of the (at least [`RECOVERED_AFTER`])
/// receipts since the last failure, all OK.
fn recovered_at(receipts: &[(Instant, String, bool)]) -> Option<Instant> {
    let after = receipts.iter().rposition(|(_, _, ok)| !ok).map_or(0, |i| i + 1);
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
    let mut load = Load::start(clients, up.recording(), &target);
    let start = Instant::now();
    eventually_async("cross-node sends succeed", || async {
        recovered_at(&receipts(&up.recording(), start, 'x')).is_some()
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
        recovered_at(&receipts(&up.recording(), killed, 'x')).is_some()
    })
    .await;
    let recovered = recovered_at(&receipts(&up.recording(), killed, 'x')).unwrap();
    let (sent, broadcasts) = load.stop_sending().await;
    let (failed, broadcasts_failed, ok_broadcasts) = answered(&up, start, sent, broadcasts).await;
    let broadcasts_lost = load.broadcasts_missing(&ok_broadcasts).await;
    let (written, _clients) = load.stop().await;
    let events_lost = lines_lost(&up, &written).await;
    registered_again(redis, &n1, &n2, &gap_socket).await;
    nobody_reaped(redis, &up).await;
    for (command, failed) in [("send", failed), ("broadcast", broadcasts_failed)] {
        let counted = failed_counted(&n2, command).await;
        assert!(counted >= failed as u64, "{counted} failed {command}s counted in /metrics, {failed} answered FAILED");
    }
    drop(during);
    FailoverFigures {
        promoted: promoted - killed,
        announced: announced - killed,
        recovered: recovered - killed,
        failed,
        sent,
        broadcasts_failed,
        broadcasts,
        broadcasts_lost,
        admin_status,
        sockets_lost: up.closed().len(),
        events_lost,
    }
}

/// Waits until every cross-node send (`sent`) and broadcast (`broadcasts`) since `start` is
/// answered; returns the failed sends, the failed broadcasts, and the ids of the OK broadcasts.
async fn answered(up: &TestUpstream, start: Instant, sent: usize, broadcasts: usize) -> (usize, usize, Vec<String>) {
    let count = |kind| receipts(&up.recording(), start, kind).len();
    eventually_async("every cross-node command answered", || async { count('x') == sent && count('b') == broadcasts })
        .await;
    let failed = receipts(&up.recording(), start, 'x').iter().filter(|(_, _, ok)| !ok).count();
    let broadcast_receipts = receipts(&up.recording(), start, 'b');
    let ok: Vec<String> = broadcast_receipts.iter().filter(|(_, _, ok)| *ok).map(|(_, id, _)| id.clone()).collect();
    (failed, broadcasts - ok.len(), ok)
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

/// `ppp_commands_total{command="{command}",status="failed"}` as a node's `/metrics` says.
async fn failed_counted(node: &AdminNode, command: &str) -> u64 {
    node.metric(&format!("ppp_commands_total{{command=\"{command}\",status=\"failed\"}}")).await as u64
}
