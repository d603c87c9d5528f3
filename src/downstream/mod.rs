//! The TCP side of a node.
//!
//! - [`listener`]: the accept loop.
//! - [`admission`]: `--max-connections`, the count of admitted sockets.
//! - [`connection`]: one socket's life: its reader and writer tasks.
//! - [`framing`]: cutting bytes into messages and framing them again.

pub mod admission;
pub mod connection;
pub mod framing;
pub mod listener;
