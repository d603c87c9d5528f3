//! Keeping the upstream pool equal to the registry (`K:upstreams` in a cluster): upstreams added
//! and removed through the admin API, by other nodes, or by `--upstream` at start.

use std::sync::Arc;

use tracing::{Instrument, info, info_span};

use super::{Node, NodeError};
use crate::{
    cluster::{BackendError, UpstreamEntry},
    upstream::{self, dns::DnsTarget, pool::Upstream, stream},
};

impl Node {
    /// Adds an upstream to the registry (id: its `host:port` unless given) and starts streaming
    /// to it.
    ///
    /// # Errors
    /// [`NodeError::InvalidUpstream`] for a bad URI; [`NodeError::Backend`] when the registry
    /// cannot be written.
    pub async fn add_upstream(&self, id: Option<String>, uri: String) -> Result<UpstreamEntry, NodeError> {
        upstream::validate_uri(&uri)?;
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
    pub(super) async fn reconcile(&self) -> Result<(), BackendError> {
        let _serial = self.inner.reconcile.lock().await;
        if self.inner.drain.has_started() {
            return Ok(());
        }
        let (named, wanted): (Vec<_>, Vec<_>) =
            self.inner.backend.upstreams().await?.into_iter().partition(|e| DnsTarget::is_dns(&e.uri));
        self.reconcile_dns(&named);
        for current in self.inner.pool.snapshot().iter() {
            let listed = wanted.iter().any(|w| w.id == current.id && w.uri == current.uri);
            if !listed && !self.is_dns_member(&current.id) {
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

    /// Starts streaming to an upstream, or expanding a `dns:///` entry (the caller holds the
    /// reconcile lock).
    pub(super) fn spawn_entry(&self, entry: UpstreamEntry) {
        if DnsTarget::is_dns(&entry.uri) {
            self.start_dns(entry);
        } else {
            self.spawn_upstream(entry);
        }
    }

    /// Starts streaming to an upstream (the caller holds the reconcile lock).
    pub(super) fn spawn_upstream(&self, entry: UpstreamEntry) -> Arc<Upstream> {
        info!(upstream = %entry.id, uri = %entry.uri, "upstream added");
        let (up, rx) = self.inner.pool.insert(entry.id.clone(), entry.uri);
        let span = info_span!("upstream", upstream = %entry.id);
        self.inner.tracker.spawn(stream::run(up.clone(), rx, self.inner.stream_ctx.clone()).instrument(span));
        up
    }
}
