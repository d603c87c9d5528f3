//! The cluster backend on Redis (DESIGN §4).
//!
//! - [`keys`]: every key and channel name.
//! - [`topology`]: `--redis-mode`: one server, a primary found through Sentinels, or a Redis
//!   Cluster.
//! - [`connection`]: the one connection type, whatever the topology, and the timeout on every
//!   round trip.
//! - [`shared`]: the connection every task shares, opened again after any error.
//! - [`subscription`]: the bus subscriber's own connection (`SUBSCRIBE`, or `SSUBSCRIBE` on a
//!   Redis Cluster).
//! - [`records`]: lifecycle records, queued and applied in batches, each exactly once.
//! - [`bus`]: pub/sub messages between nodes (MessagePack).
//! - [`counter`]: the shared round-robin counter, leased in blocks.
//! - [`listing`]: the cluster's nodes and sockets as the admin API reads them.
//! - [`membership`]: the heartbeat, registration, and the reaper's judgement of death.
//! - [`reaper`]: announcing a reaped node's `closed` events to the upstreams, once.
//! - [`resync`]: anti-entropy of the socket registry, and the `last_seen` refresher.
//! - [`subscriber`]: the bus subscriber (this node's, the broadcast and the control channel).
//! - [`forwarding`]: commands for other nodes' sockets.
//! - [`broadcasting`]: broadcasts, OK only once every live node received them.
//! - [`handoff`]: the channels whose receiving end the node takes once.
//! - [`registry`]: the shared upstream registry.
//! - [`runtime`]: cluster-wide runtime settings, kept in `K:runtime` for a node that missed one.
//! - this file: the backend itself (its state, its tasks) and the [`Backend`] it implements.

pub mod broadcasting;
pub mod bus;
pub mod connection;
pub mod counter;
pub mod forwarding;
pub mod handoff;
pub mod keys;
pub mod listing;
pub mod membership;
pub mod reaper;
pub mod records;
pub mod registry;
pub mod resync;
pub mod runtime;
pub mod shared;
pub mod subscriber;
pub mod subscription;
pub mod topology;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use redis::Script;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info_span};

use self::{
    counter::{LeasedCounter, SharedCounter},
    handoff::Handoff,
    keys::Keys,
    records::{Record, RecordWriter},
    shared::SharedConn,
    topology::Topology,
};
use super::{
    Backend, BackendError, Counter, Inbound, UpstreamEntry,
    view::{NodeRecord, SocketPage, SocketQuery, SocketRecord},
};
use crate::{
    command::{Broadcast, Command, Receipt},
    config::Config,
    settings::RuntimePatch,
    socket::{SocketId, SocketTable},
};

/// Commands and broadcasts from other nodes waiting for the dispatcher; the bus subscriber
/// waits when it is full (the dispatcher only queues payloads, so it never waits long).
const INBOUND_QUEUE: usize = 1024;
/// How long a node waits for the owner's receipt of a command it forwarded.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before reconnecting the bus subscriber (a failover takes a second or more; a shorter
/// pause only asks the Sentinels or the cluster more often meanwhile).
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(250);

/// `redis/reap.lua`.
const REAP_LUA: &str = include_str!("../../../redis/reap.lua");
/// `redis/touch.lua`.
const TOUCH_LUA: &str = include_str!("../../../redis/touch.lua");
/// `redis/broadcast.lua`.
const BROADCAST_LUA: &str = include_str!("../../../redis/broadcast.lua");

