//! Membership: the heartbeat, registration, and the reaper's judgement of death.
//!
//! Every [`HEARTBEAT`] a node writes its score in `K:nodes` and its record in `K:node:{node}`. A
//! node is dead when this node has watched its score stay unchanged for `--node-ttl` **by this
//! node's own clock** ([`Watch`]); time in which this node could not reach Redis does not count
//! (the watch starts again when it is back). So neither clock skew between hosts, nor a Redis
//! restored from an old snapshot, nor a failover that cut everyone off for a while gets a live
//! node reaped. The reap itself is `redis/reap.lua`, atomic and once; announcing the dead node's
//! `closed` events to the upstreams is [`super::reaper`]'s job.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use tracing::{info, warn};

use super::{RedisBackend, connection::RedisConn, records};
use crate::{metrics as m, socket::unix_ms};

/// How often a node refreshes its heartbeat and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Dead nodes reaped per heartbeat at most.
const REAP_PER_BEAT: usize = 16;
/// How long a leaving node waits for its tasks to stop.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after this node registered again (Redis lost `K:nodes`, or reaped it while cut off)
/// a broadcast must also reach the members it knew before: the others register again at their
/// next heartbeat, and until then `K:nodes` does not list them.
const REJOIN_WINDOW: Duration = Duration::from_secs(2);

/// Heartbeats as this node watched them: node id → (the score last seen, when this node first
/// saw that score, by its own monotonic clock); and the membership it last read, which a
/// broadcast checks its receivers against (see [`super::broadcasting`]).
#[derive(Debug, Default)]
pub struct Watch {
    seen: HashMap<String, (i64, Instant)>,
    /// The members of `K:nodes` at the last reading, kept while Redis cannot be read.
    known: Vec<String>,
    /// Until when, after registering again, the members known before count as members too.
    rejoined: Option<(Instant, Vec<String>)>,
}

impl Watch {
    /// Notes the heartbeats read now; returns the nodes (and their unchanged scores) that have
    /// not beaten for `ttl` as this node saw it.
    fn observe(&mut self, beats: Vec<(String, i64)>, ttl: Duration, now: Instant) -> Vec<(String, i64)> {
        let mut dead = Vec::new();
        let mut seen = HashMap::with_capacity(beats.len());
        for (node, score) in beats {
            let since = match self.seen.get(&node) {
                Some((last, since)) if *last == score => *since,
                _ => now,
            };
            if now.duration_since(since) >= ttl {
                dead.push((node.clone(), score));
            }
            seen.insert(node, (score, since));
        }
        self.known = seen.keys().cloned().collect();
        self.seen = seen;
        dead
    }

    /// This node registered again: Redis lost `K:nodes` (or reaped this node while it was cut
    /// off), so for [`REJOIN_WINDOW`] the members it knew before are members still.
    fn rejoined(&mut self, now: Instant) {
        self.rejoined = Some((now + REJOIN_WINDOW, self.known.clone()));
    }

    /// The members known before this node registered again, within [`REJOIN_WINDOW`].
    pub(super) fn members_before_rejoining(&self, now: Instant) -> &[String] {
        match &self.rejoined {
            Some((until, members)) if now < *until => members,
            _ => &[],
        }
    }

    /// How long `node`'s heartbeat has stood still, as this node watched it.
    pub(super) fn silent_for(&self, node: &str, now: Instant) -> Option<Duration> {
        self.seen.get(node).map(|(_, since)| now.duration_since(*since))
    }

    /// Forgets everything: this node could not see the cluster for a while, so no silence it
    /// saw before counts.
    fn restart(&mut self) {
        self.seen.clear();
    }
}

