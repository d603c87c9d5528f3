//! The reaper's second half: announcing a reaped node's `closed` events to the upstreams, once
//! across the cluster, and a node's own `opened` (`resumed`) events when it finds it was reaped
//! while it was only cut off.
//!
//! `redis/reap.lua` leaves every reaped socket in a job (`K:reap:{job}`, listed in `K:reaps`).
//! One live node at a time owns a job, under a lease (`redis/announce.lua`): batch after batch,
//! it notes that it may have handed a batch out and hands its `closed` events (reason
//! `node_lost`) to its upstreams; at the end it waits until they had the time to be written and
//! confirmed (acknowledged, or received per a health check), and drops them from the job. If it
//! dies half-way, its lease runs out, another node takes the job over and starts with what the
//! first may have handed out, flagged `redelivered`: every socket gets its `closed` at least
//! once, and a second copy only ever as a flagged redelivery.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Script};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{RedisBackend, connection::RedisConn, handoff::Handoff, records::Record};
use crate::{
    cluster::Announcement,
    socket::{
        CloseReason,
        event::{self, Event},
    },
};

/// Reap announcements waiting for the node to hand them to its upstreams.
const ANNOUNCE_QUEUE: usize = 4;
/// `redis/announce.lua`.
const ANNOUNCE_LUA: &str = include_str!("../../../redis/announce.lua");
/// How long a node owns a reap job without renewing its lease; another takes over after it.
const LEASE: Duration = Duration::from_secs(10);
/// `closed` events handed out per batch of a job.
const BATCH: usize = 256;
/// The longest wait for a batch's events to be confirmed by the upstreams before it is dropped
/// from the job (the events are then in the upstreams' hands or in this node's replay windows).
const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(4);

/// The test-only knobs of the reaper: `PPP_TEST_REAP_BATCH` (events per batch) and
/// `PPP_TEST_REAP_PAUSE_MS` (a pause after each batch, so a test can kill the reaper half-way).
fn knobs() -> (usize, Duration) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let batch = var("PPP_TEST_REAP_BATCH").map_or(BATCH, |b| (b as usize).clamp(1, BATCH));
    (batch, Duration::from_millis(var("PPP_TEST_REAP_PAUSE_MS").unwrap_or(0)))
}

/// How long a handed-out batch is given to be confirmed: two health intervals, within bounds.
fn confirm_wait(health_interval: Duration) -> Duration {
    (health_interval * 2).clamp(Duration::from_millis(200), MAX_CONFIRM_WAIT)
}

/// What the announcing half of the reaper keeps in the backend.
pub(super) struct Announcer {
    /// `redis/announce.lua` (hashed once, not per batch).
    script: Script,
    /// A reap job is being announced by this node.
    busy: AtomicBool,
    /// How long a reap batch handed to the upstreams is given to be confirmed (acknowledged, or
    /// received per a health check) before it leaves the job.
    confirm_wait: Duration,
    /// The node was reaped while cut off and must announce its sockets again.
    pub(super) resume_pending: AtomicBool,
    /// Where announcements go: the node hands them to its upstreams.
    pub(super) handoff: Handoff<Announcement>,
}

impl Announcer {
    /// An idle announcer; batches are given [`confirm_wait`] of `health_interval`.
    pub(super) fn new(health_interval: Duration) -> Self {
        Self {
            script: Script::new(ANNOUNCE_LUA),
            busy: AtomicBool::new(false),
            confirm_wait: confirm_wait(health_interval),
            resume_pending: AtomicBool::new(false),
            handoff: Handoff::new(ANNOUNCE_QUEUE),
        }
    }
}

impl RedisBackend {
    /// Starts announcing the oldest reap job nobody announces, unless this node is busy with one.
    pub(super) fn reaper_tick(self: &Arc<Self>) {
        if self.announcer.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let task = async move {
            if let Err(e) = this.announce_jobs().await {
                debug!(error = %e, "reap jobs: Redis error; trying again at the next heartbeat");
            }
            this.announcer.busy.store(false, Ordering::Release);
        };
        self.tracker.spawn(task.instrument(info_span!("reaper")));
    }

    /// Announces jobs until none is left that another node does not own.
    async fn announce_jobs(&self) -> Result<(), redis::RedisError> {
        let key = self.keys.reaps.clone();
        let jobs: Vec<String> = self.shared.run(|mut conn| async move { conn.zrange(key, 0, 15).await }).await?;
        for job in jobs {
            if self.stop.is_cancelled() {
                break;
            }
            self.announce_job(&job).await?;
        }
        Ok(())
    }

