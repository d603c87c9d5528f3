//! The names of every metric the node records, through the `metrics` facade (the admin API
//! installs the Prometheus exporter). Every place a message can be refused increments
//! [`MESSAGES_REFUSED`] with a `reason` label.

/// Counter: sockets accepted and held. Label: none.
pub const SOCKETS_OPENED: &str = "ppp_sockets_opened_total";
/// Counter: sockets closed. Label `reason` (a close reason).
pub const SOCKETS_CLOSED: &str = "ppp_sockets_closed_total";
/// Counter: sockets refused because `--max-connections` were open.
pub const SOCKETS_REFUSED: &str = "ppp_sockets_refused_total";
/// Gauge: sockets open on this node.
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
/// `receipt_queue_full`, `upstream_gone`, `no_upstream`, `truncated_frame`.
pub const MESSAGES_REFUSED: &str = "ppp_messages_refused_total";
/// Counter: commands carried out. Labels `command`, `status` (`ok`, `unknown_socket`, `failed`).
pub const COMMANDS: &str = "ppp_commands_total";
/// Gauge: 1 while an upstream is ready. Label `upstream`.
pub const UPSTREAM_READY: &str = "ppp_upstream_ready";
/// Counter: broken upstream streams. Label `upstream`.
pub const UPSTREAM_RECONNECTS: &str = "ppp_upstream_reconnects_total";
/// Counter: anti-entropy resyncs of this node's socket registry.
pub const RESYNCS: &str = "ppp_resyncs_total";
/// Counter: dead nodes this node reaped.
pub const NODES_REAPED: &str = "ppp_nodes_reaped_total";
/// Counter: Redis commands or connections that failed.
pub const REDIS_ERRORS: &str = "ppp_redis_errors_total";
/// Counter: events moved from a broken upstream's queue to another upstream.
pub const EVENTS_REROUTED: &str = "ppp_events_rerouted_total";

use std::sync::OnceLock;

use metrics::Counter;

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
