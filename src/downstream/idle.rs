//! `--idle-timeout`: one task for the node closes the sockets that have been silent that long
//! (reason `idle`), instead of a timer in every socket's task: an idle socket then holds no timer
//! and no wait for the setting to change, and a read looks at no clock for it.
//!
//! The sweep runs every [`period`] of the timeout (a tenth, between 10 ms and 1 s), so a socket is
//! closed at most that much after its deadline; with the setting off (the default) the task only
//! waits for it to change at run time.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    settings::Settings,
    socket::{CloseReason, SocketTable, unix_ms},
};

/// How often the sockets are looked at for `timeout`.
pub fn period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Closes the sockets of `table` silent for `--idle-timeout` (as `settings` has it now), until
/// `stop`.
pub async fn sweep(table: SocketTable, settings: Arc<Settings>, stop: CancellationToken) {
    loop {
        // Subscribed before the look, so a change between the two is not missed.
        let changed = settings.idle_changed();
        let next = settings.idle_timeout().map(|timeout| {
            close_idle(&table, timeout);
            period(timeout)
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed => {}
            () = sleep(next) => {}
        }
    }
}

/// Sleeps `period` (at most a second, [`period`]); forever without one.
async fn sleep(period: Option<Duration>) {
    match period {
        Some(period) => tokio::time::sleep(period).await,
        None => std::future::pending().await,
    }
}

/// Closes every socket whose last message (or connect) is `timeout` old.
fn close_idle(table: &SocketTable, timeout: Duration) {
    let now = unix_ms();
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    for socket in table.snapshot() {
        if now.saturating_sub(socket.last_seen_ms()) >= timeout_ms {
            socket.close(CloseReason::Idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(period(Duration::from_millis(50)), Duration::from_millis(10));
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(200));
        assert_eq!(period(Duration::from_secs(3600)), Duration::from_secs(1));
    }
}
