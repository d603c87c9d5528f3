//! The checker: after a run, compares what the clients sent and received with what the
//! upstreams recorded, and the cluster's Redis state with the truth of the live nodes.
//!
//! Invariants, per client connection (one socket):
//! - every message sent was delivered to an upstream at least once and its echo came back,
//!   unless the node closed the connection: a message sent within [`Expect::grace`] before the
//!   client saw the close is exempt (the client was told). An echo that an upstream never sent
//!   because it was killed right after receiving the message is the upstream's loss, counted
//!   apart;
//! - no line reached a client that did not send it, and one connection's messages all came from
//!   one socket, numbered by the node as the client numbered them;
//! - no message was delivered twice, except where the schedule breaks an upstream's stream (the
//!   node replays what the upstream may not have received: at least once, documented);
//! - the node closed no connection but those the schedule allows;
//! - Redis (`K:nodes`, `K:node:{node}` and `K:node:{node}:sockets`, `K:socket:*` with their
//!   `node` and `remote`, `K:sockets`, `K:upstreams`) equals the live nodes' truth (the
//!   connections the clients hold) within `--resync-interval` of the fault being lifted (plus
//!   `--node-ttl` for a dead node to be reaped);
//! - where the schedule keeps Redis's data, `K:events` holds one `opened` per socket and one
//!   `closed` per closed socket, and none for a live one (exactly once, or at least once where
//!   the schedule says why: see [`Events`]);
//! - the upstreams, all together, were told one `closed` for every `opened` they saw (a
//!   redelivered copy counted once; an `opened` with `resumed` starts a new life that needs its
//!   own), none twice, and none for a socket that is still open: see [`Lifecycle`];
//! - no `data` event reached an upstream again after an upstream had acknowledged it (`Ack` on
//!   the stream that carried it), and every copy after the first was flagged `redelivered`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    load::{Conn, ConnState},
    state::{self, Truth},
    upstream::{Record, Seen},
};
use crate::common::Recording;

/// An ack handed to a stream this soon before its upstream was killed may have died with it
/// (not yet read by the node): a copy of an event it covered, seen again, is counted apart, not
/// as a duplicate of an acknowledged event.
pub const ACK_IN_FLIGHT: Duration = Duration::from_millis(100);

/// What a schedule allows.
#[derive(Debug, Clone)]
pub struct Expect {
    /// A message sent this long before the client saw the node close its connection may be lost
    /// with it (the client was told).
    pub grace: Duration,
    /// Nodes whose sockets may be closed (killed or drained ones); any other close is a failure.
    pub closing_nodes: Vec<String>,
    /// What `K:events` must hold.
    pub events: Events,
    /// An upstream killed this soon after receiving a message may take its echo with it.
    pub upstream_death_window: Duration,
    /// How long Redis may take to equal the truth, from `healed`.
    pub converge_within: Duration,
    /// When the schedule's last fault was lifted (or the check started, when `None`).
    pub healed: Option<Instant>,
    /// Messages may be delivered (and echoed) twice: an upstream's stream broke with events in
    /// its replay window, which the node hands out again (at-least-once, `docs/protocol.md`).
    pub may_duplicate: bool,
    /// What the upstreams must have been told of the sockets' lives.
    pub lifecycle: Lifecycle,
}

/// What the upstreams must have been told of the sockets' lives (DESIGN §3, "lifecycle,
/// exactly once").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Every life of a socket (from its `opened`, or an `opened` with `resumed`) that ended
    /// (its client saw it closed, or closed it) has exactly one `closed`, a live one none; a
    /// redelivered copy of either counts once.
    ExactlyOnce,
    /// As [`Lifecycle::ExactlyOnce`], but a missing `closed` is only reported: Redis lost its
    /// data while a node died, and the sockets the reaper would have closed with it.
    AtMostOnce,
}

/// What `K:events` must hold, per schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// Exactly one `opened` per socket, exactly one `closed` per closed socket, none for a live
    /// socket.
    ExactlyOnce,
    /// Not checked, only reported: the schedule makes Redis lose data, and its history with it.
    Lost,
}

