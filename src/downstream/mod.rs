//! The TCP side of a node.
//!
//! - [`listener`]: the accept loop and `--max-connections`.
//! - [`connection`]: one socket's life: its reader and writer tasks.
//! - [`framing`]: cutting bytes into messages and framing them again.
//! - [`table`]: the sockets this node holds.

pub mod connection;
pub mod framing;
pub mod listener;
pub mod table;
