//! Cluster-wide runtime settings (`PATCH /v1/runtime?cluster=true`), kept in `K:runtime`.
//!
//! Pub/sub is at most once, so a change is not only published: `redis/runtime.lua` records it in
//! `K:runtime`, each setting next to the version that last set it, and publishes its notice on
//! `K:ch:control` in the same step. The notice says "read `K:runtime`": every node (the one that
//! made the change too) applies the settings changed after the version it saw last. A node also
//! reads `K:runtime` each time its bus subscription is back (a reconnect, a failover, a
//! subscription Redis took away), so a change published while it was not listening still
//! reaches it, and only once its subscription is live, so none falls between the read and the
//! notices.
//!
//! - A node's first read of a run only notes the version: a node starts from its own flags, not
//!   from changes made before it started (they last until the process restarts, as on one node).
//! - Only the settings changed since are applied: a setting this node changed for itself alone
//!   (without `?cluster=true`) stays, unless a later cluster-wide change sets it again.
//! - `epoch` names the history the versions count in. A `K:runtime` made anew (Redis lost its
//!   data, or an operator deleted the key) has a new epoch: a node that knew another applies every
//!   setting the new one holds, all of them set since.
//! - A lower version in the same epoch is Redis rewound to an older snapshot: the node notes it
//!   and applies nothing (it has seen everything such a snapshot holds).

use std::{collections::HashMap, sync::Mutex};

use redis::Script;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{
    RedisBackend,
    bus::BusMessage,
    connection::{unavailable, within},
};
use crate::{cluster::BackendError, settings::RuntimePatch, socket::unix_ms};

/// Runtime settings changes held for the node to apply; more at once is an operator's loop.
const RUNTIME_BACKLOG: usize = 64;

/// `redis/runtime.lua`.
const RUNTIME_LUA: &str = include_str!("../../../redis/runtime.lua");

/// What the backend keeps for the cluster-wide runtime settings.
pub struct RuntimeSync {
    /// The changes for the node to apply (the node's runtime watch takes them).
    pub changes: broadcast::Sender<RuntimePatch>,
    /// `redis/runtime.lua`.
    script: Script,
    /// Where this node is in the history of `K:runtime` (`None` until its first read).
    seen: Mutex<Option<Seen>>,
}

impl Default for RuntimeSync {
    /// Nothing read yet.
    fn default() -> Self {
        Self {
            changes: broadcast::Sender::new(RUNTIME_BACKLOG),
            script: Script::new(RUNTIME_LUA),
            seen: Mutex::default(),
        }
    }
}

/// Where a node is in the history of `K:runtime`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The history the version counts in (`epoch`; empty while `K:runtime` does not exist).
    epoch: String,
    /// The last version this node applied or noted.
    version: u64,
}

impl Seen {
    /// Notes the change `version` of `epoch` this node made itself (and applied already), when
    /// it follows straight on what it saw: else some change in between is still to be read.
    pub fn made(&mut self, epoch: &str, version: u64) {
        let follows = if self.epoch == epoch { self.version + 1 == version } else { version == 1 };
        if follows {
            *self = Self { epoch: epoch.to_owned(), version };
        }
    }
}

/// What a read of `K:runtime` (`stored`) means for a node that saw `seen` (`None`: its first
/// read this run): where it is then, and the settings to apply, if any.
pub fn catch_up(seen: Option<&Seen>, stored: &HashMap<String, String>) -> (Seen, Option<RuntimePatch>) {
    let number = |field: &str| stored.get(field).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let now = Seen { epoch: stored.get("epoch").cloned().unwrap_or_default(), version: number("version") };
    let after = match seen {
        None => return (now, None),
        Some(seen) if seen.epoch != now.epoch => 0,
        Some(seen) if now.version < seen.version => {
            warn!(seen = seen.version, now = now.version, "K:runtime went back to an older version (Redis rewound)");
            return (now, None);
        }
        Some(seen) => seen.version,
    };
    let changed = |setting: &str| number(&format!("{setting}:version")) > after;
    let value = |setting: &str| stored.get(setting).filter(|_| changed(setting)).cloned();
    let max_connections = value("max_connections").and_then(|n| match n.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            warn!(value = %n, "K:runtime max_connections is not a number; ignored");
            None
        }
    });
    let patch = RuntimePatch {
        log_filter: value("log_filter"),
        idle_after: value("idle_after"),
        idle_timeout: value("idle_timeout"),
        balance: value("balance"),
        max_connections,
    };
    (now, (patch != RuntimePatch::default()).then_some(patch))
}

