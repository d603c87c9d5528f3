//! The cluster backend on Redis (DESIGN §4).
//!
//! - [`keys`]: every key and channel name.
//! - [`connection`]: the pool, the shared connection of the hot paths, and the timeout on every
//!   round trip.
//! - [`records`]: lifecycle records, queued and applied in batches, each exactly once.
//! - [`bus`]: pub/sub messages between nodes (MessagePack).
//! - [`counter`]: the shared round-robin counter, leased in blocks.
//! - [`listing`]: the cluster's nodes and sockets as the admin API reads them.
//! - [`membership`]: the heartbeat, registration, and the reaper's judgement of death.
//! - [`reaper`]: announcing a reaped node's `closed` events to the upstreams, once.
//! - [`resync`]: anti-entropy of the socket registry, and the `last_seen` refresher.
//! - [`subscriber`]: the bus subscriber (this node's, the broadcast and the control channel).
//! - [`forwarding`]: commands for other nodes' sockets, and broadcasts.
//! - [`registry`]: the shared upstream registry.
//! - this file: the backend itself (its state, its tasks) and the [`Backend`] it implements.

pub mod bus;
pub mod connection;
pub mod counter;
pub mod forwarding;
pub mod keys;
pub mod listing;
pub mod membership;
pub mod reaper;
pub mod records;
pub mod registry;
pub mod resync;
pub mod subscriber;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::{AsyncCommands, Script};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use self::{
    bus::BusMessage,
    connection::{SharedConn, open, pool_error, timed, unavailable, within},
    counter::{LeasedCounter, SharedCounter},
    keys::Keys,
    records::{Record, RecordWriter},
};
use super::{
    Backend, BackendError, Counter, UpstreamEntry,
    view::{NodeRecord, SocketPage, SocketQuery, SocketRecord},
};
use crate::{
    command::{Broadcast, Command, Dispatcher, Receipt},
    config::Config,
    metrics as m,
    settings::RuntimePatch,
    socket::{CloseReason, SocketId, SocketState, unix_ms},
};

pub use membership::HEARTBEAT;
/// Reap announcements waiting for the node to hand them to its upstreams.
const ANNOUNCE_QUEUE: usize = 4;
/// How long a node waits for the owner's receipt of a command it forwarded.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Runtime settings changes held for the node to apply; more at once is an operator's loop.
const RUNTIME_BACKLOG: usize = 64;
/// Pause before reconnecting the bus subscriber.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);

/// `redis/reap.lua`.
const REAP_LUA: &str = include_str!("../../../redis/reap.lua");
/// `redis/touch.lua`.
const TOUCH_LUA: &str = include_str!("../../../redis/touch.lua");

