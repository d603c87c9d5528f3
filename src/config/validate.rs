//! Checking the settings once at start-up: what parses but cannot work gets a clear message.

use super::{Config, ConfigError, MAX_FRAME_LIMIT, valid_name};

impl Config {
    /// Checks settings that parse but cannot work. Called once at start-up.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.max_frame == 0 || self.max_frame > MAX_FRAME_LIMIT {
            return invalid("--max-frame must be between 1 byte and 256MiB");
        }
        if self.max_connections == 0 {
            return invalid("--max-connections must be at least 1");
        }
        if self.write_queue == 0 || self.write_queue > 1 << 20 {
            return invalid("--write-queue must be between 1 and 1048576");
        }
        if self.write_queue_bytes == 0 {
            return invalid("--write-queue-bytes must be at least 1");
        }
        for (name, d) in [
            ("--idle-after", self.idle_after),
            ("--health-interval", self.health_interval),
            ("--node-ttl", self.node_ttl),
            ("--resync-interval", self.resync_interval),
            ("--dns-interval", self.dns_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be greater than 0")));
            }
        }
        if self.idle_timeout.0.is_some_and(|t| t.is_zero()) {
            return invalid("--idle-timeout must be greater than 0 (or `off`)");
        }
        if self.node_id.as_deref().is_some_and(|id| !valid_name(id)) {
            return invalid("--node-id may hold only letters, digits, '-', '_' and '.'");
        }
        if !valid_name(&self.cluster) || !valid_name(&self.redis_prefix) {
            return invalid("--cluster and --redis-prefix may hold only letters, digits, '-', '_' and '.'");
        }
        self.validate_edges()
    }

    /// [`Config::validate`] for the edges: upstream URIs and TLS, Redis, downstream TLS and the
    /// PROXY protocol, the admin listener.
    fn validate_edges(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        for uri in &self.upstream {
            crate::upstream::validate_uri(uri).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.upstream_cert.is_some() != self.upstream_key.is_some() {
            return invalid("--upstream-cert and --upstream-key go together: set both, or neither");
        }
        super::redis::validate(self)?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("--tls-cert and --tls-key go together: give both, or neither for plain TCP");
        }
        if self.proxy_protocol && self.proxy_from.is_empty() {
            return invalid("--proxy-protocol needs at least one --proxy-from range");
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token.is_none() && !self.admin_insecure {
            return invalid(
                "the admin listener is not loopback and no --admin-token is set \
                 (set one, or pass --admin-insecure to accept the risk)",
            );
        }
        Ok(())
    }
}