/// Where `K:events` disagrees with the sockets' lives.
#[derive(Debug, Default)]
pub struct EventsReport {
    /// `opened` entries.
    pub opened: usize,
    /// `closed` entries, by reason.
    pub closed: BTreeMap<String, usize>,
    /// `node_up` entries.
    pub node_up: usize,
    /// `node_down` entries.
    pub node_down: usize,
    /// Sockets without their `opened`.
    pub missing_opened: Vec<String>,
    /// Sockets with more than one `opened`.
    pub duplicate_opened: Vec<String>,
    /// Closed sockets without their `closed`.
    pub missing_closed: Vec<String>,
    /// Sockets with more than one `closed`.
    pub duplicate_closed: Vec<String>,
    /// Live sockets with a `closed` (e.g. `node_lost` for a node that was only cut off).
    pub closed_while_live: Vec<String>,
}

impl EventsReport {
    /// How many sockets break `rule`.
    pub fn violations(&self, rule: Events) -> usize {
        let missing = self.missing_opened.len() + self.missing_closed.len() + self.closed_while_live.len();
        match rule {
            Events::ExactlyOnce => missing + self.duplicate_opened.len() + self.duplicate_closed.len(),
            Events::Lost => 0,
        }
    }
}

/// What the upstreams, all together, were told of the sockets' lives, and of acknowledged
/// events seen again.
#[derive(Debug, Default)]
pub struct LifecycleReport {
    /// Sockets the upstreams heard of.
    pub sockets: usize,
    /// Lives begun by an `opened` with `resumed`.
    pub resumed: usize,
    /// The `closed` of each life, by reason (redelivered copies counted once).
    pub closed: BTreeMap<String, usize>,
    /// Events flagged `redelivered`: `opened`, `data`, `closed`.
    pub redelivered: [usize; 3],
    /// Redelivered `opened`/`closed` copies of one already seen (counted once).
    pub collapsed: usize,
    /// Lives that ended (the client saw the socket closed, or closed it) without a `closed`.
    pub unclosed: Vec<String>,
    /// Lives with more than one `closed` not flagged `redelivered`.
    pub duplicate_closed: Vec<String>,
    /// Sockets with a second `opened` that is neither `resumed` nor `redelivered`.
    pub duplicate_opened: Vec<String>,
    /// `closed` events for a socket no upstream heard `opened` of.
    pub closed_without_opened: Vec<String>,
    /// Sockets still open (their client holds them) whose last life has a `closed`.
    pub closed_while_live: Vec<String>,
    /// `data` events delivered again after an upstream acknowledged an earlier copy.
    pub acked_again: Vec<String>,
    /// Copies of events whose ack was handed to the stream within [`ACK_IN_FLIGHT`] of the
    /// upstream's kill (allowed: the ack may have died with it).
    pub acked_in_flight: usize,
    /// A second (or later) copy of a `data` event without `redelivered`.
    pub unflagged_copies: Vec<String>,
    /// Acks the upstreams sent.
    pub acks: usize,
}

impl LifecycleReport {
    /// How many things break `rule`.
    pub fn violations(&self, rule: Lifecycle) -> usize {
        let always = self.duplicate_closed.len()
            + self.duplicate_opened.len()
            + self.closed_without_opened.len()
            + self.closed_while_live.len()
            + self.acked_again.len()
            + self.unflagged_copies.len();
        match rule {
            Lifecycle::ExactlyOnce => always + self.unclosed.len(),
            Lifecycle::AtMostOnce => always,
        }
    }
}

/// One `closed` an upstream received.
#[derive(Debug, Clone)]
pub struct Closed {
    /// Which upstream (read only through `Debug`, in a failing report).
    #[allow(dead_code)]
    pub upstream: usize,
    /// When.
    pub at: Instant,
    /// Why.
    pub reason: String,
    /// Whether it was flagged `redelivered`.
    pub redelivered: bool,
}

/// Every `closed` the upstreams received, by socket, in arrival order.
pub fn closes(records: &[Vec<Record>]) -> HashMap<String, Vec<Closed>> {
    let mut out: HashMap<String, Vec<Closed>> = HashMap::new();
    for (upstream, log) in records.iter().enumerate() {
        for r in log {
            if let Seen::Closed { socket_id, reason } = &r.seen {
                let c = Closed { upstream, at: r.at, reason: reason.clone(), redelivered: r.redelivered };
                out.entry(socket_id.clone()).or_default().push(c);
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|c| c.at);
    }
    out
}

/// The sockets of `node` whose `opened` (not `resumed`) an upstream received before `before`.
pub fn opened_on(records: &[Vec<Record>], node: &str, before: Instant) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .flatten()
        .filter(|r| r.at < before)
        .filter_map(|r| match &r.seen {
            Seen::Opened { socket_id, node_id, resumed: false, .. } if node_id == node => Some(socket_id.clone()),
            _ => None,
        })
        .collect()
}

