//! Runtime settings (changed on this node, or published by another) and the gauges that
//! describe the node's state at a scrape.

use tracing::info;

use super::{Node, NodeError};
use crate::{
    metrics as m,
    settings::{RuntimePatch, RuntimeView},
    socket::unix_ms,
};

impl Node {
    /// Applies a runtime settings change on this node and, with `cluster`, hands it to every
    /// other node.
    ///
    /// # Errors
    /// [`NodeError::InvalidSettings`] when a field is invalid (nothing changed then);
    /// [`NodeError::Backend`] when it applied here but could not be handed to the cluster.
    pub async fn apply_runtime(&self, patch: &RuntimePatch, cluster: bool) -> Result<RuntimeView, NodeError> {
        let view = self.inner.settings.apply(patch)?;
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
}
