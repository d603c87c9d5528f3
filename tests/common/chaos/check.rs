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
//!   the schedule says why: see [`Events`]).

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
                    Seen::Opened { socket_id, node_id, remote_addr } => {
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
                    Seen::Hello { .. } => {}
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
             missing opened {}, duplicate opened {}, missing closed {}, duplicate closed {}, closed while live {}",
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
        assert!(broken.is_empty(), "chaos `{}` broke: {}", self.name, broken.join(", "));
    }
}
