//! The cluster: where a node's socket metadata, lifecycle records and cross-node commands go.
//!
//! [`Backend`] is the seam between a node and the rest of the cluster. A standalone node uses
//! [`memory::MemoryBackend`] (one node, nothing shared); a cluster member uses the Redis
//! implementation. The data path holds only the two narrow parts it may call, so the types say
//! that it never waits on the cluster: [`Records`] (lifecycle records, queued without blocking,
//! bounded and batched by the implementation) and [`Counter`] (the round-robin counter).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    command::{Broadcast, Command, Receipt},
    settings::RuntimePatch,
    socket::{CloseReason, SocketId, SocketState, event::Event},
};

pub mod memory;
pub mod redis;
pub mod view;

use self::view::{NodeRecord, SocketPage, SocketQuery, SocketRecord};

/// Errors of a backend, tagged as backend-side. Whether a retry can help is the caller's call:
/// every backend call is safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The shared state could not be reached.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The request was refused (e.g. an invalid upstream URI).
    #[error("{0}")]
    Invalid(String),
}

/// An upstream as the shared registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UpstreamEntry {
    /// Its id, unique in the cluster; upstreams are ordered by id on every node.
    pub id: String,
    /// Its gRPC URI (`http://host:port`).
    pub uri: String,
}

/// Lifecycle events the cluster gives this node to hand to its upstreams: the `closed` events of
/// a dead node's sockets (this node reaps it), or the `opened` (`resumed`) events of its own
/// sockets after the cluster reaped it while it was cut off.
#[derive(Debug)]
pub struct Announcement {
    /// The events, each with its socket when it is one of this node's (sticky routing).
    pub events: Vec<(Event, Option<Arc<SocketState>>)>,
    /// Told once every event was handed to an upstream.
    pub handed: tokio::sync::oneshot::Sender<()>,
}

/// Answers whether a socket's `closed` event still goes to the upstreams once the cluster has
/// recorded it (see [`Records::socket_closed`]).
pub type ClosedRecorded = tokio::sync::oneshot::Receiver<bool>;

/// A shared counter for round-robin: every node draws from it, so the split over upstreams is
/// fair cluster-wide.
pub trait Counter: Send + Sync + 'static {
    /// The next value. Never blocks and never fails: a backend that cannot reach the shared
    /// counter answers from a local one.
    fn next(&self) -> u64;
}

/// A command another node forwarded for one of this node's sockets, or a broadcast it
/// published: handed to the node's dispatcher through a bounded channel
/// ([`Backend::inbound`]), in the order the bus delivered them.
#[derive(Debug)]
pub enum Inbound {
    /// A one-socket command; its receipt goes back to the node that sent it.
    Command {
        /// The command.
        command: Command,
        /// Where the receipt goes.
        receipt: tokio::sync::oneshot::Sender<Receipt>,
    },
    /// A broadcast from another node, for this node's matching sockets.
    Broadcast(Broadcast),
}

/// The lifecycle records of this node's sockets: the part of the backend the data path holds.
/// No method may block: implementations queue (bounded) and write in batches.
pub trait Records: Send + Sync + 'static {
    /// Records that this node accepted a socket. Must not block.
    fn socket_opened(&self, socket: &SocketState);

    /// Records that one of this node's sockets closed. Must not block. Returns where to wait
    /// before handing the socket's `closed` event to the upstreams, when the cluster must record
    /// it first: the receiver answers `true` once it is recorded (hand the event out), `false`
    /// when the cluster had reaped the socket already and announced its `closed` (hand it out
    /// no more), or closes when the record could not be written (hand it out). `None`: hand it
    /// out now. So an upstream hears one `closed` per socket even when its node was cut off and
    /// reaped meanwhile.
    fn socket_closed(&self, socket: &SocketState, reason: CloseReason) -> Option<ClosedRecorded>;

    /// Records that a socket's labels changed. Must not block.
    fn labels_changed(&self, socket: &SocketState);
}

/// Where the receipt of a command forwarded to another node comes from.
pub type PendingReceipt = std::pin::Pin<Box<dyn std::future::Future<Output = Receipt> + Send>>;

