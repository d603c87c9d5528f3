//! A node: the listener, the socket table, the upstream pool and the backend, wired together.
//!
//! [`Node::start`] takes bound listeners (so tests bind port 0) and returns a cheap `Clone`
//! handle; [`Node::shutdown`] drains it. [`run`] is what `main` calls: start, wait for the
//! shutdown signal (or `POST /v1/drain`), drain.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use rand::Rng;
use tokio::{
    net::TcpListener,
    sync::{Mutex, broadcast},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    admin,
    cluster::{
        Backend, BackendError, UpstreamEntry,
        memory::{self, MemoryBackend},
        redis::RedisBackend,
    },
    command::{Command, Dispatcher, Receipt},
    config::Config,
    downstream::{connection::Downstream, listener, table::SocketTable},
    logging::LogFilter,
    metrics as m,
    proto::NodeHello,
    routing::Router,
    settings::{RuntimePatch, RuntimeView, Settings},
    socket::{CloseReason, unix_ms},
    upstream::{
        self,
        pool::UpstreamPool,
        stream::{self, StreamContext},
    },
};

/// Why a node could not start or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// An upstream URI is not valid.
    #[error("{0}")]
    InvalidUpstream(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A runtime setting is not valid.
    #[error("{0}")]
    InvalidSettings(String),
}

/// A running node. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's id.
    node_id: String,
    /// The configuration it started with.
    config: Config,
    /// Where the downstream listener is bound.
    local_addr: SocketAddr,
    /// Live settings.
    settings: Arc<Settings>,
    /// The node's sockets.
    table: SocketTable,
    /// The upstreams.
    pool: UpstreamPool,
    /// Carries out commands.
    dispatcher: Dispatcher,
    /// The cluster (or the memory stand-in).
    backend: Arc<dyn Backend>,
    /// Every task the node spawns.
    tracker: TaskTracker,
    /// Cancelled to stop accepting sockets.
    stop_accepting: CancellationToken,
    /// What every upstream stream task needs; its `finish` ends the streams on drain.
    stream_ctx: StreamContext,
    /// Serializes registry reconciliations, so an upstream is never started twice.
    reconcile: Mutex<()>,
    /// Set by the first caller of [`Node::shutdown`]: only one drain runs.
    drain_begun: std::sync::atomic::AtomicBool,
    /// Cancelled once a drain has started.
    draining: CancellationToken,
    /// Cancelled once the drain is over (the admin API has stopped too).
    drained: CancellationToken,
    /// Stops the admin API, at the end of the drain.
    admin_stop: CancellationToken,
    /// The admin API's task, awaited at the end of the drain so its last answers go out.
    admin_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the admin API is bound, if this node serves it.
    admin_addr: Option<SocketAddr>,
}

/// What a node listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The downstream listener (`--listen`).
    pub downstream: TcpListener,
    /// The admin API's listener (`--admin-listen`); `None` serves no admin API.
    pub admin: Option<TcpListener>,
}