/// One life of a socket, as the upstreams heard of it.
#[derive(Debug, Default)]
struct Life {
    /// Whether its `opened` was seen (a `closed` may arrive first, through another upstream).
    opened: bool,
    /// Begun by an `opened` with `resumed`.
    resumed: bool,
    /// Its `closed` events not flagged `redelivered`, and those flagged (reasons).
    closed: Vec<String>,
    /// Redelivered copies of a `closed` (kept apart: one counts when no other came).
    closed_again: Vec<String>,
}

impl Life {
    /// How many closes it had, a redelivered copy counted once.
    fn closes(&self) -> usize {
        if self.closed.is_empty() { usize::from(!self.closed_again.is_empty()) } else { self.closed.len() }
    }

    fn reason(&self) -> Option<&String> {
        self.closed.first().or(self.closed_again.first())
    }
}

/// The lifecycle invariant and the acknowledged-duplicates count over every upstream's records.
/// `open`: socket id → whether its client still holds it (unknown sockets are not held to a
/// `closed`).
pub fn lifecycle(records: &[Vec<Record>], kills: &[Vec<Instant>], open: &HashMap<String, bool>) -> LifecycleReport {
    let mut report = LifecycleReport::default();
    // Socket → its lifecycle events from every upstream, by arrival.
    let mut events: HashMap<&str, Vec<&Record>> = HashMap::new();
    // Stream → its acks (up_to, when), in order (cumulative: up_to never falls).
    let mut acks: HashMap<u64, Vec<(u64, Instant)>> = HashMap::new();
    // (socket, seq) → copies: (arrival, upstream, stream, event_seq, redelivered).
    type Copy = (Instant, usize, u64, u64, bool);
    let mut data: HashMap<(&str, u64), Vec<Copy>> = HashMap::new();
    for (up, log) in records.iter().enumerate() {
        for r in log {
            match &r.seen {
                Seen::Opened { socket_id, .. } | Seen::Closed { socket_id, .. } => {
                    events.entry(socket_id).or_default().push(r);
                    let kind = usize::from(matches!(r.seen, Seen::Closed { .. })) * 2;
                    report.redelivered[kind] += usize::from(r.redelivered);
                }
                Seen::Data { socket_id, seq, .. } => {
                    report.redelivered[1] += usize::from(r.redelivered);
                    data.entry((socket_id, *seq)).or_default().push((r.at, up, r.stream, r.event_seq, r.redelivered));
                }
                Seen::Acked { up_to } => {
                    report.acks += 1;
                    acks.entry(r.stream).or_default().push((*up_to, r.at));
                }
                Seen::Hello { .. } => {}
            }
        }
    }
    report.sockets = events.len();
    for (socket, mut list) in events {
        list.sort_by_key(|r| r.at);
        let mut lives: Vec<Life> = Vec::new();
        for r in list {
            match &r.seen {
                Seen::Opened { resumed, .. } => match lives.last_mut() {
                    // The first `opened`, or one that came after its `closed`.
                    None => lives.push(Life { opened: true, resumed: *resumed, ..Life::default() }),
                    Some(life) if !life.opened && !*resumed => life.opened = true,
                    Some(life) if r.redelivered && life.resumed == *resumed => report.collapsed += 1,
                    Some(_) if *resumed => {
                        report.resumed += 1;
                        lives.push(Life { opened: true, resumed: true, ..Life::default() });
                    }
                    Some(_) => report.duplicate_opened.push(socket.to_owned()),
                },
                Seen::Closed { reason, .. } => {
                    // A redelivered copy of an earlier life's close is that close again.
                    let earlier = lives.iter().rev().skip(1).any(|l| l.reason() == Some(reason));
                    match lives.last_mut() {
                        None if r.redelivered => {
                            lives.push(Life { closed_again: vec![reason.clone()], ..Life::default() })
                        }
                        None => lives.push(Life { closed: vec![reason.clone()], ..Life::default() }),
                        Some(life) if r.redelivered && life.closes() == 0 && earlier => report.collapsed += 1,
                        Some(life) if r.redelivered && life.closes() > 0 => {
                            life.closed_again.push(reason.clone());
                            report.collapsed += 1;
                        }
                        Some(life) if r.redelivered => life.closed_again.push(reason.clone()),
                        Some(life) => life.closed.push(reason.clone()),
                    }
                }
                _ => {}
            }
        }
        if lives.iter().any(|l| !l.opened) {
            report.closed_without_opened.push(socket.to_owned());
        }
        if lives.iter().any(|l| l.closed.len() > 1) {
            report
                .duplicate_closed
                .push(format!("{socket}: {:?}", lives.iter().map(|l| &l.closed).collect::<Vec<_>>()));
        }
        for life in &lives {
            if let Some(reason) = life.reason() {
                *report.closed.entry(reason.clone()).or_default() += 1;
            }
        }
        let (last, earlier) = lives.split_last().expect("a socket with events has a life");
        let still_open = open.get(socket).copied();
        if earlier.iter().any(|l| l.closes() == 0) || (still_open == Some(false) && last.closes() == 0) {
            report.unclosed.push(socket.to_owned());
        }
        if still_open == Some(true) && last.closes() > 0 {
            report.closed_while_live.push(format!("{socket} ({:?})", last.reason()));
        }
    }
    // When the first ack covering each copy left, if one did.
    let acked_at = |stream: u64, event_seq: u64| {
        let list = acks.get(&stream)?;
        list.get(list.partition_point(|(up_to, _)| *up_to < event_seq)).map(|(_, at)| *at)
    };
    for ((socket, seq), mut copies) in data {
        copies.sort_by_key(|c| c.0);
        for (j, &(at, _, _, _, redelivered)) in copies.iter().enumerate().skip(1) {
            if !redelivered {
                report.unflagged_copies.push(format!("{socket}:{seq}"));
            }
            // The earlier copies an ack covered before this one arrived: were they all acked
            // just before their upstream died?
            let acked: Vec<bool> = copies[..j]
                .iter()
                .filter_map(|&(_, up, stream, event_seq, _)| {
                    let ack = acked_at(stream, event_seq).filter(|a| *a < at)?;
                    Some(kills[up].iter().any(|k| *k >= ack && *k - ack <= ACK_IN_FLIGHT))
                })
                .collect();
            if acked.iter().any(|in_flight| !in_flight) {
                report.acked_again.push(format!("{socket}:{seq}"));
            } else if !acked.is_empty() {
                report.acked_in_flight += 1;
            }
        }
    }
    report
}

