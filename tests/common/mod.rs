//! Test helpers, one concept per file: a real `redis-server`, an in-process recording upstream
//! (real tonic over loopback), nodes on port 0, line clients and an admin client over real TCP
//! sockets, a fault proxy, external (other-language) upstreams, a real `haproxy` in front of a
//! node, and a test CA with TLS clients. No fixed ports; waits are on
//! conditions, with a deadline that fails the test.
//!
//! Every test binary compiles all of it and uses only some, so each declares it with
//! `#[allow(dead_code)] mod common;`.

pub mod admin;
pub mod client;
pub mod external;
pub mod fault;
pub mod haproxy;
pub mod node;
pub mod node_process;
pub mod process;
pub mod recorder;
pub mod redis_server;
pub mod sockets;
pub mod tls;
pub mod upstream;
pub mod wait;

// What `use common::*;` brings; a binary that uses none of one file's helpers is not wrong.
#[allow(unused_imports)]
pub use self::{
    admin::*, client::*, haproxy::*, node::*, node_process::*, recorder::*, redis_server::*, sockets::*, tls::*,
    upstream::*, wait::*,
};