/// The cluster seen from one node.
#[async_trait]
pub trait Backend: Records {
    /// Carries a one-socket command to the node that holds the socket (which is not this node).
    async fn forward_command(&self, command: &Command) -> Receipt;

    /// Carries one-socket commands (for sockets this node does not hold) to their nodes, in
    /// order (a socket gets its commands in the order given), without waiting for the receipts:
    /// returns, per command, where its receipt comes from. Many commands then cost one round
    /// trip, not one each.
    async fn forward_commands(&self, commands: &[Command]) -> Vec<PendingReceipt> {
        let mut pending: Vec<PendingReceipt> = Vec::with_capacity(commands.len());
        for command in commands {
            let receipt = self.forward_command(command).await;
            pending.push(Box::pin(std::future::ready(receipt)));
        }
        pending
    }

    /// Hands a broadcast to every other node (this node has already applied it).
    async fn broadcast(&self, broadcast: &Broadcast) -> Receipt;

    /// The round-robin counter.
    fn counter(&self) -> Arc<dyn Counter>;

    /// The upstream registry, ordered by id.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the shared state cannot be read.
    async fn upstreams(&self) -> Result<Vec<UpstreamEntry>, BackendError>;

    /// Adds (or re-points) an upstream in the registry.
    ///
    /// # Errors
    /// [`BackendError`] when it could not be stored.
    async fn add_upstream(&self, entry: UpstreamEntry) -> Result<(), BackendError>;

    /// Removes an upstream from the registry; `false` when there was none with that id.
    ///
    /// # Errors
    /// [`BackendError`] when it could not be stored.
    async fn remove_upstream(&self, id: &str) -> Result<bool, BackendError>;

    /// A receiver that changes whenever the registry does, so the node reconciles its streams.
    fn registry_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The nodes of the cluster, ordered by id.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the shared state cannot be read.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, BackendError>;

    /// A page of the cluster's sockets, read from the shared state (never from other nodes).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the shared state cannot be read.
    async fn sockets(&self, query: &SocketQuery) -> Result<SocketPage, BackendError>;

    /// One socket of the cluster, as the shared state knows it; `idle_after` decides its state.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the shared state cannot be read.
    async fn socket(&self, id: SocketId, idle_after: std::time::Duration)
    -> Result<Option<SocketRecord>, BackendError>;

    /// Hands a runtime settings change, applied on this node already, to every other node
    /// (recorded in `K:runtime` and announced on `K:ch:control`).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Redis did not take it (or did not answer in time).
    async fn publish_runtime(&self, _patch: &RuntimePatch) -> Result<(), BackendError> {
        Ok(())
    }

    /// Cluster-wide runtime settings changes this node has not applied yet (those made on other
    /// nodes, and any it missed while it did not hear the bus), for it to apply.
    fn runtime_changes(&self) -> tokio::sync::broadcast::Receiver<RuntimePatch>;

    /// Lifecycle records waiting to be written to the shared state.
    fn queue_depth(&self) -> usize {
        0
    }

    /// Whether the shared state answered recently (always, for a standalone node). A node is not
    /// ready while it is cut off from its cluster.
    fn is_reachable(&self) -> bool {
        true
    }

    /// Whether this node hears the cluster's bus: its subscription to its own channel, the
    /// broadcast channel and the control channel is live (always, for a standalone node). A node
    /// is not ready while it would miss broadcasts and commands from other nodes, e.g. in the
    /// moment it subscribes again after a Redis failover.
    fn is_subscribed(&self) -> bool {
        true
    }

    /// The node started draining: tell the cluster (`draining` in `K:node:{node}`).
    async fn draining(&self) {}

    /// The node drained: flush what is queued and leave the cluster cleanly.
    async fn leave(&self) {}

    /// The lifecycle events the cluster asks this node to hand to its upstreams; `Some` once (a
    /// standalone node has none).
    fn announcements(&self) -> Option<tokio::sync::mpsc::Receiver<Announcement>> {
        None
    }

    /// The commands and broadcasts other nodes send to this node's sockets; `Some` once (a
    /// standalone node has none).
    fn inbound(&self) -> Option<tokio::sync::mpsc::Receiver<Inbound>> {
        None
    }
}
