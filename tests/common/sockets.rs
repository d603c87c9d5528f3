//! A socket's life as the upstream sees it: the id the node gave it, why it closed, the receipts
//! and `hello`s the upstream received.

use std::collections::HashMap;

use ppp::{
    Node,
    proto::{self, node_event::Event},
};

use super::{client::Client, upstream::TestUpstream};

/// Connects a client and returns it with the id the node gave its socket (the `opened` events
/// seen so far must number `opened_before`).
pub async fn connect(node: &Node, up: &TestUpstream, opened_before: usize) -> (Client, String) {
    let c = Client::connect(node).await;
    let id = up.wait_opened(opened_before + 1).await[opened_before].clone();
    (c, id)
}

/// Waits for the `closed` event of `id` and returns its reason.
pub async fn close_reason(up: &TestUpstream, id: &str) -> String {
    up.wait_for(&format!("{id} closed"), |_| up.closed().iter().any(|(s, _)| s == id)).await;
    up.closed().into_iter().find(|(s, _)| s == id).unwrap().1
}

/// The receipts so far, by command id.
pub fn receipts(up: &TestUpstream) -> HashMap<String, proto::CommandResult> {
    up.results().into_iter().map(|r| (r.command_id.clone(), r)).collect()
}

/// How many `hello`s the upstream received: one per stream the node opened.
pub fn hellos(up: &TestUpstream) -> usize {
    up.events().iter().filter(|e| matches!(e.event, Some(Event::Hello(_)))).count()
}

/// The `SocketInfo` of every `opened` the upstream received, in order.
pub fn opened_infos(up: &TestUpstream) -> Vec<proto::SocketInfo> {
    up.events()
        .into_iter()
        .filter_map(|e| match e.event {
            Some(Event::Opened(o)) => o.socket,
            _ => None,
        })
        .collect()
}

/// Waits for the `opened` of the socket whose `remote_addr` is `remote`, and returns it.
pub async fn opened_from(up: &TestUpstream, remote: std::net::SocketAddr) -> proto::SocketInfo {
    let remote = remote.to_string();
    up.wait_for(&format!("opened from {remote}"), |_| opened_infos(up).iter().any(|s| s.remote_addr == remote)).await;
    opened_infos(up).into_iter().find(|s| s.remote_addr == remote).unwrap()
}
