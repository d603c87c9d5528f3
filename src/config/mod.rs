//! The node's one typed configuration.
//!
//! Every setting is a flag, an environment variable `PPP_<NAME>` and a key of an optional TOML file
//! (`--config`). Precedence: flags, then environment, then file, then defaults. File keys are the
//! flag names (`max-frame = "1MiB"`; `max_frame` is accepted too); an unknown key is refused with its
//! name. The file is applied by handing its values to the same clap parser the flags use, so a value
//! is parsed and validated exactly one way wherever it comes from.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// What can be wrong with the configuration. Always fatal at start-up, with a message naming the
/// setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment variable could not be parsed (clap's own message, with usage).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// The TOML file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is not valid TOML.
    #[error("config file {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The TOML file has a key that is not a setting.
    #[error("config file {path}: unknown key `{key}` (keys are the flag names, e.g. `max-frame`)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A key of the TOML file holds a value of the wrong shape or that does not parse.
    #[error("config file {path}: key `{key}`: {message}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// Settings that parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The command line: the node's settings, and an optional subcommand.
#[derive(Debug, Parser)]
#[command(name = "ppp", version, about = "PersistentParadoxPlex: an edge tier for raw TCP")]
pub struct Cli {
    /// What to run; without a subcommand, a node.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The node's settings (valid before or after the subcommand).
    #[command(flatten)]
    pub config: Config,
}

/// What `ppp` runs besides a node (its subcommands); named apart from the upstreams' commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Action {
    /// Run a standalone node together with the example echo upstream, in one process.
    Demo,
    /// Exit 0 when the node whose admin API is at `--admin-listen` is ready (`GET /readyz`), 1
    /// otherwise: the container health check.
    Ready,
    /// Start the graceful drain of the node whose admin API is at `--admin-listen` (`POST
    /// /v1/drain`, with `--admin-token`); exit 0 once it has begun, 1 otherwise: Kubernetes'
    /// `preStop` hook.
    Drain,
}

mod load;
mod redis;
mod units;
mod validate;

pub use self::{
    load::{load, load_from},
    redis::RedisMode,
    units::{MAX_DURATION, UnitError, parse_duration, parse_optional_duration, parse_size},
};
pub use crate::{downstream::framing::Framing, upstream::balance::Balance};

