//! The standalone backend: one node, nothing shared. Socket records live in the node's own table,
//! so recording is a no-op; a command for a socket this node does not hold is for an unknown
//! socket; the registry and the counter are local.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Backend, BackendError, Counter, UpstreamEntry};
use crate::{
    command::{Broadcast, Command, Receipt},
    socket::{CloseReason, SocketState},
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
    /// The registry, by id (so iteration is ordered by id).
    upstreams: Mutex<BTreeMap<String, String>>,
    /// Bumped on every registry change.
    changes: watch::Sender<u64>,
    /// The round-robin counter.
    counter: Arc<LocalCounter>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self { upstreams: Mutex::default(), changes: watch::Sender::new(0), counter: Arc::default() }
    }
}

impl MemoryBackend {
    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn socket_opened(&self, _socket: &SocketState) {}

    fn socket_closed(&self, _socket: &SocketState, _reason: CloseReason) {}

    fn labels_changed(&self, _socket: &SocketState) {}

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
}
