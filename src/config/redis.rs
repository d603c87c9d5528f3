//! `--redis-mode`: how the node reaches Redis, and the checks `--redis` must pass for it.

use clap::ValueEnum;

use super::{Config, ConfigError};

/// How `--redis` is reached (DESIGN §4, "Redis topologies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum RedisMode {
    /// One server: `--redis` is its URL.
    #[default]
    Standalone,
    /// A primary and its replicas watched by Redis Sentinel: `--redis` is one or more Sentinels,
    /// `--redis-master-name` the name they monitor the primary under; the node follows failovers.
    Sentinel,
    /// A Redis Cluster: `--redis` is one or more of its nodes (seeds); pub/sub is sharded.
    Cluster,
}

impl RedisMode {
    /// The flag's value, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
        }
    }
}

/// Checks `--redis` against `--redis-mode`: standalone takes exactly one URL, sentinel and
/// cluster one or more; every URL is `redis://` or `rediss://`, all with the same scheme.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    let urls = &config.redis;
    let mode = config.redis_mode;
    if urls.is_empty() {
        if mode != RedisMode::Standalone {
            return invalid(format!("--redis-mode {} needs at least one --redis URL", mode.as_str()));
        }
        return Ok(());
    }
    if mode == RedisMode::Standalone && urls.len() > 1 {
        let n = urls.len();
        return invalid(format!(
            "--redis-mode standalone takes exactly one --redis URL, not {n} (sentinel or cluster take several)"
        ));
    }
    for url in urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return invalid(format!("--redis {}: not a redis:// or rediss:// URL", super::redact_url(url)));
        }
    }
    let tls = urls[0].starts_with("rediss://");
    if urls.iter().any(|u| u.starts_with("rediss://") != tls) {
        return invalid("--redis: mixes redis:// and rediss:// URLs".to_owned());
    }
    if mode == RedisMode::Sentinel && !super::valid_name(&config.redis_master_name) {
        return invalid("--redis-master-name may hold only letters, digits, '-', '_' and '.'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mode: RedisMode, urls: &[&str]) -> Result<(), String> {
        let config =
            Config { redis_mode: mode, redis: urls.iter().map(|u| (*u).to_owned()).collect(), ..Config::default() };
        validate(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn each_mode_takes_the_urls_it_can_use() {
        assert!(check(RedisMode::Standalone, &[]).is_ok());
        assert!(check(RedisMode::Standalone, &["redis://a:6379"]).is_ok());
        assert!(check(RedisMode::Standalone, &["redis://a", "redis://b"]).unwrap_err().contains("exactly one"));
        assert!(check(RedisMode::Sentinel, &[]).unwrap_err().contains("at least one"));
        assert!(check(RedisMode::Cluster, &[]).unwrap_err().contains("at least one"));
        assert!(check(RedisMode::Sentinel, &["redis://s1:26379", "redis://s2:26379"]).is_ok());
        assert!(check(RedisMode::Cluster, &["redis://c1", "http://c2"]).unwrap_err().contains("not a redis://"));
        assert!(check(RedisMode::Cluster, &["redis://c1", "rediss://c2"]).unwrap_err().contains("mixes"));
    }
}
