//! Commands for other nodes' sockets: a command travels only to the node that owns its socket,
//! and waits for that node's receipt; a broadcast travels once, to every node.

use std::sync::atomic::Ordering;

use redis::AsyncCommands;
use tokio::sync::oneshot;

use super::{
    COMMAND_TIMEOUT, RedisBackend,
    bus::{BusMessage, WireCommand},
};
use crate::command::{Broadcast, Command, Receipt};

impl RedisBackend {
    /// Carries a one-socket command to the node that owns the socket (looked up in
    /// `K:socket:{id}`) on its channel, and waits for its receipt.
    pub(super) async fn forward(&self, command: &Command) -> Receipt {
        let (Some(socket), Some(wire)) = (command.socket(), WireCommand::from_command(command)) else {
            return Receipt::ok();
        };
        let key = self.keys.socket(&socket.to_string());
        let owner: Result<Option<String>, redis::RedisError> =
            self.shared.run(|mut conn| async move { conn.hget(key, "node").await }).await;
        let owner = match owner {
            Ok(Some(owner)) if owner != self.node => owner,
            Ok(_) => return Receipt::unknown_socket(socket),
            Err(e) => return Receipt::failed(format!("the cluster state is unreachable: {e}")),
        };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(request, tx);
        let message = BusMessage::Command { request, reply_to: self.node.clone(), command: wire };
        let failed = match self.publish(&self.keys.node_channel(&owner), message).await {
            Ok(0) => Some(format!("node {owner}, which holds the socket, is not reachable")),
            Ok(_) => match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(receipt)) => return receipt,
                _ => Some(format!("node {owner}, which holds the socket, did not answer within {COMMAND_TIMEOUT:?}")),
            },
            Err(e) => Some(format!("could not reach node {owner}: {e}")),
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        Receipt::failed(failed.unwrap_or_default())
    }

    /// Hands a broadcast to every other node, once, on `K:ch:broadcast`.
    pub(super) async fn publish_broadcast(&self, broadcast: &Broadcast) -> Receipt {
        match self.publish(&self.keys.broadcast_channel.clone(), BusMessage::broadcast(&self.node, broadcast)).await {
            Ok(_) => Receipt::ok(),
            Err(e) => Receipt::failed(format!("the broadcast reached only this node: {e}")),
        }
    }
}
