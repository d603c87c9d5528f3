//! The TCP side of a node.
//!
//! - [`listener`]: the accept loop.
//! - [`admission`]: `--max-connections`, the count of admitted sockets.
//! - [`transport`]: what a socket is before its bytes are messages: its PROXY header
//!   ([`proxy_header`]) and its TLS handshake ([`tls`]), then plain TCP or TLS for its reader and
//!   writer.
//! - [`connection`]: one socket's life: its reader and writer tasks.
//! - [`framing`]: cutting bytes into messages and framing them again.
//! - [`table`]: the sockets this node holds.

pub mod admission;
pub mod connection;
pub mod framing;
pub mod listener;
pub mod proxy_header;
pub mod table;
pub mod tls;
pub mod transport;
