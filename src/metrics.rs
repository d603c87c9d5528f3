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
/// Counter: events moved from a broken upstream's queue to another upstream.
pub const EVENTS_REROUTED: &str = "ppp_events_rerouted_total";
