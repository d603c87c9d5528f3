//! `--balance`: how inbound events are spread over upstreams. A leaf of its own, so the
//! configuration, the runtime settings and the balancer all name it without depending on each
//! other.

/// How inbound events are spread over upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each message to the next ready upstream, by a (cluster-wide) counter.
    RoundRobin,
    /// A socket is bound to one upstream when it opens, rebound only when that upstream is gone.
    Sticky,
}
