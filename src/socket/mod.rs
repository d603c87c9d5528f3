//! Sockets: the model a socket is described by, and the state its tasks share with the node.
//!
//! - this file: [`SocketId`] and the node's clock ([`unix_ms`]);
//! - [`labels`]: [`Labels`] and their bounds;
//! - [`close`]: [`CloseReason`], why a socket closed;
//! - [`state`]: [`SocketState`], what a socket's reader and writer share with the node (its
//!   counters, its labels, its outbound queue);
//! - [`table`]: [`SocketTable`], the sockets this node holds: the node's own truth;
//! - [`event`]: [`event::Event`], an event on its way to an upstream, and the `opened`, `data`
//!   and `closed` events of a socket; [`wire`]: how an event is written on a stream.

pub mod close;
pub mod event;
pub mod labels;
pub mod state;
pub mod table;
pub mod wire;

use std::{
    fmt,
    str::FromStr,
    time::{SystemTime, UNIX_EPOCH},
};

use uuid::Uuid;

pub use self::{
    close::CloseReason,
    labels::{LabelError, Labels, MAX_LABEL_LEN, MAX_LABELS, validate_labels},
    state::{QueueBounds, QueueError, SocketState},
    table::SocketTable,
};

/// A socket's id: a UUID v7, so ids sort by connect time. Displayed hyphenated, lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub Uuid);

impl SocketId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The time in the id (unix ms); now for an id that holds none (not a v7 UUID).
    pub fn unix_ms(&self) -> i64 {
        self.0.get_timestamp().map_or_else(unix_ms, |t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
    }
}

impl Default for SocketId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SocketId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Milliseconds since the Unix epoch, now (by this host's clock, shifted by
/// `PPP_TEST_CLOCK_OFFSET_MS` when a test sets it to stand for a host whose clock is off).
pub fn unix_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    now.saturating_add(clock_offset_ms())
}

/// The test-only clock offset (`PPP_TEST_CLOCK_OFFSET_MS`, read once; 0 unless set).
fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| std::env::var("PPP_TEST_CLOCK_OFFSET_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}