/// The checker's verdict on one run.
#[derive(Debug)]
pub struct Report {
    /// The schedule.
    pub name: String,
    /// Client connections (sockets).
    pub conns: usize,
    /// How many of them only listened (a flood).
    pub silent: usize,
    /// Messages sent.
    pub sent: usize,
    /// Messages delivered to an upstream (distinct).
    pub delivered: usize,
    /// Messages echoed back to their client (distinct).
    pub echoed: usize,
    /// Messages that had to be delivered and echoed and were not delivered.
    pub lost: Vec<String>,
    /// Messages delivered whose echo had to come back and did not.
    pub echo_missing: Vec<String>,
    /// Messages sent within the grace before a node close and not confirmed (allowed).
    pub exempt: usize,
    /// Messages whose echo died with a killed upstream (allowed).
    pub upstream_died_holding: usize,
    /// Extra deliveries of one message.
    pub duplicates: usize,
    /// Extra echoes of one message.
    pub echo_duplicates: usize,
    /// Whether the schedule allows duplicates (see [`Expect::may_duplicate`]).
    pub duplicates_allowed: bool,
    /// Lines at the wrong client, or one connection's messages from two sockets.
    pub misrouted: Vec<String>,
    /// Messages the node numbered differently than the client.
    pub seq_mismatch: usize,
    /// Data events that are not the load's (e.g. a slow consumer's).
    pub other_payloads: usize,
    /// Connections the node closed.
    pub closed_by_node: usize,
    /// Their reasons: as the upstreams were told, else as `K:events` recorded.
    pub close_reasons: BTreeMap<String, usize>,
    /// How the clients saw those closes (EOF, a reset, a failed write).
    pub closes_seen: BTreeMap<String, usize>,
    /// The closes the schedule did not allow.
    pub unexpected_closes: Vec<String>,
    /// Open connections whose socket id is unknown (neither `opened` nor `data` seen).
    pub unmapped: usize,
    /// How long Redis took to equal the truth, or what still differed at the deadline.
    pub redis: Result<Duration, String>,
    /// Whether that time counts from when the fault was lifted (else from the check's start).
    pub measured_from_heal: bool,
    /// `K:events` against the sockets' lives.
    pub events: EventsReport,
    /// What `K:events` had to hold.
    pub events_rule: Events,
    /// What the upstreams were told of the sockets' lives.
    pub lifecycle: LifecycleReport,
    /// What they had to be told.
    pub lifecycle_rule: Lifecycle,
}

