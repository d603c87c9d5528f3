//! The standalone backend: one node, nothing shared. Socket records live in the node's own table,
//! so recording is a no-op and listings read the table; a command for a socket this node does not
//! hold is for an unknown socket; the registry and the counter are local.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::{
    Backend, BackendError, Counter, Records, UpstreamEntry,
    view::{self, NodeRecord, SocketPage, SocketQuery, SocketRecord},
};
use crate::{
    command::{Broadcast, Command, Receipt},
    settings::RuntimePatch,
    socket::{CloseReason, SocketId, SocketState, SocketTable, unix_ms},
};

/// A local round-robin counter.
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

impl Counter for LocalCounter {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// The in-memory backend of a standalone node.
#[derive(Debug)]
pub struct MemoryBackend {
    /// The node's sockets: the whole "cluster".
    table: SocketTable,
    /// The node itself, as `GET /v1/nodes` shows it (`sockets` and the age are filled in then).
    node: NodeRecord,
    /// The registry, by id (so iteration is ordered by id).
    upstreams: Mutex<BTreeMap<String, String>>,
    /// Bumped on every registry change.
    changes: watch::Sender<u64>,
    /// The round-robin counter.
    counter: Arc<LocalCounter>,
    /// Never sent on: there are no other nodes.
    runtime: broadcast::Sender<RuntimePatch>,
    /// The node started draining.
    draining: AtomicBool,
}

impl MemoryBackend {
    /// The backend of the standalone node `node` that holds the sockets of `table`.
    pub fn new(table: SocketTable, node: NodeRecord) -> Self {
        Self {
            table,
            node,
            upstreams: Mutex::default(),
            changes: watch::Sender::new(0),
            counter: Arc::default(),
            runtime: broadcast::Sender::new(1),
            draining: AtomicBool::new(false),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records for MemoryBackend {
    fn socket_opened(&self, _socket: &SocketState) {}

    fn socket_closed(&self, _socket: &SocketState, _reason: CloseReason) -> Option<super::ClosedRecorded> {
        None
    }

    fn labels_changed(&self, _socket: &SocketState) {}
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn forward_command(&self, command: &Command) -> Receipt {
        match command.socket() {
            Some(id) => Receipt::unknown_socket(id),
            None => Receipt::ok(),
        }
    }

    async fn broadcast(&self, _broadcast: &Broadcast) -> Receipt {
        Receipt::ok()
    }

    fn counter(&self) -> Arc<dyn Counter> {
        self.counter.clone()
    }

    async fn upstreams(&self) -> Result<Vec<UpstreamEntry>, BackendError> {
        Ok(self.registry().iter().map(|(id, uri)| UpstreamEntry { id: id.clone(), uri: uri.clone() }).collect())
    }

    async fn add_upstream(&self, entry: UpstreamEntry) -> Result<(), BackendError> {
        self.registry().insert(entry.id, entry.uri);
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn remove_upstream(&self, id: &str) -> Result<bool, BackendError> {
        let removed = self.registry().remove(id).is_some();
        if removed {
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(removed)
    }

    fn registry_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, BackendError> {
        let draining = self.draining.load(Ordering::Relaxed);
        Ok(vec![NodeRecord { sockets: self.table.len() as u64, draining, ..self.node.clone() }])
    }

    async fn sockets(&self, query: &SocketQuery) -> Result<SocketPage, BackendError> {
        Ok(view::page_local(&self.node.id, self.table.snapshot(), query))
    }

    async fn socket(&self, id: SocketId, idle_after: Duration) -> Result<Option<SocketRecord>, BackendError> {
        Ok(self.table.get(id).map(|s| SocketRecord::local(&self.node.id, &s, idle_after)))
    }

    fn runtime_changes(&self) -> broadcast::Receiver<RuntimePatch> {
        self.runtime.subscribe()
    }

    async fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The record of a node starting now.
pub fn node_record(id: &str, listen: &str, admin: &str) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        listen: listen.to_owned(),
        admin: admin.to_owned(),
        started_at: unix_ms(),
        version: crate::VERSION.to_owned(),
        sockets: 0,
        heartbeat_age_ms: 0,
        draining: false,
    }
}
