//! Every Redis key and channel of a cluster, exactly as DESIGN §4 names them: all start with
//! `{prefix}:{{cluster}}:` (`K:` below), e.g. `ppp:{default}:`. The cluster name in braces is a
//! Redis Cluster hash tag: every key and channel of one cluster hashes to one slot, so every
//! pipeline and Lua script (which build their key names from `K:`) stays on one Redis node, and
//! several clusters spread over a Redis Cluster's shards.

/// Key and channel names for one cluster. The fixed names are built once, here; a name with a
/// node or socket id in it is built by its method at each call.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{prefix}:{{cluster}}:`
    base: String,
    /// `K:nodes` — sorted set: node id → last heartbeat (unix ms).
    pub nodes: String,
    /// `K:reaps` — sorted set: reap jobs (a dead node's sockets still to be announced `closed`
    /// to the upstreams) → when they were created (unix ms).
    pub reaps: String,
    /// `K:sockets` — sorted set: socket id → connected_at (unix ms).
    pub sockets: String,
    /// `K:upstreams` — hash: upstream id → URI.
    pub upstreams: String,
    /// `K:rr` — string (integer): the shared round-robin counter.
    pub rr: String,
    /// `K:events` — stream: lifecycle history.
    pub events: String,
    /// `K:runtime` — hash: the cluster-wide runtime settings, each with the version that last
    /// set it (see `runtime.rs`).
    pub runtime: String,
    /// `K:ch:broadcast` — channel: broadcasts.
    pub broadcast_channel: String,
    /// `K:ch:control` — channel: registry and runtime settings changes.
    pub control_channel: String,
}

impl Keys {
    /// The names for `prefix` (`--redis-prefix`) and `cluster` (`--cluster`).
    pub fn new(prefix: &str, cluster: &str) -> Self {
        let base = format!("{prefix}:{{{cluster}}}:");
        Self {
            nodes: format!("{base}nodes"),
            reaps: format!("{base}reaps"),
            sockets: format!("{base}sockets"),
            upstreams: format!("{base}upstreams"),
            rr: format!("{base}rr"),
            events: format!("{base}events"),
            runtime: format!("{base}runtime"),
            broadcast_channel: format!("{base}ch:broadcast"),
            control_channel: format!("{base}ch:control"),
            base,
        }
    }

    /// `K:node:{node}` — hash: `listen`, `admin`, `started_at`, `version`, `run_id`, `sockets`,
    /// `draining`, `beats`.
    pub fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.base)
    }

    /// `K:node:{node}:sockets` — set: the ids of the sockets the node holds.
    pub fn node_sockets(&self, node: &str) -> String {
        format!("{}node:{node}:sockets", self.base)
    }

    /// `K:node:{node}:reaped` — set: the node's sockets the cluster reaped (kept a day), so the
    /// node, if it was only cut off, announces those it still holds again.
    pub fn node_reaped(&self, node: &str) -> String {
        format!("{}node:{node}:reaped", self.base)
    }

    /// `K:reap:{job}` — list, and `K:reap:{job}:owner`, `K:reap:{job}:sent`: one reap job (see
    /// `redis/announce.lua`).
    /// Returns (list, owner, sent).
    pub fn reap_job(&self, job: &str) -> (String, String, String) {
        let list = format!("{}reap:{job}", self.base);
        (list.clone(), format!("{list}:owner"), format!("{list}:sent"))
    }

    /// `K:socket:{id}` — hash: `node`, `remote`, `local`, `connected_at`, `last_seen`, `label:{name}`.
    pub fn socket(&self, id: &str) -> String {
        format!("{}socket:{id}", self.base)
    }

    /// `K:ch:node:{node}` — channel: commands for one node.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}ch:node:{node}", self.base)
    }

    /// The prefix every key of this cluster starts with, `K:`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let k = Keys::new("ppp", "default");
        assert_eq!(k.base(), "ppp:{default}:");
        assert_eq!(k.nodes, "ppp:{default}:nodes");
        assert_eq!(k.node("n1"), "ppp:{default}:node:n1");
        assert_eq!(k.node_sockets("n1"), "ppp:{default}:node:n1:sockets");
        assert_eq!(k.socket("abc"), "ppp:{default}:socket:abc");
        assert_eq!(k.sockets, "ppp:{default}:sockets");
        assert_eq!(k.upstreams, "ppp:{default}:upstreams");
        assert_eq!(k.rr, "ppp:{default}:rr");
        assert_eq!(k.events, "ppp:{default}:events");
        assert_eq!(k.runtime, "ppp:{default}:runtime");
        assert_eq!(k.node_channel("n1"), "ppp:{default}:ch:node:n1");
        assert_eq!(k.broadcast_channel, "ppp:{default}:ch:broadcast");
        assert_eq!(k.control_channel, "ppp:{default}:ch:control");
    }

    #[test]
    fn every_key_of_a_cluster_hashes_to_its_slot() {
        let k = Keys::new("ppp", "default");
        let slot = redis::cluster_routing::Slot::for_key(k.nodes.as_bytes());
        let (job, owner, sent) = k.reap_job("n1/run/1");
        for key in
            [k.socket("abc"), k.node_reaped("n1"), k.node_channel("n2"), k.control_channel, k.runtime, job, owner, sent]
        {
            assert_eq!(redis::cluster_routing::Slot::for_key(key.as_bytes()), slot, "{key}");
        }
        let other = Keys::new("ppp", "other");
        assert_ne!(redis::cluster_routing::Slot::for_key(other.nodes.as_bytes()), slot);
    }
}
