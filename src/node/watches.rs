//! The node's watches: each takes one kind of news from the backend and acts on it, until the
//! drain ends the upstream streams: registry changes (reconcile the pool), runtime settings
//! changed cluster-wide, the cluster's lifecycle announcements (hand them to upstreams), and
//! commands and broadcasts from other nodes (carry them out).

use std::future::Future;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream, WatchStream, errors::BroadcastStreamRecvError};
use tracing::warn;

use super::Node;
use crate::{
    cluster::{Announcement, Inbound},
    command::Receipt,
    metrics as m,
};

impl Node {
    /// Starts every watch.
    pub(super) fn spawn_watches(&self) {
        let registry = WatchStream::from_changes(self.inner.backend.registry_changes());
        self.spawn_each(registry, |node, _| async move {
            if let Err(e) = node.reconcile().await {
                warn!(error = %e, "could not reconcile the upstream registry");
            }
        });
        let runtime = BroadcastStream::new(self.inner.backend.runtime_changes());
        self.spawn_each(runtime, |node, patch| async move {
            match patch {
                Ok(patch) => {
                    if let Err(e) = node.apply_runtime(&patch, false).await {
                        warn!(error = %e, "cluster-wide runtime settings refused");
                        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "bad_runtime_settings").increment(1);
                    }
                }
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    warn!(missed = n, "runtime settings changes came faster than they were applied");
                }
            }
        });
        if let Some(announcements) = self.inner.backend.announcements() {
            self.spawn_each(ReceiverStream::new(announcements), Node::announce);
        }
        if let Some(inbound) = self.inner.backend.inbound() {
            self.spawn_each(ReceiverStream::new(inbound), |node, inbound| async move { node.carry_out(inbound) });
        }
    }

    /// Runs `each` on every item of `items`, one at a time, until the items end or the drain
    /// ends the upstream streams (which also cuts short the item at hand).
    fn spawn_each<S, F, Fut>(&self, items: S, each: F)
    where
        S: Stream + Send + 'static,
        S::Item: Send,
        F: Fn(Node, S::Item) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let node = self.clone();
        let finish = self.inner.stream_ctx.finish.clone();
        self.inner.tracker.spawn(async move {
            let mut items = std::pin::pin!(items);
            while let Some(Some(item)) = finish.run_until_cancelled(items.next()).await {
                if finish.run_until_cancelled(each(node.clone(), item)).await.is_none() {
                    break;
                }
            }
        });
    }

    /// Hands the lifecycle events the cluster asks for (a reaped node's `closed`, this node's
    /// `resumed` `opened`) to the upstreams, like any event of a socket.
    async fn announce(self, announcement: Announcement) {
        let balancer = &self.inner.stream_ctx.balancer;
        for (event, socket) in announcement.events {
            balancer.forward(event, socket.as_deref(), None).await;
        }
        let _ = announcement.handed.send(());
    }

    /// Carries out a command or broadcast another node sent to this node's sockets.
    fn carry_out(&self, inbound: Inbound) {
        let dispatcher = &self.inner.dispatcher;
        match inbound {
            Inbound::Command { command, receipt } => {
                let answer = dispatcher
                    .execute_local(&command)
                    .unwrap_or_else(|| Receipt::unknown_socket(command.socket().unwrap_or_default()));
                let _ = receipt.send(answer);
            }
            Inbound::Broadcast(b) => {
                dispatcher.broadcast_local(&b);
            }
        }
    }
}
