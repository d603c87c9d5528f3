//! A Redis Cluster of six `redis-server --cluster-enabled yes` processes (three primaries, one
//! replica each, `cluster-node-timeout` 1 s) on free ports, joined with
//! `redis-cli --cluster create`, in a temporary folder: the primary of a slot can be killed
//! (SIGKILL) and its replica's promotion awaited, or frozen (SIGSTOP) with no failover; every
//! primary can be emptied. Everything is killed on drop.

use std::{collections::HashMap, process::Command, time::Duration};

use redis::{Value, aio::MultiplexedConnection, cluster_async::ClusterConnection};
use tokio::time::Instant;

use super::{
    process::{ChildProcess, TempDir, signal},
    wait::eventually_async,
};

/// How long a node of the cluster waits before it calls a silent one failing.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Nodes in the cluster: three primaries, a replica each.
const NODES: usize = 6;

/// Six cluster nodes, joined.
pub struct RedisClusterSet {
    /// The nodes' ports.
    pub ports: Vec<u16>,
    /// Their processes, as `ports`.
    procs: Vec<ChildProcess>,
    /// The replica of the primary last killed, until its promotion is awaited.
    pub failing_over: Option<u16>,
    /// Where their files are.
    _dir: TempDir,
}

impl RedisClusterSet {
    /// Starts six nodes, joins them (`--cluster-replicas 1`) and waits until every node says
    /// `cluster_state:ok`, knows all six, and every replica is in sync.
    pub async fn start() -> Self {
        let dir = TempDir::new("ppp-rcluster");
        let ports = cluster_ports();
        let procs = ports.iter().map(|&port| node(&dir, port)).collect();
        let set = Self { ports, procs, failing_over: None, _dir: dir };
        for &port in &set.ports {
            eventually_async("a cluster node answers", || async { connect(port).await.is_some() }).await;
        }
        let addrs: Vec<String> = set.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        for &port in &set.ports {
            eventually_async("the cluster is ok on every node, every replica in sync", || async {
                let cluster = info(port, "CLUSTER", "INFO").await;
                let replication = info(port, "INFO", "replication").await;
                cluster.get("cluster_state").is_some_and(|s| s == "ok")
                    && cluster.get("cluster_known_nodes").is_some_and(|n| *n == NODES.to_string())
                    && (replication.get("role").is_some_and(|r| r == "master")
                        || replication.get("master_link_status").is_some_and(|s| s == "up"))
            })
            .await;
        }
        set
    }

    /// Every node's URL, for `--redis` with `--redis-mode cluster` (seed nodes).
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// A cluster connection, as `redis-cli -c` would have.
    pub async fn conn(&self) -> ClusterConnection {
        let live: Vec<String> = self.live().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        redis::cluster::ClusterClient::new(live).unwrap().get_async_connection().await.expect("the cluster answers")
    }

