//! Settings that may change while the node runs (`PATCH /v1/runtime`, on one node or, through
//! `K:ch:control`, on all of them): read on the data path without locks.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{
    config::{self, Balance, Config},
    logging::LogFilter,
};

/// The live settings of one node. Shared behind an `Arc`; every field the data path reads is an
/// atomic, so it reads them without a lock.
#[derive(Debug)]
pub struct Settings {
    /// `--idle-after`, in milliseconds.
    idle_after_ms: AtomicU64,
    /// `--idle-timeout`, in milliseconds; 0 means off.
    idle_timeout_ms: AtomicU64,
    /// `--balance`: 0 round-robin, 1 sticky.
    balance: AtomicU8,
    /// `--max-connections`: lowering it closes nothing, it only refuses new sockets until enough
    /// have gone.
    max_connections: AtomicUsize,
    /// The log filter (`RUST_LOG` syntax).
    log: Arc<LogFilter>,
    /// Cancelled (and replaced) when `idle_timeout` changes, so the idle sweep
    /// (`downstream::idle`), waiting on the old period, wakes up and takes the new one.
    idle_changed: Mutex<CancellationToken>,
}

impl Settings {
    /// The settings as configured at start-up, with the process's log filter.
    pub fn new(config: &Config, log: Arc<LogFilter>) -> Self {
        let s = Self {
            idle_after_ms: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            balance: AtomicU8::new(0),
            max_connections: AtomicUsize::new(config.max_connections),
            log,
            idle_changed: Mutex::default(),
        };
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
        self.idle_after_ms.store(millis(d).max(1), Ordering::Relaxed);
    }

    /// Sockets inactive this long are closed; `None` never.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Changes `idle_timeout`; sockets waiting on the old deadline wake up.
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        let ms = d.map_or(0, |d| millis(d).max(1));
        self.idle_timeout_ms.store(ms, Ordering::Relaxed);
        let mut token = self.idle_changed.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Resolves when `idle_timeout` changes after this call.
    pub fn idle_changed(&self) -> WaitForCancellationFutureOwned {
        self.idle_changed.lock().unwrap_or_else(|e| e.into_inner()).clone().cancelled_owned()
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

    /// Most sockets held at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// The settings now, as the admin API shows them.
    pub fn view(&self) -> RuntimeView {
        RuntimeView {
            log_filter: self.log.current(),
            idle_after: humantime::format_duration(self.idle_after()).to_string(),
            idle_timeout: self
                .idle_timeout()
                .map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string()),
            balance: balance_name(self.balance()),
            max_connections: self.max_connections(),
        }
    }

    /// Validates a whole patch, then applies it (all of it, or nothing when a field is invalid).
    ///
    /// # Errors
    /// [`SettingsError`] naming the first invalid field.
    pub fn apply(&self, patch: &RuntimePatch) -> Result<RuntimeView, SettingsError> {
        let idle_after = patch.idle_after.as_deref().map(config::parse_duration).transpose()?;
        if idle_after.is_some_and(|d| d.is_zero()) {
            return Err(SettingsError::Zero("idle_after must be greater than 0"));
        }
        let idle_timeout = patch.idle_timeout.as_deref().map(config::parse_optional_duration).transpose()?;
        if idle_timeout.is_some_and(|t| t.0.is_some_and(|d| d.is_zero())) {
            return Err(SettingsError::Zero("idle_timeout must be greater than 0 (or `off`)"));
        }
        let balance = patch
            .balance
            .as_deref()
            .map(|b| Balance::from_str(b, true).map_err(|_| SettingsError::Balance(b.chars().take(64).collect())))
            .transpose()?;
        if patch.max_connections == Some(0) {
            return Err(SettingsError::Zero("max_connections must be at least 1"));
        }
        if let Some(filter) = &patch.log_filter {
            self.log.set(filter)?;
        }
        if let Some(d) = idle_after {
            self.set_idle_after(d);
        }
        if let Some(t) = idle_timeout {
            self.set_idle_timeout(t.0);
        }
        if let Some(b) = balance {
            self.set_balance(b);
        }
        if let Some(n) = patch.max_connections {
            self.max_connections.store(n, Ordering::Relaxed);
        }
        Ok(self.view())
    }
}

/// Why a runtime settings change was refused (nothing of it was applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A duration that is not one.
    #[error(transparent)]
    Unit(#[from] config::UnitError),
    /// A value that must be greater than zero.
    #[error("{0}")]
    Zero(&'static str),
    /// An unknown balance mode.
    #[error("balance `{0}` is not `round-robin` or `sticky`")]
    Balance(String),
    /// A log filter that is not one.
    #[error(transparent)]
    LogFilter(#[from] crate::logging::LogFilterError),
}

/// Milliseconds, saturating (settings are validated to at most `config::MAX_DURATION`; this only
/// makes sure nothing can wrap).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn balance_name(b: Balance) -> String {
    b.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
}

/// The runtime settings of a node, as `GET /v1/runtime` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuntimeView {
    /// The log filter, in `RUST_LOG` syntax (e.g. `info,ppp=debug`).
    pub log_filter: String,
    /// `--idle-after`: a socket silent this long is inactive.
    pub idle_after: String,
    /// `--idle-timeout`: inactive sockets are closed after this long; `off` never.
    pub idle_timeout: String,
    /// `--balance`: `round-robin` or `sticky`.
    pub balance: String,
    /// `--max-connections`: sockets held at once; lowering it closes nothing.
    pub max_connections: usize,
}

/// A change of runtime settings (`PATCH /v1/runtime`): absent fields stay as they are. It travels
/// as is on `K:ch:control` with `?cluster=true`, and every node validates it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimePatch {
    /// A new log filter, in `RUST_LOG` syntax.
    #[serde(default)]
    pub log_filter: Option<String>,
    /// A new `--idle-after` (`500ms`, `10s`, `2m`).
    #[serde(default)]
    pub idle_after: Option<String>,
    /// A new `--idle-timeout` (a duration, or `off`).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// A new `--balance`: `round-robin` or `sticky`.
    #[serde(default)]
    pub balance: Option<String>,
    /// A new `--max-connections` (at least 1).
    #[serde(default)]
    pub max_connections: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_with_one_bad_field_changes_nothing() {
        let s = Settings::new(&Config::default(), Arc::new(LogFilter::detached("info")));
        let before = s.view();
        let bad =
            RuntimePatch { idle_after: Some("5s".into()), balance: Some("random".into()), ..RuntimePatch::default() };
        assert!(s.apply(&bad).unwrap_err().to_string().contains("random"));
        assert_eq!(s.view(), before);
        let good = RuntimePatch {
            idle_after: Some("5s".into()),
            idle_timeout: Some("2m".into()),
            balance: Some("sticky".into()),
            max_connections: Some(7),
            log_filter: Some("debug".into()),
        };
        let after = s.apply(&good).unwrap();
        assert_eq!((after.idle_after.as_str(), after.idle_timeout.as_str()), ("5s", "2m"));
        assert_eq!((after.balance.as_str(), after.max_connections, after.log_filter.as_str()), ("sticky", 7, "debug"));
    }
}
