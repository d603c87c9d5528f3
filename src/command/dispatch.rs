//! The dispatcher: carries commands out, on this node when it holds the socket, through the
//! [`Backend`] otherwise, and says what happened ([`Receipt`]).

use std::sync::Arc;

use bytes::Bytes;

use super::{Broadcast, Command, Receipt, Scope};
use crate::{
    cluster::Backend,
    metrics as m, proto,
    settings::Settings,
    socket::{Labels, QueueError, SocketState, SocketTable, unix_ms},
};

/// Carries out commands. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Dispatcher {
    /// This node's sockets.
    table: SocketTable,
    /// Where commands for other nodes' sockets go.
    backend: Arc<dyn Backend>,
    /// For broadcast scopes.
    settings: Arc<Settings>,
}

impl Dispatcher {
    /// A dispatcher over this node's table and backend.
    pub fn new(table: &SocketTable, backend: &Arc<dyn Backend>, settings: &Arc<Settings>) -> Self {
        Self { table: table.clone(), backend: backend.clone(), settings: settings.clone() }
    }

    /// How many sockets this node holds.
    pub fn socket_count(&self) -> usize {
        self.table.len()
    }

    /// Every socket this node holds, at one moment.
    pub fn sockets(&self) -> Vec<Arc<SocketState>> {
        self.table.snapshot()
    }

    /// Carries out a command wherever its socket lives and says what happened.
    pub async fn execute(&self, command: &Command) -> Receipt {
        let receipt = match command {
            Command::Broadcast(b) => {
                self.broadcast_local(b);
                self.backend.broadcast(b).await
            }
            _ => match self.execute_local(command) {
                Some(receipt) => receipt,
                None => self.backend.forward_command(command).await,
            },
        };
        m::hot().command(command.kind(), receipt.status_label());
        receipt
    }

    /// Carries commands for sockets this node does not hold to their nodes, in order, and says
    /// where each receipt comes from (see [`Backend::forward_commands`]).
    pub async fn forward(&self, commands: &[Command]) -> Vec<crate::cluster::PendingReceipt> {
        self.backend.forward_commands(commands).await
    }

    /// Carries out a one-socket command if this node holds the socket; `None` if it does not.
    /// Broadcasts are applied to this node's sockets and always answer OK.
    pub fn execute_local(&self, command: &Command) -> Option<Receipt> {
        let socket = match command.socket() {
            None => {
                if let Command::Broadcast(b) = command {
                    self.broadcast_local(b);
                }
                return Some(Receipt::ok());
            }
            // A socket whose close has begun is gone for commands (and for the admin API): it
            // only writes what was queued before, so a later close, send or label change on it
            // answers unknown, as it will once it has left the table.
            Some(id) => match self.table.get(id)? {
                socket if socket.close_reason().is_some() => return Some(Receipt::unknown_socket(id)),
                socket => socket,
            },
        };
        Some(match command {
            Command::Send { payload, .. } => enqueue(&socket, payload.clone()),
            Command::Close { reason, detail, .. } => {
                tracing::debug!(socket.id = %socket.id, %reason, detail, "close requested");
                socket.close(*reason);
                Receipt::ok()
            }
            Command::SetLabels { labels, replace, .. } => match socket.set_labels(labels.clone(), *replace) {
                Ok(_) => {
                    self.backend.labels_changed(&socket);
                    Receipt::ok()
                }
                Err(e) => Receipt::refused(e.to_string()),
            },
            Command::Broadcast(_) => unreachable!("handled above"),
        })
    }

    /// Queues a broadcast for every matching socket of this node; returns how many it reached.
    pub fn broadcast_local(&self, b: &Broadcast) -> usize {
        let now = unix_ms();
        let idle_after = self.settings.idle_after();
        let mut reached = 0;
        for socket in self.table.snapshot() {
            let in_scope = match b.scope {
                Scope::All => true,
                Scope::Active => socket.is_active(now, idle_after),
                Scope::Inactive => !socket.is_active(now, idle_after),
            };
            if in_scope
                && matches_selector(&socket, &b.selector)
                && enqueue(&socket, b.payload.clone()).status == proto::Status::Ok
            {
                reached += 1;
            }
        }
        reached
    }
}

/// Whether the socket carries every label of the selector.
fn matches_selector(socket: &SocketState, selector: &Labels) -> bool {
    selector.is_empty() || socket.matches(selector)
}

/// Queues a payload, counting and reporting a refusal.
fn enqueue(socket: &SocketState, payload: Bytes) -> Receipt {
    match socket.enqueue(payload) {
        Ok(()) => Receipt::ok(),
        Err(e) => {
            let reason = match e {
                QueueError::SlowConsumer => "slow_consumer",
                QueueError::Closing => "socket_closing",
            };
            metrics::counter!(m::MESSAGES_REFUSED, "reason" => reason).increment(1);
            tracing::debug!(socket.id = %socket.id, reason, "outbound message refused");
            Receipt::refused(e.to_string())
        }
    }
}
