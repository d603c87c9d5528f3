//! The names of every metric the node records, through the `metrics` facade, and the Prometheus
//! exporter that `GET /metrics` renders ([`install`], called by `Node::start`). Every place a
//! message can be refused increments [`MESSAGES_REFUSED`] with a `reason` label.
//!
//! Gauges that describe the node's state (sockets by state, queue depths, messages per upstream)
//! are set when `/metrics` is scraped, from the node's own counters, so the data path pays
//! nothing for them.
//!
//! [`FAMILIES`] lists every family once, with its help text: [`install`] describes each (so
//! `/metrics` carries `# HELP` and `# TYPE` for all) and registers every series whose labels are a
//! closed set with zero ([`CLOSE_REASONS`](crate::socket::CloseReason::ALL), [`REFUSAL_REASONS`],
//! [`COMMAND_KINDS`] × [`STATUSES`], the socket states, [`TLS_OUTCOMES`], [`RELOAD_RESULTS`],
//! [`PROXY_OUTCOMES`]), so dashboards and alerts see 0 rather than
//! no data. Per-upstream families appear, at zero, once the upstream exists ([`upstream_zeros`]).
//! `docs/admin-api.md`'s table is checked against [`FAMILIES`] by `tests/metrics.rs`.

/// Counter: sockets accepted and held. Label: none.
pub const SOCKETS_OPENED: &str = "ppp_sockets_opened_total";
/// Counter: sockets closed. Label `reason` (a close reason).
pub const SOCKETS_CLOSED: &str = "ppp_sockets_closed_total";
/// Counter: TLS handshakes, by `outcome`: `ok`, `timeout`, `protocol_error` (not TLS, or nothing
/// in common), `peer_alert` (the client refused ours, e.g. an unknown CA), `client_closed`.
pub const TLS_HANDSHAKES: &str = "ppp_tls_handshakes_total";
/// Counter: reloads of the TLS certificate, by `result`: `ok`, `failed` (the old one is kept).
pub const TLS_RELOADS: &str = "ppp_tls_reloads_total";
/// Counter: PROXY protocol headers, by `outcome`: `ok`, `local` (v2 `LOCAL` or v1 `UNKNOWN`: the
/// TCP addresses are kept), `untrusted` (peer not in `--proxy-from`), `timeout`, `too_long`,
/// `invalid` (no header, or a bad one), `client_closed`.
pub const PROXY_HEADERS: &str = "ppp_proxy_headers_total";
/// Counter: sockets refused because `--max-connections` were open.
pub const SOCKETS_REFUSED: &str = "ppp_sockets_refused_total";
/// Gauge: sockets open on this node. Label `state`: `active`, `inactive`.
pub const SOCKETS_OPEN: &str = "ppp_sockets_open";
/// Counter: inbound messages read from sockets.
pub const MESSAGES_IN: &str = "ppp_messages_in_total";
/// Counter: outbound messages written to sockets.
pub const MESSAGES_OUT: &str = "ppp_messages_out_total";
/// Counter: inbound payload bytes.
pub const BYTES_IN: &str = "ppp_bytes_in_total";
/// Counter: outbound payload bytes.
pub const BYTES_OUT: &str = "ppp_bytes_out_total";
/// Counter: messages or events not delivered. Label `reason`: `slow_consumer`, `socket_closing`,
/// `receipt_queue_full`, `upstream_gone`, `no_upstream`, `truncated_frame`, `record_queue_full`,
/// `bad_bus_message`, `bad_runtime_settings` (a cluster-wide runtime change this node refused).
pub const MESSAGES_REFUSED: &str = "ppp_messages_refused_total";
/// Counter: commands carried out. Labels `command`, `status` (`ok`, `unknown_socket`, `failed`).
pub const COMMANDS: &str = "ppp_commands_total";
/// Gauge: 1 while an upstream is ready. Label `upstream`.
pub const UPSTREAM_READY: &str = "ppp_upstream_ready";
/// Counter: broken upstream streams. Label `upstream`.
pub const UPSTREAM_RECONNECTS: &str = "ppp_upstream_reconnects_total";
/// Counter: events (opened, data, closed, receipts) handed to an upstream. Label `upstream`.
pub const UPSTREAM_MESSAGES: &str = "ppp_upstream_messages_total";
/// Histogram: round trip of the upstream's gRPC health check, every `--health-interval` (the
/// stream itself has no per-message answer to time). Label `upstream`.
pub const UPSTREAM_LATENCY: &str = "ppp_upstream_latency_seconds";
/// Gauge: events waiting in the node's queue for an upstream. Label `upstream`.
pub const UPSTREAM_QUEUE_DEPTH: &str = "ppp_upstream_queue_depth";
/// Gauge: lifecycle records waiting to be written to Redis.
pub const BACKEND_QUEUE_DEPTH: &str = "ppp_backend_queue_depth";
/// Gauge: 1 while the node is ready (what `/readyz` answers), else 0.
pub const READY: &str = "ppp_ready";
/// Gauge: 1 while the backend is reachable (Redis in cluster mode; always 1 standalone), else 0.
pub const BACKEND_REACHABLE: &str = "ppp_backend_reachable";
/// Counter: times Redis became reachable again after being unreachable.
pub const REDIS_RECONNECTS: &str = "ppp_redis_reconnects_total";
/// Counter: anti-entropy resyncs of this node's socket registry.
pub const RESYNCS: &str = "ppp_resyncs_total";
/// Counter: dead nodes this node reaped.
pub const NODES_REAPED: &str = "ppp_nodes_reaped_total";
/// Counter: Redis commands or connections that failed.
pub const REDIS_ERRORS: &str = "ppp_redis_errors_total";
/// Counter: events moved from a broken upstream's queue to another upstream.
pub const EVENTS_REROUTED: &str = "ppp_events_rerouted_total";
/// Counter: events a broken stream had taken but the upstream may not have received, handed out
/// again (an upstream may see them twice). Label `upstream`.
pub const EVENTS_REPLAYED: &str = "ppp_events_replayed_total";
/// Counter: events that left the replay window unconfirmed because it was full (a stream that
/// breaks now could lose them). Label `upstream`.
pub const REPLAY_WINDOW_OVERFLOW: &str = "ppp_replay_window_overflow_total";
/// Counter: resolutions of `dns:///` upstreams that failed (their last known addresses were
/// kept; the log and the entry's `last_error` say which).
pub const DNS_RESOLVE_FAILURES: &str = "ppp_dns_resolve_failures_total";

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::socket::CloseReason;