/// The settings `patch` sets, as `K:runtime` names them (the admin API's names).
pub fn fields(patch: &RuntimePatch) -> Vec<(&'static str, String)> {
    // Taken apart whole, so a setting added to the patch cannot be forgotten here.
    let RuntimePatch { log_filter, idle_after, idle_timeout, balance, max_connections } = patch.clone();
    [
        ("log_filter", log_filter),
        ("idle_after", idle_after),
        ("idle_timeout", idle_timeout),
        ("balance", balance),
        ("max_connections", max_connections.map(|n| n.to_string())),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}

impl RedisBackend {
    /// Records `patch` in `K:runtime` and publishes its notice on `K:ch:control`, in one step
    /// (`redis/runtime.lua`).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Redis did not take it (then no node got it).
    pub(super) async fn publish_runtime_change(&self, patch: &RuntimePatch) -> Result<(), BackendError> {
        let notice = BusMessage::Runtime { origin: self.node.clone(), patch: patch.clone() }.encode();
        let mut script = self.runtime.script.key(&self.keys.runtime);
        script
            .arg(self.shared.topology().publish_command())
            .arg(&self.keys.control_channel)
            .arg(notice)
            .arg(&self.node)
            .arg(unix_ms())
            .arg(uuid::Uuid::now_v7().to_string());
        for (name, value) in fields(patch) {
            script.arg(name).arg(value);
        }
        let run = self.shared.run(|mut conn| async move { script.invoke_async(&mut conn).await });
        let (version, epoch): (u64, String) = within(async { run.await.map_err(unavailable) }).await?;
        if let Some(seen) = self.runtime.seen.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            seen.made(&epoch, version);
        }
        Ok(())
    }

    /// Reads `K:runtime` and hands the node the settings changed since it last read it.
    ///
    /// # Errors
    /// The Redis error: the caller subscribes again, and reads again then.
    pub(super) async fn catch_up_runtime(&self) -> Result<(), redis::RedisError> {
        let key = self.keys.runtime.clone();
        let stored: HashMap<String, String> =
            self.shared.run(|mut conn| async move { redis::AsyncCommands::hgetall(&mut conn, key).await }).await?;
        let patch = {
            let mut seen = self.runtime.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (now, patch) = catch_up(seen.as_ref(), &stored);
            *seen = Some(now);
            patch
        };
        if let Some(patch) = patch {
            info!(by = stored.get("changed_by").map_or("?", String::as_str), "runtime settings changed cluster-wide");
            let _ = self.runtime.changes.send(patch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn seen(epoch: &str, version: u64) -> Seen {
        Seen { epoch: epoch.to_owned(), version }
    }

    /// `K:runtime` after change 1 set idle_after and balance, and change 2 set idle_after again.
    fn two_changes() -> HashMap<String, String> {
        stored(&[
            ("epoch", "e1"),
            ("version", "2"),
            ("idle_after", "9s"),
            ("idle_after:version", "2"),
            ("balance", "sticky"),
            ("balance:version", "1"),
        ])
    }

    #[test]
    fn the_first_read_of_a_run_applies_nothing() {
        assert_eq!(catch_up(None, &two_changes()), (seen("e1", 2), None));
        assert_eq!(catch_up(None, &HashMap::new()), (seen("", 0), None));
    }

    #[test]
    fn only_the_settings_changed_after_the_version_seen_are_applied() {
        let (now, patch) = catch_up(Some(&seen("e1", 1)), &two_changes());
        assert_eq!(now, seen("e1", 2));
        assert_eq!(patch, Some(RuntimePatch { idle_after: Some("9s".into()), ..RuntimePatch::default() }));
        let (_, all) = catch_up(Some(&seen("e1", 0)), &two_changes());
        let both = RuntimePatch { idle_after: Some("9s".into()), balance: Some("sticky".into()), ..Default::default() };
        assert_eq!(all, Some(both));
        assert_eq!(catch_up(Some(&seen("e1", 2)), &two_changes()), (seen("e1", 2), None));
    }

    #[test]
    fn a_new_epoch_applies_everything_and_a_rewound_one_nothing() {
        let (now, patch) = catch_up(Some(&seen("e0", 7)), &two_changes());
        assert_eq!(now, seen("e1", 2));
        assert_eq!(patch.unwrap().balance.as_deref(), Some("sticky"));
        assert_eq!(catch_up(Some(&seen("e1", 5)), &two_changes()), (seen("e1", 2), None));
        // Gone (Redis lost its data): nothing to apply, and the next change starts a new epoch.
        assert_eq!(catch_up(Some(&seen("e1", 2)), &HashMap::new()), (seen("", 0), None));
    }

    #[test]
    fn a_bad_number_typed_into_the_hash_is_ignored() {
        let mut typed = two_changes();
        typed.extend(stored(&[("version", "3"), ("max_connections", "lots"), ("max_connections:version", "3")]));
        assert_eq!(catch_up(Some(&seen("e1", 2)), &typed), (seen("e1", 3), None));
    }

    #[test]
    fn a_change_made_here_is_noted_only_when_it_follows_on() {
        let mut s = seen("e1", 2);
        s.made("e1", 4);
        assert_eq!(s, seen("e1", 2), "change 3 is still to be read");
        s.made("e1", 3);
        assert_eq!(s, seen("e1", 3));
        let mut gone = seen("", 0);
        gone.made("e2", 1);
        assert_eq!(gone, seen("e2", 1));
    }

    #[test]
    fn every_setting_of_a_patch_is_a_field() {
        let patch = RuntimePatch {
            log_filter: Some("debug".into()),
            idle_after: Some("5s".into()),
            idle_timeout: Some("off".into()),
            balance: Some("sticky".into()),
            max_connections: Some(10),
        };
        let names: Vec<_> = fields(&patch).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["log_filter", "idle_after", "idle_timeout", "balance", "max_connections"]);
        let mut stored: HashMap<String, String> =
            [("epoch".to_owned(), "e".to_owned()), ("version".into(), "1".into())].into();
        for (name, value) in fields(&patch) {
            stored.insert(name.to_owned(), value);
            stored.insert(format!("{name}:version"), "1".to_owned());
        }
        assert_eq!(catch_up(Some(&seen("e", 0)), &stored).1, Some(patch));
    }
}
