//! The upstream registry, `K:upstreams`, shared by every node: changes are announced on
//! `K:ch:control`, and a registry Redis lost is seeded again from what this node knew.

use std::collections::HashMap;

use redis::AsyncCommands;
use tracing::warn;

use super::{
    RedisBackend,
    bus::BusMessage,
    connection::{pool_error, unavailable, within},
};
use crate::cluster::{BackendError, UpstreamEntry};

impl RedisBackend {
    /// The registry, ordered by id; seeded again from what this node knew when Redis lost it.
    pub(super) async fn registry_entries(&self) -> Result<Vec<UpstreamEntry>, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let (registered, all): (Option<i64>, HashMap<String, String>) = redis::pipe()
                .zscore(self.keys.nodes.clone(), &self.node)
                .hgetall(self.keys.upstreams.clone())
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
                let _: () = conn.hset_multiple(self.keys.upstreams.clone(), &fields).await.map_err(unavailable)?;
                known.sort();
                return Ok(known);
            }
            *self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()) = entries.clone();
            Ok(entries)
        })
        .await
    }

    /// Adds (or re-points) an upstream in `K:upstreams` and tells every node.
    pub(super) async fn registry_add(&self, entry: UpstreamEntry) -> Result<(), BackendError> {
        {
            // Remembered first: if Redis is unreachable now, the heartbeat seeds it later.
            let mut known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|e| e.id != entry.id);
            known.push(entry.clone());
        }
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let _: () = conn.hset(self.keys.upstreams.clone(), &entry.id, &entry.uri).await.map_err(unavailable)?;
            self.announce(&mut conn).await;
            Ok(())
        })
        .await
    }

    /// Removes an upstream from `K:upstreams` and tells every node.
    pub(super) async fn registry_remove(&self, id: &str) -> Result<bool, BackendError> {
        within(async {
            let mut conn = self.pool.get().await.map_err(|e| unavailable(pool_error(e)))?;
            let removed: usize = conn.hdel(self.keys.upstreams.clone(), id).await.map_err(unavailable)?;
            self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).retain(|e| e.id != id);
            self.announce(&mut conn).await;
            Ok(removed > 0)
        })
        .await
    }

    /// Tells every node the registry changed.
    async fn announce(&self, conn: &mut deadpool_redis::Connection) {
        let notice = BusMessage::Control { what: "upstreams".to_owned() }.encode();
        if let Err(e) = conn.publish::<_, _, ()>(self.keys.control_channel.clone(), notice).await {
            warn!(error = %e, "could not announce a registry change; nodes see it at their next resync");
        }
        self.registry.send_modify(|v| *v += 1);
    }
}
