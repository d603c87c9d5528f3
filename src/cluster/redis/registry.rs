//! The upstream registry, `K:upstreams`, shared by every node: changes are announced on
//! `K:ch:control`, and a registry Redis lost is seeded again from what this node knew.

use std::collections::HashMap;

use redis::AsyncCommands;
use tracing::warn;

use super::{RedisBackend, bus::BusMessage, connection::unavailable};
use crate::cluster::{BackendError, UpstreamEntry};

impl RedisBackend {
    /// The registry, ordered by id; seeded again from what this node knew when Redis lost it.
    pub(super) async fn registry_entries(&self) -> Result<Vec<UpstreamEntry>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.zscore(self.keys.nodes.clone(), &self.node).hgetall(self.keys.upstreams.clone());
        let (registered, all): (Option<i64>, HashMap<String, String>) =
            self.shared.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await.map_err(unavailable)?;
        let mut entries: Vec<_> = all.into_iter().map(|(id, uri)| UpstreamEntry { id, uri }).collect();
        entries.sort();
        let mut known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if registered.is_none() && entries.is_empty() && !known.is_empty() {
            // Redis lost its data (restarted empty, failed over) or reaped us: the registry is
            // not empty, it is gone. Seed it again from what this node knew.
            warn!(upstreams = known.len(), "the upstream registry is gone; seeding it again");
            let fields: Vec<(String, String)> = known.iter().map(|e| (e.id.clone(), e.uri.clone())).collect();
            let key = self.keys.upstreams.clone();
            let seeded: Result<(), _> =
                self.shared.run(|mut conn| async move { conn.hset_multiple(key, &fields).await }).await;
            seeded.map_err(unavailable)?;
            known.sort();
            return Ok(known);
        }
        *self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()) = entries.clone();
        Ok(entries)
    }

    /// Adds (or re-points) an upstream in `K:upstreams` and tells every node.
    pub(super) async fn registry_add(&self, entry: UpstreamEntry) -> Result<(), BackendError> {
        {
            // Remembered first: if Redis is unreachable now, the heartbeat seeds it later.
            let mut known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|e| e.id != entry.id);
            known.push(entry.clone());
        }
        let key = self.keys.upstreams.clone();
        let (id, uri) = (entry.id.clone(), entry.uri.clone());
        let added: Result<(), _> = self.shared.run(|mut conn| async move { conn.hset(key, id, uri).await }).await;
        added.map_err(unavailable)?;
        self.announce().await;
        Ok(())
    }

    /// Removes an upstream from `K:upstreams` and tells every node.
    pub(super) async fn registry_remove(&self, id: &str) -> Result<bool, BackendError> {
        let key = self.keys.upstreams.clone();
        let removed: usize =
            self.shared.run(|mut conn| async move { conn.hdel(key, id).await }).await.map_err(unavailable)?;
        self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).retain(|e| e.id != id);
        self.announce().await;
        Ok(removed > 0)
    }

    /// Tells every node the registry changed.
    async fn announce(&self) {
        let notice = BusMessage::Control { what: "upstreams".to_owned() };
        if let Err(e) = self.publish(&self.keys.control_channel, notice).await {
            warn!(error = %e, "could not announce a registry change; nodes see it at their next resync");
        }
        self.registry.send_modify(|v| *v += 1);
    }
}
