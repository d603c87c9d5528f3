//! The events upstreams receive, as the node queues, keeps and writes them ([`Event`]), and the
//! one place that builds a socket's `opened`, `data` and `closed`: for the socket's own tasks and
//! for the cluster's announcements (a reaped node's `closed`, a resumed socket's `opened`).
//!
//! An [`Event`] is a `NodeEvent` whose `data` (the event of every inbound message) shares the
//! socket's id, the payload and the labels instead of copying them: queuing it, keeping it in the
//! replay window and writing it to the stream allocate nothing. It is written with exactly the
//! bytes prost writes for the same `NodeEvent` ([`super::wire`]).

use std::sync::Arc;

use bytes::Bytes;

use super::{CloseReason, Labels, SocketState};
use crate::proto::{
    CommandResult, NodeEvent, NodeHello, SocketClosed, SocketData, SocketInfo, SocketOpened, node_event,
};

/// A `NodeEvent` on its way to an upstream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// `NodeEvent.event_seq`: 0 until a stream writes the event and numbers it.
    pub event_seq: u64,
    /// `NodeEvent.redelivered`.
    pub redelivered: bool,
}

/// The `oneof event` of a `NodeEvent`.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `data`, sharing what it carries.
    Data(Data),
    /// Any other event (`hello`, `opened`, `closed`, `result`), as the proto has it: one per
    /// socket or command, not per message, and boxed so that every event is as small as `data`.
    Other(Box<node_event::Event>),
}

/// `SocketData`, sharing the socket's id, the payload and the labels.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// `socket_id`: the socket's own id text.
    pub socket_id: Arc<str>,
    /// `seq`.
    pub seq: u64,
    /// `payload`: a slice of the buffer the frame was read into.
    pub payload: Bytes,
    /// `labels`: the socket's labels when the message was read; `None` when it has none.
    pub labels: Option<Arc<Labels>>,
}

impl Event {
    /// An event of the proto's own kinds.
    pub fn other(event: node_event::Event) -> Self {
        Self { kind: Kind::Other(Box::new(event)), event_seq: 0, redelivered: false }
    }

    /// The first event of every stream.
    pub fn hello(hello: NodeHello) -> Self {
        Self::other(node_event::Event::Hello(hello))
    }

    /// A command's receipt.
    pub fn result(result: CommandResult) -> Self {
        Self::other(node_event::Event::Result(result))
    }

    /// Whether it is a command's receipt (meant for the upstream that sent the command only).
    pub fn is_receipt(&self) -> bool {
        matches!(&self.kind, Kind::Other(e) if matches!(**e, node_event::Event::Result(_)))
    }

    /// The same event as the proto type (what an upstream decodes).
    pub fn to_proto(&self) -> NodeEvent {
        let event = match &self.kind {
            Kind::Data(d) => node_event::Event::Data(SocketData {
                socket_id: d.socket_id.to_string(),
                seq: d.seq,
                payload: d.payload.clone(),
                labels: d.labels.as_deref().cloned().unwrap_or_default(),
            }),
            Kind::Other(e) => (**e).clone(),
        };
        NodeEvent { event: Some(event), event_seq: self.event_seq, redelivered: self.redelivered }
    }
}

/// The `opened` event for a socket; `resumed` when it is announced again after the cluster
/// reaped it while this node was cut off.
pub fn opened(node_id: &str, socket: &SocketState, resumed: bool) -> Event {
    let info = SocketInfo {
        id: socket.id_str.to_string(),
        node_id: node_id.to_owned(),
        remote_addr: socket.remote_addr.to_string(),
        local_addr: socket.local_addr.to_string(),
        connected_at_unix_ms: socket.connected_at_ms,
        labels: socket.labels_copy(),
        tls_server_name: socket.tls_server_name.as_deref().unwrap_or_default().to_owned(),
    };
    Event::other(node_event::Event::Opened(SocketOpened { socket: Some(info), resumed }))
}

/// The `data` event for the socket's inbound message number `seq`, with its labels now.
pub fn data(socket: &SocketState, seq: u64, payload: Bytes) -> Event {
    let data = Data { socket_id: socket.id_str.clone(), seq, payload, labels: socket.labels_shared() };
    Event { kind: Kind::Data(data), event_seq: 0, redelivered: false }
}

/// The `closed` event of the socket with id `socket_id`.
pub fn closed(socket_id: &str, reason: CloseReason) -> Event {
    Event::other(node_event::Event::Closed(SocketClosed {
        socket_id: socket_id.to_owned(),
        reason: reason.to_string(),
    }))
}
