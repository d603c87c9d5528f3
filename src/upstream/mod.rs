//! The gRPC side: every upstream the node knows, one `Connect` stream to each, and their
//! readiness.
//!
//! - [`balancer`]: which upstream gets each inbound event (round-robin or sticky, [`balance`]),
//!   and inbound backpressure.
//! - [`pool`]: the upstreams, their queues ([`queue`]) and their state (ready, open).
//! - [`stream`]: the task that keeps one `Connect` stream open, reconnecting with [`backoff`];
//!   [`outbound`]: what the node writes on it, from the upstream's [`backlog`]; [`commands`]:
//!   what comes back (commands, receipts, acks).
//! - [`rpc`]: `ConnectBatch` first, `Connect` when the upstream does not implement it.
//! - [`window`]: the replay window: what a stream wrote and the upstream has not confirmed.
//! - [`health`]: the task that polls `grpc.health.v1.Health/Check` for readiness and liveness.
//! - [`tls`]: what `https://` upstreams are dialled with (roots, client certificate).
//! - [`dns`]: `dns:///name:port` entries, each address of the name one upstream.

pub mod backlog;
pub mod backoff;
pub mod balance;
pub mod balancer;
pub mod commands;
pub mod dns;
pub mod health;
pub mod outbound;
pub mod pool;
pub mod queue;
pub mod rpc;
pub mod stream;
pub mod tls;
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
    #[error("upstream `{0}` must start with http://, https:// or dns:///")]
    Scheme(String),
    /// No host or no port.
    #[error("upstream `{0}` must name a host and a port (http://host:port)")]
    HostPort(String),
    /// A `dns:` URI of a form the node does not take.
    #[error(transparent)]
    Dns(#[from] dns::DnsUriError),
}

/// Checks that an upstream URI is one the node can dial: `http://host:port`, `https://host:port`
/// or `dns:///name:port`.
///
/// # Errors
/// [`UriError`] naming the URI and what is wrong with it.
pub fn validate_uri(uri: &str) -> Result<(), UriError> {
    if dns::DnsTarget::is_dns(uri) {
        return dns::DnsTarget::parse(uri).map(drop).map_err(UriError::from);
    }
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

/// A gRPC status as an operator reads it: its message, then the causes under it (a failed
/// connection's status says only "transport error"; the refused connection or the TLS alert is
/// in its sources). At most a few causes, each said once.
pub fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The id an upstream gets when none is given: its `host:port` (a `dns:///` entry's
/// `name:port`), the same on every node.
pub fn default_id(uri: &str) -> String {
    if let Ok(target) = dns::DnsTarget::parse(uri) {
        return target.to_string();
    }
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
        assert!(validate_uri("dns:///upstream.ppp.svc.cluster.local:50051").is_ok());
        assert_eq!(default_id("dns:///upstream.ppp.svc.cluster.local:50051"), "upstream.ppp.svc.cluster.local:50051");
        let authority = validate_uri("dns://10.0.0.10/upstream:50051").unwrap_err().to_string();
        assert!(authority.contains("not supported") && authority.contains("dns:///name:port"), "{authority}");
        assert!(validate_uri("dns:///upstream").is_err());
    }
}
