//! The server: a node, its admin API and the shutdown signal, as `main` runs them (mini-redis's
//! `server::run(listener, shutdown)`).

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    admin,
    config::Config,
    logging::LogFilter,
    node::{Node, NodeError},
};

/// What a node listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The downstream listener (`--listen`).
    pub downstream: TcpListener,
    /// The admin API's listener (`--admin-listen`); `None` serves no admin API.
    pub admin: Option<TcpListener>,
}

/// Starts a node on bound listeners and, when `listeners.admin` is given, its admin API, which
/// answers through the node's drain and stops at its end. `log` is the process's log filter,
/// which `PATCH /v1/runtime` changes.
///
/// # Errors
/// [`NodeError`] when the configuration is invalid or the backend cannot start.
pub async fn start(mut config: Config, listeners: Listeners, log: Arc<LogFilter>) -> Result<Node, NodeError> {
    if let Some(admin) = &listeners.admin {
        // The address it is bound to (port 0 in tests), as the cluster shows it.
        config.admin_listen = admin.local_addr()?;
    }
    let node = Node::start_with(config, listeners.downstream, log).await?;
    if let Some(listener) = listeners.admin {
        let stop = CancellationToken::new();
        let task = tokio::spawn(admin::serve(node.clone(), listener, stop.clone()));
        node.stop_at_drain_end(stop, task);
    }
    Ok(node)
}

/// Runs a node (with its admin API) until `shutdown` resolves or `POST /v1/drain` starts a drain,
/// then drains it.
///
/// # Errors
/// [`NodeError`] when the node cannot start.
pub async fn run(
    config: Config,
    listeners: Listeners,
    log: Arc<LogFilter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let node = start(config, listeners, log).await?;
    tokio::select! {
        () = shutdown => {}
        () = node.drain_started() => {}
    }
    node.shutdown().await;
    Ok(())
}
