//! A Redis primary, one replica and three `redis-sentinel` processes watching them
//! (`sentinel monitor mymaster 127.0.0.1 PORT 2`, a primary is down after 1 s), on free ports, in
//! a temporary folder: the primary can be killed (SIGKILL) and the promotion of the replica
//! awaited. Everything is killed on drop.

use std::{collections::HashMap, process::Command, time::Duration};

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{
    process::{ChildProcess, TempDir, free_port},
    wait::eventually_async,
};

/// The name the Sentinels monitor the primary under (`--redis-master-name`'s default).
pub const MASTER_NAME: &str = "mymaster";
/// How long the Sentinels wait before they call a silent primary down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// A primary, its replica and three Sentinels.
pub struct RedisSentinelSet {
    /// The two data servers' ports: `[primary, replica]` at the start.
    pub servers: [u16; 2],
    /// The Sentinels' ports.
    pub sentinels: Vec<u16>,
    /// Which of `servers` is the primary (after a failover, the other).
    primary: usize,
    /// The data servers' processes, as `servers`.
    server_procs: Vec<ChildProcess>,
    /// The Sentinels' processes.
    _sentinel_procs: Vec<ChildProcess>,
    /// Where their files are.
    dir: TempDir,
}

impl RedisSentinelSet {
    /// Starts them and waits until the replica is in sync and every Sentinel knows the replica
    /// and the two other Sentinels (so a failover can be agreed on at once).
    pub async fn start() -> Self {
        let dir = TempDir::new("ppp-sentinel");
        let servers = [free_port(), free_port()];
        let primary = server(&dir, servers[0], None);
        let replica = server(&dir, servers[1], Some(servers[0]));
        let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let sentinel_procs = sentinels.iter().map(|&port| sentinel(&dir, port, servers[0])).collect();
        let set = Self {
            servers,
            sentinels,
            primary: 0,
            server_procs: vec![primary, replica],
            _sentinel_procs: sentinel_procs,
            dir,
        };
        eventually_async("the replica is in sync", || async {
            info(set.servers[1], "replication").await.get("master_link_status").is_some_and(|s| s == "up")
        })
        .await;
        for &port in &set.sentinels {
            eventually_async("every Sentinel knows the replica and the others", || async {
                let master = sentinel_master(port).await;
                master.get("num-slaves").is_some_and(|n| n == "1")
                    && master.get("num-other-sentinels").is_some_and(|n| n == "2")
            })
            .await;
        }
        set
    }

    /// The Sentinels' URLs, for `--redis` with `--redis-mode sentinel`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// The current primary's port.
    pub fn primary_port(&self) -> u16 {
        self.servers[self.primary]
    }

    /// A connection to the current primary, as `redis-cli` would have.
    pub async fn primary_conn(&self) -> MultiplexedConnection {
        connect(self.primary_port()).await.expect("the primary answers")
    }

    /// Kills the primary (SIGKILL): what it had not replicated yet is gone.
    pub fn kill_primary(&mut self) {
        self.server_procs[self.primary].kill();
    }

    /// Waits until the replica says it is the primary (`ROLE`), then until every Sentinel names
    /// it; returns both instants.
    pub async fn wait_promoted(&mut self) -> (Instant, Instant) {
        let replica = self.servers[1 - self.primary];
        eventually_async("the replica is promoted", || async { role(replica).await.as_deref() == Some("master") })
            .await;
        let promoted = Instant::now();
        for &port in &self.sentinels {
            eventually_async("every Sentinel names the new primary", || async {
                named_primary(port).await == Some(replica)
            })
            .await;
        }
        self.primary = 1 - self.primary;
        (promoted, Instant::now())
    }

    /// The folder their files are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Starts a data server on `port` (a replica of `primary`, when given).
fn server(dir: &TempDir, port: u16, primary: Option<u16>) -> ChildProcess {
    let data = dir.path().join(format!("redis-{port}"));
    std::fs::create_dir_all(&data).unwrap();
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.args(["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]).arg("--dir").arg(&data);
    if let Some(primary) = primary {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    ChildProcess::spawn(&mut command, "redis-server")
}

/// Starts a Sentinel on `port` watching the primary on `primary` (its config file is its own:
/// Sentinels rewrite theirs).
fn sentinel(dir: &TempDir, port: u16, primary: u16) -> ChildProcess {
    let conf = dir.path().join(format!("sentinel-{port}.conf"));
    let down = DOWN_AFTER.as_millis();
    let text = format!(
        "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} {down}\nsentinel failover-timeout {MASTER_NAME} 5000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n",
        dir = dir.path().display()
    );
    std::fs::write(&conf, text).unwrap();
    ChildProcess::spawn(Command::new("redis-sentinel").arg(&conf), "redis-sentinel")
}

/// A connection to the server (or Sentinel) on `port`, if it answers within a second.
async fn connect(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await.ok()?.ok()
}

/// A section of `INFO` on `port` as fields (empty when it does not answer).
async fn info(port: u16, section: &str) -> HashMap<String, String> {
    let Some(mut c) = connect(port).await else { return HashMap::new() };
    let text: String = redis::cmd("INFO").arg(section).query_async(&mut c).await.unwrap_or_default();
    text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// `SENTINEL MASTER mymaster` on the Sentinel on `port`, as fields.
async fn sentinel_master(port: u16) -> HashMap<String, String> {
    let Some(mut c) = connect(port).await else { return HashMap::new() };
    let flat: Vec<String> =
        redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME).query_async(&mut c).await.unwrap_or_default();
    flat.chunks(2).filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone()))).collect()
}

/// The primary's port as the Sentinel on `port` names it.
async fn named_primary(port: u16) -> Option<u16> {
    let mut c = connect(port).await?;
    let addr: Vec<String> =
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER_NAME).query_async(&mut c).await.ok()?;
    addr.get(1)?.parse().ok()
}

/// What the server on `port` says it is (`ROLE`'s first element: `master` or `slave`).
async fn role(port: u16) -> Option<String> {
    let mut c = connect(port).await?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
    redis::from_redis_value(role.into_iter().next()?).ok()
}
