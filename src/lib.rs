//! PersistentParadoxPlex: an edge tier for raw TCP.
//!
//! A **node** accepts raw TCP sockets, names each with a UUID v7, frames its bytes into messages and
//! forwards every message over gRPC to stateless **upstream** services, round-robin (or sticky).
//! Upstreams answer by socket id, broadcast, label sockets or close them. The contract (wire
//! protocol, flags, Redis keys) is `DESIGN.md`; `docs/architecture.md` walks the data path.
//!
//! # Layout
//!
//! The data path reads from the folder names: [`downstream`] (accept, admission, framing, one
//! task per socket) → [`upstream`] (the balancer, the pool, one stream per upstream with its replay
//! window, health) → back through [`command`] (the upstreams' commands) to the sockets.
//!
//! - [`config`]: the one typed configuration: flags, `PPP_*` environment, TOML file, validation.
//! - [`proto`]: the generated `ppp.v1` protocol types (`proto/ppp/v1/upstream.proto`).
//! - [`socket`]: the model of a socket: ids, labels ([`socket::labels`]), close reasons
//!   ([`socket::close`]), the state its tasks share with the node ([`socket::state`]), the table
//!   of this node's sockets ([`socket::table`]) and its events as upstreams get them
//!   ([`socket::event`]).
//! - [`downstream`]: the TCP side: the accept loop ([`downstream::listener`]), `--max-connections`
//!   ([`downstream::admission`]), what a socket is before its bytes are messages: its PROXY
//!   header ([`downstream::proxy_header`]) and TLS ([`downstream::tls`]), then plain TCP or TLS
//!   ([`downstream::transport`]), framing codecs ([`downstream::framing`]) and the per-socket
//!   reader and writer tasks ([`downstream::connection`]).
//! - [`upstream`]: the gRPC side: the balancer that picks an upstream for each event, round-robin
//!   or sticky, with inbound backpressure ([`upstream::balancer`]), the pool of upstreams
//!   ([`upstream::pool`]), one `Connect` stream per upstream with reconnect and backoff
//!   ([`upstream::stream`]), the replay window ([`upstream::window`]), readiness and liveness
//!   ([`upstream::health`]).
//! - [`command`]: the model of what upstreams and admins ask (send, broadcast, close, labels)
//!   and its receipts, and the dispatcher that carries it out ([`command::dispatch`]).
//! - [`cluster`]: the [`cluster::Backend`] trait (where socket metadata, lifecycle records and
//!   cross-node commands go) and the two narrow parts the data path holds ([`cluster::Records`],
//!   [`cluster::Counter`]), its in-memory implementation for standalone nodes, its Redis
//!   implementation (on one server, a Sentinel set or a Redis Cluster:
//!   [`cluster::redis::topology`]), and [`cluster::view`], the cluster as the admin API lists it.
//! - [`node`]: wires everything together ([`node::Node::start`]), keeps the upstream pool equal
//!   to the registry, applies runtime settings, carries out what other nodes send, drains.
//! - [`server`]: a node with its admin API and the shutdown signal: [`run`], what `main` calls.
//! - [`admin`]: the admin HTTP API (axum): health, metrics, the cluster's nodes and sockets,
//!   commands, upstreams, runtime settings, drain, and its OpenAPI document.
//! - [`settings`]: the settings that change at run time; [`logging`]: the log filter.
//! - [`echo`]: an example upstream (echo plus a few commands), used by `ppp demo`, the tests and the
//!   benchmark.
//! - [`metrics`]: the names of every metric the node records.

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod cluster;
pub mod command;
pub mod config;
pub mod downstream;
pub mod echo;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod server;
pub mod settings;
pub mod socket;
pub mod upstream;

/// The generated `ppp.v1` protocol (messages, client and server).
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("ppp.v1");
}

pub use node::Node;
pub use server::{Listeners, run};

/// The node's software version, as sent in `NodeHello.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The gRPC service name whose health decides an upstream's readiness.
pub const UPSTREAM_SERVICE: &str = "ppp.v1.Upstream";