/// What kind of family a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Counts observations in buckets.
    Histogram,
}

/// One metric family: what `/metrics` says about it.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// Its `# HELP` text.
    pub help: &'static str,
}

/// Shorthand for the table below.
const fn family(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Family {
    Family { name, kind, labels, help }
}

/// Every family the node exports, each described once at start ([`install`]).
pub const FAMILIES: [Family; 29] = {
    use Kind::{Counter as C, Gauge as G, Histogram as H};
    [
        family(SOCKETS_OPENED, C, &[], "Sockets accepted and held"),
        family(SOCKETS_CLOSED, C, &["reason"], "Sockets closed, by close reason"),
        family(SOCKETS_REFUSED, C, &[], "Sockets refused because --max-connections were open"),
        family(SOCKETS_OPEN, G, &["state"], "Sockets held, by state (active: a message within --idle-after)"),
        family(TLS_HANDSHAKES, C, &["outcome"], "TLS handshakes of downstream sockets, by outcome"),
        family(TLS_RELOADS, C, &["result"], "Reloads of the TLS certificate (failed: the one in use is kept)"),
        family(PROXY_HEADERS, C, &["outcome"], "PROXY protocol headers of downstream sockets, by outcome"),
        family(MESSAGES_IN, C, &[], "Inbound messages read from sockets"),
        family(BYTES_IN, C, &[], "Inbound payload bytes"),
        family(MESSAGES_OUT, C, &[], "Outbound messages written to sockets"),
        family(BYTES_OUT, C, &[], "Outbound payload bytes written"),
        family(MESSAGES_REFUSED, C, &["reason"], "Messages or events not delivered, by reason"),
        family(COMMANDS, C, &["command", "status"], "Commands carried out, by kind and receipt status"),
        family(UPSTREAM_READY, G, &["upstream"], "1 while the upstream's health check says SERVING"),
        family(UPSTREAM_MESSAGES, C, &["upstream"], "Events (opened, data, closed, receipts) handed to the upstream"),
        family(UPSTREAM_QUEUE_DEPTH, G, &["upstream"], "Events waiting in this node's queue for the upstream"),
        family(UPSTREAM_LATENCY, H, &["upstream"], "Round trip of the upstream's gRPC health check, in seconds"),
        family(UPSTREAM_RECONNECTS, C, &["upstream"], "Broken streams to the upstream"),
        family(EVENTS_REROUTED, C, &[], "Events moved from a broken upstream's queue to another upstream"),
        family(EVENTS_REPLAYED, C, &["upstream"], "Events a broken stream had not confirmed, handed out again"),
        family(REPLAY_WINDOW_OVERFLOW, C, &["upstream"], "Events that left a full replay window unconfirmed"),
        family(
            DNS_RESOLVE_FAILURES,
            C,
            &[],
            "Failed resolutions of dns:/// upstreams (their last known addresses were kept)",
        ),
        family(REDIS_ERRORS, C, &[], "Redis commands or connections that failed"),
        family(REDIS_RECONNECTS, C, &[], "Times Redis became reachable again after being unreachable"),
        family(RESYNCS, C, &[], "Anti-entropy resyncs of this node's socket registry"),
        family(NODES_REAPED, C, &[], "Dead nodes this node reaped"),
        family(BACKEND_QUEUE_DEPTH, G, &[], "Lifecycle records waiting to be written to Redis (bounded: 100000)"),
        family(READY, G, &[], "1 while the node is ready (/readyz answers 200), else 0"),
        family(
            BACKEND_REACHABLE,
            G,
            &[],
            "1 while the backend (Redis in cluster mode; always 1 standalone) is reachable, else 0",
        ),
    ]
};

/// The `reason` label values of [`MESSAGES_REFUSED`].
pub const REFUSAL_REASONS: [&str; 9] = [
    "slow_consumer",
    "socket_closing",
    "receipt_queue_full",
    "upstream_gone",
    "no_upstream",
    "truncated_frame",
    "record_queue_full",
    "bad_bus_message",
    "bad_runtime_settings",
];

/// The `outcome` label values of [`TLS_HANDSHAKES`].
pub const TLS_OUTCOMES: [&str; 5] = ["ok", "timeout", "protocol_error", "peer_alert", "client_closed"];
/// The `result` label values of [`TLS_RELOADS`].
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];
/// The `outcome` label values of [`PROXY_HEADERS`].
pub const PROXY_OUTCOMES: [&str; 7] = ["ok", "local", "untrusted", "timeout", "too_long", "invalid", "client_closed"];

