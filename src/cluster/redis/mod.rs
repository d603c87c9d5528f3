//! The cluster backend on Redis (DESIGN §4).
//!
//! - [`keys`]: every key and channel name.
//! - [`records`]: lifecycle records, queued and applied in batches, each exactly once.
//! - [`bus`]: pub/sub messages between nodes (MessagePack).
//! - [`counter`]: the shared round-robin counter, leased in blocks.
//! - [`listing`]: the cluster's nodes and sockets as the admin API reads them.
//! - [`membership`]: the heartbeat, registration, and the reaper's judgement of death.
//! - [`reaper`]: announcing a reaped node's `closed` events to the upstreams, once.
//! - this file: the backend itself: the upstream registry, commands for other nodes' sockets
//!   with their receipts, the bus subscriber, resync.

pub mod bus;
pub mod counter;
pub mod keys;
pub mod listing;
pub mod membership;
pub mod reaper;
pub mod records;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use deadpool_redis::Pool;
use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

use self::{
    bus::{BusMessage, WireCommand},
    counter::{LeasedCounter, SharedCounter},
    keys::Keys,
    records::{Record, RecordWriter, SharedConn, pool_error, timed},
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
        let url = config.redis.clone().unwrap_or_default();
        // `rediss://` goes through rustls, which needs a process-wide crypto provider; `Err`
        // means one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let invalid = |e: &dyn std::fmt::Display| BackendError::Invalid(format!("--redis: {e}"));
        let client = redis::Client::open(url.as_str()).map_err(|e| invalid(&e))?;
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| invalid(&e))?;
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
        let stop = backend.stop.child_token();
        backend.tracker.spawn(writer.run(stop).instrument(info_span!("records")));
        backend.tracker.spawn(backend.clone().heartbeat().instrument(info_span!("heartbeat")));
        backend.tracker.spawn(backend.clone().subscribe().instrument(info_span!("bus")));
        backend.tracker.spawn(backend.clone().resync_loop().instrument(info_span!("resync")));
        backend.tracker.spawn(backend.clone().touch_loop().instrument(info_span!("last_seen")));
        Ok(backend)
    }

    /// Gives the backend the dispatcher that carries out commands arriving from other nodes.
    pub fn attach(&self, dispatcher: Dispatcher) {
        let _ = self.local.set(dispatcher);
    }

    /// Every `--resync-interval` (or at once when asked), makes this node's socket registry in
    /// Redis equal its own truth: anti-entropy after outages, failovers or data loss.
    async fn resync_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.resync_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {}
                () = self.resync_now.notified() => {}
            }
            match timed(self.resync()).await {
                Ok((added, removed)) if added + removed > 0 => {
                    info!(added, removed, "socket registry repaired");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "resync failed");
                    metrics::counter!(m::REDIS_ERRORS).increment(1);
                }
            }
            metrics::counter!(m::RESYNCS).increment(1);
        }
    }

    /// One resync; returns how many sockets were added to and removed from Redis.
    async fn resync(&self) -> Result<(usize, usize), redis::RedisError> {
        // Not before this run is registered: the socket set in Redis may still be a previous
        // run's, which must be reaped (with its `closed` events), not repaired away.
        let Some(local) = self.local.get().filter(|_| *self.registered.borrow()) else { return Ok((0, 0)) };
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let in_redis: HashSet<String> = conn.smembers(self.keys.node_sockets(&self.node)).await?;
        let truth = local.sockets();
        let truth_ids: HashSet<&str> = truth.iter().map(|s| &*s.id_str).collect();
        let mut pipe = redis::pipe();
        let mut added = 0;
        for socket in truth.iter().filter(|s| !in_redis.contains(&*s.id_str)) {
            records::register(&mut pipe, &self.keys, &self.node, socket);
            added += 1;
        }
        let mut removed = 0;
        for id in in_redis.iter().filter(|id| !truth_ids.contains(id.as_str())) {
            pipe.del(self.keys.socket(id)).ignore();
            pipe.srem(self.keys.node_sockets(&self.node), id).ignore();
            pipe.zrem(self.keys.sockets(), id).ignore();
            removed += 1;
        }
        if added + removed > 0 {
            pipe.query_async::<()>(&mut *conn).await?;
        }
        Ok((added, removed))
    }

    /// Refreshes `last_seen` and the counters of the sockets that talked or were written to,
    /// every quarter of `--idle-after`, in one pipeline: state filters and counters read from
    /// Redis are exact to within that.
    async fn touch_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval((self.idle_after / 4).max(Duration::from_millis(250)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What was last written per socket: (`last_seen`, messages out).
        let mut written: HashMap<crate::socket::SocketId, (i64, u64)> = HashMap::new();
        let touch_sha = Script::new(TOUCH_LUA).get_hash().to_owned();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let Some(local) = self.local.get() else { continue };
            let sockets = local.sockets();
            let live: HashSet<crate::socket::SocketId> = sockets.iter().map(|s| s.id).collect();
            written.retain(|id, _| live.contains(id));
            let mut pipe = redis::pipe();
            // Loaded in the same pipeline, so a Redis that restarted empty still has it.
            pipe.cmd("SCRIPT").arg("LOAD").arg(TOUCH_LUA).ignore();
            let mut changed = Vec::new();
            for s in &sockets {
                let now = (s.last_seen_ms(), s.messages_out.load(Ordering::Relaxed));
                let before = written.get(&s.id).copied().unwrap_or((s.connected_at_ms, 0));
                if now != before {
                    touch(&mut pipe, &touch_sha, &self.keys.socket(&s.id_str), s);
                    changed.push((s.id, now));
                }
            }
            if changed.is_empty() {
                continue;
            }
            let result: Result<(), redis::RedisError> = timed(async {
                let mut conn = self.pool.get().await.map_err(pool_error)?;
                pipe.query_async(&mut *conn).await
            })
            .await;
            match result {
                Ok(()) => written.extend(changed),
                Err(e) => debug!(error = %e, "could not refresh last_seen"),
            }
        }
    }

    /// Listens on this node's channel, the broadcast channel and the control channel, on a
    /// dedicated connection, resubscribing after every reconnect.
    async fn subscribe(self: Arc<Self>) {
        let control = self.keys.control_channel();
        let channels = [self.keys.node_channel(&self.node), self.keys.broadcast_channel(), control.clone()];
        while !self.stop.is_cancelled() {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channels).await {
                    Ok(()) => {
                        debug!("bus subscribed");
                        // Anything may have changed while we were away.
                        self.registry.send_modify(|v| *v += 1);
                        let mut messages = pubsub.on_message();
                        loop {
                            let message = tokio::select! {
                                () = self.stop.cancelled() => return,
                                m = messages.next() => m,
                            };
                            let Some(message) = message else { break };
                            if message.get_channel_name() == control {
                                self.on_control(message.get_payload_bytes());
                                continue;
                            }
                            self.on_bus(message.get_payload_bytes());
                        }
                        warn!("bus connection lost; resubscribing");
                    }
                    Err(e) => warn!(error = %e, "bus subscribe failed"),
                },
                Err(e) => warn!(error = %e, "bus connection failed"),
            }
            metrics::counter!(m::REDIS_ERRORS).increment(1);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            }
        }
    }

    /// Handles a message on the control channel: runtime settings from another node are
    /// applied; anything else, even a message typed by hand in `redis-cli`, means "re-read the
    /// registry".
    fn on_control(&self, payload: &[u8]) {
        match BusMessage::decode(payload) {
            Ok(BusMessage::Runtime { origin, patch }) => {
                if origin != self.node {
                    info!(from = %origin, "runtime settings changed by another node");
                    let _ = self.runtime.send(patch);
                }
            }
            _ => self.registry.send_modify(|v| *v += 1),
        }
    }

    /// Handles one bus message.
    fn on_bus(self: &Arc<Self>, payload: &[u8]) {
        let message = match BusMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "bad bus message");
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "bad_bus_message").increment(1);
                return;
            }
        };
        match message {
            BusMessage::Command { request, reply_to, command } => {
                let receipt = match (command.into_command(), self.local.get()) {
                    (Ok(command), Some(local)) => local
                        .execute_local(&command)
                        .unwrap_or_else(|| Receipt::unknown_socket(command.socket().unwrap_or_default())),
                    (Err(e), _) => Receipt::failed(e),
                    (_, None) => Receipt::failed("the node is starting"),
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.publish(&this.keys.node_channel(&reply_to), BusMessage::receipt(request, receipt)).await
                });
            }
            BusMessage::Receipt { request, status, detail, refused } => {
                let waiting = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
                if let Some(tx) = waiting {
                    let _ = tx.send(bus::receipt_from_wire(status, detail, refused));
                }
            }
            BusMessage::Broadcast { origin, scope, selector, payload } if origin != self.node => {
                match (bus::broadcast_from_wire(scope, selector, payload), self.local.get()) {
                    (Ok(b), Some(local)) => {
                        local.broadcast_local(&b);
                    }
                    (Err(e), _) => warn!(error = %e, "bad broadcast on the bus"),
                    (_, None) => {}
                }
            }
            BusMessage::Broadcast { .. } | BusMessage::Runtime { .. } => {}
            BusMessage::Control { .. } => self.registry.send_modify(|v| *v += 1),
        }
    }

    /// Publishes a bus message; returns how many nodes received it.
    async fn publish(&self, channel: &str, message: BusMessage) -> Result<usize, redis::RedisError> {
        let channel = channel.to_owned();
        self.shared.run(|mut conn| async move { conn.publish(channel, message.encode()).await }).await
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
        let (Some(socket), Some(wire)) = (command.socket(), WireCommand::from_command(command)) else {
            return Receipt::ok();
        };
        let key = self.keys.socket(&socket.to_string());
        let owner: Result<Option<String>, redis::RedisError> =
            self.shared.run(|mut conn| async move { conn.hget(key, "node").await }).await;
        let owner = match owner {
            Ok(Some(owner)) if owner != self.node => owner,
            Ok(_) => return Receipt::unknown_socket(socket),
            Err(e) => return Receipt::failed(format!("the cluster state is unreachable: {e}")),
        };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(request, tx);
        let message = BusMessage::Command { request, reply_to: self.node.clone(), command: wire };
        let failed = match self.publish(&self.keys.node_channel(&owner), message).await {
            Ok(0) => Some(format!("node {owner}, which holds the socket, is not reachable")),
            Ok(_) => match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(receipt)) => return receipt,
                _ => Some(format!("node {owner}, which holds the socket, did not answer within {COMMAND_TIMEOUT:?}")),
            },
            Err(e) => Some(format!("could not reach node {owner}: {e}")),
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        Receipt::failed(failed.unwrap_or_default())
    }

    async fn broadcast(&self, broadcast: &Broadcast) -> Receipt {
        match self.publish(&self.keys.broadcast_channel(), BusMessage::broadcast(&self.node, broadcast)).await {
            Ok(_) => Receipt::ok(),
            Err(e) => Receipt::failed(format!("the broadcast reached only this node: {e}")),
        }
    }

    fn counter(&self) -> Arc<dyn Counter> {
        Arc::new(SharedCounter(self.counter.clone()))
    }

    async fn upstreams(&self) -> Result<Vec<UpstreamEntry>, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let (registered, all): (Option<i64>, HashMap<String, String>) = redis::pipe()
                .zscore(self.keys.nodes(), &self.node)
                .hgetall(self.keys.upstreams())
                .query_async(&mut *conn)
                .await
                .map_err(unavailable)?;
            let mut entries: Vec<_> = all.into_iter().map(|(id, uri)| UpstreamEntry { id, uri }).collect();
            entries.sort();
            let mut known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if registered.is_none() && entries.is_empty() && !known.is_empty() {
                // Redis lost its data (restarted empty, failed over) or reaped us: the registry is
                // not empty, it is gone. Seed it again from what this node knew.
                warn!(upstreams = known.len(), "the upstream registry is gone; seeding it again");
                let fields: Vec<(&str, &str)> = known.iter().map(|e| (e.id.as_str(), e.uri.as_str())).collect();
                let _: () = conn.hset_multiple(self.keys.upstreams(), &fields).await.map_err(unavailable)?;
                known.sort();
                return Ok(known);
            }
            *self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()) = entries.clone();
            Ok(entries)
        })
        .await
    }

    async fn add_upstream(&self, entry: UpstreamEntry) -> Result<(), BackendError> {
        {
            // Remembered first: if Redis is unreachable now, the heartbeat seeds it later.
            let mut known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|e| e.id != entry.id);
            known.push(entry.clone());
        }
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let _: () = conn.hset(self.keys.upstreams(), &entry.id, &entry.uri).await.map_err(unavailable)?;
            self.announce(&mut conn).await;
            Ok(())
        })
        .await
    }

    async fn remove_upstream(&self, id: &str) -> Result<bool, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let removed: usize = conn.hdel(self.keys.upstreams(), id).await.map_err(unavailable)?;
            self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).retain(|e| e.id != id);
            self.announce(&mut conn).await;
            Ok(removed > 0)
        })
        .await
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

