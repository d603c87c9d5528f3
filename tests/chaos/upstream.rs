//! The chaos harness's upstreams, as the checker reads them: `common`'s [`TestUpstream`], echoing
//! and acknowledging as [`Options::acks`](super::Options::acks) says, whose records
//! (every event stamped with its arrival time and stream) become [`Record`]s. The arrival times
//! tell "the upstream died holding this message" from "the node lost it".

pub use crate::common::Acks;
use crate::common::{Arrived, Recording, TestUpstream, UpstreamOptions};
use bytes::Bytes;
use ppp::proto::{NodeEvent, node_event::Event};
use tokio::time::Instant;

/// Commands an upstream's stream may hold for a node that does not read them; beyond it the
/// upstream stops reading that node's events (HTTP/2 flow control), as a real one would.
const COMMAND_QUEUE: usize = 4096;

/// Starts one of the cluster's upstreams on a free port, serving and healthy: it echoes every
/// `data` payload and acknowledges as `acks` says.
pub async fn start(acks: Acks) -> TestUpstream {
    TestUpstream::start_with(UpstreamOptions { echo: true, acks, queue: COMMAND_QUEUE }).await
}

/// What an upstream saw, as the checker needs it.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A stream opened (`hello`).
    Hello {
        /// The node that opened it.
        node_id: String,
        /// That run of the node process.
        run_id: String,
    },
    /// `opened`.
    Opened {
        /// The socket.
        socket_id: String,
        /// The node that holds it.
        node_id: String,
        /// The client's address as the node saw it: how the harness maps its client
        /// connections to socket ids.
        remote_addr: String,
        /// Announced again by a node back in the cluster after it was reported `node_lost`: a
        /// new life of the socket, which needs its own `closed`.
        resumed: bool,
    },
    /// `data`.
    Data {
        /// The socket.
        socket_id: String,
        /// The node's count of the socket's inbound messages.
        seq: u64,
        /// The message.
        payload: Bytes,
    },
    /// `closed`.
    Closed {
        /// The socket.
        socket_id: String,
        /// Why.
        reason: String,
    },
    /// Not an event: the upstream handed `Ack { event_seq: up_to }` to its stream (recorded when
    /// the gRPC stream took it, after every echo before it).
    Acked {
        /// Every event of the stream up to this `event_seq` was processed.
        up_to: u64,
    },
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it arrived (for [`Seen::Acked`], when the ack left).
    pub at: Instant,
    /// The stream it came on: a number unique in the process (not the node's).
    pub stream: u64,
    /// Its `event_seq` on that stream (0 for [`Seen::Acked`]).
    pub event_seq: u64,
    /// Whether the node flagged it `redelivered`.
    pub redelivered: bool,
    /// What it was.
    pub seen: Seen,
}

/// Everything `recording` holds so far, as the checker reads it (receipts left out).
pub fn records(recording: &Recording) -> Vec<Record> {
    let arrivals = recording.arrivals();
    arrivals
        .into_iter()
        .filter_map(|a| {
            let (event_seq, redelivered, seen) = match a.what {
                Arrived::Event(e) => (e.event_seq, e.redelivered, seen(e)?),
                Arrived::Acked { up_to } => (0, false, Seen::Acked { up_to }),
            };
            Some(Record { at: a.at, stream: a.stream, event_seq, redelivered, seen })
        })
        .collect()
}

/// The part of an event the checker needs.
fn seen(event: NodeEvent) -> Option<Seen> {
    Some(match event.event? {
        Event::Hello(h) => Seen::Hello { node_id: h.node_id, run_id: h.run_id },
        Event::Opened(o) => {
            let s = o.socket?;
            Seen::Opened { socket_id: s.id, node_id: s.node_id, remote_addr: s.remote_addr, resumed: o.resumed }
        }
        Event::Data(d) => Seen::Data { socket_id: d.socket_id, seq: d.seq, payload: d.payload },
        Event::Closed(c) => Seen::Closed { socket_id: c.socket_id, reason: c.reason },
        Event::Result(_) => return None,
    })
}
