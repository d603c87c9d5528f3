//! Commands: what upstreams and admins ask of sockets: send, broadcast, close, set
//! labels. A command is validated once ([`Command::from_proto`]), then carried out by the
//! [`Dispatcher`] ([`dispatch`]): on this node when it holds the socket, through the backend
//! otherwise. This file is the model only; it depends on no machinery.

pub mod dispatch;

use bytes::Bytes;

pub use self::dispatch::Dispatcher;
use crate::{
    proto::{self, upstream_command},
    socket::{CloseReason, Labels, SocketId},
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

impl TryFrom<i32> for Scope {
    type Error = InvalidCommand;

    /// From the wire (`proto::Scope`; 0 is `SCOPE_ALL`).
    fn try_from(v: i32) -> Result<Self, InvalidCommand> {
        match proto::Scope::try_from(v) {
            Ok(proto::Scope::All) => Ok(Self::All),
            Ok(proto::Scope::Active) => Ok(Self::Active),
            Ok(proto::Scope::Inactive) => Ok(Self::Inactive),
            Err(_) => Err(InvalidCommand::BadScope(v)),
        }
    }
}

impl From<Scope> for proto::Scope {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::All => Self::All,
            Scope::Active => Self::Active,
            Scope::Inactive => Self::Inactive,
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = InvalidCommand;

    /// From the admin API's words: `all`, `active`, `inactive`.
    fn from_str(s: &str) -> Result<Self, InvalidCommand> {
        match s {
            "all" => Ok(Self::All),
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            other => Err(InvalidCommand::ScopeName(truncate(other.to_owned(), 64))),
        }
    }
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
    /// A scope name that is not `all`, `active` or `inactive`.
    #[error("scope `{0}` is not all, active or inactive")]
    ScopeName(String),
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
            Some(upstream_command::Command::Broadcast(b)) => Scope::try_from(b.scope)
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