/// The `state` label values of [`SOCKETS_OPEN`].
pub const SOCKET_STATES: [&str; 2] = ["active", "inactive"];

/// Buckets of [`UPSTREAM_LATENCY`], in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// How often histogram samples are folded in when nobody scrapes, so they never pile up.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the process (once; later calls return the same handle)
/// and returns the handle that renders it. `None` when the process installed another recorder.
pub fn install() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(UPSTREAM_LATENCY.to_owned()), &LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            zeros();
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("ppp-metrics".into()).spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .as_ref()
}

/// Describes every family of [`FAMILIES`] to the recorder, for `# HELP`.
fn describe() {
    for f in FAMILIES {
        match (f.kind, f.name == UPSTREAM_LATENCY) {
            (Kind::Counter, _) => metrics::describe_counter!(f.name, f.help),
            (Kind::Gauge, _) => metrics::describe_gauge!(f.name, f.help),
            (Kind::Histogram, true) => metrics::describe_histogram!(f.name, Unit::Seconds, f.help),
            (Kind::Histogram, false) => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

/// Registers, at zero, every series whose labels are a closed set and every family without labels
/// but the per-upstream ones ([`upstream_zeros`]).
fn zeros() {
    for f in FAMILIES.iter().filter(|f| f.labels.is_empty()) {
        match f.kind {
            Kind::Counter => metrics::counter!(f.name).increment(0),
            Kind::Gauge => metrics::gauge!(f.name).increment(0.0),
            Kind::Histogram => {}
        }
    }
    for reason in CloseReason::ALL {
        metrics::counter!(SOCKETS_CLOSED, "reason" => reason.as_str()).increment(0);
    }
    for reason in REFUSAL_REASONS {
        metrics::counter!(MESSAGES_REFUSED, "reason" => reason).increment(0);
    }
    for state in SOCKET_STATES {
        metrics::gauge!(SOCKETS_OPEN, "state" => state).increment(0.0);
    }
    for (family, label, values) in [
        (TLS_HANDSHAKES, "outcome", TLS_OUTCOMES.as_slice()),
        (TLS_RELOADS, "result", RELOAD_RESULTS.as_slice()),
        (PROXY_HEADERS, "outcome", PROXY_OUTCOMES.as_slice()),
    ] {
        for value in values {
            metrics::counter!(family, label => *value).increment(0);
        }
    }
    // Registers every command kind × status.
    let _ = hot();
}

/// Registers, at zero, the per-upstream series of upstream `id`, so they are there from the moment
/// the upstream is (called for each upstream when `/metrics` is scraped; a no-op for series that
/// exist).
pub fn upstream_zeros(id: &str) {
    let id = id.to_owned();
    metrics::gauge!(UPSTREAM_READY, "upstream" => id.clone()).increment(0.0);
    metrics::counter!(UPSTREAM_RECONNECTS, "upstream" => id.clone()).increment(0);
    metrics::counter!(EVENTS_REPLAYED, "upstream" => id.clone()).increment(0);
    metrics::counter!(REPLAY_WINDOW_OVERFLOW, "upstream" => id.clone()).increment(0);
    // Registered with no observation: rendered with every bucket at 0.
    let _ = metrics::histogram!(UPSTREAM_LATENCY, "upstream" => id);
}

/// Counters touched for every message, registered once so the data path does not look them up
/// each time. They bind to the recorder installed when they are first used: install the exporter
/// before starting a node.
pub struct Hot {
    /// [`MESSAGES_IN`].
    pub messages_in: Counter,
    /// [`BYTES_IN`].
    pub bytes_in: Counter,
    /// [`MESSAGES_OUT`].
    pub messages_out: Counter,
    /// [`BYTES_OUT`].
    pub bytes_out: Counter,
    /// [`COMMANDS`], by command kind (see [`COMMAND_KINDS`]) and status (see [`STATUSES`]).
    pub commands: [[Counter; 3]; 5],
}

/// The `command` label values of [`COMMANDS`].
pub const COMMAND_KINDS: [&str; 5] = ["send", "broadcast", "close", "set_labels", "invalid"];
/// The `status` label values of [`COMMANDS`].
pub const STATUSES: [&str; 3] = ["ok", "unknown_socket", "failed"];

/// The hot counters.
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        messages_in: metrics::counter!(MESSAGES_IN),
        bytes_in: metrics::counter!(BYTES_IN),
        messages_out: metrics::counter!(MESSAGES_OUT),
        bytes_out: metrics::counter!(BYTES_OUT),
        commands: COMMAND_KINDS
            .map(|kind| STATUSES.map(|status| metrics::counter!(COMMANDS, "command" => kind, "status" => status))),
    })
}

impl Hot {
    /// Counts a command by kind and status label.
    pub fn command(&self, kind: &str, status: &str) {
        let k = COMMAND_KINDS.iter().position(|c| *c == kind).unwrap_or(COMMAND_KINDS.len() - 1);
        let s = STATUSES.iter().position(|c| *c == status).unwrap_or(STATUSES.len() - 1);
        self.commands[k][s].increment(1);
    }
}
