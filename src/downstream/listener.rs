//! The accept loop. `--max-connections` is a semaphore: a socket takes a permit when it is
//! accepted and gives it back when it is gone. Beyond the limit a new socket is accepted and
//! closed at once (counted), so the listen backlog never fills and nothing else is disturbed.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::connection::{self, Downstream};
use crate::metrics as m;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts sockets until `stop` is cancelled, spawning each socket's task on `tracker`.
pub async fn run(
    listener: TcpListener,
    ctx: Downstream,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
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
            Ok((stream, remote)) => match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracker.spawn(connection::serve(ctx.clone(), stream, permit));
                }
                Err(_) => {
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