/// `--idle-timeout`: a duration, or off. (A newtype because clap reads a plain `Option` field as
/// "flag may be absent", not as "value may be off".)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdleTimeout(pub Option<Duration>);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of a node. Defaults are those of DESIGN §2–§6.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address the downstream TCP listener binds.
    #[arg(long, env = "PPP_LISTEN", default_value = "0.0.0.0:7999", global = true)]
    pub listen: SocketAddr,

    /// Address the admin HTTP API binds.
    #[arg(long, env = "PPP_ADMIN_LISTEN", default_value = "127.0.0.1:8000", global = true)]
    pub admin_listen: SocketAddr,

    /// Bearer token required by the admin API (all routes but /healthz and /readyz).
    #[arg(long, env = "PPP_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,

    /// Allow a non-loopback admin listener without a token (logged as a warning).
    #[arg(long, env = "PPP_ADMIN_INSECURE", global = true)]
    pub admin_insecure: bool,

    /// Redis URL (`redis://` or `rediss://`); with `--redis-mode sentinel` the Sentinels', with
    /// `cluster` seed nodes' (repeatable; comma-separated in the environment). Without it the
    /// node runs alone.
    #[arg(long, env = "PPP_REDIS", value_delimiter = ',', hide_env_values = true, global = true)]
    pub redis: Vec<String>,

    /// How `--redis` is reached: one server, a primary found through Sentinels, or a Redis Cluster.
    #[arg(long, env = "PPP_REDIS_MODE", value_enum, default_value = "standalone", global = true)]
    pub redis_mode: RedisMode,

    /// The name the Sentinels monitor the primary under (`--redis-mode sentinel`).
    #[arg(long, env = "PPP_REDIS_MASTER_NAME", default_value = "mymaster", global = true)]
    pub redis_master_name: String,

    /// First part of every Redis key.
    #[arg(long, env = "PPP_REDIS_PREFIX", default_value = "ppp", global = true)]
    pub redis_prefix: String,

    /// Cluster name: second part of every Redis key, sent in `NodeHello.cluster`.
    #[arg(long, env = "PPP_CLUSTER", default_value = "default", global = true)]
    pub cluster: String,

    /// This node's id (default: host name and a short random suffix).
    #[arg(long, env = "PPP_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// Upstream gRPC URI (repeatable; comma-separated in the environment).
    #[arg(long, env = "PPP_UPSTREAM", value_delimiter = ',', global = true)]
    pub upstream: Vec<String>,

    /// Extra CA certificate(s), PEM, trusted for `https://` upstreams besides the system's roots.
    #[arg(long, env = "PPP_UPSTREAM_CA", global = true)]
    pub upstream_ca: Option<PathBuf>,

    /// Client certificate chain, PEM, presented to `https://` upstreams (mTLS; with --upstream-key).
    #[arg(long, env = "PPP_UPSTREAM_CERT", global = true)]
    pub upstream_cert: Option<PathBuf>,

    /// Private key, PEM, of --upstream-cert.
    #[arg(long, env = "PPP_UPSTREAM_KEY", global = true)]
    pub upstream_key: Option<PathBuf>,

    /// How often `dns:///name:port` upstreams are resolved again.
    #[arg(long, env = "PPP_DNS_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub dns_interval: Duration,

    /// How inbound messages are spread over upstreams.
    #[arg(long, env = "PPP_BALANCE", value_enum, default_value = "round-robin", global = true)]
    pub balance: Balance,

    /// How socket bytes are cut into messages.
    #[arg(long, env = "PPP_FRAMING", value_enum, default_value = "lines", global = true)]
    pub framing: Framing,

    /// Largest inbound message (e.g. `1MiB`, `65536`); a longer frame closes its socket.
    #[arg(long, env = "PPP_MAX_FRAME", default_value = "1MiB", value_parser = parse_size, global = true)]
    pub max_frame: usize,

    /// Most sockets held at once; beyond it new sockets are accepted and closed at once.
    #[arg(long, env = "PPP_MAX_CONNECTIONS", default_value_t = 100_000, global = true)]
    pub max_connections: usize,

    /// Capacity of each socket's outbound queue, in messages; a full queue closes the socket.
    #[arg(long, env = "PPP_WRITE_QUEUE", default_value_t = 1024, global = true)]
    pub write_queue: usize,

    /// Capacity of each socket's outbound queue, in bytes; whichever bound is hit first closes
    /// the socket as a slow consumer.
    #[arg(long, env = "PPP_WRITE_QUEUE_BYTES", default_value = "4MiB", value_parser = parse_size, global = true)]
    pub write_queue_bytes: usize,

    /// A socket silent for this long is inactive.
    #[arg(long, env = "PPP_IDLE_AFTER", default_value = "60s", value_parser = parse_duration, global = true)]
    pub idle_after: Duration,

    /// Close sockets inactive this long (`off` to never).
    #[arg(long, env = "PPP_IDLE_TIMEOUT", default_value = "off", value_parser = parse_optional_duration, global = true)]
    pub idle_timeout: IdleTimeout,

    /// How often each upstream's gRPC health is checked.
    #[arg(long, env = "PPP_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration, global = true)]
    pub health_interval: Duration,

    /// A node whose heartbeat is older than this is dead (cluster mode).
    #[arg(long, env = "PPP_NODE_TTL", default_value = "10s", value_parser = parse_duration, global = true)]
    pub node_ttl: Duration,

    /// How often the node repairs its socket set in Redis (cluster mode).
    #[arg(long, env = "PPP_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration, global = true)]
    pub resync_interval: Duration,

    /// How long a graceful drain may take before remaining sockets are closed at once.
    #[arg(long, env = "PPP_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub drain_timeout: Duration,

    /// Approximate length `K:events` is trimmed to (cluster mode).
    #[arg(long, env = "PPP_EVENTS_MAX", default_value_t = 100_000, global = true)]
    pub events_max: u64,

    /// PEM certificate chain (leaf first) for downstream TLS; with `--tls-key`. Re-read when it
    /// changes and on SIGHUP.
    #[arg(long, env = "PPP_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "PPP_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Every socket starts with a PROXY protocol header (v1 or v2) from a load balancer.
    #[arg(long, env = "PPP_PROXY_PROTOCOL", global = true)]
    pub proxy_protocol: bool,

    /// Peers (CIDR) allowed to send a PROXY header (repeatable; comma-separated in the
    /// environment); a socket from any other peer is closed.
    #[arg(
        long,
        env = "PPP_PROXY_FROM",
        value_delimiter = ',',
        default_values = crate::downstream::proxy_header::DEFAULT_PROXY_FROM,
        global = true
    )]
    pub proxy_from: Vec<IpNet>,

    /// Optional TOML file with any of these settings (keys are the flag names).
    #[arg(long, env = "PPP_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log output format; the filter comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "PPP_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// Secrets (the admin token, a password in the Redis URL) never reach logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("admin_insecure", &self.admin_insecure)
            .field("redis", &self.redis.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("redis_mode", &self.redis_mode)
            .field("redis_master_name", &self.redis_master_name)
            .field("redis_prefix", &self.redis_prefix)
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("upstream", &self.upstream)
            .field("upstream_ca", &self.upstream_ca)
            .field("upstream_cert", &self.upstream_cert)
            .field("upstream_key", &self.upstream_key)
            .field("dns_interval", &self.dns_interval)
            .field("balance", &self.balance)
            .field("framing", &self.framing)
            .field("max_frame", &self.max_frame)
            .field("max_connections", &self.max_connections)
            .field("write_queue", &self.write_queue)
            .field("write_queue_bytes", &self.write_queue_bytes)
            .field("idle_after", &self.idle_after)
            .field("idle_timeout", &self.idle_timeout)
            .field("health_interval", &self.health_interval)
            .field("node_ttl", &self.node_ttl)
            .field("resync_interval", &self.resync_interval)
            .field("drain_timeout", &self.drain_timeout)
            .field("events_max", &self.events_max)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("proxy_from", &self.proxy_from)
            .field("config", &self.config)
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Default for Config {
    /// The defaults, exactly as an empty command line gives them, ignoring the environment.
    fn default() -> Self {
        load::parse_from_no_env().expect("the defaults parse")
    }
}

impl Config {
    /// The node id: the configured one, or the host name and a short random suffix.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(default_node_id)
    }
}

/// The upper bound of `--max-frame`: one frame must fit comfortably in memory and in a gRPC message.
pub const MAX_FRAME_LIMIT: usize = 256 << 20;

/// Node ids, cluster names and prefixes become parts of Redis keys: keep them to a safe alphabet.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The host name (from `HOSTNAME` or `/etc/hostname`) and a short random suffix.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_the_human_way() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_optional_duration("off"), Ok(IdleTimeout(None)));
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("redis://:hunter2@redis:6379/0"), "redis://<redacted>@redis:6379/0");
        let config = Config { admin_token: Some("hunter2".into()), ..Config::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
