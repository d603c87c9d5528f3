//! The cluster as the admin API shows it: nodes and sockets, read from the backend (Redis in
//! cluster mode, the node's own table standalone), paged with a cursor.
//!
//! Sockets are listed in id order. Ids are UUID v7 whose timestamp is `connected_at`, so that is
//! connect order too, and the cursor is simply the last id of a page: paging is stable while
//! sockets come and go (a socket opened since the listing began shows up at the end).

use std::{collections::HashMap, time::Duration};

use serde::Serialize;

use crate::socket::{Labels, SocketId, SocketState, unix_ms};

/// Most sockets one page holds (`limit`).
pub const MAX_PAGE: usize = 1000;
/// Sockets per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// Most sockets one request looks at when filters are set: a page may then hold fewer than
/// `limit` sockets (even none) and still have a `next_cursor`, like Redis's `SCAN`.
pub const SCAN_BUDGET: usize = 10_000;

/// Whether a socket sent a message within `--idle-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Sent a message within `--idle-after`.
    Active,
    /// Did not.
    Inactive,
}

/// Which sockets to list.
#[derive(Debug, Clone, Default)]
pub struct SocketQuery {
    /// Only the sockets of this node.
    pub node: Option<String>,
    /// Only active or inactive sockets.
    pub state: Option<State>,
    /// Labels that must all match.
    pub labels: Labels,
    /// Most sockets in the page.
    pub limit: usize,
    /// Start after this socket (the previous page's `next_cursor`).
    pub after: Option<SocketId>,
    /// `--idle-after` of the node answering, which decides active and inactive.
    pub idle_after: Duration,
}

impl SocketQuery {
    /// Whether a socket passes the filters.
    pub fn matches(&self, s: &SocketRecord) -> bool {
        self.node.as_ref().is_none_or(|n| *n == s.node)
            && self.state.is_none_or(|st| st == s.state)
            && self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    }

    /// Whether any filter is set.
    pub fn filtered(&self) -> bool {
        self.node.is_some() || self.state.is_some() || !self.labels.is_empty()
    }
}

/// One socket, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SocketRecord {
    /// The socket id (UUID v7).
    pub id: String,
    /// The node that holds it.
    pub node: String,
    /// The client's address.
    pub remote_addr: String,
    /// The node's address the client connected to.
    pub local_addr: String,
    /// Accept time, unix ms.
    pub connected_at: i64,
    /// Last inbound message (or the accept), unix ms. From Redis it is refreshed every
    /// `--idle-after`/4, so exact to within that.
    pub last_seen: i64,
    /// `active` or `inactive`.
    pub state: State,
    /// Inbound messages (refreshed like `last_seen` when read from Redis).
    pub messages_in: u64,
    /// Outbound messages written.
    pub messages_out: u64,
    /// Inbound payload bytes.
    pub bytes_in: u64,
    /// Outbound payload bytes written.
    pub bytes_out: u64,
    /// The socket's labels.
    pub labels: Labels,
    /// The name the client asked for in its TLS handshake (SNI); absent for a plain TCP socket
    /// or a TLS client that sent none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub tls_server_name: Option<String>,
}

impl SocketRecord {
    /// The record of a socket this node holds: exact, live.
    pub fn local(node: &str, s: &SocketState, idle_after: Duration) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let last_seen = s.last_seen_ms();
        Self {
            id: s.id_str.to_string(),
            node: node.to_owned(),
            remote_addr: s.remote_addr.to_string(),
            local_addr: s.local_addr.to_string(),
            connected_at: s.connected_at_ms,
            last_seen,
            state: state(last_seen, idle_after),
            messages_in: s.messages_in.load(Relaxed),
            messages_out: s.messages_out.load(Relaxed),
            bytes_in: s.bytes_in.load(Relaxed),
            bytes_out: s.bytes_out.load(Relaxed),
            labels: s.labels_copy(),
            tls_server_name: s.tls_server_name.as_deref().map(str::to_owned),
        }
    }

    /// The record of a `K:socket:{id}` hash; `None` when the hash is empty (the socket is gone).
    pub fn from_hash(id: &str, hash: &HashMap<String, String>, idle_after: Duration) -> Option<Self> {
        let node = hash.get("node")?.clone();
        let text = |k: &str| hash.get(k).cloned().unwrap_or_default();
        let int = |k: &str| hash.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let count = |k: &str| hash.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let connected_at = int("connected_at");
        let last_seen = int("last_seen").max(connected_at);
        let labels =
            hash.iter().filter_map(|(k, v)| k.strip_prefix("label:").map(|k| (k.to_owned(), v.clone()))).collect();
        Some(Self {
            id: id.to_owned(),
            node,
            remote_addr: text("remote"),
            local_addr: text("local"),
            connected_at,
            last_seen,
            state: state(last_seen, idle_after),
            messages_in: count("messages_in"),
            messages_out: count("messages_out"),
            bytes_in: count("bytes_in"),
            bytes_out: count("bytes_out"),
            labels,
            tls_server_name: hash.get("tls_server_name").cloned(),
        })
    }
}

fn state(last_seen: i64, idle_after: Duration) -> State {
    if unix_ms() - last_seen < i64::try_from(idle_after.as_millis()).unwrap_or(i64::MAX) {
        State::Active
    } else {
        State::Inactive
    }
}

/// A page of sockets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SocketPage {
    /// The sockets, in id (= connect) order.
    pub sockets: Vec<SocketRecord>,
    /// Pass as `cursor` for the next page; `null` when the listing is complete.
    pub next_cursor: Option<String>,
}

/// A node of the cluster, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeRecord {
    /// The node id.
    pub id: String,
    /// Its downstream listener.
    pub listen: String,
    /// Its admin API.
    pub admin: String,
    /// Start time, unix ms.
    pub started_at: i64,
    /// Its software version.
    pub version: String,
    /// Sockets it holds (as of its last heartbeat).
    pub sockets: u64,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    /// Whether it is draining.
    pub draining: bool,
}

/// A page of this node's own sockets (standalone, or what it holds).
pub fn page_local(node: &str, mut sockets: Vec<std::sync::Arc<SocketState>>, query: &SocketQuery) -> SocketPage {
    sockets.retain(|s| query.after.is_none_or(|after| s.id > after));
    sockets.sort_unstable_by_key(|s| s.id);
    let mut page = Vec::new();
    let mut last = None;
    for (scanned, s) in sockets.iter().enumerate() {
        if page.len() == query.limit || (query.filtered() && scanned == SCAN_BUDGET) {
            return SocketPage { sockets: page, next_cursor: last.map(|id: SocketId| id.to_string()) };
        }
        let record = SocketRecord::local(node, s, query.idle_after);
        last = Some(s.id);
        if query.matches(&record) {
            page.push(record);
        }
    }
    SocketPage { sockets: page, next_cursor: None }
}
