//! `--max-connections`: a count of admitted sockets checked against the live setting
//! (`PATCH /v1/runtime` changes it). A socket is admitted when it is accepted ([`Limit`]) and
//! leaves when it is gone (its [`Admission`] is dropped).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::settings::Settings;

/// The sockets admitted under `--max-connections`. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Sockets admitted and not yet gone.
    admitted: Arc<AtomicUsize>,
    /// Holds the limit.
    settings: Arc<Settings>,
}

impl Limit {
    /// No socket admitted yet; the limit is `settings.max_connections()`, read at every accept.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { admitted: Arc::default(), settings }
    }

    /// Admits a socket, unless the limit is reached.
    pub fn try_admit(&self) -> Option<Admission> {
        let max = self.settings.max_connections();
        self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Admission(self.admitted.clone()))
    }
}

/// A socket's place under `--max-connections`, given back when dropped.
#[derive(Debug)]
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