/// A node's view of the cluster, through Redis. Created by [`RedisBackend::connect`].
pub struct RedisBackend {
    /// Key names.
    keys: Keys,
    /// This node's id.
    node: String,
    /// Pooled connections for commands (pub/sub has its own).
    pool: Pool,
    /// The connection of the hot paths (commands for other nodes, publishing).
    shared: Arc<SharedConn>,
    /// The URL, for the subscriber's dedicated connection.
    client: redis::Client,
    /// The record writer's queue.
    records: mpsc::Sender<Record>,
    /// The leased round-robin counter.
    counter: Arc<LeasedCounter>,
    /// Bumped when the registry may have changed.
    registry: watch::Sender<u64>,
    /// Commands sent to other nodes, waiting for their receipts.
    pending: Mutex<HashMap<u64, oneshot::Sender<Receipt>>>,
    /// Request ids.
    next_request: AtomicU64,
    /// Carries out commands that arrive from other nodes; set by [`RedisBackend::attach`].
    local: OnceLock<Dispatcher>,
    /// Fields of `K:node:{node}`.
    node_fields: Vec<(&'static str, String)>,
    /// `--node-ttl`.
    node_ttl: Duration,
    /// `--events-max`.
    events_max: u64,
    /// Stops the background tasks.
    stop: CancellationToken,
    /// The background tasks.
    tracker: TaskTracker,
    /// `redis/reap.lua`.
    reap_script: Script,
    /// `redis/announce.lua` (hashed once, not per batch).
    announce_script: Script,
    /// This run's id (`NodeHello.run_id`, `run_id` in `K:node:{node}`).
    run_id: String,
    /// True once this run is registered (and its node id's previous run reaped).
    registered: watch::Sender<bool>,
    /// This run's heartbeats as counted in `K:node:{node}` (`beats`): a count that does not
    /// follow on means Redis lost or rewound its data.
    beats: AtomicU64,
    /// The node was reaped while cut off and must announce its sockets again.
    resume_pending: AtomicBool,
    /// How long a reap batch handed to the upstreams is given to be confirmed (acknowledged, or
    /// received per a health check) before it leaves the job.
    confirm_wait: Duration,
    /// A reap job is being announced by this node.
    announcing: AtomicBool,
    /// Where reap announcements go (the node hands them to its upstreams).
    announce_tx: mpsc::Sender<super::Announcement>,
    /// The receiving end, taken once by the node.
    announce_rx: Mutex<Option<mpsc::Receiver<super::Announcement>>>,
    /// `--resync-interval`.
    resync_interval: Duration,
    /// `--idle-after`: `last_seen` is refreshed every quarter of it.
    idle_after: Duration,
    /// The registry as this node last saw it, to seed it again if Redis loses it.
    known_upstreams: Mutex<Vec<UpstreamEntry>>,
    /// The last heartbeat reached Redis.
    reachable: AtomicBool,
    /// Wakes the resync early (the node found it was reaped, or Redis came back empty).
    resync_now: Notify,
    /// Runtime settings changes from other nodes.
    runtime: broadcast::Sender<RuntimePatch>,
}

impl RedisBackend {
    /// Connects to `--redis` and starts the record writer, the heartbeat and the bus subscriber.
    /// Redis need not be reachable yet: every task retries.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] when the URL is not a Redis URL.
    pub fn connect(config: &Config, node: &str, run_id: &str, listen: SocketAddr) -> Result<Arc<Self>, BackendError> {
        let (client, pool) = open(config.redis.as_deref().unwrap_or_default())?;
        let keys = Keys::new(&config.redis_prefix, &config.cluster);
        let shared = Arc::new(SharedConn::new(pool.clone()));
        let registered = watch::Sender::new(false);
        let (writer, records) = RecordWriter::new(
            shared.clone(),
            keys.clone(),
            node.to_owned(),
            run_id.to_owned(),
            config.events_max,
            registered.subscribe(),
        );
        let (announce_tx, announce_rx) = mpsc::channel(ANNOUNCE_QUEUE);
        let backend = Arc::new(Self {
            counter: LeasedCounter::new(shared.clone(), keys.rr()),
            shared,
            keys,
            node: node.to_owned(),
            pool,
            client,
            records,
            registry: watch::Sender::new(0),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            local: OnceLock::new(),
            node_fields: vec![
                ("listen", listen.to_string()),
                ("admin", config.admin_listen.to_string()),
                ("started_at", unix_ms().to_string()),
                ("version", crate::VERSION.to_owned()),
                ("run_id", run_id.to_owned()),
            ],
            node_ttl: config.node_ttl,
            events_max: config.events_max,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            reap_script: Script::new(REAP_LUA),
            announce_script: Script::new(reaper::ANNOUNCE_LUA),
            run_id: run_id.to_owned(),
            registered,
            beats: AtomicU64::new(0),
            resume_pending: AtomicBool::new(false),
            announcing: AtomicBool::new(false),
            confirm_wait: reaper::confirm_wait(config.health_interval),
            announce_tx,
            announce_rx: Mutex::new(Some(announce_rx)),
            resync_interval: config.resync_interval,
            idle_after: config.idle_after,
            resync_now: Notify::new(),
            reachable: AtomicBool::new(false),
            known_upstreams: Mutex::default(),
            runtime: broadcast::Sender::new(RUNTIME_BACKLOG),
        });
        backend.spawn_tasks(writer);
        Ok(backend)
    }

    /// Starts the record writer, the heartbeat, the bus subscriber, the resync and the
    /// `last_seen` refresher.
    fn spawn_tasks(self: &Arc<Self>, writer: RecordWriter) {
        let stop = self.stop.child_token();
        self.tracker.spawn(writer.run(stop).instrument(info_span!("records")));
        self.tracker.spawn(self.clone().heartbeat().instrument(info_span!("heartbeat")));
        self.tracker.spawn(self.clone().subscribe().instrument(info_span!("bus")));
        self.tracker.spawn(self.clone().resync_loop().instrument(info_span!("resync")));
        self.tracker.spawn(self.clone().touch_loop().instrument(info_span!("last_seen")));
    }

    /// Gives the backend the dispatcher that carries out commands arriving from other nodes.
    pub fn attach(&self, dispatcher: Dispatcher) {
        let _ = self.local.set(dispatcher);
    }