impl RedisBackend {
    /// The watch of the others' heartbeats (never held across an `.await`).
    pub(super) fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes this node's heartbeat and record every [`HEARTBEAT`], and reaps dead nodes.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(HEARTBEAT);
        // A node joins `K:nodes` only once it hears the bus, so a broadcast never counts on a
        // member that could not have received it (see `super::broadcasting`).
        let mut subscribed = self.subscribed.subscribe();
        tokio::select! {
            () = self.stop.cancelled() => return,
            _ = subscribed.wait_for(|live| *live) => {}
        }
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let this: &Self = &self;
            // A failover shows here as errors until the new primary answers: time this node could
            // not reach Redis, which its watch of the others' heartbeats does not count.
            if let Err(e) = self.shared.run(|mut conn| async move { this.beat(&mut conn).await }).await {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    warn!(error = %e, "Redis unreachable; serving on, records queued");
                }
                self.watch().restart();
                metrics::counter!(m::REDIS_ERRORS).increment(1);
                continue;
            }
            if !self.reachable.swap(true, Ordering::AcqRel) {
                info!("Redis reachable");
                metrics::counter!(m::REDIS_RECONNECTS).increment(1);
            }
            let reaped = self.shared.run(|mut conn| async move { this.reap_dead(&mut conn).await }).await;
            if let Err(e) = reaped {
                warn!(error = %e, "reaping failed");
                self.watch().restart();
            }
            self.resume_if_reaped().await;
            self.reaper_tick();
        }
    }

    /// One heartbeat. The first one of this run reaps the node's previous run if it is still
    /// registered (a fixed `--node-id` restarted before it was reaped), so its sockets get their
    /// `closed`, and only then lets the record writer start.
    async fn beat(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        if !*self.registered.borrow() {
            self.reap_previous_run(conn).await?;
        }
        let present: Option<f64> = conn.zscore(self.keys.nodes.clone(), &self.node).await?;
        if present.is_none() {
            // Before this node shows in `K:nodes` again: a node reading the registry meanwhile
            // sees either no registration (and seeds it itself) or a seeded registry, never a
            // registration next to a registry Redis lost.
            self.seed_registry(conn).await?;
        }
        let sockets = self.table.len();
        let mut fields = self.node_fields.clone();
        fields.push(("sockets", sockets.to_string()));
        let (added, beats): (usize, u64) = redis::pipe()
            .zadd(self.keys.nodes.clone(), &self.node, unix_ms())
            .hset_multiple(self.keys.node(&self.node), &fields)
            .ignore()
            .hincr(self.keys.node(&self.node), "beats", 1)
            .query_async(conn)
            .await?;
        let expected = self.beats.fetch_add(1, Ordering::AcqRel) + 1;
        if added == 1 {
            self.registered_again(conn).await?;
        } else if beats != expected {
            // Our record is not the one we wrote: Redis restarted, failed over or was restored
            // from a snapshot. Repair the socket registry now rather than at the next resync.
            info!(beats, expected, "the cluster state changed under this node; resyncing");
            self.beats.store(beats, Ordering::Release);
            self.resync_now.notify_one();
        }
        if !self.registered.send_replace(true) {
            info!(run = %self.run_id, "registered in the cluster");
        }
        Ok(())
    }

    /// New in `K:nodes`: the first beat, or the node was reaped while cut off, or Redis lost its
    /// data (the registry was seeded again just before). Record `node_up` and register the whole
    /// socket set again now.
    async fn registered_again(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        if *self.registered.borrow() {
            info!("registered in the cluster again");
            self.announcer.resume_pending.store(true, Ordering::Release);
            self.watch().rejoined(Instant::now());
        }
        records::event(&self.keys, self.events_max, "node_up", "", &self.node, unix_ms(), "")
            .exec_async(&mut *conn)
            .await?;
        self.beats.store(1, Ordering::Release);
        self.resync_now.notify_one();
        Ok(())
    }

    /// Seeds the registry with what this node knows, overwriting nothing there: Redis may have
    /// lost it while this node was away from `K:nodes`.
    async fn seed_registry(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        let known = self.known_upstreams.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if known.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in &known {
            pipe.hset_nx(self.keys.upstreams.clone(), &e.id, &e.uri).ignore();
        }
        pipe.query_async::<()>(conn).await
    }

    /// Reaps this node's previous run, if a run with another id is still registered under this
    /// node id.
    async fn reap_previous_run(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        let previous: Option<String> = conn.hget(self.keys.node(&self.node), "run_id").await?;
        let Some(previous) = previous.filter(|run| *run != self.run_id) else { return Ok(()) };
        let reaped = self.reap(conn, &self.node, None, &previous).await?;
        if reaped >= 0 {
            info!(run = %previous, sockets = reaped, "reaped this node's previous run");
            metrics::counter!(m::NODES_REAPED).increment(1);
        }
        Ok(())
    }

    /// Reaps every node whose heartbeat this node watched stay unchanged for `--node-ttl`.
    async fn reap_dead(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        let beats: Vec<(String, i64)> = conn.zrange_withscores(self.keys.nodes.clone(), 0, -1).await?;
        let dead = self.watch().observe(beats, self.node_ttl, Instant::now());
        for (node, score) in dead.into_iter().filter(|(n, _)| *n != self.node).take(REAP_PER_BEAT) {
            let reaped = self.reap(conn, &node, Some(score), "").await?;
            if reaped >= 0 {
                info!(dead = %node, sockets = reaped, "reaped a dead node");
                metrics::counter!(m::NODES_REAPED).increment(1);
            }
        }
        Ok(())
    }

    /// Runs `redis/reap.lua` for `node` (its heartbeat must still be `watched`, when given; its
    /// run must be `run`, when not empty). Returns the sockets reaped, or -1 when it was not
    /// reaped (alive after all, or reaped by another node already).
    async fn reap(
        &self,
        conn: &mut RedisConn,
        node: &str,
        watched: Option<i64>,
        run: &str,
    ) -> Result<i64, redis::RedisError> {
        let now = unix_ms();
        let job = format!("{node}/{}/{now}", if run.is_empty() { "-" } else { run });
        self.reap_script
            .key(self.keys.nodes.clone())
            .arg(self.keys.base())
            .arg(node)
            .arg(watched.map(|s| s.to_string()).unwrap_or_default())
            .arg(run)
            .arg(now)
            .arg(&self.node)
            .arg(self.events_max)
            .arg(job)
            .invoke_async(conn)
            .await
    }
}

