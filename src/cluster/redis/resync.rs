//! Anti-entropy: every `--resync-interval` (or at once when asked) a node makes its socket set in
//! Redis equal its own truth; and, every quarter of `--idle-after`, it refreshes `last_seen` and
//! the counters of the sockets that talked or were written to.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use redis::{AsyncCommands, Script};
use tracing::{debug, info, warn};

use super::{RedisBackend, TOUCH_LUA, connection::RedisConn, records};
use crate::{metrics as m, socket::SocketState};

impl RedisBackend {
    /// Every `--resync-interval` (or at once when asked), makes this node's socket registry in
    /// Redis equal its own truth: anti-entropy after outages, failovers or data loss.
    pub(super) async fn resync_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.resync_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {}
                () = self.resync_now.notified() => {}
            }
            let this: &Self = &self;
            match self.shared.run(|mut conn| async move { this.resync(&mut conn).await }).await {
                Ok((added, removed)) if added + removed > 0 => {
                    info!(added, removed, "socket registry repaired");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "resync failed");
                    metrics::counter!(m::REDIS_ERRORS).increment(1);
                }
            }
            metrics::counter!(m::RESYNCS).increment(1);
        }
    }

    /// One resync; returns how many sockets were added to and removed from Redis.
    async fn resync(&self, conn: &mut RedisConn) -> Result<(usize, usize), redis::RedisError> {
        // Not before this run is registered: the socket set in Redis may still be a previous
        // run's, which must be reaped (with its `closed` events), not repaired away.
        if !*self.registered.borrow() {
            return Ok((0, 0));
        }
        let in_redis: HashSet<String> = conn.smembers(self.keys.node_sockets(&self.node)).await?;
        let truth = self.table.snapshot();
        let truth_ids: HashSet<&str> = truth.iter().map(|s| &*s.id_str).collect();
        let mut pipe = redis::pipe();
        let mut added = 0;
        for socket in truth.iter().filter(|s| !in_redis.contains(&*s.id_str)) {
            records::register(&mut pipe, &self.keys, &self.node, socket);
            added += 1;
        }
        let mut removed = 0;
        for id in in_redis.iter().filter(|id| !truth_ids.contains(id.as_str())) {
            pipe.del(self.keys.socket(id)).ignore();
            pipe.srem(self.keys.node_sockets(&self.node), id).ignore();
            pipe.zrem(self.keys.sockets.clone(), id).ignore();
            removed += 1;
        }
        if added + removed > 0 {
            pipe.query_async::<()>(conn).await?;
        }
        Ok((added, removed))
    }

    /// Refreshes `last_seen` and the counters of the sockets that talked or were written to,
    /// every quarter of `--idle-after`, in one pipeline: state filters and counters read from
    /// Redis are exact to within that.
    pub(super) async fn touch_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval((self.idle_after / 4).max(Duration::from_millis(250)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What was last written per socket: (`last_seen`, messages out).
        let mut written: HashMap<crate::socket::SocketId, (i64, u64)> = HashMap::new();
        let touch_sha = Script::new(TOUCH_LUA).get_hash().to_owned();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let sockets = self.table.snapshot();
            let live: HashSet<crate::socket::SocketId> = sockets.iter().map(|s| s.id).collect();
            written.retain(|id, _| live.contains(id));
            let mut pipe = redis::pipe();
            // Loaded in the same pipeline, so a Redis that restarted empty still has it.
            pipe.cmd("SCRIPT").arg("LOAD").arg(TOUCH_LUA).ignore();
            let mut changed = Vec::new();
            for s in &sockets {
                let now = (s.last_seen_ms(), s.messages_out.load(Ordering::Relaxed));
                let before = written.get(&s.id).copied().unwrap_or((s.connected_at_ms, 0));
                if now != before {
                    touch(&mut pipe, &touch_sha, &self.keys.socket(&s.id_str), s);
                    changed.push((s.id, now));
                }
            }
            if changed.is_empty() {
                continue;
            }
            let result: Result<(), redis::RedisError> =
                self.shared.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await;
            match result {
                Ok(()) => written.extend(changed),
                Err(e) => debug!(error = %e, "could not refresh last_seen"),
            }
        }
    }
}

/// Refreshes a socket's `last_seen` and counters in its hash, if the hash is there (a socket
/// whose record was not written yet, or was just removed, is left to the record writer).
fn touch(pipe: &mut redis::Pipeline, sha: &str, key: &str, s: &SocketState) {
    let fields = [
        ("last_seen", s.last_seen_ms().to_string()),
        ("messages_in", s.messages_in.load(Ordering::Relaxed).to_string()),
        ("bytes_in", s.bytes_in.load(Ordering::Relaxed).to_string()),
        ("messages_out", s.messages_out.load(Ordering::Relaxed).to_string()),
        ("bytes_out", s.bytes_out.load(Ordering::Relaxed).to_string()),
    ];
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(1).arg(key);
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    pipe.add_command(cmd).ignore();
}