    /// Queues a lifecycle record; `false` when the queue is full (the record is lost: the
    /// resync repairs the registry, but its `K:events` entry is missing).
    fn record(&self, record: Record) -> bool {
        if self.records.try_send(record).is_err() {
            warn!("lifecycle record queue full; the resync will repair the registry");
            metrics::counter!(m::MESSAGES_REFUSED, "reason" => "record_queue_full").increment(1);
            return false;
        }
        true
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn socket_opened(&self, socket: &SocketState) {
        self.record(Record::Opened {
            id: socket.id_str.clone(),
            remote: socket.remote_addr.to_string(),
            local: socket.local_addr.to_string(),
            connected_at: socket.connected_at_ms,
            tls_server_name: socket.tls_server_name.clone(),
            resumed: false,
        });
    }

    fn socket_closed(&self, socket: &SocketState, reason: CloseReason) -> Option<super::ClosedRecorded> {
        let (tx, rx) = oneshot::channel();
        let record = Record::Closed { id: socket.id_str.clone(), reason: reason.as_str(), at: unix_ms(), recorded: tx };
        self.record(record).then_some(rx)
    }

    fn labels_changed(&self, socket: &SocketState) {
        self.record(Record::Labels { id: socket.id_str.clone(), labels: socket.labels() });
    }

    async fn forward_command(&self, command: &Command) -> Receipt {
        self.forward(command).await
    }

    async fn broadcast(&self, broadcast: &Broadcast) -> Receipt {
        self.publish_broadcast(broadcast).await
    }

    fn counter(&self) -> Arc<dyn Counter> {
        Arc::new(SharedCounter(self.counter.clone()))
    }

    async fn upstreams(&self) -> Result<Vec<UpstreamEntry>, BackendError> {
        self.registry_entries().await
    }

    async fn add_upstream(&self, entry: UpstreamEntry) -> Result<(), BackendError> {
        self.registry_add(entry).await
    }

    async fn remove_upstream(&self, id: &str) -> Result<bool, BackendError> {
        self.registry_remove(id).await
    }

    fn registry_changes(&self) -> watch::Receiver<u64> {
        self.registry.subscribe()
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let beats: Vec<(String, i64)> =
                conn.zrange_withscores(self.keys.nodes(), 0, -1).await.map_err(unavailable)?;
            let mut pipe = redis::pipe();
            for (node, _) in &beats {
                pipe.hgetall(self.keys.node(node));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut *conn).await.map_err(unavailable)?;
            let now = unix_ms();
            let mut nodes: Vec<NodeRecord> =
                beats.into_iter().zip(hashes).map(|((id, beat), h)| listing::node_record(id, now - beat, &h)).collect();
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(nodes)
        })
        .await
    }

    async fn sockets(&self, query: &SocketQuery) -> Result<SocketPage, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            listing::sockets(&mut conn, &self.keys, query).await.map_err(unavailable)
        })
        .await
    }

    async fn socket(&self, id: SocketId, idle_after: Duration) -> Result<Option<SocketRecord>, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let id = id.to_string();
            let hash: HashMap<String, String> = conn.hgetall(self.keys.socket(&id)).await.map_err(unavailable)?;
            Ok(SocketRecord::from_hash(&id, &hash, idle_after))
        })
        .await
    }

    async fn publish_runtime(&self, patch: &RuntimePatch) -> Result<(), BackendError> {
        let message = BusMessage::Runtime { origin: self.node.clone(), patch: patch.clone() };
        within(async { self.publish(&self.keys.control_channel(), message).await.map(|_| ()).map_err(unavailable) })
            .await
    }

    fn runtime_changes(&self) -> broadcast::Receiver<RuntimePatch> {
        self.runtime.subscribe()
    }

    fn queue_depth(&self) -> usize {
        self.records.max_capacity() - self.records.capacity()
    }

    fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    fn announcements(&self) -> Option<mpsc::Receiver<super::Announcement>> {
        self.announce_rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    async fn draining(&self) {
        let marked: Result<(), redis::RedisError> = timed(async {
            let mut conn = self.pool.get().await.map_err(pool_error)?;
            conn.hset(self.keys.node(&self.node), "draining", "1").await
        })
        .await;
        if let Err(e) = marked {
            warn!(error = %e, "could not mark the node draining");
        }
    }

    async fn leave(&self) {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        let left: Result<(), redis::RedisError> = timed(async {
            let mut conn = self.pool.get().await.map_err(pool_error)?;
            redis::pipe()
                .zrem(self.keys.nodes(), &self.node)
                .ignore()
                .del(self.keys.node(&self.node))
                .ignore()
                .del(self.keys.node_sockets(&self.node))
                .ignore()
                .query_async(&mut *conn)
                .await
        })
        .await;
        match left {
            Ok(()) => info!("left the cluster"),
            Err(e) => warn!(error = %e, "could not leave the cluster cleanly; it will be reaped"),
        }
    }
}
