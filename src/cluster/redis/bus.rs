//! The bus: commands, receipts, broadcasts and control notices between nodes, on Redis pub/sub,
//! MessagePack-encoded (`rmp-serde`).
//!
//! - `K:ch:node:{node}`: [`BusMessage::Command`] for a socket that node holds, and
//!   [`BusMessage::Receipt`] answering a command that node sent.
//! - `K:ch:broadcast`: [`BusMessage::Broadcast`], applied by every node but its origin.
//! - `K:ch:control`: [`BusMessage::Control`] (the upstream registry changed; so does any message
//!   that is not a bus message, e.g. one typed in `redis-cli`) and [`BusMessage::Runtime`].
//!
//! A payload that does not decode is counted and logged, and affects nothing else.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    command::{Broadcast, Command, Receipt, Scope},
    proto,
    settings::RuntimePatch,
    socket::{CloseReason, Labels},
};

/// Largest bus payload a node decodes; anything larger is refused before decoding.
pub const MAX_BUS_PAYLOAD: usize = 32 << 20;

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BusMessage {
    /// A one-socket command for the node that holds the socket.
    Command {
        /// Matches the receipt to the request.
        request: u64,
        /// The node to send the receipt to.
        reply_to: String,
        /// The command.
        command: WireCommand,
    },
    /// The owner's answer to a command.
    Receipt {
        /// The request it answers.
        request: u64,
        /// 1 OK, 2 unknown socket, 3 failed (the `Status` values).
        status: i32,
        /// Why, when not OK.
        detail: String,
        /// The socket refused it (see `Receipt::refused`); absent from older nodes' receipts.
        #[serde(default)]
        refused: bool,
    },
    /// A broadcast for every node but `origin` (which applied it already).
    Broadcast {
        /// The node that published it.
        origin: String,
        /// 0 all, 1 active, 2 inactive (the `Scope` values).
        scope: i32,
        /// Labels that must all match.
        selector: Labels,
        /// The payload.
        payload: Bytes,
    },
    /// Something shared changed; every node re-reads it.
    Control {
        /// What changed: `upstreams`.
        what: String,
    },
    /// Runtime settings changed cluster-wide: every node reads `K:runtime`, which holds the
    /// change (see `runtime.rs`).
    Runtime {
        /// The node that made the change.
        origin: String,
        /// The change, for whoever watches the channel (the nodes read `K:runtime`).
        patch: RuntimePatch,
    },
}

/// A one-socket command as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireCommand {
    /// Write a payload.
    Send {
        /// Socket id.
        socket: String,
        /// Payload.
        payload: Bytes,
    },
    /// Close the socket.
    Close {
        /// Socket id.
        socket: String,
        /// `upstream` or `admin`.
        reason: String,
        /// Free text for the log.
        detail: String,
    },
    /// Set labels.
    SetLabels {
        /// Socket id.
        socket: String,
        /// Labels.
        labels: Labels,
        /// Replace instead of merge.
        replace: bool,
    },
}

impl WireCommand {
    /// The wire form of a one-socket command; `None` for a broadcast.
    pub fn from_command(command: &Command) -> Option<Self> {
        Some(match command {
            Command::Send { socket, payload } => Self::Send { socket: socket.to_string(), payload: payload.clone() },
            Command::Close { socket, reason, detail } => {
                Self::Close { socket: socket.to_string(), reason: reason.as_str().to_owned(), detail: detail.clone() }
            }
            Command::SetLabels { socket, labels, replace } => {
                Self::SetLabels { socket: socket.to_string(), labels: labels.clone(), replace: *replace }
            }
            Command::Broadcast(_) => return None,
        })
    }

    /// Back to a command.
    ///
    /// # Errors
    /// [`BusError::SocketId`] when a socket id is not one (another node's bug or a forged
    /// message).
    pub fn into_command(self) -> Result<Command, BusError> {
        let parse = |s: &str| s.parse().map_err(|_| BusError::SocketId(s.chars().take(64).collect()));
        Ok(match self {
            Self::Send { socket, payload } => Command::Send { socket: parse(&socket)?, payload },
            Self::Close { socket, reason, detail } => {
                let reason = if reason == "admin" { CloseReason::Admin } else { CloseReason::Upstream };
                Command::Close { socket: parse(&socket)?, reason, detail }
            }
            Self::SetLabels { socket, labels, replace } => {
                Command::SetLabels { socket: parse(&socket)?, labels, replace }
            }
        })
    }
}

impl BusMessage {
    /// MessagePack bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes MessagePack bytes, refusing oversized ones before decoding.
    ///
    /// # Errors
    /// [`BusError`] saying why the bytes are not a bus message.
    pub fn decode(bytes: &[u8]) -> Result<Self, BusError> {
        if bytes.len() > MAX_BUS_PAYLOAD {
            return Err(BusError::TooLarge(bytes.len()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| BusError::Undecodable(e.to_string()))
    }

    /// The broadcast message for `b`, from `origin`.
    pub fn broadcast(origin: &str, b: &Broadcast) -> Self {
        Self::Broadcast {
            origin: origin.to_owned(),
            scope: proto::Scope::from(b.scope) as i32,
            selector: b.selector.clone(),
            payload: b.payload.clone(),
        }
    }

    /// A receipt message.
    pub fn receipt(request: u64, receipt: Receipt) -> Self {
        Self::Receipt { request, status: receipt.status as i32, detail: receipt.detail, refused: receipt.refused }
    }
}

/// A broadcast from the bus, back in command form.
///
/// # Errors
/// [`BusError::Scope`] when the scope is unknown.
pub fn broadcast_from_wire(scope: i32, selector: Labels, payload: Bytes) -> Result<Broadcast, BusError> {
    let scope = Scope::try_from(scope).map_err(|_| BusError::Scope(scope))?;
    Ok(Broadcast { scope, selector, payload })
}

/// Why a message on the bus was refused (counted and logged; a command gets a failed receipt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Larger than [`MAX_BUS_PAYLOAD`].
    #[error("bus payload of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not MessagePack of a bus message.
    #[error("undecodable bus payload: {0}")]
    Undecodable(String),
    /// A socket id that is not one.
    #[error("bad socket id `{0}` on the bus")]
    SocketId(String),
    /// A broadcast scope that is not one.
    #[error("unknown scope {0} on the bus")]
    Scope(i32),
}

/// A receipt from the bus.
pub fn receipt_from_wire(status: i32, detail: String, refused: bool) -> Receipt {
    let status = proto::Status::try_from(status).unwrap_or(proto::Status::Failed);
    Receipt { status, detail, refused }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let m = BusMessage::Command {
            request: 7,
            reply_to: "n1".into(),
            command: WireCommand::Send { socket: uuid::Uuid::now_v7().to_string(), payload: Bytes::from_static(b"hi") },
        };
        assert_eq!(BusMessage::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = BusMessage::decode(&bytes);
        }
    }
}
