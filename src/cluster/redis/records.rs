//! Lifecycle records: what a node writes to Redis when its sockets open, close or change labels.
//!
//! The data path hands records to a bounded queue and never waits. One task drains the queue and
//! writes everything waiting as one batch, applied by `redis/records.lua` in one round trip, so
//! thousands of connects per second cost a handful of round trips. A batch is applied exactly
//! once even when it has to be sent again (the script keeps the last batch applied per node), so
//! `K:events` never holds an event twice. When Redis cannot be reached the records wait in the
//! queue (bounded by [`RECORD_QUEUE`]; beyond it they are refused and counted, and the
//! anti-entropy resync repairs the socket registry later).

use std::{sync::Arc, time::Duration};

use redis::Script;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{RedisBackend, keys::Keys, shared::SharedConn};
use crate::{
    cluster::{ClosedRecorded, Records},
    config::Config,
    metrics as m,
    socket::{CloseReason, Labels, SocketState, unix_ms},
};

/// Most records waiting for Redis at once (about 200 bytes each).
pub const RECORD_QUEUE: usize = 100_000;
/// Most records written in one pipelined round trip.
pub const RECORD_BATCH: usize = 2048;
/// `redis/records.lua`: applies one batch of records exactly once.
const RECORDS_LUA: &str = include_str!("../../../redis/records.lua");
/// Pause before retrying a batch Redis refused.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One lifecycle record.
#[derive(Debug)]
pub enum Record {
    /// A socket opened on this node.
    Opened {
        /// Socket id.
        id: Arc<str>,
        /// Client address.
        remote: String,
        /// Node address.
        local: String,
        /// Accept time, unix ms.
        connected_at: i64,
        /// The SNI name of a TLS socket that sent one.
        tls_server_name: Option<Box<str>>,
        /// Announced again after the cluster reaped it while the node was cut off.
        resumed: bool,
    },
    /// A socket of this node closed.
    Closed {
        /// Socket id.
        id: Arc<str>,
        /// Close reason.
        reason: &'static str,
        /// When, unix ms.
        at: i64,
        /// Told, once the record is applied, whether the socket's `closed` event still goes to
        /// the upstreams (`false`: the cluster had reaped the socket and announced it).
        recorded: oneshot::Sender<bool>,
    },
    /// A socket's labels are now these.
    Labels {
        /// Socket id.
        id: Arc<str>,
        /// The complete labels.
        labels: Arc<Labels>,
    },
}

/// Writes records for one node.
pub struct RecordWriter {
    /// Where records wait.
    rx: mpsc::Receiver<Record>,
    /// Redis.
    conn: Arc<SharedConn>,
    /// Key names.
    keys: Keys,
    /// This node's id.
    node: String,
    /// `--events-max`.
    events_max: u64,
    /// `redis/records.lua`.
    script: Script,
    /// This process's run id: with the batch sequence number, names a batch uniquely.
    run: String,
    /// True once this run is registered in the cluster (and a previous run with the same node id
    /// reaped): nothing is written before.
    registered: watch::Receiver<bool>,
}

impl RecordWriter {
    /// A writer and the sender the data path records into.
    pub fn new(
        conn: Arc<SharedConn>,
        keys: Keys,
        node: &str,
        run: &str,
        config: &Config,
        registered: &watch::Sender<bool>,
    ) -> (Self, mpsc::Sender<Record>) {
        let (tx, rx) = mpsc::channel(RECORD_QUEUE);
        let (node, run, registered) = (node.to_owned(), run.to_owned(), registered.subscribe());
        let script = Script::new(RECORDS_LUA);
        (Self { rx, conn, keys, node, events_max: config.events_max, script, run, registered }, tx)
    }