    /// Announces one job to its end, unless another node owns it: hands out every batch, waits
    /// until they had the time to be confirmed, then drops them from the job.
    async fn announce_job(&self, job: &str) -> Result<(), redis::RedisError> {
        let (batch, pause) = knobs();
        let dead = job.split('/').next().unwrap_or_default();
        // How many at the head a previous owner may have handed out: they go out flagged.
        let mut before: Option<usize> = None;
        let mut handed = 0;
        loop {
            let Some((sent, ids)) = self.take_batch(job, handed, batch).await? else { return Ok(()) };
            if ids.is_empty() {
                if handed == 0 {
                    if before.is_some() {
                        info!(node = %dead, "reap job done");
                    }
                    return Ok(());
                }
                // Handed to the upstreams' queues: give the streams the time to write them and
                // the upstreams to confirm them (an ack comes within milliseconds; a health check
                // within an interval). Until then a copy stays in the job.
                tokio::time::sleep(self.announcer.confirm_wait).await;
                if !self.finish(job, handed).await? {
                    warn!(job, "lost the lease of a reap job; another node carries on");
                    return Ok(());
                }
                handed = 0;
                continue;
            }
            let previous = *before.get_or_insert_with(|| {
                info!(node = %dead, job, "announcing the closed events of a reaped node");
                sent
            });
            let events =
                ids.iter().enumerate().map(|(i, id)| (closed_event(id, handed + i < previous), None)).collect();
            if !self.hand_out(job, events).await? {
                return Ok(());
            }
            handed += ids.len();
            if !pause.is_zero() && ids.len() == batch {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Runs `redis/announce.lua`.
    async fn announce_script(
        &self,
        job: &str,
        mode: &str,
        n: usize,
        offset: usize,
    ) -> Result<redis::Value, redis::RedisError> {
        let (list, owner, sent) = self.keys.reap_job(job);
        let mut invocation = self.announcer.script.key(list);
        invocation.key(owner).key(sent).key(self.keys.reaps.clone());
        invocation.arg(mode).arg(&self.node).arg(LEASE.as_millis() as u64).arg(n).arg(job).arg(offset);
        self.shared.run(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// The batch of a job at `offset`: how many at the head of the job may have been handed out
    /// before, and the socket ids (empty past the end, and at offset 0 when the job is finished);
    /// `None` when another node owns the job.
    async fn take_batch(
        &self,
        job: &str,
        offset: usize,
        n: usize,
    ) -> Result<Option<(usize, Vec<String>)>, redis::RedisError> {
        let reply = self.announce_script(job, "take", n, offset).await?;
        let redis::Value::Array(items) = reply else { return Ok(None) };
        let mut items = items.into_iter();
        let sent: i64 = items.next().map(redis::from_redis_value).transpose()?.unwrap_or(-1);
        if sent < 0 {
            return Ok(Some((0, Vec::new())));
        }
        let ids = items.map(redis::from_redis_value).collect::<Result<Vec<String>, _>>()?;
        Ok(Some((sent as usize, ids)))
    }

    /// Drops `n` handed-out sockets from the head of the job (0: only renews the lease); `false`
    /// when the lease was lost.
    async fn finish(&self, job: &str, n: usize) -> Result<bool, redis::RedisError> {
        let done: i64 = redis::from_redis_value(self.announce_script(job, "done", n, 0).await?)?;
        Ok(done == 1)
    }

    /// Hands `events` to the upstreams (waiting while they have no room), renewing the job's
    /// lease meanwhile; `false` when the node stops or the lease is lost.
    async fn hand_out(
        &self,
        job: &str,
        events: Vec<(Event, Option<Arc<crate::socket::SocketState>>)>,
    ) -> Result<bool, redis::RedisError> {
        let (handed, confirmed) = oneshot::channel();
        if self.announcer.handoff.sender().send(Announcement { events, handed }).await.is_err() {
            return Ok(false);
        }
        tokio::pin!(confirmed);
        loop {
            tokio::select! {
                r = &mut confirmed => return Ok(r.is_ok()),
                () = tokio::time::sleep(LEASE / 3) => {
                    if !self.finish(job, 0).await? {
                        return Ok(false);
                    }
                }
                () = self.stop.cancelled() => return Ok(false),
            }
        }
    }

    /// After the cluster reaped this node while it was only cut off, and once the reaper has
    /// announced its sockets `closed`: announce again (`opened` with `resumed`, and in
    /// `K:events`) every reaped socket this node still holds.
    pub(super) async fn resume_if_reaped(&self) {
        if !self.announcer.resume_pending.load(Ordering::Acquire) {
            return;
        }
        match self.shared.run(|mut conn| async move { self.resume(&mut conn).await }).await {
            Ok(true) => self.announcer.resume_pending.store(false, Ordering::Release),
            Ok(false) => debug!("resume waits for the reaper's closed events"),
            Err(e) => debug!(error = %e, "resume failed; trying again at the next heartbeat"),
        }
    }

    /// One try of [`Self::resume_if_reaped`]; `false` while the reaper still announces.
    async fn resume(&self, conn: &mut RedisConn) -> Result<bool, redis::RedisError> {
        let jobs: Vec<String> = conn.zrange(self.keys.reaps.clone(), 0, -1).await?;
        let mine = format!("{}/", self.node);
        if jobs.iter().any(|j| j.starts_with(&mine)) {
            return Ok(false);
        }
        let reaped: Vec<String> = conn.smembers(self.keys.node_reaped(&self.node)).await?;
        let held: Vec<_> =
            self.table.snapshot().into_iter().filter(|s| reaped.iter().any(|id| **id == *s.id_str)).collect();
        if held.is_empty() {
            return Ok(true);
        }
        info!(sockets = held.len(), "announcing again the sockets the cluster reaped while this node was cut off");
        let mut events = Vec::with_capacity(held.len());
        for socket in held {
            self.record(Record::opened(&socket, true));
            events.push((event::opened(&self.node, &socket, true), Some(socket)));
        }
        let (handed, _) = oneshot::channel();
        let _ = self.announcer.handoff.sender().send(Announcement { events, handed }).await;
        Ok(true)
    }
}

/// The `closed` (`node_lost`) event of a reaped socket.
fn closed_event(id: &str, redelivered: bool) -> Event {
    Event { redelivered, ..event::closed(id, CloseReason::NodeLost) }
}