impl RedisBackend {
    /// Marks this node `draining` in `K:node:{node}`.
    pub(super) async fn mark_draining(&self) {
        let key = self.keys.node(&self.node);
        let marked: Result<(), redis::RedisError> =
            self.shared.run(|mut conn| async move { conn.hset(key, "draining", "1").await }).await;
        if let Err(e) = marked {
            warn!(error = %e, "could not mark the node draining");
        }
    }

    /// Stops the backend's tasks and removes this node from the cluster; the bus subscriber
    /// last, once the node is out of `K:nodes`, so no broadcast counts on it while it cannot
    /// hear it (see `super::broadcasting`).
    pub(super) async fn leave_cluster(&self) {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, self.tracker.wait()).await;
        self.remove_from_cluster().await;
        self.bus_stop.cancel();
        self.bus.close();
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, self.bus.wait()).await;
    }

    /// Removes this node's registration (`K:nodes`, its hash and its socket set).
    async fn remove_from_cluster(&self) {
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys.nodes.clone(), &self.node).ignore();
        pipe.del(self.keys.node(&self.node)).ignore();
        pipe.del(self.keys.node_sockets(&self.node)).ignore();
        let left: Result<(), redis::RedisError> =
            self.shared.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await;
        match left {
            Ok(()) => info!("left the cluster"),
            Err(e) => warn!(error = %e, "could not leave the cluster cleanly; it will be reaped"),
        }
    }
}

/// The fields of `K:node:{node}` a node writes when it registers.
pub(super) fn node_fields(
    config: &crate::config::Config,
    run_id: &str,
    listen: std::net::SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("listen", listen.to_string()),
        ("admin", config.admin_listen.to_string()),
        ("started_at", unix_ms().to_string()),
        ("version", crate::VERSION.to_owned()),
        ("run_id", run_id.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_dead_only_after_its_heartbeat_stood_still_for_the_ttl_by_the_watchers_clock() {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut watch = Watch::default();
        // A score far in the past (clock skew, an old snapshot) is not death: the watch starts now.
        assert!(watch.observe(vec![("a".into(), 5)], ttl, t0).is_empty());
        assert!(watch.observe(vec![("a".into(), 5)], ttl, t0 + Duration::from_secs(2)).is_empty());
        assert_eq!(watch.observe(vec![("a".into(), 5)], ttl, t0 + ttl), [("a".to_owned(), 5)]);
        // A beat moves the score: alive again.
        assert!(watch.observe(vec![("a".into(), 6)], ttl, t0 + ttl).is_empty());
        // Time the watcher could not see the cluster does not count.
        watch.restart();
        assert!(watch.observe(vec![("a".into(), 6)], ttl, t0 + ttl * 5).is_empty());
    }

    #[test]
    fn after_registering_again_the_members_seen_before_count_for_a_while() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        let _ = watch.observe(vec![("a".into(), 1), ("b".into(), 1)], Duration::from_secs(10), t0);
        assert!(watch.members_before_rejoining(t0).is_empty());
        // Redis was away and came back empty: what was seen before it left is kept.
        watch.restart();
        watch.rejoined(t0);
        assert_eq!(watch.members_before_rejoining(t0 + Duration::from_secs(1)).len(), 2);
        assert!(watch.members_before_rejoining(t0 + REJOIN_WINDOW).is_empty());
    }
}
