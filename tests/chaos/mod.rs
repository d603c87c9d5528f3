//! The chaos harness (issue 6): a cluster of real `ppp` processes under continuous load, with a
//! fault proxy on every link, and a checker of invariants.
//!
//! # Layout
//! - from `tests/common`: the `redis-server` ([`RedisServer`]), or a Redis that fails over
//!   ([`RedisSentinelSet`], [`RedisClusterSet`]), and the `ppp` child processes ([`NodeProc`]):
//!   kill -9, SIGTERM, SIGSTOP, snapshots.
//! - [`upstream`]: the recording, echoing upstream.
//! - [`load`]: the load generator.
//! - [`check`]: the checker and its report; [`state`], its Redis half.
//! - [`soak`]: the soak's random fault schedule and its samples of memory and descriptors.
//! - this file: [`Cluster`], which wires them together: each node reaches Redis through its own
//!   [`FaultProxy`] (with one Redis server; a Sentinel set or a Redis Cluster names its primaries
//!   itself, so there the nodes reach them directly) and each upstream through one [`FaultProxy`]
//!   shared by every node.

pub mod check;
pub mod load;
pub mod soak;
pub mod state;
pub mod upstream;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use self::{
    check::{Events, Expect, Lifecycle, Observed, Report},
    load::Load,
    upstream::{Acks, Record},
};
use crate::common::{
    HaRedis, NodeIds, NodeProc, RedisClusterSet, RedisSentinelSet, RedisServer, TestUpstream, fault::FaultProxy,
};

/// Which Redis the cluster runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Topology {
    /// One `redis-server`, behind a fault proxy per node.
    #[default]
    Single,
    /// A primary, a replica and three Sentinels (`--redis-mode sentinel`).
    Sentinel,
    /// A six-node Redis Cluster (`--redis-mode cluster`).
    Cluster,
}

/// The cluster's Redis, as [`Topology`] says.
pub enum Redis {
    /// One server.
    Single(RedisServer),
    /// A Sentinel set.
    Sentinel(RedisSentinelSet),
    /// A Redis Cluster.
    Cluster(RedisClusterSet),
}

/// The cluster's shape and its nodes' settings (short, so schedules are quick).
#[derive(Debug, Clone)]
pub struct Options {
    /// Node slots.
    pub nodes: usize,
    /// Upstreams.
    pub upstreams: usize,
    /// `--node-ttl`.
    pub node_ttl: Duration,
    /// `--resync-interval`.
    pub resync_interval: Duration,
    /// `--health-interval`.
    pub health_interval: Duration,
    /// `--drain-timeout`.
    pub drain_timeout: Duration,
    /// `--write-queue`.
    pub write_queue: usize,
    /// `--max-connections`, when not the default.
    pub max_connections: Option<usize>,
    /// Extra environment for one slot's node: (slot, name, value), e.g. the test-only
    /// `PPP_TEST_CLOCK_OFFSET_MS`, `PPP_TEST_REAP_PAUSE_MS`, `PPP_TEST_REAP_BATCH`.
    pub node_env: Vec<(usize, String, String)>,
    /// Every slot keeps one node id, `n{slot}`, across restarts (a fixed `--node-id`), instead of
    /// a new `n{slot}-{incarnation}` each start.
    pub fixed_node_ids: bool,
    /// Whether the upstreams acknowledge what they processed.
    pub acks: Acks,
    /// Which Redis.
    pub topology: Topology,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 3,
            upstreams: 2,
            node_ttl: Duration::from_secs(3),
            resync_interval: Duration::from_secs(3),
            health_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(4),
            write_queue: 128,
            max_connections: None,
            node_env: Vec::new(),
            fixed_node_ids: false,
            acks: Acks::Never,
            topology: Topology::Single,
        }
    }
}

/// A running cluster: Redis, upstreams, nodes, and the fault proxies between them.
pub struct Cluster {
    /// The schedule's name (directory, summary).
    pub name: String,
    /// Its settings.
    pub options: Options,
    /// Logs and Redis's data; removed when the test passes (unless `PPP_CHAOS_KEEP` is set).
    dir: PathBuf,
    /// The real Redis.
    redis: Redis,
    /// Each node slot's link to Redis (none with a Redis that fails over).
    pub redis_links: Vec<FaultProxy>,
    /// The upstreams.
    pub upstreams: Vec<TestUpstream>,
    /// Each upstream's link (every node reaches it through this one).
    pub upstream_links: Vec<FaultProxy>,
    /// The node slots.
    pub nodes: Vec<NodeProc>,
    /// Each slot's current node id, shared with the load.
    node_ids: Arc<Mutex<Vec<String>>>,
    /// For the admin APIs.
    http: reqwest::Client,
}