/// What the upstreams saw, indexed for the checker.
#[derive(Default)]
struct Upstreams {
    /// uid → (upstream, arrival, socket id, node seq), one entry per delivery.
    deliveries: HashMap<String, Vec<(usize, Instant, String, u64)>>,
    /// Connection key → socket ids its messages came from.
    socket_of_key: HashMap<String, HashSet<String>>,
    /// Client address → (socket id, node id, arrival) of every `opened` with that address.
    opened_by_addr: HashMap<String, Vec<(String, String, Instant)>>,
    /// Socket id → node id.
    owner: HashMap<String, String>,
    /// Socket id → reasons of its `closed` events.
    closed: HashMap<String, Vec<String>>,
    /// Data events that are not the load's.
    other: usize,
}

impl Upstreams {
    fn index(records: &[Vec<Record>]) -> Self {
        let mut u = Self::default();
        for (i, log) in records.iter().enumerate() {
            for r in log {
                match &r.seen {
                    Seen::Data { socket_id, seq, payload } => match parse(payload) {
                        Some((key, _, uid)) => {
                            u.deliveries.entry(uid.to_owned()).or_default().push((i, r.at, socket_id.clone(), *seq));
                            u.socket_of_key.entry(key.to_owned()).or_default().insert(socket_id.clone());
                        }
                        None => u.other += 1,
                    },
                    Seen::Opened { socket_id, node_id, remote_addr, .. } => {
                        u.opened_by_addr.entry(remote_addr.clone()).or_default().push((
                            socket_id.clone(),
                            node_id.clone(),
                            r.at,
                        ));
                        u.owner.insert(socket_id.clone(), node_id.clone());
                    }
                    Seen::Closed { socket_id, reason } => {
                        u.closed.entry(socket_id.clone()).or_default().push(reason.clone());
                    }
                    Seen::Hello { .. } | Seen::Acked { .. } => {}
                }
            }
        }
        u
    }

    /// The socket id of each connection: from its messages, else from the first `opened` on its
    /// node, with its address, after it began to connect, and not another connection's. (A
    /// client port is not unique: the kernel reuses one for connections to other nodes, and
    /// for a later connection once the first is gone.)
    fn sockets_of(&self, conns: &[&Conn]) -> Vec<Option<String>> {
        let mut ids: Vec<Option<String>> =
            conns.iter().map(|c| self.socket_of_key.get(&c.key).and_then(|ids| ids.iter().next().cloned())).collect();
        let mut claimed: HashSet<String> = ids.iter().flatten().cloned().collect();
        let mut order: Vec<usize> = (0..conns.len()).filter(|&i| ids[i].is_none()).collect();
        order.sort_by_key(|&i| conns[i].connecting_at);
        for i in order {
            let conn = conns[i];
            let candidates = self.opened_by_addr.get(&conn.local.to_string()).into_iter().flatten();
            let first = candidates
                .filter(|(id, node, at)| *node == conn.node_id && *at >= conn.connecting_at && !claimed.contains(id))
                .min_by_key(|(_, _, at)| *at);
            if let Some((id, _, _)) = first {
                claimed.insert(id.clone());
                ids[i] = Some(id.clone());
            }
        }
        ids
    }
}

/// Splits a load line `c{client}.{generation}:{seq}:{uid}` into (key, seq, uid).
fn parse(payload: &[u8]) -> Option<(&str, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(':');
    let (key, seq, uid) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?);
    (key.starts_with('c') && parts.next().is_none()).then_some((key, seq, uid))
}

/// Everything the checker looks at.
pub struct Observed<'a> {
    /// The schedule's name.
    pub name: &'a str,
    /// Every client connection.
    pub conns: Vec<Arc<Conn>>,
    /// Each upstream's records.
    pub records: Vec<Vec<Record>>,
    /// Each upstream's log, read again once Redis converged (the reaper's `closed` events come
    /// as it reaps) for the lifecycle invariant.
    pub logs: Vec<Recording>,
    /// Each upstream's kill times.
    pub kills: Vec<Vec<Instant>>,
    /// The nodes running now: id → `--listen` address.
    pub live_nodes: BTreeMap<String, String>,
    /// The upstream registry as every node was told it: id → URI.
    pub upstreams: BTreeMap<String, String>,
}