    /// The slot `key` hashes to (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        for port in self.live() {
            let Some(mut c) = connect(port).await else { continue };
            if let Ok(slot) = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut c).await {
                return slot;
            }
        }
        panic!("no cluster node answers");
    }

    /// The port of the primary serving `slot`, as a live node sees it.
    pub async fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        for port in self.live() {
            let Some(mut c) = connect(port).await else { continue };
            let Ok(slots) = redis::cmd("CLUSTER").arg("SLOTS").query_async::<Vec<Value>>(&mut c).await else {
                continue;
            };
            if let Some(primary) = slots.iter().find_map(|range| primary_in(range, slot)) {
                return Some(primary);
            }
        }
        None
    }

    /// A plain connection to the primary serving `key`'s slot now.
    pub async fn primary_conn_of(&self, key: &str) -> MultiplexedConnection {
        let slot = self.slot_of(key).await;
        let primary = self.primary_of_slot(slot).await.expect("a primary serves the slot");
        connect(primary).await.expect("the primary answers")
    }

    /// Kills (SIGKILL) the primary serving `slot`; returns its port and its replica's.
    pub async fn kill_primary_of_slot(&mut self, slot: u16) -> (u16, u16) {
        let primary = self.primary_of_slot(slot).await.expect("a primary serves the slot");
        let replica = *self.replicas_of(primary).await.first().expect("the primary has a replica");
        let index = self.index_of(primary);
        self.procs[index].kill();
        (primary, replica)
    }

    /// Waits until `replica` says it is a primary (`ROLE`), then until every live node says the
    /// cluster is ok; returns both instants.
    pub async fn wait_promoted(&self, replica: u16) -> (Instant, Instant) {
        eventually_async("the replica is promoted", || async {
            info(replica, "INFO", "replication").await.get("role").is_some_and(|r| r == "master")
        })
        .await;
        let promoted = Instant::now();
        for port in self.live() {
            eventually_async("the cluster is ok again", || async {
                info(port, "CLUSTER", "INFO").await.get("cluster_state").is_some_and(|s| s == "ok")
            })
            .await;
        }
        (promoted, Instant::now())
    }

    /// Freezes (SIGSTOP) the primary serving `slot` once its replicas were told never to take
    /// over (`cluster-replica-no-failover`): the slot goes unanswered until [`Self::resume_all`].
    pub async fn pause_primary_of_slot(&self, slot: u16) {
        let primary = self.primary_of_slot(slot).await.expect("a primary serves the slot");
        let replicas = self.replicas_of(primary).await;
        assert!(!replicas.is_empty(), "the primary has a replica");
        for replica in replicas {
            let mut c = connect(replica).await.expect("the replica answers");
            let mut set = redis::cmd("CONFIG");
            set.arg(&["SET", "cluster-replica-no-failover", "yes"]);
            let () = set.query_async(&mut c).await.expect("CONFIG SET on the replica");
        }
        assert!(signal(self.pid_of(primary), "-STOP"), "SIGSTOP to the primary");
    }

    /// Thaws (SIGCONT) every node: a frozen one answers again, the others were never stopped.
    pub fn resume_all(&self) {
        for port in self.live() {
            assert!(signal(self.pid_of(port), "-CONT"), "SIGCONT to a cluster node");
        }
    }

    /// A plain connection to every live node, primaries and replicas.
    pub async fn every_node(&self) -> Vec<MultiplexedConnection> {
        let mut conns = Vec::new();
        for port in self.live() {
            conns.push(connect(port).await.expect("a cluster node answers"));
        }
        conns
    }

    /// Empties every primary (`FLUSHALL`); their replicas follow.
    pub async fn flush_all(&self) {
        for port in self.live() {
            if info(port, "INFO", "replication").await.get("role").is_some_and(|r| r == "master") {
                let mut c = connect(port).await.expect("the primary answers");
                let () = redis::cmd("FLUSHALL").query_async(&mut c).await.expect("FLUSHALL on a primary");
            }
        }
    }

    /// The ports of the replicas of the primary on `primary`, as they say themselves (`INFO
    /// replication`): `CLUSTER SLOTS` lists a replica only once the node asked has heard of it,
    /// which may be after the cluster is ok.
    async fn replicas_of(&self, primary: u16) -> Vec<u16> {
        let mut replicas = Vec::new();
        for port in self.live() {
            let replication = info(port, "INFO", "replication").await;
            if replication.get("master_port").is_some_and(|p| *p == primary.to_string()) {
                replicas.push(port);
            }
        }
        replicas
    }

    /// The process id of the node on `port`.
    fn pid_of(&self, port: u16) -> u32 {
        self.procs[self.index_of(port)].pid().expect("not killed")
    }

    /// Where the node on `port` is in `ports` and `procs`.
    fn index_of(&self, port: u16) -> usize {
        self.ports.iter().position(|&p| p == port).expect("one of ours")
    }

    /// The ports of the nodes not killed.
    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().zip(&self.procs).filter(|(_, p)| p.is_running()).map(|(port, _)| *port)
    }
}

/// `NODES` free ports whose cluster bus ports (port + 10000) are free too, all below the
/// kernel's ephemeral range (see `process::free_port`).
fn cluster_ports() -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < NODES {
        let port = rand::random_range(20_000..22_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

/// Starts one cluster node on `port`.
fn node(dir: &TempDir, port: u16) -> ChildProcess {
    let data = dir.path().join(format!("node-{port}"));
    std::fs::create_dir_all(&data).unwrap();
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
    command.args(["--cluster-node-timeout", &NODE_TIMEOUT.as_millis().to_string()]);
    command.args(["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]).arg("--dir").arg(&data);
    ChildProcess::spawn(&mut command, "redis-server")
}

/// A plain connection to the node on `port`, if it answers within a second.
async fn connect(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await.ok()?.ok()
}

/// `CLUSTER INFO` or `INFO {section}` on `port`, as fields (empty when it does not answer).
async fn info(port: u16, command: &str, arg: &str) -> HashMap<String, String> {
    let Some(mut c) = connect(port).await else { return HashMap::new() };
    let text: String = redis::cmd(command).arg(arg).query_async(&mut c).await.unwrap_or_default();
    text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The primary's port of one `CLUSTER SLOTS` range, if it holds `slot`.
fn primary_in(range: &Value, slot: u16) -> Option<u16> {
    let Value::Array(items) = range else { return None };
    let int = |v: &Value| if let Value::Int(i) = v { Some(*i) } else { None };
    let (start, end) = (int(items.first()?)?, int(items.get(1)?)?);
    if !(start..=end).contains(&i64::from(slot)) {
        return None;
    }
    let Value::Array(primary) = items.get(2)? else { return None };
    int(primary.get(1)?).map(|p| p as u16)
}
