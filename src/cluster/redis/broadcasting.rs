//! Broadcasts: published once on `K:ch:broadcast`, and `STATUS_OK` only when every live node
//! received one (DESIGN §3, "broadcast handed to every node").
//!
//! `redis/broadcast.lua` publishes and reads `K:nodes` in one step: `PUBLISH` (`SPUBLISH`)
//! answers how many subscriptions received the message, and each node has exactly one on the
//! channel, so fewer receivers than the other members means some member did not hear it (a
//! node subscribing again after a Redis failover, or one that died and is not reaped yet):
//! `STATUS_FAILED`, "the broadcast reached 2 of 3 nodes". It is not sent again: the nodes that
//! heard it would apply it twice. The counts stay exact around joins and leaves because a node
//! joins `K:nodes` only once it is subscribed, and leaves it before it unsubscribes. More
//! receivers than members is OK: a node subscribed but not registered yet, or a `redis-cli`
//! watching the channel (which can hide one missing node; see `docs/redis.md`).

use std::{collections::BTreeSet, time::Duration, time::Instant};

use tracing::warn;

use super::{RedisBackend, bus::BusMessage, connection::RedisConn};
use crate::command::{Broadcast, Receipt};

/// A member whose heartbeat stood still this long (three heartbeats) is named in the detail of
/// a broadcast that missed nodes: it is likely dead, and not reaped yet.
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// What a broadcast's publish says about its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every other member's subscription received it.
    Everyone,
    /// Fewer subscriptions received it than there are other members.
    Short {
        /// Nodes reached, this one included.
        reached: usize,
        /// Nodes it should have reached, this one included.
        nodes: usize,
        /// The other members it should have reached.
        expected: Vec<String>,
    },
    /// This node is not in `K:nodes` (joining, or Redis lost its data), so who should have
    /// received it is not known.
    Unregistered {
        /// Other nodes reached.
        others: usize,
    },
}

/// The delivery of a broadcast from `node`: `receivers` subscriptions received it (this node's
/// own among them when `self_counted`), while `members` were in `K:nodes`; `before` are the
/// members this node knew before it registered again, when it just did (the others may not
/// have registered again yet).
pub fn reach(node: &str, receivers: usize, self_counted: bool, members: &[String], before: &[String]) -> Reach {
    let others = receivers.saturating_sub(usize::from(self_counted));
    if !members.iter().any(|m| m == node) {
        return Reach::Unregistered { others };
    }
    let expected: BTreeSet<&String> = members.iter().chain(before).filter(|m| *m != node).collect();
    if others >= expected.len() {
        return Reach::Everyone;
    }
    Reach::Short { reached: others + 1, nodes: expected.len() + 1, expected: expected.into_iter().cloned().collect() }
}

impl RedisBackend {
    /// Hands a broadcast to every other node, once, on `K:ch:broadcast`, and says whether every
    /// live node received it.
    pub(super) async fn publish_broadcast(&self, broadcast: &Broadcast) -> Receipt {
        let payload = BusMessage::broadcast(&self.node, broadcast).encode();
        // This node's own subscription receives it too (and ignores it): counted when it was
        // live before or after, so a subscription that ends meanwhile never hides a missing node.
        let live_before = *self.subscribed.borrow();
        let published = self.shared.run(|mut conn| async move { self.run_broadcast(&mut conn, payload).await }).await;
        let self_counted = live_before || *self.subscribed.borrow();
        let (receivers, members) = match published {
            Ok(answer) => answer,
            Err(e) => return Receipt::failed(format!("the broadcast reached only this node: {e}")),
        };
        let before = self.watch().members_before_rejoining(Instant::now()).to_vec();
        let receipt = match reach(&self.node, receivers, self_counted, &members, &before) {
            Reach::Everyone => return Receipt::ok(),
            Reach::Short { reached, nodes, expected } => Receipt::failed(format!(
                "the broadcast reached {reached} of {nodes} nodes; {}",
                self.why_missed(&expected)
            )),
            Reach::Unregistered { others } => Receipt::failed(format!(
                "the broadcast reached {} node(s), but this node is not registered in the cluster now (it \
                 is joining, or Redis lost its data), so whether that is every node is not known",
                others + 1
            )),
        };
        warn!(detail = %receipt.detail, "a broadcast did not reach every node");
        receipt
    }

    /// Runs `redis/broadcast.lua`: how many subscriptions received `payload`, and `K:nodes`.
    async fn run_broadcast(&self, conn: &mut RedisConn, payload: Vec<u8>) -> redis::RedisResult<(usize, Vec<String>)> {
        self.broadcast_script
            .key(self.keys.nodes.clone())
            .arg(self.shared.topology().publish_command())
            .arg(&self.keys.broadcast_channel)
            .arg(payload)
            .invoke_async(conn)
            .await
    }

    /// Why members may have missed a broadcast: those whose heartbeat stands still (dead, not
    /// reaped yet), else a subscription that is down.
    fn why_missed(&self, expected: &[String]) -> String {
        let now = Instant::now();
        let watch = self.watch();
        let silent: Vec<String> = expected
            .iter()
            .filter_map(|m| watch.silent_for(m, now).filter(|d| *d >= SILENT_AFTER).map(|d| (m, d)))
            .map(|(m, d)| format!("{m} (no heartbeat for {} s)", d.as_secs()))
            .collect();
        if silent.is_empty() {
            "a node's bus subscription is down (it is subscribing again after a Redis failover or restart)".to_owned()
        } else {
            format!("not heard from, dead and not reaped yet: {}", silent.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_broadcast_is_ok_only_when_every_other_member_received_it() {
        let members = names(&["n1", "n2", "n3"]);
        assert_eq!(reach("n1", 3, true, &members, &[]), Reach::Everyone);
        // This node's own subscription is down: the others are what counts.
        assert_eq!(reach("n1", 2, false, &members, &[]), Reach::Everyone);
        // A node subscribed but not registered yet, or a redis-cli watching: more is fine.
        assert_eq!(reach("n1", 4, true, &members, &[]), Reach::Everyone);
        let short = reach("n1", 2, true, &members, &[]);
        assert_eq!(short, Reach::Short { reached: 2, nodes: 3, expected: names(&["n2", "n3"]) });
        assert_eq!(reach("n1", 1, false, &names(&["n2"]), &[]), Reach::Unregistered { others: 1 });
    }

    #[test]
    fn after_registering_again_the_members_known_before_count_too() {
        // Redis restarted empty: only n1 registered again so far, n2 and n3 are not subscribed yet.
        let before = names(&["n1", "n2", "n3"]);
        let short = reach("n1", 1, true, &names(&["n1"]), &before);
        assert_eq!(short, Reach::Short { reached: 1, nodes: 3, expected: names(&["n2", "n3"]) });
        assert_eq!(reach("n1", 3, true, &names(&["n1", "n2"]), &before), Reach::Everyone);
    }
}