/// Checks a run; prints and returns the report (assert it with [`Report::assert_ok`]).
pub async fn check(observed: Observed<'_>, redis: &mut redis::aio::MultiplexedConnection, expect: &Expect) -> Report {
    let ups = Upstreams::index(&observed.records);
    let states: Vec<(Arc<Conn>, ConnState)> = observed.conns.iter().map(|c| (c.clone(), c.state())).collect();
    let mut report = Report {
        name: observed.name.to_owned(),
        conns: states.len(),
        silent: states.iter().filter(|(c, _)| c.silent).count(),
        other_payloads: ups.other,
        events_rule: expect.events,
        lifecycle: LifecycleReport::default(),
        lifecycle_rule: expect.lifecycle,
        sent: 0,
        delivered: 0,
        echoed: 0,
        lost: Vec::new(),
        echo_missing: Vec::new(),
        exempt: 0,
        upstream_died_holding: 0,
        duplicates: 0,
        echo_duplicates: 0,
        duplicates_allowed: expect.may_duplicate,
        misrouted: Vec::new(),
        seq_mismatch: 0,
        closed_by_node: 0,
        close_reasons: BTreeMap::new(),
        closes_seen: BTreeMap::new(),
        unexpected_closes: Vec::new(),
        unmapped: 0,
        redis: Err("not checked".to_owned()),
        measured_from_heal: expect.healed.is_some(),
        events: EventsReport::default(),
    };
    let sockets = ups.sockets_of(&states.iter().map(|(c, _)| &**c).collect::<Vec<_>>());
    for (conn, state) in &states {
        check_messages(&mut report, &ups, &observed.kills, conn, state, expect);
    }
    report.delivered = ups.deliveries.len();
    report.duplicates = ups.deliveries.values().map(|d| d.len() - 1).sum();
    // The truth: the connections the clients hold, by the node that holds each.
    let mut truth = Truth { nodes: observed.live_nodes, upstreams: observed.upstreams, ..Truth::default() };
    let mut known = Vec::new();
    for ((conn, state), socket) in states.iter().zip(&sockets) {
        match (socket, state.is_open()) {
            (Some(id), true) => {
                let owner = ups.owner.get(id).cloned().unwrap_or_else(|| conn.node_id.clone());
                truth.sockets.insert(id.clone(), (owner, conn.local.to_string()));
                known.push((id.clone(), true));
            }
            (Some(id), false) => known.push((id.clone(), false)),
            (None, true) => report.unmapped += 1,
            (None, false) => {}
        }
    }
    let since = expect.healed.unwrap_or_else(Instant::now);
    report.redis = state::converge(redis, &truth, since, expect.converge_within).await;
    let recorded_closes;
    (report.events, recorded_closes) = state::check_events(redis, &known).await;
    // The reaper announces a dead node's `closed` events as it records them: a moment after
    // Redis converged they have reached the upstreams.
    if !expect.closing_nodes.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let records: Vec<Vec<Record>> = observed.logs.iter().map(super::upstream::records).collect();
    let open: HashMap<String, bool> = known.iter().cloned().collect();
    report.lifecycle = lifecycle(&records, &observed.kills, &open);
    for ((conn, state), socket) in states.iter().zip(&sockets) {
        let close = Close { socket: socket.as_deref(), told_upstream: &ups.closed, recorded: &recorded_closes };
        check_close(&mut report, conn, state, close, expect);
    }
    report.print();
    report
}

