//! The gRPC side: every upstream the node knows, one `Connect` stream to each, and their
//! readiness.
//!
//! - [`balancer`]: which upstream gets each inbound event (round-robin or sticky, [`balance`]),
//!   and inbound backpressure.
//! - [`pool`]: the upstreams, their queues and their state (ready, open).
//! - [`stream`]: the task that keeps one `Connect` stream open, reconnecting with [`backoff`];
//!   [`outbound`]: what the node writes on it, from the upstream's [`backlog`]; [`commands`]:
//!   what comes back (commands, receipts, acks).
//! - [`rpc`]: `ConnectBatch` first, `Connect` when the upstream does not implement it.
//! - [`window`]: the replay window: what a stream wrote and the upstream has not confirmed.
//! - [`health`]: the task that polls `grpc.health.v1.Health/Check` for readiness and liveness.

pub mod backlog;
pub mod backoff;
pub mod balance;
pub mod balancer;
pub mod commands;
pub mod health;
pub mod outbound;
pub mod pool;
pub mod rpc;
pub mod stream;
pub mod window;

/// Why an upstream URI was refused (an operator's input: `--upstream` or `POST /v1/upstreams`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Not a URI at all.
    #[error("upstream `{uri}` is not a URI: {reason}")]
    NotAUri {
        /// What was given.
        uri: String,
        /// Why it is not a URI.
        reason: String,
    },
    /// A scheme the node cannot dial.
    #[error("upstream `{0}` must start with http:// or https://")]
    Scheme(String),
    /// No host or no port.
    #[error("upstream `{0}` must name a host and a port (http://host:port)")]
    HostPort(String),
}

/// Checks that an upstream URI is one the node can dial: `http://host:port` or `https://host:port`.
///
/// # Errors
/// [`UriError`] naming the URI and what is wrong with it.
pub fn validate_uri(uri: &str) -> Result<(), UriError> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| UriError::NotAUri { uri: uri.to_owned(), reason: e.to_string() })?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(UriError::Scheme(uri.to_owned())),
    }
    if parsed.host().is_none_or(str::is_empty) || parsed.port_u16().is_none() {
        return Err(UriError::HostPort(uri.to_owned()));
    }
    Ok(())
}

/// The id an upstream gets when none is given: its `host:port`, the same on every node.
pub fn default_id(uri: &str) -> String {
    let parsed: Result<http::Uri, _> = uri.parse();
    match parsed.ok().and_then(|u| u.authority().map(|a| a.as_str().to_owned())) {
        Some(authority) => authority,
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_need_scheme_host_and_port() {
        assert!(validate_uri("http://127.0.0.1:50051").is_ok());
        assert!(validate_uri("127.0.0.1:50051").is_err());
        assert!(validate_uri("http://host").is_err());
        assert!(validate_uri("ftp://host:1").is_err());
        assert_eq!(default_id("http://echo:50051"), "echo:50051");
    }
}
