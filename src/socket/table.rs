//! The table of the sockets this node holds: the node's own truth, which commands and broadcast
//! scopes read.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use tokio::sync::watch;

use super::{SocketId, SocketState};

/// This node's sockets by id. A cheap `Clone` handle; the lock is never held across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct SocketTable {
    /// The sockets. A read lock per command is cheap next to the gRPC work around it.
    inner: Arc<RwLock<HashMap<SocketId, Arc<SocketState>>>>,
    /// How many sockets there are, for whoever waits for the table to empty (a drain).
    count: Arc<watch::Sender<usize>>,
}

impl SocketTable {
    /// Adds a socket.
    pub fn insert(&self, socket: Arc<SocketState>) {
        let mut map = self.write();
        map.insert(socket.id, socket);
        self.count.send_replace(map.len());
    }

    /// Removes a socket; returns it if it was there.
    pub fn remove(&self, id: SocketId) -> Option<Arc<SocketState>> {
        let mut map = self.write();
        let removed = map.remove(&id);
        self.count.send_replace(map.len());
        removed
    }

    /// Waits until the table is empty.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_empty(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The socket with this id, if this node holds it.
    pub fn get(&self, id: SocketId) -> Option<Arc<SocketState>> {
        self.read().get(&id).cloned()
    }

    /// How many sockets this node holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether this node holds no socket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every socket, at one moment (so callers iterate without holding the lock).
    pub fn snapshot(&self) -> Vec<Arc<SocketState>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SocketId, Arc<SocketState>>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketId, Arc<SocketState>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}
