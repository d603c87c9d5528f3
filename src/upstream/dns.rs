//! Upstreams found through DNS: `dns:///name:port`, the gRPC naming form.
//!
//! The registry holds such an entry as the operator wrote it; each node expands it locally: every
//! address the name resolves to is one upstream of the pool, with the id [`member_id`]
//! (`{entry id}@{address}:{port}`, e.g. `upstream.ppp.svc.cluster.local:50051@10.1.2.3:50051`)
//! and the URI `http://{address}:{port}`. [`run`], one task per entry, resolves the name at once
//! and then every `--dns-interval`, and hands each new set to the node, which starts the
//! addresses that joined and removes those that left (their streams end as a removed upstream's
//! do). A failed resolution keeps the last known set (logged, `last_error`, and counted in
//! `ppp_dns_resolve_failures_total`); an answer without addresses (no records, `NXDOMAIN`) is an
//! empty set.
//!
//! The resolver reads `/etc/resolv.conf` (name servers, search domains, `ndots`) and
//! `/etc/hosts`, as getaddrinfo would, so a Kubernetes pod's short names work; answers are cached
//! at most one `--dns-interval`. Tests point it at a DNS server of their own with
//! `PPP_TEST_DNS_SERVER=ip:port` (test-only, like the other `PPP_TEST_*` knobs).

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::{NetError, runtime::TokioRuntimeProvider},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;

/// What every `dns:` URI starts with.
const SCHEME: &str = "dns:";
/// The form the node takes: no authority (the system's resolver), then the name and the port.
const PREFIX: &str = "dns:///";
/// Longest one resolution may take, search domains and retries included.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most addresses taken from one answer (each is a stream, a health task and a queue).
pub const MAX_ADDRESSES: usize = 256;
/// The test-only knob that replaces the system's name servers with one.
const TEST_SERVER: &str = "PPP_TEST_DNS_SERVER";

/// Why a `dns:` URI is not one the node takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsUriError {
    /// `dns://authority/…`: a chosen DNS server.
    #[error(
        "upstream `{0}`: dns://SERVER/… (a chosen DNS server) is not supported: write dns:///name:port, \
         resolved with the system's resolver"
    )]
    Authority(String),
    /// Not `dns:///name:port`.
    #[error("upstream `{0}` must be dns:///name:port (a DNS name, `:`, a port)")]
    Form(String),
}

/// A `dns:///name:port` upstream: the name to resolve and the port of every address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsTarget {
    /// The DNS name, as written (a trailing `.` makes it absolute: no search domains).
    pub name: String,
    /// The port every address is dialled on.
    pub port: u16,
}

impl DnsTarget {
    /// Whether `uri` is a `dns:` URI (well formed or not).
    pub fn is_dns(uri: &str) -> bool {
        uri.get(..SCHEME.len()).is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
    }

    /// Parses `dns:///name:port`.
    ///
    /// # Errors
    /// [`DnsUriError`] naming the URI: `dns://server/…`, or not a name and a port.
    pub fn parse(uri: &str) -> Result<Self, DnsUriError> {
        let form = || DnsUriError::Form(uri.to_owned());
        let Some(rest) = uri.strip_prefix(PREFIX) else {
            if uri.starts_with("dns://") {
                return Err(DnsUriError::Authority(uri.to_owned()));
            }
            return Err(form());
        };
        let (name, port) = rest.rsplit_once(':').ok_or_else(form)?;
        let port: u16 = port.parse().map_err(|_| form())?;
        if port.to_string() != rest[name.len() + 1..] || !valid_name(name) {
            return Err(form());
        }
        Ok(Self { name: name.to_owned(), port })
    }
}

impl fmt::Display for DnsTarget {
    /// `name:port`: the entry's default id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, an optional final dot.
fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)))
}

/// The pool id of one address of a `dns:///` entry.
pub fn member_id(entry_id: &str, addr: SocketAddr) -> String {
    format!("{entry_id}@{addr}")
}

/// The URI one address of a `dns:///` entry is dialled at (cleartext, as `http://`).
pub fn member_uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The resolver every `dns:///` entry of the node uses: the system's configuration, or the test
/// server of `PPP_TEST_DNS_SERVER`; answers are cached at most `interval`.
///
/// # Errors
/// The system's configuration cannot be read.
pub fn resolver(interval: Duration) -> Result<TokioResolver, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match test_server() {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let name_server = NameServerConfig::new(server.ip(), true, vec![udp]);
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![name_server]), provider)
        }
        None => TokioResolver::builder(provider)?,
    };
    let options = builder.options_mut();
    options.positive_max_ttl = Some(interval);
    options.negative_max_ttl = Some(interval);
    builder.build()
}

