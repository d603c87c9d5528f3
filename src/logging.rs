//! Logging: `tracing` with a filter (`RUST_LOG` syntax) that the admin API can change at run time.

use std::sync::Mutex;

use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Changes the process's log filter.
type Reload = Box<dyn Fn(EnvFilter) -> Result<(), LogFilterError> + Send + Sync>;

/// Why a log filter could not be set (an operator's input: `PATCH /v1/runtime`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    /// Not a filter `RUST_LOG` would take.
    #[error("log filter `{filter}` is not valid: {reason}")]
    Invalid {
        /// What was written.
        filter: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The subscriber refused the new filter.
    #[error("could not change the log filter: {0}")]
    Reload(String),
}

/// The log filter of the process: what it is now, and how to change it.
pub struct LogFilter {
    /// The filter in force, as written.
    current: Mutex<String>,
    /// Swaps the filter of the installed subscriber; `None` when no subscriber of ours is
    /// installed (a node embedded in tests or another program): the filter is then only kept.
    reload: Option<Reload>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter").field("current", &self.current()).finish()
    }
}

impl LogFilter {
    /// A filter that is only kept, for a node whose process installed its own subscriber.
    pub fn detached(filter: &str) -> Self {
        Self { current: Mutex::new(filter.to_owned()), reload: None }
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the filter.
    ///
    /// # Errors
    /// A message when `filter` is not valid `RUST_LOG` syntax; nothing changes then.
    pub fn set(&self, filter: &str) -> Result<(), LogFilterError> {
        let parsed = parse(filter)?;
        if let Some(reload) = &self.reload {
            reload(parsed)?;
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_owned();
        tracing::info!(filter, "log filter changed");
        Ok(())
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LogFilterError> {
    // tracing-subscriber's directive parser slices the text by byte and panics on some non-ASCII
    // input (0.3.23): targets, levels and field names are ASCII, so nothing else gets that far.
    if !filter.is_ascii() {
        let reason = "only ASCII (targets, levels, field names)".to_owned();
        return Err(LogFilterError::Invalid { filter: filter.chars().take(64).collect(), reason });
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LogFilterError::Invalid { filter: filter.to_owned(), reason: e.to_string() })
}

/// Installs the process's subscriber, writing to stderr in `format`, filtered by `RUST_LOG`
/// (default `info`); returns the handle that changes the filter.
pub fn init(format: LogFormat) -> LogFilter {
    let initial = std::env::var("RUST_LOG").ok().filter(|f| parse(f).is_ok()).unwrap_or_else(|| "info".to_owned());
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(parse(&initial).unwrap_or_default());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    let reload: Reload = Box::new(move |f| handle.reload(f).map_err(|e| LogFilterError::Reload(e.to_string())));
    LogFilter { current: Mutex::new(initial), reload: Some(reload) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_that_is_not_ascii_is_refused_not_a_panic() {
        // This one panicked inside tracing-subscriber's parser (found by tests/fuzz_codecs.rs).
        assert!(parse("a\u{b1} !$\u{fc3ef}\u{feff}\u{44cbf}\u{10cba8}$\u{fffd}=").is_err());
        assert!(LogFilter::detached("info").set("ppp=d\u{e9}bug").is_err());
        assert!(parse("info,ppp=debug").is_ok());
    }
}
