//! The cluster's state in Redis against the truth of the live nodes, and `K:events` against the
//! sockets' lives: the checker's Redis half.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    time::Duration,
};

use redis::AsyncCommands;
use tokio::time::Instant;

use super::check::EventsReport;

/// Every key of the cluster starts with this (`--redis-prefix` and `--cluster` are defaults).
pub const K: &str = "ppp:{default}:";

/// What Redis must hold: the live nodes, the sockets each really holds, the registry.
#[derive(Debug, Default)]
pub struct Truth {
    /// Live node id → its `--listen` address.
    pub nodes: BTreeMap<String, String>,
    /// Socket id → (the node that holds it, the client's address).
    pub sockets: BTreeMap<String, (String, String)>,
    /// The upstream registry: id → URI.
    pub upstreams: BTreeMap<String, String>,
}

/// What Redis holds of the cluster's membership, sockets and registry.
#[derive(Debug, PartialEq, Eq)]
struct RedisView {
    /// `K:nodes` members.
    nodes: Vec<String>,
    /// `K:node:{node}` hashes: node → its `listen` field.
    node_hashes: BTreeMap<String, String>,
    /// `K:node:{node}:sockets`, by node (empty sets do not exist in Redis).
    node_sockets: BTreeMap<String, Vec<String>>,
    /// `K:socket:{id}` → its `node` and `remote` fields.
    socket_hashes: BTreeMap<String, (String, String)>,
    /// `K:sockets` members.
    index: Vec<String>,
    /// `K:upstreams`.
    upstreams: BTreeMap<String, String>,
}

impl RedisView {
    async fn read(r: &mut redis::aio::MultiplexedConnection) -> Result<Self, redis::RedisError> {
        let mut nodes: Vec<String> = r.zrange(format!("{K}nodes"), 0, -1).await?;
        nodes.sort();
        let mut node_hashes = BTreeMap::new();
        let mut node_sockets = BTreeMap::new();
        let node_keys: Vec<String> = r.keys(format!("{K}node:*")).await?;
        for key in node_keys {
            let rest = key.trim_start_matches(&format!("{K}node:")).to_owned();
            // `K:node:{node}:reaped` (the sockets the cluster reaped, kept so a node that was
            // only cut off announces them again) is history, not the registry.
            if rest.ends_with(":reaped") {
                continue;
            }
            match rest.strip_suffix(":sockets") {
                Some(node) => {
                    let mut members: Vec<String> = r.smembers(&key).await?;
                    members.sort();
                    node_sockets.insert(node.to_owned(), members);
                }
                None => {
                    let listen: Option<String> = r.hget(&key, "listen").await?;
                    node_hashes.insert(rest, listen.unwrap_or_default());
                }
            }
        }
        let mut socket_hashes = BTreeMap::new();
        let socket_keys: Vec<String> = r.keys(format!("{K}socket:*")).await?;
        for key in socket_keys {
            let (node, remote): (Option<String>, Option<String>) =
                redis::pipe().hget(&key, "node").hget(&key, "remote").query_async(r).await?;
            let id = key.trim_start_matches(&format!("{K}socket:")).to_owned();
            socket_hashes.insert(id, (node.unwrap_or_default(), remote.unwrap_or_default()));
        }
        let mut index: Vec<String> = r.zrange(format!("{K}sockets"), 0, -1).await?;
        index.sort();
        let upstreams: BTreeMap<String, String> = r.hgetall(format!("{K}upstreams")).await?;
        Ok(Self { nodes, node_hashes, node_sockets, socket_hashes, index, upstreams })
    }

    /// The view Redis should hold for `truth`.
    fn expected(truth: &Truth) -> Self {
        let mut node_sockets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, (node, _)) in &truth.sockets {
            node_sockets.entry(node.clone()).or_default().push(id.clone());
        }
        Self {
            nodes: truth.nodes.keys().cloned().collect(),
            node_hashes: truth.nodes.clone(),
            node_sockets,
            socket_hashes: truth.sockets.clone(),
            index: truth.sockets.keys().cloned().collect(),
            upstreams: truth.upstreams.clone(),
        }
    }

    /// What differs, briefly.
    fn diff(&self, want: &Self) -> String {
        let mut out = String::new();
        if self.nodes != want.nodes {
            let _ = write!(out, "K:nodes is {:?}, the live nodes are {:?}; ", self.nodes, want.nodes);
        }
        if self.node_hashes != want.node_hashes {
            let _ = write!(out, "K:node:* hashes (listen) are {:?}, want {:?}; ", self.node_hashes, want.node_hashes);
        }
        let nodes: HashSet<&String> = self.node_sockets.keys().chain(want.node_sockets.keys()).collect();
        for node in nodes {
            let have: HashSet<&String> = self.node_sockets.get(node).into_iter().flatten().collect();
            let wanted: HashSet<&String> = want.node_sockets.get(node).into_iter().flatten().collect();
            if have != wanted {
                let extra: Vec<_> = have.difference(&wanted).collect();
                let missing: Vec<_> = wanted.difference(&have).collect();
                let _ = write!(
                    out,
                    "K:node:{node}:sockets has {} extra {:?} and misses {} {:?}; ",
                    extra.len(),
                    &extra[..extra.len().min(3)],
                    missing.len(),
                    &missing[..missing.len().min(3)]
                );
            }
        }
        let wrong: Vec<_> =
            want.socket_hashes.iter().filter(|(id, want)| self.socket_hashes.get(*id) != Some(want)).collect();
        let ghosts: Vec<_> = self.socket_hashes.keys().filter(|id| !want.socket_hashes.contains_key(*id)).collect();
        if !wrong.is_empty() || !ghosts.is_empty() {
            let _ = write!(
                out,
                "K:socket:* missing or wrong: {} {:?}; ghosts: {} {:?}; ",
                wrong.len(),
                &wrong[..wrong.len().min(3)],
                ghosts.len(),
                &ghosts[..ghosts.len().min(3)]
            );
        }
        if self.index != want.index {
            let _ = write!(out, "K:sockets has {} entries, the truth {}; ", self.index.len(), want.index.len());
        }
        if self.upstreams != want.upstreams {
            let _ = write!(out, "K:upstreams is {:?}, want {:?}; ", self.upstreams, want.upstreams);
        }
        out
    }
}

