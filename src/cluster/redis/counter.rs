//! The shared round-robin counter, `K:rr`, leased in blocks: one `INCRBY K:rr {block}` gives a
//! node `block` consecutive values, so Redis sees one command per block of forwarded messages
//! while the split over upstreams stays fair cluster-wide. The next block is fetched in the
//! background when half of the current one is used; while none is at hand (Redis slow or down)
//! the node counts locally, so `next` never waits.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use deadpool_redis::Pool;
use redis::AsyncCommands;
use tracing::debug;

use crate::{cluster::Counter, metrics as m};

/// Values leased per `INCRBY`: Redis sees at most one command per this many messages.
pub const LEASE_BLOCK: u64 = 32;

/// A leased block: `[next, end)`.
#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    next: u64,
    end: u64,
}

/// The leased counter.
pub struct LeasedCounter {
    /// Redis.
    pool: Pool,
    /// `K:rr`.
    key: String,
    /// The block in use and the one fetched ahead.
    leases: Mutex<(Lease, Option<Lease>)>,
    /// A fetch is under way.
    fetching: AtomicBool,
    /// Fallback while no lease is at hand.
    local: AtomicU64,
}

impl LeasedCounter {
    /// A counter on `key`.
    pub fn new(pool: Pool, key: String) -> Arc<Self> {
        Arc::new(Self {
            pool,
            key,
            leases: Mutex::default(),
            fetching: AtomicBool::new(false),
            local: AtomicU64::new(rand::random::<u32>().into()),
        })
    }

    /// Fetches the next block in the background, unless a fetch is already under way.
    fn fetch_ahead(self: &Arc<Self>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result: Result<u64, String> = super::records::timed(async {
                let mut conn = this.pool.get().await.map_err(super::records::pool_error)?;
                conn.incr(&this.key, LEASE_BLOCK).await
            })
            .await
            .map_err(|e| e.to_string());
            match result {
                Ok(end) => {
                    let lease = Lease { next: end - LEASE_BLOCK, end };
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
            let low = lease.end - lease.next <= LEASE_BLOCK / 2;
            let no_ahead = leases.1.is_none();
            drop(leases);
            if low && no_ahead {
                counter.fetch_ahead();
            }
            return value;
        }
        drop(leases);
        counter.fetch_ahead();
        counter.local.fetch_add(1, Ordering::Relaxed)
    }
}
