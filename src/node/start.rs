//! Wiring a node together: the backend (memory or Redis), the pool, the balancer, the dispatcher,
//! the upstream streams and the accept loop.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::{Inner, Node, NodeError, dns::DnsEntries, drain::Drain};
use crate::{
    cluster::{
        Backend, BackendError, UpstreamEntry,
        memory::{self, MemoryBackend},
        redis::RedisBackend,
    },
    command::Dispatcher,
    config::Config,
    downstream::{admission, connection::Downstream, idle, listener, tls::Tls, transport::Edge},
    logging::LogFilter,
    metrics as m,
    proto::NodeHello,
    settings::Settings,
    socket::{QueueBounds, SocketTable, unix_ms},
    upstream::balancer::Balancer,
    upstream::{self, pool::UpstreamPool, stream::StreamContext, tls::UpstreamTls},
};

impl Node {
    /// Starts a node on a bound listener: accepts sockets and streams to the configured
    /// upstreams (the admin API is [`crate::server::start`]'s).
    ///
    /// # Errors
    /// [`NodeError`] when the configuration is invalid or the backend cannot start.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Self, NodeError> {
        Self::start_with(config, listener, Arc::new(LogFilter::detached("info"))).await
    }

    /// [`Node::start`] with the process's log filter, which `PATCH /v1/runtime` changes.
    /// `config.admin_listen` is where the admin API is (to be) bound, as the cluster shows it.
    ///
    /// # Errors
    /// [`NodeError`] when the configuration is invalid or the backend cannot start.
    pub async fn start_with(mut config: Config, listener: TcpListener, log: Arc<LogFilter>) -> Result<Self, NodeError> {
        config.validate()?;
        // Drawn once (the default has a random suffix): every part of the node uses this one.
        config.node_id = Some(config.node_id());
        // Before any metric is touched, so the hot counters bind to the exporter.
        m::install();
        let local_addr = listener.local_addr()?;
        let table = SocketTable::default();
        let run_id = uuid::Uuid::now_v7().to_string();
        let (backend, redis) = backend(&config, &run_id, local_addr, &table)?;
        let settings = Arc::new(Settings::new(&config, log));
        let pool = UpstreamPool::new();
        let balancer = Balancer::new(pool.clone(), backend.counter(), settings.clone());
        let dispatcher = Dispatcher::new(&table, &backend, &settings);
        let drain = Drain::default();
        let tracker = TaskTracker::new();
        let stream_ctx = stream_context(&config, run_id, &dispatcher, &balancer, &drain, &tracker)?;
        let downstream = downstream(&config, balancer, &table, &backend, drain.accepting())?;
        let limit = admission::Limit::new(settings.clone());
        let inner = Inner {
            node_id: config.node_id(),
            config,
            local_addr,
            settings,
            table,
            pool,
            dispatcher,
            backend,
            tracker,
            stream_ctx,
            reconcile: Mutex::new(()),
            dns: DnsEntries::default(),
            drain,
        };
        let node = Self { inner: Arc::new(inner) };
        info!(node.id = %node.inner.node_id, mode = if redis.is_some() { "cluster" } else { "standalone" }, "node starting");
        node.seed_upstreams().await?;
        node.spawn_tasks(listener, downstream, limit);
        Ok(node)
    }

    /// Starts the node's own tasks: the watches and the accept loop.
    fn spawn_tasks(&self, listener: TcpListener, downstream: Downstream, limit: admission::Limit) {
        self.spawn_watches();
        let tracker = self.inner.tracker.clone();
        let stop = self.inner.drain.accepting();
        if let Some(tls) = downstream.edge.tls.clone() {
            // New handshakes are over once accepting stops: so is reloading their certificate.
            tracker.spawn(tls.watch(stop.clone()));
        }
        tracker.spawn(idle::sweep(downstream.table.clone(), self.inner.settings.clone(), stop.clone()));
        tracker.spawn(listener::run(listener, downstream, limit, tracker.clone(), stop));
    }

    /// Adds the `--upstream` seeds to the registry; when the cluster is unreachable, streams to
    /// them anyway (the backend seeds the registry with them once it can).
    async fn seed_upstreams(&self) -> Result<(), NodeError> {
        for uri in self.inner.config.upstream.clone() {
            match self.add_upstream(None, uri.clone()).await {
                Ok(_) => {}
                Err(NodeError::Backend(BackendError::Unavailable(e))) => {
                    warn!(error = %e, "the upstream registry is unreachable; using --upstream as given");
                    let _serial = self.inner.reconcile.lock().await;
                    self.spawn_entry(UpstreamEntry { id: upstream::default_id(&uri), uri });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The backend, and the Redis backend itself when it is one.
type Backends = (Arc<dyn Backend>, Option<Arc<RedisBackend>>);

/// The backend: Redis with `--redis`, else the memory stand-in.
fn backend(config: &Config, run_id: &str, local_addr: SocketAddr, table: &SocketTable) -> Result<Backends, NodeError> {
    let node_id = config.node_id();
    if !config.redis.is_empty() {
        let redis = RedisBackend::connect(config, &node_id, run_id, local_addr, table.clone())?;
        return Ok((redis.clone(), Some(redis)));
    }
    let me = memory::node_record(&node_id, &local_addr.to_string(), &config.admin_listen.to_string());
    Ok((Arc::new(MemoryBackend::new(table.clone(), me)), None))
}

/// What every socket's task needs; `stop` is cancelled when the node stops accepting.
fn downstream(
    config: &Config,
    balancer: Balancer,
    table: &SocketTable,
    backend: &Arc<dyn Backend>,
    stop: CancellationToken,
) -> Result<Downstream, NodeError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
        _ => None,
    };
    let proxy_from = config.proxy_protocol.then(|| config.proxy_from.clone().into());
    Ok(Downstream {
        node_id: config.node_id().as_str().into(),
        balancer,
        table: table.clone(),
        records: backend.clone(),
        framing: config.framing,
        max_frame: config.max_frame,
        write_queue: QueueBounds { messages: config.write_queue, bytes: config.write_queue_bytes },
        edge: Edge { proxy_from, tls, stop },
    })
}

/// What every upstream stream task needs; reads the upstream TLS files.
fn stream_context(
    config: &Config,
    run_id: String,
    dispatcher: &Dispatcher,
    balancer: &Balancer,
    drain: &Drain,
    tracker: &TaskTracker,
) -> Result<StreamContext, NodeError> {
    let tls = UpstreamTls::load(
        config.upstream_ca.as_deref(),
        config.upstream_cert.as_deref(),
        config.upstream_key.as_deref(),
    )?;
    Ok(StreamContext {
        hello: hello(config, run_id),
        dispatcher: dispatcher.clone(),
        balancer: balancer.clone(),
        health_interval: config.health_interval,
        finish: drain.streams_finish(),
        tracker: tracker.clone(),
        tls,
    })
}

/// The first message of every stream of this run.
fn hello(config: &Config, run_id: String) -> NodeHello {
    NodeHello {
        node_id: config.node_id(),
        cluster: config.cluster.clone(),
        version: crate::VERSION.to_owned(),
        run_id,
        started_at_unix_ms: unix_ms(),
    }
}