    /// Writes records, once this run is registered, until `stop` is cancelled and the queue is
    /// empty.
    pub async fn run(mut self, stop: CancellationToken) {
        tokio::select! {
            r = self.registered.wait_for(|r| *r) => if r.is_err() { return },
            () = stop.cancelled() => return,
        }
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        let mut seq: u64 = 0;
        loop {
            let first = tokio::select! {
                biased;
                r = self.rx.recv() => r,
                () = stop.cancelled() => self.rx.try_recv().ok(),
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < RECORD_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            seq += 1;
            // The same sequence number on every attempt: Redis applies the batch once.
            let reaped = loop {
                match self.write(seq, &batch).await {
                    Ok(reaped) => break reaped,
                    Err(e) => {
                        warn!(error = %e, records = batch.len(), "could not write lifecycle records; retrying");
                        metrics::counter!(m::REDIS_ERRORS).increment(1);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = stop.cancelled() => return,
                }
            };
            release_closed(&mut batch, &reaped);
        }
    }

    /// Writes one batch in one round trip; returns the ids of the sockets whose `closed` was not
    /// recorded because the cluster had reaped them already.
    async fn write(&self, seq: u64, batch: &[Record]) -> Result<Vec<String>, redis::RedisError> {
        let mut apply = redis::cmd("EVALSHA");
        apply.arg(self.script.get_hash()).arg(1).arg(self.keys.node(&self.node));
        apply.arg(self.keys.base()).arg(&self.node).arg(&self.run).arg(seq).arg(self.events_max);
        for record in batch {
            match record {
                Record::Opened { id, remote, local, connected_at, tls_server_name, resumed } => {
                    let kind = if *resumed { "r" } else { "o" };
                    apply.arg(kind).arg(&**id).arg(remote).arg(local).arg(*connected_at);
                    apply.arg(tls_server_name.as_deref().unwrap_or_default());
                }
                Record::Closed { id, reason, at, .. } => {
                    apply.arg("c").arg(&**id).arg(*reason).arg(*at);
                }
                Record::Labels { id, labels } => {
                    apply.arg("l").arg(&**id).arg(labels.len());
                    for (k, v) in labels.iter() {
                        apply.arg(k).arg(v);
                    }
                }
            }
        }
        let mut pipe = redis::pipe();
        // Loaded in the same round trip, so a Redis that restarted empty still has it.
        pipe.cmd("SCRIPT").arg("LOAD").arg(RECORDS_LUA).ignore();
        pipe.add_command(apply);
        let (reaped,): (Vec<String>,) =
            self.conn.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await?;
        Ok(reaped)
    }
}

/// Empties an applied batch, telling each closed socket whether its `closed` event still goes to
/// the upstreams: not when the cluster had reaped it (and announced its `closed`).
fn release_closed(batch: &mut Vec<Record>, reaped: &[String]) {
    for record in batch.drain(..) {
        if let Record::Closed { id, recorded, .. } = record {
            let _ = recorded.send(!reaped.iter().any(|r| **r == *id));
        }
    }
}

/// The `XADD` of one `K:events` entry (trimmed to about `events_max`).
pub fn event(keys: &Keys, events_max: u64, kind: &str, socket: &str, node: &str, at: i64, reason: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys.events.clone()).arg("MAXLEN").arg("~").arg(events_max).arg("*");
    cmd.arg("type")
        .arg(kind)
        .arg("socket")
        .arg(socket)
        .arg("node")
        .arg(node)
        .arg("at")
        .arg(at)
        .arg("reason")
        .arg(reason);
    cmd
}

/// Adds the commands that register one live socket (hash with labels, node set, index) to
/// `pipe`, without an event: used by the resync, which repairs state, not history.
pub fn register(pipe: &mut redis::Pipeline, keys: &Keys, node: &str, socket: &crate::socket::SocketState) {
    let key = keys.socket(&socket.id_str);
    let mut fields: Vec<(String, String)> = vec![
        ("node".into(), node.to_owned()),
        ("remote".into(), socket.remote_addr.to_string()),
        ("local".into(), socket.local_addr.to_string()),
        ("connected_at".into(), socket.connected_at_ms.to_string()),
        ("last_seen".into(), socket.last_seen_ms().to_string()),
    ];
    if let Some(name) = &socket.tls_server_name {
        fields.push(("tls_server_name".into(), name.to_string()));
    }
    fields.extend(socket.labels().iter().map(|(k, v)| (format!("label:{k}"), v.clone())));
    pipe.del(&key).ignore();
    pipe.hset_multiple(&key, &fields).ignore();
    pipe.sadd(keys.node_sockets(node), &*socket.id_str).ignore();
    pipe.zadd(keys.sockets.clone(), &*socket.id_str, socket.connected_at_ms).ignore();
}

impl Record {
    /// The `opened` record of `socket`; `resumed` when it is announced again.
    pub fn opened(socket: &SocketState, resumed: bool) -> Self {
        Self::Opened {
            id: socket.id_str.clone(),
            remote: socket.remote_addr.to_string(),
            local: socket.local_addr.to_string(),
            connected_at: socket.connected_at_ms,
            tls_server_name: socket.tls_server_name.clone(),
            resumed,
        }
    }
}

impl Records for RedisBackend {
    fn socket_opened(&self, socket: &SocketState) {
        self.record(Record::opened(socket, false));
    }

    fn socket_closed(&self, socket: &SocketState, reason: CloseReason) -> Option<ClosedRecorded> {
        let (tx, rx) = oneshot::channel();
        let record = Record::Closed { id: socket.id_str.clone(), reason: reason.as_str(), at: unix_ms(), recorded: tx };
        self.record(record).then_some(rx)
    }

    fn labels_changed(&self, socket: &SocketState) {
        self.record(Record::Labels { id: socket.id_str.clone(), labels: socket.labels() });
    }
}

impl RedisBackend {
    /// Queues a lifecycle record; `false` when the queue is full (the record is lost: the
    /// resync repairs the registry, but its `K:events` entry is missing).
    pub(super) fn record(&self, record: Record) -> bool {
        if self.records.try_send(record).is_err() {
            warn!("lifecycle record queue full; the resync will repair the registry");
            metrics::counter!(m::MESSAGES_REFUSED, "reason" => "record_queue_full").increment(1);
            return false;
        }
        true
    }
}
