//! Test helpers, one concept per file: a real `redis-server` (alone, as a Sentinel set, or as a
//! Redis Cluster; any of them as the tests see it in `topology`; the checks that run on each in
//! `checks`, and what the HA tests share in `ha`), an in-process recording upstream
//! (real tonic over loopback), nodes on port 0, line clients and an admin client over real TCP
//! sockets, a fault proxy, external (other-language) upstreams, a CA and a TLS upstream
//! (`upstream_tls`), a DNS server the test controls (`dns`), a real `haproxy` in front of a node,
//! and a test CA with TLS clients (`tls`). No fixed ports; waits are on
//! conditions, with a deadline that fails the test.
//!
//! Every test binary compiles all of it and uses only some, so each declares it with
//! `#[allow(dead_code)] mod common;`.

pub mod admin;
pub mod checks;
pub mod client;
pub mod dns;
pub mod external;
pub mod failover;
pub mod fault;
pub mod ha;
pub mod haproxy;
pub mod node;
pub mod node_process;
pub mod process;
pub mod recorder;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod sockets;
pub mod tls;
pub mod topology;
pub mod upstream;
pub mod upstream_tls;
pub mod wait;

// What `use common::*;` brings; a binary that uses none of one file's helpers is not wrong.
#[allow(unused_imports)]
pub use self::{
    admin::*, client::*, failover::*, ha::*, haproxy::*, node::*, node_process::*, recorder::*, redis_cluster::*,
    redis_sentinel::*, redis_server::*, sockets::*, tls::*, topology::*, upstream::*, wait::*,
};
