//! Commands for other nodes' sockets: a command travels only to the node that owns its socket,
//! and waits for that node's receipt (broadcasts: [`super::broadcasting`]).
//!
//! **Pipelined.** Commands that are ready together travel together: the owners not yet known are
//! looked up in one round trip, and every command is published in one pipeline, in order, so a
//! socket gets its commands in the order they were given; the receipts are then awaited
//! concurrently. A socket never moves, so its owner is cached until the owner says it no longer
//! holds the socket (its `closed`), or cannot be reached.

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering};

use tokio::sync::oneshot;

use super::{
    COMMAND_TIMEOUT, RedisBackend,
    bus::{BusMessage, WireCommand},
};
use crate::{
    cluster::PendingReceipt,
    command::{Command, Receipt},
    proto,
    socket::SocketId,
};

/// Most owners cached; beyond it the cache starts again (owners are looked up again, once each).
pub const OWNER_CACHE: usize = 100_000;

/// The owner of a socket, as far as this node knows: `None` when no node holds it.
type Owner = Result<Option<Arc<str>>, String>;

impl RedisBackend {
    /// Carries a one-socket command to the node that owns the socket and waits for its receipt.
    pub(super) async fn forward(&self, command: &Command) -> Receipt {
        match self.forward_all(std::slice::from_ref(command)).await.pop() {
            Some(pending) => pending.await,
            None => Receipt::ok(),
        }
    }

    /// Carries one-socket commands to their owners, in order, in one pipeline; returns where each
    /// receipt comes from.
    pub(super) async fn forward_all(&self, commands: &[Command]) -> Vec<PendingReceipt> {
        let owners = self.owners(commands).await;
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        let mut pending: Vec<Option<PendingReceipt>> = Vec::with_capacity(commands.len());
        for (command, owner) in commands.iter().zip(owners) {
            let (socket, wire) = match (command.socket(), WireCommand::from_command(command)) {
                (Some(socket), Some(wire)) => (socket, wire),
                _ => {
                    pending.push(Some(ready(Receipt::ok())));
                    continue;
                }
            };
            let owner = match owner {
                Ok(Some(owner)) if *owner != *self.node => owner,
                Ok(_) => {
                    pending.push(Some(ready(Receipt::unknown_socket(socket))));
                    continue;
                }
                Err(e) => {
                    pending.push(Some(ready(Receipt::failed(format!("the cluster state is unreachable: {e}")))));
                    continue;
                }
            };
            let request = self.next_request.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(request, tx);
            let message = BusMessage::Command { request, reply_to: self.node.clone(), command: wire };
            pipe.add_command(self.shared.topology().publish(&self.keys.node_channel(&owner), message.encode()));
            sent.push((pending.len(), request, socket, owner, rx));
            pending.push(None);
        }
        let published: Result<Vec<usize>, redis::RedisError> = if sent.is_empty() {
            Ok(Vec::new())
        } else {
            self.shared.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await
        };
        for (i, (slot, request, socket, owner, rx)) in sent.into_iter().enumerate() {
            let receivers = published.as_ref().map(|counts| counts.get(i).copied().unwrap_or(0));
            pending[slot] = Some(match receivers {
                Ok(0) => {
                    self.undelivered(request, socket, format!("node {owner}, which holds the socket, is not reachable"))
                }
                Ok(_) => self.receipt(request, socket, owner, rx),
                Err(e) => self.undelivered(request, socket, format!("could not reach node {owner}: {e}")),
            });
        }
        pending.into_iter().flatten().collect()
    }

    /// The owners of the commands' sockets: from the cache, the rest in one round trip.
    async fn owners(&self, commands: &[Command]) -> Vec<Owner> {
        let sockets: Vec<Option<SocketId>> = commands.iter().map(Command::socket).collect();
        let mut known: Vec<Option<Owner>> = {
            let cache = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            sockets.iter().map(|s| s.and_then(|s| cache.get(&s).cloned()).map(|o| Ok(Some(o)))).collect()
        };
        let missing: Vec<(usize, SocketId)> =
            sockets.iter().enumerate().filter_map(|(i, s)| s.filter(|_| known[i].is_none()).map(|s| (i, s))).collect();
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for (_, socket) in &missing {
                pipe.hget(self.keys.socket(&socket.to_string()), "node");
            }
            let found: Result<Vec<Option<String>>, redis::RedisError> =
                self.shared.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await;
            let mut cache = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() + missing.len() > OWNER_CACHE {
                cache.clear();
            }
            for (n, (i, socket)) in missing.into_iter().enumerate() {
                known[i] = Some(match &found {
                    Ok(owners) => {
                        let owner: Option<Arc<str>> = owners.get(n).cloned().flatten().map(Arc::from);
                        if let Some(owner) = &owner {
                            cache.insert(socket, owner.clone());
                        }
                        Ok(owner)
                    }
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        known.into_iter().map(|o| o.unwrap_or(Ok(None))).collect()
    }

    /// The receipt of a published command, from its owner; a receipt saying the owner no longer
    /// holds the socket, or none in time, drops the cached owner.
    fn receipt(
        &self,
        request: u64,
        socket: SocketId,
        owner: Arc<str>,
        rx: oneshot::Receiver<Receipt>,
    ) -> PendingReceipt {
        let (waiting, owners) = (self.pending.clone(), self.owners.clone());
        Box::pin(async move {
            let receipt = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(receipt)) => receipt,
                _ => {
                    waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
                    Receipt::failed(format!(
                        "node {owner}, which holds the socket, did not answer within {COMMAND_TIMEOUT:?}"
                    ))
                }
            };
            if receipt.status != proto::Status::Ok {
                owners.lock().unwrap_or_else(|e| e.into_inner()).remove(&socket);
            }
            receipt
        })
    }

    /// A command that did not reach its owner: failed, and its owner no longer cached.
    fn undelivered(&self, request: u64, socket: SocketId, why: String) -> PendingReceipt {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).remove(&socket);
        ready(Receipt::failed(why))
    }
}

/// A receipt known already.
fn ready(receipt: Receipt) -> PendingReceipt {
    Box::pin(std::future::ready(receipt))
}

/// The owner cache: socket → the node that holds it.
pub(super) type OwnerCache = std::sync::Mutex<HashMap<SocketId, Arc<str>>>;