/// Waits until Redis equals the truth, at most until `since` + `within`; returns when it did
/// (measured from `since`: an upper bound when it already did at the first look), or the last
/// difference.
pub async fn converge(
    r: &mut redis::aio::MultiplexedConnection,
    truth: &Truth,
    since: Instant,
    within: Duration,
) -> Result<Duration, String> {
    let want = RedisView::expected(truth);
    loop {
        let diff = match RedisView::read(r).await {
            Ok(have) if have == want => return Ok(since.elapsed()),
            Ok(have) => have.diff(&want),
            Err(e) => format!("Redis: {e}"),
        };
        if since.elapsed() > within {
            return Err(format!("{diff}(after {} ms)", since.elapsed().as_millis()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry of `K:events`, oldest first: its fields (none when Redis does not answer).
pub async fn events(r: &mut redis::aio::MultiplexedConnection) -> Vec<BTreeMap<String, String>> {
    let entries: redis::streams::StreamRangeReply = match r.xrange_all(format!("{K}events")).await {
        Ok(entries) => entries,
        Err(_) => return Vec::new(),
    };
    entries
        .ids
        .iter()
        .map(|e| e.map.keys().map(|f| (f.clone(), e.get::<String>(f).unwrap_or_default())).collect())
        .collect()
}

/// Whether a `resumed` field says so (`1`/`true`; absent or `0`/`false` otherwise).
pub fn is_resumed(value: Option<&String>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Compares `K:events` with the sockets' lives: `known` is (socket id, still open). An
/// `opened` with `resumed` set starts a new life of its socket (re-announced by a node that was
/// reaped while cut off), which needs its own `closed`. Also returns the reasons of every
/// `closed` entry, by socket.
pub async fn check_events(
    r: &mut redis::aio::MultiplexedConnection,
    known: &[(String, bool)],
) -> (EventsReport, HashMap<String, Vec<String>>) {
    let mut report = EventsReport::default();
    let mut reasons: HashMap<String, Vec<String>> = HashMap::new();
    // Socket → its lives: closes recorded in each.
    let mut lives: HashMap<String, Vec<usize>> = HashMap::new();
    // Sockets with an `opened`, and those with a second one that is not a resumed one.
    let mut opened: HashSet<String> = HashSet::new();
    let mut reopened: HashSet<String> = HashSet::new();
    for e in events(r).await {
        let field = |f: &str| e.get(f).cloned().unwrap_or_default();
        match field("type").as_str() {
            "opened" => {
                report.opened += 1;
                if !opened.insert(field("socket")) && !is_resumed(e.get("resumed")) {
                    reopened.insert(field("socket"));
                }
                lives.entry(field("socket")).or_default().push(0);
            }
            "closed" => {
                *report.closed.entry(field("reason")).or_default() += 1;
                reasons.entry(field("socket")).or_default().push(field("reason"));
                match lives.get_mut(&field("socket")).and_then(|l| l.last_mut()) {
                    Some(closes) => *closes += 1,
                    // A close without an opened (trimmed, or never written): counted on a life
                    // of its own, so a live socket's shows as closed while live.
                    None => lives.entry(field("socket")).or_default().push(1),
                }
            }
            "node_up" => report.node_up += 1,
            "node_down" => report.node_down += 1,
            _ => {}
        }
    }
    for (id, open) in known {
        let socket = lives.get(id).map(Vec::as_slice).unwrap_or_default();
        if !opened.contains(id) {
            report.missing_opened.push(id.clone());
        } else if reopened.contains(id) {
            report.duplicate_opened.push(id.clone());
        }
        let (last, earlier) = socket.split_last().map_or((0, &[][..]), |(l, e)| (*l, e));
        if earlier.iter().any(|&c| c > 1) || (!open && last > 1) {
            report.duplicate_closed.push(id.clone());
        } else if earlier.contains(&0) || (!open && last == 0) {
            report.missing_closed.push(id.clone());
        } else if *open && last > 0 {
            report.closed_while_live.push(id.clone());
        }
    }
    (report, reasons)
}
