//! The three Redis topologies (`--redis-mode`, DESIGN §4): how the node opens the connection its
//! tasks share ([`RedisConn`]), how it opens the bus subscriber's ([`Subscription`]), and which
//! command publishes on the bus.
//!
//! - standalone: the one server at `--redis`.
//! - sentinel: the primary the Sentinels (`--redis`, repeatable) name for `--redis-master-name`,
//!   asked again at every reconnect (after any error, a demoted primary's `READONLY` included),
//!   so the node follows failovers. redis-rs's `SentinelClient` asks the Sentinels in turn and
//!   checks the primary's `ROLE` before it hands it out. Credentials, database and TLS in the URLs
//!   are used for the Sentinels and for the primary alike.
//! - cluster: a Redis Cluster from its seed nodes (`--redis`, repeatable), through redis-rs's
//!   cluster client, which routes each command to its slot's primary and follows `MOVED`, `ASK` and
//!   failovers itself. Every key of one `--cluster` carries its name as a hash tag, so every
//!   command, pipeline and Lua script touches one slot. Pub/sub is sharded (`SSUBSCRIBE`,
//!   `SPUBLISH`), on a RESP3 connection of its own whose pushes carry the messages.

use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsMode,
    cluster::ClusterClient,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};

use super::{
    connection::{RedisConn, cluster_client},
    subscription::Subscription,
};
use crate::{cluster::BackendError, config::RedisMode};

/// Where Redis is and how to reach it.
pub enum Topology {
    /// One server.
    Standalone(redis::Client),
    /// The primary the Sentinels name (a lock: `SentinelClient` caches its Sentinel connections).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// A Redis Cluster.
    Cluster {
        /// The client of the shared connection.
        commands: ClusterClient,
        /// The seed nodes, for the subscriber's own client (RESP3, with a push channel).
        seeds: Vec<ConnectionInfo>,
    },
}

impl Topology {
    /// The topology of `--redis-mode` over the `--redis` URLs (checked once at start-up; nothing
    /// is connected yet).
    ///
    /// # Errors
    /// [`BackendError::Invalid`] when a URL is not a Redis URL.
    pub fn open(mode: RedisMode, urls: &[String], master_name: &str) -> Result<Self, BackendError> {
        // `rediss://` goes through rustls, which needs a process-wide crypto provider; `Err`
        // means one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let invalid = |e: redis::RedisError| BackendError::Invalid(format!("--redis: {e}"));
        let infos = urls.iter().map(|u| u.as_str().into_connection_info()).collect::<RedisResult<Vec<_>>>();
        let infos = infos.map_err(invalid)?;
        let Some(first) = infos.first().cloned() else {
            return Err(BackendError::Invalid("--redis: no URL".to_owned()));
        };
        Ok(match mode {
            RedisMode::Standalone => Self::Standalone(redis::Client::open(first).map_err(invalid)?),
            RedisMode::Sentinel => {
                let primary = primary_info(&first);
                let client = SentinelClient::build(infos, master_name, Some(primary), SentinelServerType::Master);
                Self::Sentinel(tokio::sync::Mutex::new(client.map_err(invalid)?))
            }
            RedisMode::Cluster => {
                let commands = cluster_client(&infos, None).map_err(invalid)?;
                Self::Cluster { commands, seeds: infos }
            }
        })
    }

    /// Opens a connection for commands.
    ///
    /// # Errors
    /// Redis (or every Sentinel, or every seed node) is unreachable.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        match self {
            Self::Standalone(client) => client.get_multiplexed_async_connection().await.map(RedisConn::Single),
            Self::Sentinel(sentinels) => {
                let primary = sentinels.lock().await.async_get_client().await?;
                primary.get_multiplexed_async_connection().await.map(RedisConn::Single)
            }
            Self::Cluster { commands, .. } => commands.get_async_connection().await.map(RedisConn::Cluster),
        }
    }

    /// Opens a connection of its own for the bus and subscribes it to `channels`.
    ///
    /// # Errors
    /// Redis is unreachable, or refused the subscription.
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<Subscription> {
        let client = match self {
            Self::Standalone(client) => client.clone(),
            Self::Sentinel(sentinels) => sentinels.lock().await.async_get_client().await?,
            Self::Cluster { seeds, .. } => return Subscription::sharded(seeds, channels).await,
        };
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channels).await?;
        Ok(Subscription::Plain(pubsub.into_on_message()))
    }

    /// The command that publishes `payload` on the bus channel `channel`: `SPUBLISH` on a Redis
    /// Cluster (the channel lives in the cluster's slot), `PUBLISH` elsewhere. Its answer is how
    /// many subscribers received it.
    pub fn publish(&self, channel: &str, payload: Vec<u8>) -> redis::Cmd {
        let mut cmd = redis::cmd(self.publish_command());
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// `SPUBLISH` on a Redis Cluster, `PUBLISH` elsewhere.
    pub fn publish_command(&self) -> &'static str {
        if matches!(self, Self::Cluster { .. }) { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// How to reach the primary the Sentinels name: with the first URL's credentials, database and
/// TLS (the Sentinels only say where it is).
fn primary_info(first: &ConnectionInfo) -> SentinelNodeConnectionInfo {
    let info = SentinelNodeConnectionInfo::default().set_redis_connection_info(first.redis_settings().clone());
    match first.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => info.set_tls_mode(TlsMode::Insecure),
        ConnectionAddr::TcpTls { .. } => info.set_tls_mode(TlsMode::Secure),
        _ => info,
    }
}