/// A duration as a flag value (`1500ms`).
fn flag(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `--redis-mode` and `--redis` for a Redis that fails over.
fn redis_args<R: HaRedis>(redis: &R) -> Vec<String> {
    let mut args = vec!["--redis-mode".to_owned(), R::MODE.as_str().to_owned()];
    args.extend(redis.urls().into_iter().flat_map(|url| ["--redis".to_owned(), url]));
    args
}

/// Every node's flags but Redis's and the upstreams'.
fn node_args(options: &Options) -> Vec<String> {
    let mut args = vec![
        "--node-ttl".to_owned(),
        flag(options.node_ttl),
        "--resync-interval".to_owned(),
        flag(options.resync_interval),
        "--health-interval".to_owned(),
        flag(options.health_interval),
        "--drain-timeout".to_owned(),
        flag(options.drain_timeout),
        "--write-queue".to_owned(),
        options.write_queue.to_string(),
    ];
    if let Some(max) = options.max_connections {
        args.extend(["--max-connections".to_owned(), max.to_string()]);
    }
    args
}

impl Cluster {
    /// Starts Redis, the upstreams, the proxies and the nodes, and waits until every node is
    /// ready and streams to every upstream.
    pub async fn start(name: &str, options: Options) -> Self {
        let dir = std::env::temp_dir().join(format!("ppp-chaos-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = match options.topology {
            Topology::Single => Redis::Single(RedisServer::start_in(&dir).await),
            Topology::Sentinel => Redis::Sentinel(RedisSentinelSet::start().await),
            Topology::Cluster => Redis::Cluster(RedisClusterSet::start().await),
        };
        let mut upstreams = Vec::new();
        let mut upstream_links = Vec::new();
        for _ in 0..options.upstreams {
            let up = upstream::start(options.acks).await;
            upstream_links.push(FaultProxy::start(up.addr).await);
            upstreams.push(up);
        }
        let mut redis_links = Vec::new();
        let mut nodes = Vec::new();
        for slot in 0..options.nodes {
            let mut args = match &redis {
                Redis::Single(server) => {
                    let link = FaultProxy::start(server.addr()).await;
                    let args = vec!["--redis".to_owned(), format!("redis://{}", link.addr())];
                    redis_links.push(link);
                    args
                }
                Redis::Sentinel(set) => redis_args(set),
                Redis::Cluster(set) => redis_args(set),
            };
            args.extend(node_args(&options));
            for up in &upstream_links {
                args.extend(["--upstream".to_owned(), format!("http://{}", up.addr())]);
            }
            let env = options.node_env.iter().filter(|(s, ..)| *s == slot).map(|(_, k, v)| (k.clone(), v.clone()));
            let ids = if options.fixed_node_ids { NodeIds::Fixed(format!("n{slot}")) } else { NodeIds::PerStart };
            nodes.push(NodeProc::new(slot, args, env.collect(), ids, &dir));
        }
        let node_ids = Arc::new(Mutex::new(vec![String::new(); options.nodes]));
        let mut cluster = Self {
            name: name.to_owned(),
            options,
            dir,
            redis,
            redis_links,
            upstreams,
            upstream_links,
            nodes,
            node_ids,
            http: reqwest::Client::new(),
        };
        for slot in 0..cluster.nodes.len() {
            cluster.spawn_node(slot);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// The one Redis server (of [`Topology::Single`]).
    pub fn redis(&self) -> &RedisServer {
        match &self.redis {
            Redis::Single(server) => server,
            _ => panic!("this schedule runs on one Redis server"),
        }
    }

    /// The one Redis server, to kill or restart it.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        match &mut self.redis {
            Redis::Single(server) => server,
            _ => panic!("this schedule runs on one Redis server"),
        }
    }

    /// A connection to the Redis server that holds the cluster's keys now (the primary, on a
    /// Redis that fails over).
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        match &self.redis {
            Redis::Single(server) => server.conn().await,
            Redis::Sentinel(set) => set.primary_conn().await,
            Redis::Cluster(set) => set.primary_conn_of(&format!("{}nodes", state::K)).await,
        }
    }

    /// Kills the primary holding the cluster's keys (SIGKILL) and waits until Redis promoted a
    /// replica; returns when it was killed.
    pub async fn fail_over_redis(&mut self) -> tokio::time::Instant {
        let killed = tokio::time::Instant::now();
        match &mut self.redis {
            Redis::Single(_) => panic!("one Redis server does not fail over"),
            Redis::Sentinel(set) => fail_over(set).await,
            Redis::Cluster(set) => fail_over(set).await,
        }
        killed
    }

    fn spawn_node(&mut self, slot: usize) {
        self.nodes[slot].spawn();
        self.node_ids.lock().unwrap()[slot] = self.nodes[slot].id.clone();
    }

    /// Waits until every running node is ready and streams to every upstream.
    pub async fn wait_ready(&mut self) {
        let upstreams = self.upstreams.len();
        for node in &mut self.nodes {
            if node.is_running() {
                node.wait_ready(&self.http, upstreams).await;
            }
        }
    }

    /// Starts `per_node` clients homed on each node, each sending `rate` messages a second.
    pub fn load(&self, per_node: usize, rate: u32) -> Load {
        Load::start(self.nodes.iter().map(|n| n.listen).collect(), self.node_ids.clone(), per_node, rate)
    }

    /// Kills a node with SIGKILL; returns the id it had.
    pub fn kill_node(&mut self, slot: usize) -> String {
        self.nodes[slot].kill();
        self.nodes[slot].id.clone()
    }

    /// Starts a new incarnation in a slot (a new node id, or the same with
    /// [`Options::fixed_node_ids`]; the same ports) and waits until it is ready.
    pub async fn restart_node(&mut self, slot: usize) {
        self.spawn_node(slot);
        self.nodes[slot].wait_ready(&self.http, self.upstreams.len()).await;
    }

    /// Drains a node with SIGTERM and waits until it exits; returns the id it had.
    pub async fn drain_node(&mut self, slot: usize) -> String {
        let node = &mut self.nodes[slot];
        node.terminate();
        let status = node.wait_exit(self.options.drain_timeout + Duration::from_secs(10)).await;
        assert!(status.success(), "node {} exited with {status} after its drain", node.id);
        node.id.clone()
    }

    /// The nodes running now: id → `--listen` address.
    pub fn live_nodes(&mut self) -> BTreeMap<String, String> {
        self.nodes.iter_mut().filter_map(|n| n.is_running().then(|| (n.id.clone(), n.listen.to_string()))).collect()
    }

    /// A node's Prometheus counter or gauge (summed over its labels).
    pub async fn metric(&self, slot: usize, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.nodes[slot].admin);
        let text = self.http.get(url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Every upstream's records so far, one list per upstream.
    pub fn upstream_records(&self) -> Vec<Vec<Record>> {
        self.upstreams.iter().map(|u| upstream::records(&u.recording())).collect()
    }

    /// Every entry of `K:events` so far, oldest first: its fields.
    pub async fn k_events(&self) -> Vec<BTreeMap<String, String>> {
        state::events(&mut self.redis_conn().await).await
    }

    /// The slots whose current log has a line with every one of `needles`.
    pub fn slots_logging(&self, needles: &[&str]) -> Vec<usize> {
        self.nodes.iter().filter(|n| !n.log_lines(needles).is_empty()).map(|n| n.slot).collect()
    }

    /// [`Cluster::expect`], with Redis equal to the truth within that time of `lifted` (when
    /// the schedule's last fault was lifted).
    pub fn expect_since(&self, lifted: tokio::time::Instant) -> Expect {
        Expect { healed: Some(lifted), ..self.expect() }
    }

    /// What every schedule allows unless it says otherwise: no node closes, an exact
    /// `K:events`, Redis equal to the truth within `--resync-interval` (plus `--node-ttl` for a
    /// dead node to be reaped, and a little for the last heartbeat) of the check's start.
    pub fn expect(&self) -> Expect {
        Expect {
            grace: Duration::from_secs(2),
            closing_nodes: Vec::new(),
            events: Events::ExactlyOnce,
            upstream_death_window: Duration::from_secs(2),
            converge_within: self.options.resync_interval + self.options.node_ttl + Duration::from_secs(3),
            healed: None,
            may_duplicate: false,
            lifecycle: Lifecycle::ExactlyOnce,
        }
    }

    /// Ends a run: stops sending, waits for the echoes, checks, closes the clients.
    pub async fn finish(&mut self, load: Load, expect: &Expect) -> Report {
        load.stop_sending();
        load.settle(Duration::from_secs(10)).await;
        let live_nodes = self.live_nodes();
        // The nodes name each upstream by the `host:port` of its URI: here, its link's.
        let upstreams = self.upstream_links.iter().map(|l| (l.addr().to_string(), format!("http://{}", l.addr())));
        let observed = Observed {
            name: &self.name,
            conns: load.conns(),
            records: self.upstreams.iter().map(|u| upstream::records(&u.recording())).collect(),
            logs: self.upstreams.iter().map(TestUpstream::recording).collect(),
            kills: self.upstreams.iter().map(TestUpstream::kills).collect(),
            live_nodes,
            upstreams: upstreams.collect(),
        };
        let report = check::check(observed, &mut self.redis_conn().await, expect).await;
        load.finish().await;
        println!("   logs: {}", self.dir.display());
        report
    }
}

/// Kills `redis`'s primary and waits for the promotion.
async fn fail_over<R: HaRedis>(redis: &mut R) {
    redis.kill_primary().await;
    redis.wait_promoted().await;
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("PPP_CHAOS_KEEP").is_some() {
            eprintln!("chaos `{}`: node logs and Redis data kept in {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