impl RedisBackend {
    /// Tells every node the registry changed.
    async fn announce(&self, conn: &mut deadpool_redis::Connection) {
        let notice = BusMessage::Control { what: "upstreams".to_owned() }.encode();
        if let Err(e) = conn.publish::<_, _, ()>(self.keys.control_channel(), notice).await {
            warn!(error = %e, "could not announce a registry change; nodes see it at their next resync");
        }
        self.registry.send_modify(|v| *v += 1);
    }
}

/// Runs a registry operation with [`records::REDIS_TIMEOUT`].
async fn within<T>(op: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
    tokio::time::timeout(records::REDIS_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| Err(BackendError::Unavailable("Redis did not answer in time".to_owned())))
}

fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Refreshes a socket's `last_seen` and counters in its hash, if the hash is there (a socket
/// whose record was not written yet, or was just removed, is left to the record writer).
fn touch(pipe: &mut redis::Pipeline, sha: &str, key: &str, s: &SocketState) {
    let fields = [
        ("last_seen", s.last_seen_ms().to_string()),
        ("messages_in", s.messages_in.load(Ordering::Relaxed).to_string()),
        ("bytes_in", s.bytes_in.load(Ordering::Relaxed).to_string()),
        ("messages_out", s.messages_out.load(Ordering::Relaxed).to_string()),
        ("bytes_out", s.bytes_out.load(Ordering::Relaxed).to_string()),
    ];
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(1).arg(key);
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    pipe.add_command(cmd).ignore();
}
