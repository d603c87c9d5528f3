//! The bus subscriber's connection: `SUBSCRIBE` on one server (standalone, or the primary the
//! Sentinels named), `SSUBSCRIBE` on a Redis Cluster. It ends as soon as a message may have been
//! missed, so the subscriber opens a new one (and re-reads what a lost message could have
//! changed).

use futures_util::StreamExt;
use redis::{
    ConnectionInfo, Msg, PushInfo, PushKind, RedisResult, aio::PubSubStream, cluster_async::ClusterConnection,
};
use tokio::sync::mpsc;

use super::connection::cluster_client;

/// A live subscription to the bus channels.
pub enum Subscription {
    /// `SUBSCRIBE` on one server.
    Plain(PubSubStream),
    /// `SSUBSCRIBE` on a Redis Cluster: messages arrive as RESP3 pushes.
    Sharded {
        /// The connection (kept open while the subscription lives).
        _conn: ClusterConnection,
        /// Its pushes. Unbounded as redis-rs's own pub/sub channel is: the subscriber drains it
        /// as it reads, and waits only on the bounded queue to the node's dispatcher, which only
        /// queues payloads.
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Subscription {
    /// A sharded subscription to `channels` (all in the cluster's slot) on a Redis Cluster
    /// connection of its own, from `seeds`.
    ///
    /// # Errors
    /// The cluster is unreachable, or refused the subscription.
    pub(super) async fn sharded(seeds: &[ConnectionInfo], channels: &[String]) -> RedisResult<Self> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let mut conn = cluster_client(seeds, Some(tx))?.get_async_connection().await?;
        conn.ssubscribe(channels).await?;
        Ok(Self::Sharded { _conn: conn, pushes })
    }

    /// The next message; `None` once one may have been missed: the connection was lost, or, on a
    /// Redis Cluster, any node's connection was lost (the pushes do not say which, and the one
    /// serving the bus's slot may be it) or the cluster ended the subscription (its slot moved).
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken when it is returned.
    pub async fn next(&mut self) -> Option<Msg> {
        match self {
            Self::Plain(stream) => stream.next().await,
            Self::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(message) = Msg::from_push_info(push) {
                            return Some(message);
                        }
                    }
                    PushKind::Disconnection | PushKind::SUnsubscribe => return None,
                    _ => {}
                }
            },
        }
    }
}
