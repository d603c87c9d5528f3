//! The TCP side of a node.
//!
//! - [`listener`]: the accept loop.
//! - [`admission`]: `--max-connections`, the count of admitted sockets.
//! - [`transport`]: what a socket is before its bytes are messages: its PROXY header
//!   ([`proxy_header`]) and its TLS handshake ([`tls`]), then plain TCP or TLS for its reader and
//!   writer.
//! - [`connection`]: one socket's life: `opened`, its reader, `closed`; [`writer`]: its writer.
//! - [`framing`]: cutting bytes into messages and framing them again.
//! - [`idle`]: `--idle-timeout`, one sweep for the node's sockets.

pub mod admission;
pub mod connection;
pub mod framing;
pub mod idle;
pub mod listener;
pub mod proxy_header;
pub mod tls;
pub mod transport;
pub mod writer;