/// The message invariants of one connection.
fn check_messages(
    report: &mut Report,
    ups: &Upstreams,
    kills: &[Vec<Instant>],
    conn: &Conn,
    state: &ConnState,
    expect: &Expect,
) {
    report.sent += state.sent.len();
    report.echoed += state.echoes.len();
    report.echo_duplicates += state.echoes.values().map(|n| *n as usize - 1).sum::<usize>();
    for line in &state.foreign {
        report.misrouted.push(format!("{} received `{line}`", conn.key));
    }
    if let Some(ids) = ups.socket_of_key.get(&conn.key)
        && ids.len() > 1
    {
        report.misrouted.push(format!("{}'s messages came from {} sockets: {ids:?}", conn.key, ids.len()));
    }
    let exempt_from = state.closed_by_node.map(|closed| closed.checked_sub(expect.grace).unwrap_or(closed));
    for sent in &state.sent {
        let deliveries = ups.deliveries.get(&sent.uid);
        if let Some(d) = deliveries {
            report.seq_mismatch += d.iter().filter(|(_, _, _, seq)| *seq != sent.seq).count();
        }
        let echoed = state.echoes.contains_key(&sent.seq);
        if echoed {
            continue;
        }
        if exempt_from.is_some_and(|from| sent.at >= from) {
            report.exempt += 1;
            continue;
        }
        let age = |at: Instant| at.elapsed().as_millis();
        match deliveries {
            None => report.lost.push(format!(
                "{}:{} (sent {} ms ago{}) was never delivered",
                conn.key,
                sent.seq,
                age(sent.at),
                near_kill(kills, sent.at)
            )),
            Some(d) => {
                let died_holding = d.iter().any(|(up, at, _, _)| {
                    kills[*up].iter().any(|k| *k >= *at && *k - *at <= expect.upstream_death_window)
                });
                if died_holding {
                    report.upstream_died_holding += 1;
                } else {
                    report.echo_missing.push(format!(
                        "{}:{} delivered to upstream {} {} ms ago, echo never came back",
                        conn.key,
                        sent.seq,
                        d[0].0,
                        age(d[0].1)
                    ));
                }
            }
        }
    }
}

/// Notes how close to an upstream kill a lost message was sent.
fn near_kill(kills: &[Vec<Instant>], sent: Instant) -> String {
    let nearest = kills
        .iter()
        .enumerate()
        .flat_map(|(up, ks)| ks.iter().map(move |k| (up, *k)))
        .min_by_key(|(_, k)| if *k > sent { *k - sent } else { sent - *k });
    match nearest {
        Some((up, k)) if k >= sent => format!(", {} ms before upstream {up} was killed", (k - sent).as_millis()),
        Some((up, k)) => format!(", {} ms after upstream {up} was killed", (sent - k).as_millis()),
        None => String::new(),
    }
}

/// A connection's socket and where its close may have been reported.
struct Close<'a> {
    /// Its socket id, if known.
    socket: Option<&'a str>,
    /// `closed` events the upstreams received, by socket.
    told_upstream: &'a HashMap<String, Vec<String>>,
    /// `closed` entries of `K:events` (the reaper's `node_lost` among them), by socket.
    recorded: &'a HashMap<String, Vec<String>>,
}

/// Whether a close by the node was allowed, and its reason.
fn check_close(report: &mut Report, conn: &Conn, state: &ConnState, close: Close<'_>, expect: &Expect) {
    if state.closed_by_node.is_none() {
        return;
    }
    report.closed_by_node += 1;
    let socket = close.socket;
    // A flood socket with no id was refused at accept: it never was a socket of the node's, so
    // its close is not one to allow or not.
    let refused = conn.silent && socket.is_none();
    let told = socket.and_then(|id| close.told_upstream.get(id)).and_then(|r| r.first().cloned());
    let recorded = socket.and_then(|id| close.recorded.get(id)).and_then(|r| r.first().cloned());
    let reason = match (refused, told, recorded) {
        (true, ..) => "refused at accept".to_owned(),
        (false, Some(told), _) => told,
        (false, None, Some(recorded)) => format!("{recorded} (K:events only)"),
        (false, None, None) => "unreported".to_owned(),
    };
    *report.close_reasons.entry(reason.clone()).or_default() += 1;
    let seen = state.close_seen.clone().unwrap_or_default();
    *report.closes_seen.entry(seen).or_default() += 1;
    if !refused && !expect.closing_nodes.contains(&conn.node_id) {
        report.unexpected_closes.push(format!(
            "{} on {} ({}) closed by the node: {reason}",
            conn.key,
            conn.node_id,
            socket.unwrap_or("no socket id")
        ));
    }
}

