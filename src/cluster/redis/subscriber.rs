//! The bus subscriber: this node's channel, the broadcast channel and the control channel, on a
//! dedicated connection ([`Subscription`]), subscribed again after every reconnect.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{
    RESUBSCRIBE_PAUSE, RedisBackend,
    bus::{self, BusMessage},
    connection::timed,
    subscription::Subscription,
};
use crate::{cluster::Inbound, command::Receipt, metrics as m};

impl RedisBackend {
    /// Listens on this node's channel, the broadcast channel and the control channel, on a
    /// dedicated connection, subscribing again after every reconnect (and after a failover, on
    /// the new primary).
    pub(super) async fn subscribe(self: Arc<Self>) {
        let control = self.keys.control_channel.clone();
        let channels = [self.keys.node_channel(&self.node), self.keys.broadcast_channel.clone(), control.clone()];
        while !self.bus_stop.is_cancelled() {
            match timed(self.shared.topology().subscribe(&channels)).await {
                Ok(mut subscription) => {
                    debug!("bus subscribed");
                    // Anything may have changed while we were away: the registry and the
                    // runtime settings are read again, and the node is ready (it hears the bus)
                    // once it has caught up. (A command whose receipt was lost fails after
                    // COMMAND_TIMEOUT; a broadcast published meanwhile failed at its sender,
                    // which counted this node's subscription missing.)
                    self.registry.send_modify(|v| *v += 1);
                    match self.catch_up_runtime().await {
                        Ok(()) => {
                            self.subscribed.send_replace(true);
                            self.listen(&mut subscription, &control).await;
                        }
                        Err(e) => warn!(error = %e, "could not read the runtime settings"),
                    }
                    self.subscribed.send_replace(false);
                    if self.bus_stop.is_cancelled() {
                        return;
                    }
                    warn!("bus connection lost; subscribing again");
                }
                Err(e) => warn!(error = %e, "bus subscribe failed"),
            }
            metrics::counter!(m::REDIS_ERRORS).increment(1);
            tokio::select! {
                () = self.bus_stop.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            }
        }
    }

    /// Handles the subscription's messages until it ends (or the node stops).
    async fn listen(self: &Arc<Self>, subscription: &mut Subscription, control: &str) {
        loop {
            let message = tokio::select! {
                () = self.bus_stop.cancelled() => return,
                m = subscription.next() => m,
            };
            let Some(message) = message else { return };
            if message.get_channel_name() == control {
                if let Err(e) = self.on_control(message.get_payload_bytes()).await {
                    // Read again once subscribed again: nothing published meanwhile is missed.
                    warn!(error = %e, "could not read the runtime settings");
                    return;
                }
                continue;
            }
            self.on_bus(message.get_payload_bytes()).await;
        }
    }

    /// Handles a message on the control channel: a runtime settings notice means "read
    /// `K:runtime`" (from any node, this one too: what it holds is the truth, the notice's patch
    /// only says what changed); anything else, even a message typed by hand in `redis-cli`,
    /// means "re-read the registry".
    ///
    /// # Errors
    /// The Redis error of reading `K:runtime`.
    async fn on_control(&self, payload: &[u8]) -> Result<(), redis::RedisError> {
        match BusMessage::decode(payload) {
            Ok(BusMessage::Runtime { origin, .. }) => {
                debug!(from = %origin, "runtime settings changed cluster-wide");
                self.catch_up_runtime().await?;
            }
            _ => self.registry.send_modify(|v| *v += 1),
        }
        Ok(())
    }

    /// Handles one bus message. Commands and broadcasts wait for room in the channel to the
    /// dispatcher (it only queues payloads, so the wait is short), which keeps their order.
    async fn on_bus(self: &Arc<Self>, payload: &[u8]) {
        let message = match BusMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "bad bus message");
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "bad_bus_message").increment(1);
                return;
            }
        };
        match message {
            BusMessage::Command { request, reply_to, command } => {
                let command = match command.into_command() {
                    Ok(command) => command,
                    Err(e) => return self.reply(request, reply_to, Receipt::failed(e.to_string())),
                };
                let (receipt, answer) = oneshot::channel();
                self.hand_inbound(Inbound::Command { command, receipt }).await;
                let this = self.clone();
                tokio::spawn(async move {
                    let receipt = answer.await.unwrap_or_else(|_| Receipt::failed("the node is stopping"));
                    this.reply(request, reply_to, receipt);
                });
            }
            BusMessage::Receipt { request, status, detail, refused } => {
                let waiting = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
                if let Some(tx) = waiting {
                    let _ = tx.send(bus::receipt_from_wire(status, detail, refused));
                }
            }
            BusMessage::Broadcast { origin, scope, selector, payload } if origin != self.node => {
                match bus::broadcast_from_wire(scope, selector, payload) {
                    Ok(b) => self.hand_inbound(Inbound::Broadcast(b)).await,
                    Err(e) => warn!(error = %e, "bad broadcast on the bus"),
                }
            }
            BusMessage::Broadcast { .. } | BusMessage::Runtime { .. } => {}
            BusMessage::Control { .. } => self.registry.send_modify(|v| *v += 1),
        }
    }

    /// Hands a command or broadcast from another node to this node's dispatcher.
    async fn hand_inbound(&self, inbound: Inbound) {
        if self.inbound.sender().send(inbound).await.is_err() {
            debug!("the node no longer takes commands from other nodes");
        }
    }

    /// Sends a receipt back to the node that asked (in the background: the bus keeps reading).
    fn reply(self: &Arc<Self>, request: u64, reply_to: String, receipt: Receipt) {
        let this = self.clone();
        tokio::spawn(async move {
            this.publish(&this.keys.node_channel(&reply_to), BusMessage::receipt(request, receipt)).await
        });
    }

    /// Publishes a bus message (`PUBLISH`, or `SPUBLISH` on a Redis Cluster); returns how many
    /// nodes received it.
    pub(super) async fn publish(&self, channel: &str, message: BusMessage) -> Result<usize, redis::RedisError> {
        let publish = self.shared.topology().publish(channel, message.encode());
        self.shared.run(|mut conn| async move { publish.query_async(&mut conn).await }).await
    }
}
