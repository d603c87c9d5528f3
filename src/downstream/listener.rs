//! The accept loop. Beyond `--max-connections` ([`super::admission`]) a new socket is accepted
//! and closed at once (counted), so the listen backlog never fills and nothing else is disturbed.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    admission::Limit,
    connection::{self, Downstream},
};
use crate::metrics as m;

/// The listen backlog: room for a burst of connects while the accept loop catches up (the
/// default of 1024 overflows when thousands of clients reconnect at once).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the downstream listener with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts sockets until `stop` is cancelled, spawning each socket's task on `tracker`.
pub async fn run(listener: TcpListener, ctx: Downstream, limit: Limit, tracker: TaskTracker, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "accepting sockets");
    }
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => match limit.try_admit() {
                Some(admission) => {
                    tracker.spawn(connection::serve(ctx.clone(), stream, admission));
                }
                None => {
                    debug!(client.addr = %remote, "max connections reached; socket refused");
                    metrics::counter!(m::SOCKETS_REFUSED).increment(1);
                    drop(stream);
                }
            },
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    info!("stopped accepting sockets");
}
