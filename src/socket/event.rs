//! A socket's events as upstreams receive them (`opened`, `data`, `closed`): built in one place
//! for the socket's own tasks and for the cluster's announcements (a reaped node's `closed`, a
//! resumed socket's `opened`).

use bytes::Bytes;

use super::{CloseReason, SocketState};
use crate::proto::{NodeEvent, SocketClosed, SocketData, SocketInfo, SocketOpened, node_event::Event};

/// The `opened` event for a socket; `resumed` when it is announced again after the cluster
/// reaped it while this node was cut off.
pub fn opened(node_id: &str, socket: &SocketState, resumed: bool) -> NodeEvent {
    let info = SocketInfo {
        id: socket.id_str.to_string(),
        node_id: node_id.to_owned(),
        remote_addr: socket.remote_addr.to_string(),
        local_addr: socket.local_addr.to_string(),
        connected_at_unix_ms: socket.connected_at_ms,
        labels: socket.labels_copy(),
        tls_server_name: socket.tls_server_name.as_deref().unwrap_or_default().to_owned(),
    };
    wrap(Event::Opened(SocketOpened { socket: Some(info), resumed }))
}

/// The `data` event for the socket's inbound message number `seq`, with its labels now.
pub fn data(socket: &SocketState, seq: u64, payload: Bytes) -> NodeEvent {
    let labels = socket.labels_copy();
    wrap(Event::Data(SocketData { socket_id: socket.id_str.to_string(), seq, payload, labels }))
}

/// The `closed` event of the socket with id `socket_id`.
pub fn closed(socket_id: &str, reason: CloseReason) -> NodeEvent {
    wrap(Event::Closed(SocketClosed { socket_id: socket_id.to_owned(), reason: reason.to_string() }))
}

/// A node event not yet written to a stream (the stream numbers it).
fn wrap(event: Event) -> NodeEvent {
    NodeEvent { event: Some(event), ..NodeEvent::default() }
}