impl Node {
    /// Starts a node on a bound listener, without the admin API: accepts sockets and streams to
    /// the configured upstreams.
    ///
    /// # Errors
    /// [`NodeError`] when the configuration is invalid or the backend cannot start.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Self, NodeError> {
        let log = Arc::new(LogFilter::detached("info"));
        Self::start_with(config, Listeners { downstream: listener, admin: None }, log).await
    }

    /// Starts a node on bound listeners, serving the admin API when `listeners.admin` is given;
    /// `log` is the process's log filter, which `PATCH /v1/runtime` changes.
    ///
    /// # Errors
    /// [`NodeError`] when the configuration is invalid or the backend cannot start.
    pub async fn start_with(mut config: Config, listeners: Listeners, log: Arc<LogFilter>) -> Result<Self, NodeError> {
        config.validate()?;
        // Before any metric is touched, so the hot counters bind to the exporter.
        m::install();
        let node_id = config.node_id();
        let local_addr = listeners.downstream.local_addr()?;
        let admin_addr = listeners.admin.as_ref().map(TcpListener::local_addr).transpose()?;
        if let Some(addr) = admin_addr {
            config.admin_listen = addr;
        }
        let table = SocketTable::default();
        let run_id = uuid::Uuid::now_v7().to_string();
        let redis = match config.redis {
            Some(_) => Some(RedisBackend::connect(&config, &node_id, &run_id, local_addr)?),
            None => None,
        };
        let backend: Arc<dyn Backend> = match &redis {
            Some(r) => r.clone(),
            None => {
                let me = memory::node_record(&node_id, &local_addr.to_string(), &config.admin_listen.to_string());
                Arc::new(MemoryBackend::new(table.clone(), me))
            }
        };
        let settings = Arc::new(Settings::new(&config, log));
        let pool = UpstreamPool::new();
        let router = Router::new(pool.clone(), backend.counter(), settings.clone());
        let dispatcher = Dispatcher::new(table.clone(), backend.clone(), settings.clone());
        if let Some(redis) = &redis {
            redis.attach(dispatcher.clone());
        }
        let tracker = TaskTracker::new();
        let stream_ctx = StreamContext {
            hello: NodeHello {
                node_id: node_id.clone(),
                cluster: config.cluster.clone(),
                version: crate::VERSION.to_owned(),
                run_id,
                started_at_unix_ms: crate::socket::unix_ms(),
            },
            dispatcher: dispatcher.clone(),
            router: router.clone(),
            health_interval: config.health_interval,
            finish: CancellationToken::new(),
            tracker: tracker.clone(),
        };
        let downstream = Downstream {
            node_id: node_id.as_str().into(),
            router,
            table: table.clone(),
            backend: backend.clone(),
            settings: settings.clone(),
            framing: config.framing,
            max_frame: config.max_frame,
            write_queue: config.write_queue,
        };
        let limit = listener::Limit::new(settings.clone());
        let node = Self {
            inner: Arc::new(Inner {
                node_id,
                config,
                local_addr,
                settings,
                table,
                pool,
                dispatcher,
                backend,
                tracker,
                stop_accepting: CancellationToken::new(),
                stream_ctx,
                reconcile: Mutex::new(()),
                drain_begun: std::sync::atomic::AtomicBool::new(false),
                draining: CancellationToken::new(),
                drained: CancellationToken::new(),
                admin_stop: CancellationToken::new(),
                admin_task: std::sync::Mutex::new(None),
                admin_addr,
            }),
        };
        let mode = if redis.is_some() { "cluster" } else { "standalone" };
        info!(node.id = %node.inner.node_id, mode, "node starting");
        for uri in node.inner.config.upstream.clone() {
            match node.add_upstream(None, uri.clone()).await {
                Ok(_) => {}
                // The cluster is unreachable: stream to the seeds anyway; the backend seeds the
                // registry with them once it can.
                Err(NodeError::Backend(BackendError::Unavailable(e))) => {
                    warn!(error = %e, "the upstream registry is unreachable; using --upstream as given");
                    let _serial = node.inner.reconcile.lock().await;
                    node.spawn_upstream(UpstreamEntry { id: upstream::default_id(&uri), uri });
                }
                Err(e) => return Err(e),
            }
        }
        node.spawn_registry_watch();
        node.spawn_runtime_watch();
        node.spawn_announcements();
        if let Some(admin) = listeners.admin {
            // Not on the tracker: the admin API answers through the drain and stops after it.
            let task = tokio::spawn(admin::serve(node.clone(), admin, node.inner.admin_stop.clone()));
            *node.inner.admin_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        let stop = node.inner.stop_accepting.clone();
        let tracker = node.inner.tracker.clone();
        tracker.spawn(listener::run(listeners.downstream, downstream, limit, tracker.clone(), stop));
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Where the downstream listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The node's sockets.
    pub fn sockets(&self) -> &SocketTable {
        &self.inner.table
    }

    /// The upstreams as this node sees them.
    pub fn upstreams(&self) -> &UpstreamPool {
        &self.inner.pool
    }

    /// Live settings.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.inner.settings
    }

    /// The cluster (or, standalone, the memory stand-in).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The configuration the node started with (with the admin address it is bound to).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Where the admin API is bound, if this node serves it.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Applies a runtime settings change on this node and, with `cluster`, hands it to every
    /// other node.
    ///
    /// # Errors
    /// [`NodeError::InvalidSettings`] when a field is invalid (nothing changed then);
    /// [`NodeError::Backend`] when it applied here but could not be handed to the cluster.
    pub async fn apply_runtime(&self, patch: &RuntimePatch, cluster: bool) -> Result<RuntimeView, NodeError> {
        let view = self.inner.settings.apply(patch).map_err(NodeError::InvalidSettings)?;
        info!(?patch, cluster, "runtime settings changed");
        if cluster {
            self.inner.backend.publish_runtime(patch).await?;
        }
        Ok(view)
    }

    /// Sets the gauges that describe this node's state now, for a `/metrics` scrape.
    pub fn refresh_gauges(&self) {
        let now = unix_ms();
        let idle_after = self.inner.settings.idle_after();
        let sockets = self.inner.table.snapshot();
        let active = sockets.iter().filter(|s| s.is_active(now, idle_after)).count();
        metrics::gauge!(m::SOCKETS_OPEN, "state" => "active").set(active as f64);
        metrics::gauge!(m::SOCKETS_OPEN, "state" => "inactive").set((sockets.len() - active) as f64);
        for up in self.inner.pool.snapshot().iter() {
            m::upstream_zeros(&up.id);
            let sent = up.messages_sent.load(std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(m::UPSTREAM_MESSAGES, "upstream" => up.id.clone()).absolute(sent);
            metrics::gauge!(m::UPSTREAM_QUEUE_DEPTH, "upstream" => up.id.clone()).set(up.queued() as f64);
        }
        metrics::gauge!(m::BACKEND_QUEUE_DEPTH).set(self.inner.backend.queue_depth() as f64);
        metrics::gauge!(m::READY).set(if self.is_ready() { 1.0 } else { 0.0 });
        metrics::gauge!(m::BACKEND_REACHABLE).set(if self.inner.backend.is_reachable() { 1.0 } else { 0.0 });
    }

    /// Whether the node is ready for traffic: accepting sockets and, in cluster mode, in touch with
    /// Redis (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        !self.inner.stop_accepting.is_cancelled() && self.inner.backend.is_reachable()
    }

    /// Carries out a command (as an upstream's would be) and says what happened.
    pub async fn execute(&self, command: &Command) -> Receipt {
        self.inner.dispatcher.execute(command).await
    }

    /// Adds an upstream to the registry (id: its `host:port` unless given) and starts streaming
    /// to it.
    ///
    /// # Errors
    /// [`NodeError::InvalidUpstream`] for a bad URI; [`NodeError::Backend`] when the registry
    /// cannot be written.
    pub async fn add_upstream(&self, id: Option<String>, uri: String) -> Result<UpstreamEntry, NodeError> {
        upstream::validate_uri(&uri).map_err(NodeError::InvalidUpstream)?;
        let id = id.unwrap_or_else(|| upstream::default_id(&uri));
        let entry = UpstreamEntry { id, uri };
        self.inner.backend.add_upstream(entry.clone()).await?;
        self.reconcile().await?;
        Ok(entry)
    }

    /// Removes an upstream from the registry and stops streaming to it; `false` when unknown.
    ///
    /// # Errors
    /// [`NodeError::Backend`] when the registry cannot be written.
    pub async fn remove_upstream(&self, id: &str) -> Result<bool, NodeError> {
        let removed = self.inner.backend.remove_upstream(id).await?;
        self.reconcile().await?;
        Ok(removed)
    }

    /// Makes the pool match the registry: starts new upstreams, stops removed ones.
    async fn reconcile(&self) -> Result<(), BackendError> {
        let _serial = self.inner.reconcile.lock().await;
        if self.inner.draining.is_cancelled() {
            return Ok(());
        }
        let wanted = self.inner.backend.upstreams().await?;
        for current in self.inner.pool.snapshot().iter() {
            if !wanted.iter().any(|w| w.id == current.id && w.uri == current.uri) {
                info!(upstream = %current.id, "upstream removed");
                self.inner.pool.remove(&current.id);
            }
        }
        for entry in wanted {
            if self.inner.pool.get(&entry.id).is_none() {
                self.spawn_upstream(entry);
            }
        }
        Ok(())
    }

    /// Starts streaming to an upstream (the caller holds the reconcile lock).
    fn spawn_upstream(&self, entry: UpstreamEntry) {
        info!(upstream = %entry.id, uri = %entry.uri, "upstream added");
        let (up, rx) = self.inner.pool.insert(entry.id.clone(), entry.uri);
        let span = info_span!("upstream", upstream = %entry.id);
        self.inner.tracker.spawn(stream::run(up, rx, self.inner.stream_ctx.clone()).instrument(span));
    }

    /// Applies runtime settings changes that other nodes publish.
    fn spawn_runtime_watch(&self) {
        let node = self.clone();
        let mut changes = self.inner.backend.runtime_changes();
        let finish = self.inner.stream_ctx.finish.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let patch = tokio::select! {
                    () = finish.cancelled() => break,
                    r = changes.recv() => r,
                };
                match patch {
                    Ok(patch) => {
                        if let Err(e) = node.apply_runtime(&patch, false).await {
                            warn!(error = %e, "runtime settings from another node refused");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "runtime settings changes came faster than they were applied");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Hands the lifecycle events the cluster asks for (a reaped node's `closed`, this node's
    /// `resumed` `opened`) to the upstreams, like any event of a socket.
    fn spawn_announcements(&self) {
        let Some(mut announcements) = self.inner.backend.announcements() else { return };
        let router = self.inner.stream_ctx.router.clone();
        let finish = self.inner.stream_ctx.finish.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let announcement = tokio::select! {
                    () = finish.cancelled() => break,
                    a = announcements.recv() => a,
                };
                let Some(announcement) = announcement else { break };
                for (event, socket) in announcement.events {
                    tokio::select! {
                        () = finish.cancelled() => return,
                        () = router.forward(event, socket.as_deref(), None) => {}
                    }
                }
                let _ = announcement.handed.send(());
            }
        });
    }

    /// Reconciles whenever the registry changes (in cluster mode, when another node changes it).
    fn spawn_registry_watch(&self) {
        let node = self.clone();
        let mut changes = self.inner.backend.registry_changes();
        let finish = self.inner.stream_ctx.finish.clone();
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = finish.cancelled() => break,
                    r = changes.changed() => if r.is_err() { break },
                }
                if let Err(e) = node.reconcile().await {
                    warn!(error = %e, "could not reconcile the upstream registry");
                }
            }
        });
    }

    /// Drains the node: stops accepting, closes its sockets in jittered batches with reason
    /// `shutdown` (queued messages are flushed, upstreams get `closed`), ends the upstream
    /// streams once their queues are sent, all within `--drain-timeout`.
    pub async fn shutdown(&self) {
        if self.inner.drain_begun.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return self.inner.drained.cancelled().await;
        }
        self.inner.draining.cancel();
        let timeout = self.inner.config.drain_timeout;
        let deadline = Instant::now() + timeout;
        self.inner.stop_accepting.cancel();
        self.inner.backend.draining().await;
        let sockets = self.inner.table.snapshot();
        info!(sockets = sockets.len(), ?timeout, "draining");
        // Spread the closes over the first half of the timeout, so that clients reconnecting
        // elsewhere do not all arrive at once.
        let batches = sockets.len().div_ceil(DRAIN_BATCH).max(1);
        let pause = (timeout / 2 / batches as u32).min(Duration::from_secs(1));
        for (i, batch) in sockets.chunks(DRAIN_BATCH).enumerate() {
            if i > 0 {
                let jitter = rand::rng().random_range(0.5..=1.0);
                tokio::time::sleep_until((Instant::now() + pause.mul_f64(jitter)).min(deadline)).await;
            }
            for socket in batch {
                socket.close(CloseReason::Shutdown);
            }
        }
        if tokio::time::timeout_at(deadline, self.inner.table.wait_empty()).await.is_err() {
            warn!(left = self.inner.table.len(), "drain timeout: sockets still open");
        }
        self.inner.stream_ctx.finish.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait()).await.is_err() {
            warn!("drain timeout: stopping what is left");
            for up in self.inner.pool.snapshot().iter() {
                up.stop.cancel();
            }
        }
        self.inner.backend.leave().await;
        info!("drained");
        self.inner.admin_stop.cancel();
        let admin = self.inner.admin_task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        self.inner.drained.cancel();
    }

    /// Resolves once a drain has started (by [`Node::shutdown`] or `POST /v1/drain`).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn drain_started(&self) {
        self.inner.draining.cancelled().await;
    }
}

/// Sockets closed at once per drain batch.
const DRAIN_BATCH: usize = 500;

/// Runs a node until `shutdown` resolves or `POST /v1/drain` starts a drain, then drains it.
///
/// # Errors
/// [`NodeError`] when the node cannot start.
pub async fn run(
    config: Config,
    listeners: Listeners,
    log: Arc<LogFilter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let node = Node::start_with(config, listeners, log).await?;
    tokio::select! {
        () = shutdown => {}
        () = node.drain_started() => {}
    }
    node.shutdown().await;
    Ok(())
}