/// A node's view of the cluster, through Redis. Created by [`RedisBackend::connect`].
pub struct RedisBackend {
    /// Key names.
    keys: Keys,
    /// This node's id.
    node: String,
    /// The connection every task shares (the bus subscriber opens its own through its topology).
    shared: Arc<SharedConn>,
    /// The record writer's queue.
    records: mpsc::Sender<Record>,
    /// The leased round-robin counter.
    counter: Arc<LeasedCounter>,
    /// Bumped when the registry may have changed.
    registry: watch::Sender<u64>,
    /// Commands sent to other nodes, waiting for their receipts.
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Receipt>>>>,
    /// Which node holds the sockets this node sent commands to (a socket never moves).
    owners: Arc<forwarding::OwnerCache>,
    /// Request ids.
    next_request: AtomicU64,
    /// This node's sockets: its own truth, which the resync, the heartbeat's socket count and
    /// the resumption read.
    table: SocketTable,
    /// Commands and broadcasts from other nodes, on their way to the node's dispatcher.
    inbound: Handoff<Inbound>,
    /// The reaper's announcing half.
    announcer: reaper::Announcer,
    /// Fields of `K:node:{node}`.
    node_fields: Vec<(&'static str, String)>,
    /// `--node-ttl`.
    node_ttl: Duration,
    /// `--events-max`.
    events_max: u64,
    /// Stops the background tasks but the bus subscriber.
    stop: CancellationToken,
    /// The background tasks but the bus subscriber.
    tracker: TaskTracker,
    /// Stops the bus subscriber: apart, since a leaving node stops hearing the bus only once it
    /// is out of `K:nodes`.
    bus_stop: CancellationToken,
    /// The bus subscriber's task.
    bus: TaskTracker,
    /// True while the bus subscription (this node's channel, the broadcast and the control
    /// channel) is live: part of readiness, and what a node waits for before it first joins
    /// `K:nodes`.
    subscribed: watch::Sender<bool>,
    /// The others' heartbeats as this node watched them, and the membership it last read.
    watch: Mutex<membership::Watch>,
    /// `redis/reap.lua`.
    reap_script: Script,
    /// `redis/broadcast.lua`.
    broadcast_script: Script,
    /// This run's id (`NodeHello.run_id`, `run_id` in `K:node:{node}`).
    run_id: String,
    /// True once this run is registered (and its node id's previous run reaped).
    registered: watch::Sender<bool>,
    /// This run's heartbeats as counted in `K:node:{node}` (`beats`): a count that does not
    /// follow on means Redis lost or rewound its data.
    beats: AtomicU64,
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
    /// Cluster-wide runtime settings: the changes for the node to apply, and what it has read.
    runtime: runtime::RuntimeSync,
}

impl RedisBackend {
    /// Connects to `--redis` (as `--redis-mode` says) and starts the record writer, the heartbeat
    /// and the bus subscriber. Redis need not be reachable yet: every task retries. `table` is
    /// this node's own truth.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] when a URL is not a Redis URL.
    pub fn connect(
        config: &Config,
        node: &str,
        run_id: &str,
        listen: SocketAddr,
        table: SocketTable,
    ) -> Result<Arc<Self>, BackendError> {
        let topology = Topology::open(config.redis_mode, &config.redis, &config.redis_master_name)?;
        let keys = Keys::new(&config.redis_prefix, &config.cluster);
        let shared = Arc::new(SharedConn::new(topology));
        let registered = watch::Sender::new(false);
        let (writer, records) = RecordWriter::new(shared.clone(), keys.clone(), node, run_id, config, &registered);
        let backend = Arc::new(Self {
            counter: LeasedCounter::new(shared.clone(), keys.rr.clone()),
            shared,
            keys,
            node: node.to_owned(),
            records,
            registry: watch::Sender::new(0),
            pending: Arc::default(),
            owners: Arc::default(),
            next_request: AtomicU64::new(1),
            table,
            inbound: Handoff::new(INBOUND_QUEUE),
            announcer: reaper::Announcer::new(config.health_interval),
            node_fields: membership::node_fields(config, run_id, listen),
            node_ttl: config.node_ttl,
            events_max: config.events_max,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bus_stop: CancellationToken::new(),
            bus: TaskTracker::new(),
            subscribed: watch::Sender::new(false),
            watch: Mutex::default(),
            reap_script: Script::new(REAP_LUA),
            broadcast_script: Script::new(BROADCAST_LUA),
            run_id: run_id.to_owned(),
            registered,
            beats: AtomicU64::new(0),
            resync_interval: config.resync_interval,
            idle_after: config.idle_after,
            resync_now: Notify::new(),
            reachable: AtomicBool::new(false),
            known_upstreams: Mutex::default(),
            runtime: runtime::RuntimeSync::default(),
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
        self.bus.spawn(self.clone().subscribe().instrument(info_span!("bus")));
        self.tracker.spawn(self.clone().resync_loop().instrument(info_span!("resync")));
        self.tracker.spawn(self.clone().touch_loop().instrument(info_span!("last_seen")));
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn forward_command(&self, command: &Command) -> Receipt {
        self.forward(command).await
    }

    async fn forward_commands(&self, commands: &[Command]) -> Vec<super::PendingReceipt> {
        self.forward_all(commands).await
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
        self.list_nodes().await
    }

    async fn sockets(&self, query: &SocketQuery) -> Result<SocketPage, BackendError> {
        self.list_sockets(query).await
    }

    async fn socket(&self, id: SocketId, idle_after: Duration) -> Result<Option<SocketRecord>, BackendError> {
        self.find_socket(id, idle_after).await
    }

    async fn publish_runtime(&self, patch: &RuntimePatch) -> Result<(), BackendError> {
        self.publish_runtime_change(patch).await
    }

    fn runtime_changes(&self) -> broadcast::Receiver<RuntimePatch> {
        self.runtime.changes.subscribe()
    }

    fn queue_depth(&self) -> usize {
        self.records.max_capacity() - self.records.capacity()
    }

    fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow()
    }

    fn announcements(&self) -> Option<mpsc::Receiver<super::Announcement>> {
        self.announcer.handoff.take()
    }

    fn inbound(&self) -> Option<mpsc::Receiver<Inbound>> {
        self.inbound.take()
    }

    async fn draining(&self) {
        self.mark_draining().await;
    }

    async fn leave(&self) {
        self.leave_cluster().await;
    }
}
