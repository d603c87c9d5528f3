//! A node: the listener, the socket table, the upstream pool and the backend, wired together.
//!
//! [`Node::start`] takes a bound listener (so tests bind port 0) and returns a cheap `Clone`
//! handle; [`Node::shutdown`] drains it. [`crate::server`] adds the admin API and the signals.
//!
//! - `start.rs`: wiring a node together and starting its tasks.
//! - `registry.rs`: keeping the upstream pool equal to the registry; `dns.rs`: its `dns:///`
//!   entries, each address one upstream.
//! - `runtime.rs`: runtime settings and the state gauges.
//! - `watches.rs`: the tasks that take news from the backend (registry changes, runtime settings
//!   of other nodes, lifecycle announcements, commands from other nodes) and act on it.
//! - `drain.rs`: the graceful stop, and `Drain`, the tokens it goes through.

mod dns;
mod drain;
mod registry;
mod runtime;
mod start;
mod watches;

pub use self::dns::Resolved;

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;

use crate::{
    cluster::{Backend, BackendError},
    command::{Command, Dispatcher, Receipt},
    config::Config,
    settings::Settings,
    socket::SocketTable,
    upstream::{pool::UpstreamPool, stream::StreamContext},
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
    #[error(transparent)]
    InvalidUpstream(#[from] crate::upstream::UriError),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::downstream::tls::TlsError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A runtime setting is not valid.
    #[error("{0}")]
    InvalidSettings(#[from] crate::settings::SettingsError),
    /// The upstream TLS files (`--upstream-ca`, `--upstream-cert`, `--upstream-key`) cannot be
    /// used.
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream::tls::UpstreamTlsError),
}

/// A running node. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's id.
    node_id: String,
    /// The configuration it started with (with the admin address it is bound to).
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
    /// What every upstream stream task needs; its `finish` ends the streams on drain.
    stream_ctx: StreamContext,
    /// Serializes registry reconciliations, so an upstream is never started twice.
    reconcile: Mutex<()>,
    /// The registry's `dns:///` entries, expanded by this node.
    dns: dns::DnsEntries,
    /// The graceful stop's state.
    drain: drain::Drain,
}

impl Node {
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

    /// Whether the node is ready for traffic: accepting sockets and, in cluster mode, in touch with
    /// Redis and hearing its bus (subscribed to its own channel, the broadcast and the control
    /// channel), so it misses no command or broadcast from other nodes (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        let backend = &self.inner.backend;
        !self.inner.drain.is_accepting_stopped() && backend.is_reachable() && backend.is_subscribed()
    }

    /// Carries out a command (as an upstream's would be) and says what happened.
    pub async fn execute(&self, command: &Command) -> Receipt {
        self.inner.dispatcher.execute(command).await
    }
}
