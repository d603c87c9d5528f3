//! Settings that may change while the node runs (the admin API's `PATCH /v1/runtime` changes
//! them): read on the data path without locks.

use std::{
    sync::atomic::{AtomicU8, AtomicU64, Ordering},
    time::Duration,
};

use crate::config::{Balance, Config};

/// The live settings of one node. Shared behind an `Arc`; every field is an atomic so the data
/// path reads them without a lock.
#[derive(Debug)]
pub struct Settings {
    /// `--idle-after`, in milliseconds.
    idle_after_ms: AtomicU64,
    /// `--idle-timeout`, in milliseconds; 0 means off.
    idle_timeout_ms: AtomicU64,
    /// `--balance`: 0 round-robin, 1 sticky.
    balance: AtomicU8,
}

impl Settings {
    /// The settings as configured at start-up.
    pub fn new(config: &Config) -> Self {
        let s =
            Self { idle_after_ms: AtomicU64::new(0), idle_timeout_ms: AtomicU64::new(0), balance: AtomicU8::new(0) };
        s.set_idle_after(config.idle_after);
        s.set_idle_timeout(config.idle_timeout.0);
        s.set_balance(config.balance);
        s
    }

    /// A socket silent this long is inactive.
    pub fn idle_after(&self) -> Duration {
        Duration::from_millis(self.idle_after_ms.load(Ordering::Relaxed))
    }

    /// Changes `idle_after`.
    pub fn set_idle_after(&self, d: Duration) {
        self.idle_after_ms.store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Sockets inactive this long are closed; `None` never.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Changes `idle_timeout`.
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        let ms = d.map_or(0, |d| d.as_millis().max(1) as u64);
        self.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// How inbound events are spread over upstreams.
    pub fn balance(&self) -> Balance {
        match self.balance.load(Ordering::Relaxed) {
            1 => Balance::Sticky,
            _ => Balance::RoundRobin,
        }
    }

    /// Changes the balance mode; sockets bind lazily when they switch to sticky.
    pub fn set_balance(&self, b: Balance) {
        self.balance.store(u8::from(b == Balance::Sticky), Ordering::Relaxed);
    }
}