/// `PPP_TEST_DNS_SERVER`, when a test sets it.
fn test_server() -> Option<SocketAddr> {
    std::env::var(TEST_SERVER).ok()?.parse().ok()
}

/// Resolves the target once: its addresses (an empty set when the name has none).
///
/// # Errors
/// Why the name could not be resolved (a timeout, a server failure).
pub async fn resolve(resolver: &TokioResolver, target: &DnsTarget) -> Result<BTreeSet<SocketAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, resolver.lookup_ip(target.name.as_str())).await {
        Ok(Ok(answer)) => Ok(answer.iter().take(MAX_ADDRESSES).map(|ip| SocketAddr::new(ip, target.port)).collect()),
        // An answer, and it says there is no address: the set is empty.
        Ok(Err(e)) if e.is_no_records_found() => Ok(BTreeSet::new()),
        Ok(Err(e)) => Err(format!("resolving {}: {e}", target.name)),
        Err(_) => Err(format!("resolving {}: no answer within {RESOLVE_TIMEOUT:?}", target.name)),
    }
}

/// What the admin API shows of a `dns:///` entry on this node.
#[derive(Debug, Default)]
pub struct DnsState {
    /// The last resolution error, cleared by the next success.
    last_error: Mutex<Option<String>>,
}

impl DnsState {
    /// The last resolution error, if the last resolution failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes the outcome of a resolution (or why the entry cannot be resolved at all).
    pub fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// One `dns:///` entry's resolution task: what [`DnsTask::run`] needs.
#[derive(Debug)]
pub struct DnsTask {
    /// The entry's id, for logs and metrics.
    pub id: String,
    /// What to resolve.
    pub target: DnsTarget,
    /// The node's resolver (a cheap `Clone` handle).
    pub resolver: TokioResolver,
    /// `--dns-interval`.
    pub interval: Duration,
    /// What the admin API shows of the entry.
    pub state: Arc<DnsState>,
    /// Cancelled when the entry is removed from the registry (or re-pointed).
    pub stop: CancellationToken,
    /// Cancelled when the node drains.
    pub finish: CancellationToken,
}

impl DnsTask {
    /// Resolves the target now and then every interval, handing every new set to `apply`, until
    /// `stop` (the entry was removed: `apply` then gets the empty set, so every address leaves)
    /// or `finish` (the node drains: the streams end with the drain, nothing is removed).
    pub async fn run<F, Fut>(self, mut apply: F)
    where
        F: FnMut(BTreeSet<SocketAddr>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let failures = metrics::counter!(m::DNS_RESOLVE_FAILURES);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known: Option<BTreeSet<SocketAddr>> = None;
        loop {
            let resolved = tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.finish.cancelled() => return,
                r = async { ticker.tick().await; resolve(&self.resolver, &self.target).await } => r,
            };
            match resolved {
                Ok(set) => {
                    self.state.set_last_error(None);
                    if known.as_ref() != Some(&set) {
                        info!(upstream = %self.id, addresses = ?set, "dns upstream resolved");
                        known = Some(set.clone());
                        apply(set).await;
                    }
                }
                Err(e) => {
                    warn!(upstream = %self.id, error = %e, "dns upstream not resolved: keeping the last known addresses");
                    failures.increment(1);
                    self.state.set_last_error(Some(e));
                }
            }
        }
        apply(BTreeSet::new()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_authorityless_form_is_taken() {
        let t = DnsTarget::parse("dns:///upstream.ppp.svc.cluster.local:50051").unwrap();
        assert_eq!((t.name.as_str(), t.port), ("upstream.ppp.svc.cluster.local", 50051));
        assert_eq!(t.to_string(), "upstream.ppp.svc.cluster.local:50051");
        assert!(DnsTarget::parse("dns:///absolute.name.:1").is_ok());
        assert!(matches!(DnsTarget::parse("dns://8.8.8.8/name:1"), Err(DnsUriError::Authority(_))));
        for bad in ["dns:name:1", "dns:///name", "dns:///:1", "dns:///na me:1", "dns:///a..b:1", "dns:///a:+1"] {
            assert!(matches!(DnsTarget::parse(bad), Err(DnsUriError::Form(_))), "{bad}");
        }
        assert!(DnsTarget::is_dns("DNS:///x:1") && !DnsTarget::is_dns("http://x:1"));
        let addr: SocketAddr = "10.1.2.3:50051".parse().unwrap();
        assert_eq!(member_id("up:50051", addr), "up:50051@10.1.2.3:50051");
        assert_eq!(member_uri("[::1]:7".parse().unwrap()), "http://[::1]:7");
    }
}
