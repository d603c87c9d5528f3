//! The registry's `dns:///` entries on this node: each has a resolution task
//! ([`crate::upstream::dns`]) whose addresses join the pool as upstreams of their own
//! (`{entry id}@{address}`) and leave it as removed upstreams do. The registry keeps the entry
//! as the operator wrote it; only this node's pool holds the addresses.
//!
//! Every change of the pool happens under the reconcile lock, as for the other entries, so a
//! reconciliation sees each entry's addresses exactly as its task left them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Node;
use crate::{
    cluster::UpstreamEntry,
    upstream::{
        dns::{self, DnsState, DnsTarget, DnsTask},
        pool::Upstream,
    },
};

/// The `dns:///` entries this node expands. Part of the node's shared state.
#[derive(Default)]
pub(super) struct DnsEntries {
    /// The entries by registry id. Changed only under the reconcile lock; never held across an
    /// `.await`.
    running: Mutex<HashMap<String, Arc<Running>>>,
    /// Built for the first `dns:///` entry (a node without one never reads `/etc/resolv.conf`).
    resolver: OnceLock<Result<TokioResolver, Arc<hickory_resolver::net::NetError>>>,
}

/// One expanded entry.
struct Running {
    /// Its URI, as the registry holds it (a re-pointed entry is stopped and started anew).
    uri: String,
    /// Its resolution state, for the admin API.
    state: Arc<DnsState>,
    /// Cancelled when the entry leaves the registry: its task removes its addresses.
    stop: CancellationToken,
    /// The pool upstreams it started, by id: only these are removed when their address goes.
    members: Mutex<BTreeMap<String, Arc<Upstream>>>,
}

/// A `dns:///` entry as this node sees it: for the admin API.
#[derive(Debug)]
pub struct Resolved {
    /// The last resolution error, if the last resolution failed (the addresses are then the last
    /// known ones).
    pub last_error: Option<String>,
    /// The upstreams of the addresses the name resolves to, by id.
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Node {
    /// Makes the `dns:///` entries this node expands match `wanted` (the registry's): stops those
    /// gone or re-pointed, starts the new ones. The caller holds the reconcile lock.
    pub(super) fn reconcile_dns(&self, wanted: &[UpstreamEntry]) {
        let gone: Vec<String> = {
            let running = self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner());
            running
                .iter()
                .filter(|(id, r)| !wanted.iter().any(|w| &w.id == *id && w.uri == r.uri))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in gone {
            info!(upstream = %id, "dns upstream removed");
            if let Some(r) = self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                r.stop.cancel();
            }
        }
        for entry in wanted {
            let known = self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&entry.id);
            if !known {
                self.start_dns(entry.clone());
            }
        }
    }

    /// Whether a pool upstream is one address of a `dns:///` entry (the reconciliation leaves it
    /// to its entry's task). The caller holds the reconcile lock.
    pub(super) fn is_dns_member(&self, id: &str) -> bool {
        let running = self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().any(|r| r.members.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id))
    }

    /// The `dns:///` entry `id` with URI `uri` as this node sees it; `None` when this node does
    /// not expand it (not a `dns:///` entry, or not yet).
    pub fn resolved(&self, id: &str, uri: &str) -> Option<Resolved> {
        let running = self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()?;
        if running.uri != uri {
            return None;
        }
        let upstreams = running.members.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        Some(Resolved { last_error: running.state.last_error(), upstreams })
    }

    /// Starts expanding a `dns:///` entry (the caller holds the reconcile lock).
    pub(super) fn start_dns(&self, entry: UpstreamEntry) {
        info!(upstream = %entry.id, uri = %entry.uri, "dns upstream added");
        let running = Arc::new(Running {
            uri: entry.uri.clone(),
            state: Arc::default(),
            stop: CancellationToken::new(),
            members: Mutex::default(),
        });
        self.inner.dns.running.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.id.clone(), running.clone());
        let interval = self.inner.config.dns_interval;
        let built = self.inner.dns.resolver.get_or_init(|| dns::resolver(interval).map_err(Arc::new));
        let (target, resolver) = match (DnsTarget::parse(&entry.uri), built) {
            (Ok(target), Ok(resolver)) => (target, resolver.clone()),
            (Err(e), _) => return fail(&running, e.to_string()),
            (_, Err(e)) => return fail(&running, format!("no DNS resolver: {e}")),
        };
        let task = DnsTask {
            id: entry.id.clone(),
            target,
            resolver,
            interval,
            state: running.state.clone(),
            stop: running.stop.clone(),
            finish: self.inner.stream_ctx.finish.clone(),
        };
        let span = info_span!("dns", upstream = %entry.id);
        let node = self.clone();
        let apply = move |set: BTreeSet<SocketAddr>| {
            let (node, running, id) = (node.clone(), running.clone(), entry.id.clone());
            async move { node.apply_dns(&id, &running, set).await }
        };
        self.inner.tracker.spawn(task.run(apply).instrument(span));
    }

    /// Makes an entry's upstreams those of `set`: the addresses that left are removed from the
    /// pool (their streams end, nothing is replayed), those that joined are started.
    async fn apply_dns(&self, id: &str, running: &Running, set: BTreeSet<SocketAddr>) {
        let _serial = self.inner.reconcile.lock().await;
        if self.inner.drain.has_started() {
            return;
        }
        let wanted: BTreeMap<String, SocketAddr> = set.into_iter().map(|a| (dns::member_id(id, a), a)).collect();
        let mut members = running.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|member, upstream| {
            let keep = wanted.contains_key(member);
            // Only the upstream this entry started: a re-pointed entry's successor may hold the id.
            if !keep && self.inner.pool.get(member).is_some_and(|u| Arc::ptr_eq(&u, upstream)) {
                info!(upstream = %member, "dns address gone: upstream removed");
                self.inner.pool.remove(member);
            }
            keep
        });
        if running.stop.is_cancelled() {
            return;
        }
        for (member, addr) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = members.entry(member) {
                let entry = UpstreamEntry { id: slot.key().clone(), uri: dns::member_uri(addr) };
                slot.insert(self.spawn_upstream(entry));
            }
        }
    }
}

/// An entry that cannot be expanded: the admin API shows why.
fn fail(running: &Running, error: String) {
    warn!(error = %error, "dns upstream not started");
    running.state.set_last_error(Some(error));
}
