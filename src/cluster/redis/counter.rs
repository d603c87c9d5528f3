//! The shared round-robin counter, `K:rr`, leased in blocks: one `INCRBY K:rr {block}` gives a
//! node `block` consecutive values, so Redis sees one command per block of forwarded messages
//! while the split over upstreams stays fair cluster-wide. The next block is fetched in the
//! background when half of the current one is used; while none is at hand (Redis slow or down)
//! the node counts locally, so `next` never waits. The block starts at [`LEASE_BLOCK`] and
//! doubles (up to [`LEASE_BLOCK_MAX`]) whenever the node ran dry before the next block arrived,
//! so a busy node keeps drawing from the shared counter instead of its local one.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use redis::AsyncCommands;
use tracing::debug;

use super::shared::SharedConn;
use crate::{cluster::Counter, metrics as m};

/// Values leased per `INCRBY` at first: Redis sees at most one command per this many messages.
pub const LEASE_BLOCK: u64 = 32;
/// The largest block a busy node leases.
pub const LEASE_BLOCK_MAX: u64 = 8192;

/// A leased block: `[next, end)`.
#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    next: u64,
    end: u64,
}

/// The leased counter.
pub struct LeasedCounter {
    /// Redis.
    conn: Arc<SharedConn>,
    /// `K:rr`.
    key: String,
    /// The block in use and the one fetched ahead.
    leases: Mutex<(Lease, Option<Lease>)>,
    /// A fetch is under way.
    fetching: AtomicBool,
    /// Fallback while no lease is at hand.
    local: AtomicU64,
    /// Values per lease, adapted to the node's rate.
    block: AtomicU64,
    /// The node ran dry since the last lease arrived.
    starved: AtomicBool,
}

impl LeasedCounter {
    /// A counter on `key`.
    pub fn new(conn: Arc<SharedConn>, key: String) -> Arc<Self> {
        Arc::new(Self {
            conn,
            key,
            leases: Mutex::default(),
            fetching: AtomicBool::new(false),
            local: AtomicU64::new(rand::random::<u32>().into()),
            block: AtomicU64::new(LEASE_BLOCK),
            starved: AtomicBool::new(false),
        })
    }

    /// Fetches the next block in the background, unless a fetch is already under way.
    fn fetch_ahead(self: &Arc<Self>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut block = this.block.load(Ordering::Relaxed);
            if this.starved.swap(false, Ordering::AcqRel) {
                block = (block * 2).min(LEASE_BLOCK_MAX);
                this.block.store(block, Ordering::Relaxed);
            }
            let key = this.key.clone();
            let result: Result<u64, redis::RedisError> =
                this.conn.run(|mut conn| async move { conn.incr(&key, block).await }).await;
            match result {
                Ok(end) => {
                    let lease = Lease { next: end - block, end };
                    let mut leases = this.leases.lock().unwrap_or_else(|e| e.into_inner());
                    if leases.0.next >= leases.0.end {
                        leases.0 = lease;
                    } else {
                        leases.1 = Some(lease);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "could not lease round-robin values; counting locally");
                    metrics::counter!(m::REDIS_ERRORS).increment(1);
                }
            }
            this.fetching.store(false, Ordering::Release);
        });
    }
}

/// `Counter` is implemented on the `Arc` so `next` can start a background fetch.
pub struct SharedCounter(pub Arc<LeasedCounter>);

impl Counter for SharedCounter {
    fn next(&self) -> u64 {
        let counter = &self.0;
        let mut leases = counter.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.0.next >= leases.0.end
            && let Some(ahead) = leases.1.take()
        {
            leases.0 = ahead;
        }
        let lease = &mut leases.0;
        if lease.next < lease.end {
            let value = lease.next;
            lease.next += 1;
            let low = (lease.end - lease.next) * 2 <= counter.block.load(Ordering::Relaxed);
            let no_ahead = leases.1.is_none();
            drop(leases);
            if low && no_ahead {
                counter.fetch_ahead();
            }
            return value;
        }
        drop(leases);
        counter.starved.store(true, Ordering::Relaxed);
        counter.fetch_ahead();
        counter.local.fetch_add(1, Ordering::Relaxed)
    }
}
