//! Commands: what upstreams and admins ask of sockets: send, broadcast, close, set
//! labels. A command is validated once ([`Command::from_proto`]), then carried out by the
//! [`Dispatcher`]: on this node when it holds the socket, through the [`Backend`] otherwise.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    cluster::Backend,
    downstream::table::SocketTable,
    metrics as m,
    proto::{self, upstream_command},
    settings::Settings,
    socket::{CloseReason, Labels, QueueError, SocketId, SocketState, unix_ms},
};

/// Longest free-text close reason kept from a `Close` command, in bytes.
pub const MAX_CLOSE_DETAIL: usize = 256;

/// Which sockets a broadcast reaches, by activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every socket.
    All,
    /// Sockets that sent a message within `--idle-after`.
    Active,
    /// Sockets that did not.
    Inactive,
}

/// A payload for many sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// Which sockets by activity.
    pub scope: Scope,
    /// Labels that must all match; empty matches all.
    pub selector: Labels,
    /// The payload, framed per socket by its writer.
    pub payload: Bytes,
}

/// A validated command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Write a payload to one socket.
    Send {
        /// The target.
        socket: SocketId,
        /// The payload.
        payload: Bytes,
    },
    /// Write a payload to many sockets, cluster-wide.
    Broadcast(Broadcast),
    /// Close one socket.
    Close {
        /// The target.
        socket: SocketId,
        /// Why (`upstream` or `admin`).
        reason: CloseReason,
        /// Free text for the log.
        detail: String,
    },
    /// Merge or replace one socket's labels.
    SetLabels {
        /// The target.
        socket: SocketId,
        /// The labels.
        labels: Labels,
        /// Replace instead of merge.
        replace: bool,
    },
}

/// The outcome of a command, as `CommandResult` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// What happened.
    pub status: proto::Status,
    /// Why, when it is not OK.
    pub detail: String,
    /// FAILED because the socket refused it (closing, write queue full, too many labels), not
    /// because its node could not be reached: the admin API answers 409 rather than 503.
    pub refused: bool,
}

impl Receipt {
    /// Done.
    pub fn ok() -> Self {
        Self { status: proto::Status::Ok, detail: String::new(), refused: false }
    }

    /// No such socket anywhere.
    pub fn unknown_socket(id: SocketId) -> Self {
        Self { status: proto::Status::UnknownSocket, detail: format!("no socket {id}"), refused: false }
    }

    /// Not carried out, and why.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self { status: proto::Status::Failed, detail: detail.into(), refused: false }
    }

    /// Refused by the socket itself, and why.
    pub fn refused(detail: impl Into<String>) -> Self {
        Self { refused: true, ..Self::failed(detail) }
    }

    /// The status's metric label.
    pub fn status_label(&self) -> &'static str {
        match self.status {
            proto::Status::Ok => "ok",
            proto::Status::UnknownSocket => "unknown_socket",
            _ => "failed",
        }
    }
}

/// Why an upstream's command is invalid: it gets a FAILED receipt, and the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// No `command` in the message.
    #[error("the command is empty")]
    Empty,
    /// A socket id that is not a UUID.
    #[error("`{0}` is not a socket id (a UUID)")]
    BadSocketId(String),
    /// A scope value outside the `Scope` enum.
    #[error("unknown broadcast scope {0}")]
    BadScope(i32),
    /// An `Ack`: it belongs to the stream it came on, not to a socket (the stream handles it).
    #[error("an ack is not a command for a socket")]
    Ack,
}

impl Command {
    /// Validates a command from the wire; returns its `command_id` (if any) too.
    ///
    /// # Errors
    /// [`InvalidCommand`], together with the `command_id` so the caller can still answer.
    pub fn from_proto(cmd: proto::UpstreamCommand) -> (Option<String>, Result<Self, InvalidCommand>) {
        let id = Some(cmd.command_id).filter(|id| !id.is_empty());
        let parsed = match cmd.command {
            None => Err(InvalidCommand::Empty),
            Some(upstream_command::Command::Send(s)) => {
                parse_id(&s.socket_id).map(|socket| Self::Send { socket, payload: s.payload })
            }
            Some(upstream_command::Command::Broadcast(b)) => parse_scope(b.scope)
                .map(|scope| Self::Broadcast(Broadcast { scope, selector: b.selector, payload: b.payload })),
            Some(upstream_command::Command::Close(c)) => parse_id(&c.socket_id).map(|socket| Self::Close {
                socket,
                reason: CloseReason::Upstream,
                detail: truncate(c.reason, MAX_CLOSE_DETAIL),
            }),
            Some(upstream_command::Command::SetLabels(l)) => {
                parse_id(&l.socket_id).map(|socket| Self::SetLabels { socket, labels: l.labels, replace: l.replace })
            }
            Some(upstream_command::Command::Ack(_)) => Err(InvalidCommand::Ack),
        };
        (id, parsed)
    }

    /// The one socket the command is for, unless it is a broadcast.
    pub fn socket(&self) -> Option<SocketId> {
        match self {
            Self::Send { socket, .. } | Self::Close { socket, .. } | Self::SetLabels { socket, .. } => Some(*socket),
            Self::Broadcast(_) => None,
        }
    }

    /// The command's metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Send { .. } => "send",
            Self::Broadcast(_) => "broadcast",
            Self::Close { .. } => "close",
            Self::SetLabels { .. } => "set_labels",
        }
    }
}

fn parse_id(s: &str) -> Result<SocketId, InvalidCommand> {
    s.parse().map_err(|_| InvalidCommand::BadSocketId(truncate(s.to_owned(), 64)))
}

fn parse_scope(v: i32) -> Result<Scope, InvalidCommand> {
    match proto::Scope::try_from(v) {
        Ok(proto::Scope::All) => Ok(Scope::All),
        Ok(proto::Scope::Active) => Ok(Scope::Active),
        Ok(proto::Scope::Inactive) => Ok(Scope::Inactive),
        Err(_) => Err(InvalidCommand::BadScope(v)),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

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
    pub fn new(table: SocketTable, backend: Arc<dyn Backend>, settings: Arc<Settings>) -> Self {
        Self { table, backend, settings }
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
                Err(e) => Receipt::refused(e),
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
    if selector.is_empty() {
        return true;
    }
    let labels = socket.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_commands_are_named_and_keep_their_id() {
        let cmd = proto::UpstreamCommand {
            command_id: "c1".into(),
            command: Some(upstream_command::Command::Send(proto::Send {
                socket_id: "nope".into(),
                payload: Bytes::new(),
            })),
        };
        let (id, parsed) = Command::from_proto(cmd);
        assert_eq!(id.as_deref(), Some("c1"));
        assert_eq!(parsed, Err(InvalidCommand::BadSocketId("nope".into())));
        let cmd = proto::UpstreamCommand {
            command_id: String::new(),
            command: Some(upstream_command::Command::Broadcast(proto::Broadcast { scope: 42, ..Default::default() })),
        };
        assert_eq!(Command::from_proto(cmd), (None, Err(InvalidCommand::BadScope(42))));
        let empty = proto::UpstreamCommand::default();
        assert_eq!(Command::from_proto(empty).1, Err(InvalidCommand::Empty));
    }

    #[test]
    fn close_detail_is_truncated_on_a_char_boundary() {
        let s = "é".repeat(200);
        let t = truncate(s, MAX_CLOSE_DETAIL);
        assert!(t.len() <= MAX_CLOSE_DETAIL && t.chars().all(|c| c == 'é'));
    }
}