impl Report {
    /// Prints the summary, so a failing run explains itself.
    pub fn print(&self) {
        let e = &self.events;
        let l = &self.lifecycle;
        let redis = match &self.redis {
            Ok(took) if self.measured_from_heal => {
                format!("equal to the truth {} ms after the fault was lifted, at the latest", took.as_millis())
            }
            Ok(_) => "equal to the truth".to_owned(),
            Err(diff) => format!("NOT equal to the truth: {diff}"),
        };
        println!(
            "== chaos `{}`: {} sockets ({} silent); sent {}, delivered {}, echoed {}; lost {}, echo missing {}, \
             exempt after a node close {}, echo lost with a killed upstream {}; duplicates {} (echoes {}); \
             misrouted {}, seq mismatches {}, other payloads {}; closed by the node {} {:?} \
             (seen by the clients as {:?}), unexpected {}; unmapped {}\n   Redis: {redis}\n   K:events ({}): opened {}, closed {:?}, node_up {}, node_down {}; \
             missing opened {}, duplicate opened {}, missing closed {}, duplicate closed {}, closed while live {}\n   \
             upstreams' lifecycle ({}): {} sockets, {} resumed lives, closed {:?}; redelivered opened/data/closed \
             {:?} ({} lifecycle copies counted once); unclosed {}, duplicate closed {}, duplicate opened {}, closed \
             without opened {}, closed while live {}; acks {}, acked events delivered again {} ({} more whose ack \
             was in flight at a kill), copies not flagged redelivered {}",
            self.name,
            self.conns,
            self.silent,
            self.sent,
            self.delivered,
            self.echoed,
            self.lost.len(),
            self.echo_missing.len(),
            self.exempt,
            self.upstream_died_holding,
            self.duplicates,
            self.echo_duplicates,
            self.misrouted.len(),
            self.seq_mismatch,
            self.other_payloads,
            self.closed_by_node,
            self.close_reasons,
            self.closes_seen,
            self.unexpected_closes.len(),
            self.unmapped,
            match self.events_rule {
                Events::ExactlyOnce => "exactly once",
                Events::Lost => "Redis lost data: reported only",
            },
            e.opened,
            e.closed,
            e.node_up,
            e.node_down,
            e.missing_opened.len(),
            e.duplicate_opened.len(),
            e.missing_closed.len(),
            e.duplicate_closed.len(),
            e.closed_while_live.len(),
            match self.lifecycle_rule {
                Lifecycle::ExactlyOnce => "exactly once",
                Lifecycle::AtMostOnce => "at most once: Redis lost a dead node's sockets",
            },
            l.sockets,
            l.resumed,
            l.closed,
            l.redelivered,
            l.collapsed,
            l.unclosed.len(),
            l.duplicate_closed.len(),
            l.duplicate_opened.len(),
            l.closed_without_opened.len(),
            l.closed_while_live.len(),
            l.acks,
            l.acked_again.len(),
            l.acked_in_flight,
            l.unflagged_copies.len(),
        );
        for (what, list) in [
            ("lost", &self.lost),
            ("echo missing", &self.echo_missing),
            ("misrouted", &self.misrouted),
            ("unexpected close", &self.unexpected_closes),
            ("closed while live", &e.closed_while_live),
            ("missing closed", &e.missing_closed),
            ("duplicate closed", &e.duplicate_closed),
            ("duplicate opened", &e.duplicate_opened),
            ("missing opened", &e.missing_opened),
            ("upstreams: no closed", &l.unclosed),
            ("upstreams: closed twice", &l.duplicate_closed),
            ("upstreams: opened twice", &l.duplicate_opened),
            ("upstreams: closed without opened", &l.closed_without_opened),
            ("upstreams: closed while live", &l.closed_while_live),
            ("upstreams: acked, delivered again", &l.acked_again),
            ("upstreams: copy not flagged redelivered", &l.unflagged_copies),
        ] {
            for item in list.iter().take(5) {
                println!("   {what}: {item}");
            }
        }
    }

    /// Asserts every invariant.
    #[track_caller]
    pub fn assert_ok(&self) {
        let mut broken = Vec::new();
        let mut rule = |ok: bool, what: &str| {
            if !ok {
                broken.push(what.to_owned());
            }
        };
        rule(self.lost.is_empty(), "messages lost");
        rule(self.echo_missing.is_empty(), "echoes missing");
        rule(self.duplicates_allowed || (self.duplicates == 0 && self.echo_duplicates == 0), "duplicates");
        rule(self.misrouted.is_empty(), "misrouted lines");
        rule(self.seq_mismatch == 0, "seq numbered differently by the node");
        rule(self.unexpected_closes.is_empty(), "sockets closed that the schedule does not close");
        rule(self.unmapped == 0, "open connections with no socket id");
        rule(self.redis.is_ok(), "Redis state differs from the truth");
        rule(self.events.violations(self.events_rule) == 0, "K:events does not match the sockets' lives");
        rule(
            self.lifecycle.violations(self.lifecycle_rule) == 0,
            "the upstreams' opened/closed do not match the sockets' lives, or acked events came again",
        );
        assert!(broken.is_empty(), "chaos `{}` broke: {}", self.name, broken.join(", "));
    }
}
