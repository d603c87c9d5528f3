//! The soak (issue 6): the chaos cluster under continuous load for many minutes, with a random
//! schedule of the harness's faults, one at a time, each for a random time, with quiet gaps
//! between them; every [`SAMPLE_EVERY`] it samples each node's resident memory and open file
//! descriptors and Redis's memory. `soak` in `tests/chaos.rs` runs it, `scripts/soak.sh` runs
//! that from a clean clone in release.
//!
//! The schedule is drawn from a seeded generator (`PPP_SOAK_SEED` replays one; the seed is
//! printed first), from a shuffled bag of every [`Kind`], so each kind comes about as often.
//! Nodes are killed or drained only in slots 1 and 2: slot 0's first incarnation lives the
//! whole run, so there is always one node whose memory can be followed from start to end.
//!
//! Nothing here panics on a fault that does not heal: a panic while injecting or healing (a
//! harness wait that timed out) ends the schedule and is reported as trouble, and the run goes
//! on to the checker, so a long run always prints everything it learned.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, panic::AssertUnwindSafe, time::Duration};

use futures_util::FutureExt as _;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use tokio::{io::AsyncReadExt as _, net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster, Options,
    check::{Events, Expect, Lifecycle, Report},
    load::{self, Load},
};
use crate::common::fault::Fault;

/// How often memory and descriptors are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A node's memory is compared from its first sample this long after it started (allocators
/// and caches settle in the first minute).
pub const WARM_UP: Duration = Duration::from_secs(60);
/// Echoes to see after each fault heals before the next gap starts.
const FLOWING: usize = 100;
/// Connections in a flood.
const FLOOD: usize = 40;
/// `--max-connections` of every node: room for every load client on one node (they move when
/// a node dies) plus some of a flood.
pub const MAX_CONNECTIONS: usize = 20;
/// Latency of a slow upstream's link.
const SLOW_UPSTREAM: Duration = Duration::from_millis(500);
/// A schedule does not start a fault with less than this left of the run.
const LAST_FAULT_BEFORE_END: Duration = Duration::from_secs(30);

/// The faults the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Redis frozen with SIGSTOP, then SIGCONT.
    RedisPaused,
    /// Every node's link to Redis black-holed by its proxy.
    RedisBlackHoled,
    /// Redis killed (-9) and restarted empty.
    RedisKilled,
    /// A node killed (-9), restarted after a while as a new incarnation.
    NodeKilled,
    /// A node drained (SIGTERM), restarted after a while as a new incarnation.
    NodeDrained,
    /// An upstream's link given 500 ms of latency each way.
    UpstreamSlow,
    /// An upstream killed (every connection drops) and restarted on its port.
    UpstreamKilled,
    /// A client that sends big lines and never reads, until its node closes it.
    SlowConsumer,
    /// Silent connections to one node, past its `--max-connections`.
    ConnectionFlood,
}

/// Every kind, in the order reports list them.
pub const KINDS: [Kind; 9] = [
    Kind::RedisPaused,
    Kind::RedisBlackHoled,
    Kind::RedisKilled,
    Kind::NodeKilled,
    Kind::NodeDrained,
    Kind::UpstreamSlow,
    Kind::UpstreamKilled,
    Kind::SlowConsumer,
    Kind::ConnectionFlood,
];

/// How long a soak runs and which schedule it draws.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The run's length (`PPP_SOAK_MINUTES`, default 2; fractions allowed).
    pub length: Duration,
    /// The schedule's seed (`PPP_SOAK_SEED`, else random).
    pub seed: u64,
}

impl Settings {
    /// From `PPP_SOAK_MINUTES` and `PPP_SOAK_SEED`.
    pub fn from_env() -> Self {
        let minutes: f64 = std::env::var("PPP_SOAK_MINUTES").map_or(2.0, |m| m.parse().expect("PPP_SOAK_MINUTES"));
        let seed =
            std::env::var("PPP_SOAK_SEED").map_or_else(|_| rand::random(), |s| s.parse().expect("PPP_SOAK_SEED"));
        Self { length: Duration::from_secs_f64(minutes * 60.0), seed }
    }
}

/// The cluster's settings for a soak: the schedules' defaults, but the default
/// `--health-interval` (so a slow upstream stays in rotation, see the slow-upstream schedule)
/// and a `--max-connections` that a flood can pass.
pub fn options() -> Options {
    Options { health_interval: Duration::from_secs(2), max_connections: Some(MAX_CONNECTIONS), ..Options::default() }
}

/// One sample of one node process.
#[derive(Debug, Clone)]
struct NodeSample {
    /// The incarnation's id.
    id: String,
    /// `VmRSS`, KiB.
    rss_kib: u64,
    /// Entries of `/proc/{pid}/fd`.
    fds: usize,
}

/// One sample of the whole cluster.
#[derive(Debug, Clone)]
struct Sample {
    /// Since the soak started.
    at: Duration,
    /// The running nodes.
    nodes: Vec<NodeSample>,
    /// Redis's `used_memory`, bytes (none while it is down or frozen).
    redis_used: Option<u64>,
}

/// A running (then finished) soak: its schedule, what it injected, its samples.
pub struct Soak {
    /// The schedule's random source.
    rng: StdRng,
    /// The settings.
    settings: Settings,
    /// When the schedule started (after the load flowed).
    started: Instant,
    /// Kinds left in the shuffled bag.
    bag: Vec<Kind>,
    /// The samples, in order.
    samples: Vec<Sample>,
    /// When the last sample was taken.
    last_sample: Option<Instant>,
    /// Each incarnation's start, since `started` (zero for the first ones).
    node_started: BTreeMap<String, Duration>,
    /// Faults injected, by kind.
    pub counts: BTreeMap<Kind, usize>,
    /// One line per fault, as printed when it was injected.
    pub log: Vec<String>,
    /// Node incarnations the schedule killed or drained: their sockets may be closed.
    pub closing_nodes: Vec<String>,
    /// When the last fault was lifted.
    pub last_lifted: Instant,
    /// Whether Redis lost its data (then `K:events` cannot be checked).
    pub redis_lost_data: bool,
    /// Anything that went wrong outside the checker's invariants: a fault that did not heal, a
    /// slow consumer never closed, a flood not refused.
    pub trouble: Vec<String>,
}

impl Soak {
    /// A soak about to start on a cluster whose load flows.
    pub fn new(cluster: &Cluster, settings: Settings) -> Self {
        let node_started = cluster.nodes.iter().map(|n| (n.id.clone(), Duration::ZERO)).collect();
        Self {
            rng: StdRng::seed_from_u64(settings.seed),
            settings,
            started: Instant::now(),
            bag: Vec::new(),
            samples: Vec::new(),
            last_sample: None,
            node_started,
            counts: BTreeMap::new(),
            log: Vec::new(),
            closing_nodes: Vec::new(),
            last_lifted: Instant::now(),
            redis_lost_data: false,
            trouble: Vec::new(),
        }
    }

    /// Runs the schedule until the run's length is reached.
    pub async fn run(&mut self, cluster: &mut Cluster, load: &Load) {
        println!(
            "soak: seed {} (PPP_SOAK_SEED={} replays this schedule), {} s",
            self.settings.seed,
            self.settings.seed,
            self.settings.length.as_secs()
        );
        let end = self.started + self.settings.length;
        self.sample(cluster).await;
        loop {
            let gap = self.secs(5.0, 15.0);
            self.idle(cluster, gap).await;
            if Instant::now() + LAST_FAULT_BEFORE_END > end {
                break;
            }
            let kind = self.next_kind();
            let injected = AssertUnwindSafe(self.inject(kind, cluster, load)).catch_unwind().await;
            if let Err(panic) = injected {
                let why = panic_message(&*panic);
                self.trouble.push(format!("{:?} at {:.0} s did not heal: {why}", kind, self.elapsed().as_secs_f64()));
                println!("soak: {kind:?} did not heal ({why}); the schedule stops here");
                lift_links(cluster);
                break;
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        self.idle(cluster, left).await;
        self.sample(cluster).await;
    }

    /// What the checker must allow after this schedule: the closes of the nodes it killed or
    /// drained, an unchecked `K:events` once Redis lost its data, duplicates once an upstream
    /// was killed (its streams broke with events in flight, which the node hands out again).
    pub fn expect(&self, cluster: &Cluster) -> Expect {
        let events = if self.redis_lost_data { Events::Lost } else { Events::ExactlyOnce };
        // A node killed while Redis was empty (or before its sockets were registered again)
        // takes sockets the reaper cannot know of: their `closed` may never come.
        let lifecycle = if self.redis_lost_data { Lifecycle::AtMostOnce } else { Lifecycle::ExactlyOnce };
        Expect {
            events,
            lifecycle,
            closing_nodes: self.closing_nodes.clone(),
            may_duplicate: self.counts.contains_key(&Kind::UpstreamKilled),
            ..cluster.expect_since(self.last_lifted)
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A random duration between `lo` and `hi` seconds.
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.rng.random_range(lo..hi))
    }

    fn next_kind(&mut self) -> Kind {
        if self.bag.is_empty() {
            self.bag = KINDS.to_vec();
            self.bag.shuffle(&mut self.rng);
        }
        self.bag.pop().expect("refilled")
    }

    /// A node slot the schedule may kill or drain (never slot 0, see the module doc).
    fn mortal_slot(&mut self, cluster: &Cluster) -> usize {
        let n = cluster.nodes.len();
        if n > 1 { self.rng.random_range(1..n) } else { 0 }
    }

    /// Injects one fault, waits its time, lifts it, and waits until the cluster healed.
    async fn inject(&mut self, kind: Kind, cluster: &mut Cluster, load: &Load) {
        *self.counts.entry(kind).or_default() += 1;
        let at = self.elapsed().as_secs_f64();
        let churn = self.rng.random_range(0..=3);
        let what = match kind {
            Kind::RedisPaused => {
                let d = self.secs(3.0, 12.0);
                cluster.redis().pause();
                load.churn(churn);
                self.idle(cluster, d).await;
                cluster.redis().resume();
                format!("{:.1} s, {churn} clients churned meanwhile", d.as_secs_f64())
            }
            Kind::RedisBlackHoled => {
                let d = self.secs(3.0, 15.0);
                for link in &cluster.redis_links {
                    link.set(Fault::BlackHole);
                }
                load.churn(churn);
                self.idle(cluster, d).await;
                for link in &cluster.redis_links {
                    link.set(Fault::None);
                }
                format!("{:.1} s, {churn} clients churned meanwhile", d.as_secs_f64())
            }
            Kind::RedisKilled => {
                let d = self.secs(2.0, 8.0);
                cluster.redis_mut().kill();
                self.redis_lost_data = true;
                load.churn(churn);
                self.idle(cluster, d).await;
                cluster.redis_mut().forget_data();
                cluster.redis_mut().restart().await;
                format!("down {:.1} s, back empty, {churn} clients churned meanwhile", d.as_secs_f64())
            }
            Kind::NodeKilled | Kind::NodeDrained => {
                let slot = self.mortal_slot(cluster);
                let d = self.secs(1.0, 8.0);
                let id =
                    if kind == Kind::NodeKilled { cluster.kill_node(slot) } else { cluster.drain_node(slot).await };
                self.closing_nodes.push(id.clone());
                self.idle(cluster, d).await;
                cluster.restart_node(slot).await;
                let new = cluster.nodes[slot].id.clone();
                self.node_started.insert(new.clone(), self.elapsed());
                format!("{id}, down {:.1} s, back as {new}", d.as_secs_f64())
            }
            Kind::UpstreamSlow => {
                let i = self.rng.random_range(0..cluster.upstream_links.len());
                let d = self.secs(5.0, 15.0);
                cluster.upstream_links[i].set(Fault::Latency(SLOW_UPSTREAM));
                self.idle(cluster, d).await;
                cluster.upstream_links[i].set(Fault::None);
                format!("upstream {i}, {} ms each way for {:.1} s", SLOW_UPSTREAM.as_millis(), d.as_secs_f64())
            }
            Kind::UpstreamKilled => {
                let i = self.rng.random_range(0..cluster.upstreams.len());
                let d = self.secs(1.0, 5.0);
                cluster.upstreams[i].kill().await;
                self.idle(cluster, d).await;
                cluster.upstreams[i].restart().await;
                format!("upstream {i}, down {:.1} s", d.as_secs_f64())
            }
            Kind::SlowConsumer => {
                let slot = self.rng.random_range(0..cluster.nodes.len());
                let started = Instant::now();
                let (_, told) =
                    load::slow_consumer(cluster.nodes[slot].listen, 16 << 10, Duration::from_secs(30)).await;
                if !told {
                    self.trouble.push(format!("the slow consumer on slot {slot} at {at:.0} s was never closed"));
                }
                let took = started.elapsed().as_millis();
                format!("on {}, closed {}after {took} ms", cluster.nodes[slot].id, if told { "" } else { "NOT " })
            }
            Kind::ConnectionFlood => {
                let slot = self.rng.random_range(0..cluster.nodes.len());
                let d = self.secs(3.0, 10.0);
                let (refused, spoke) = flood(cluster.nodes[slot].listen, FLOOD, d).await;
                if refused < FLOOD - MAX_CONNECTIONS || spoke > 0 {
                    self.trouble.push(format!(
                        "flood of {FLOOD} on slot {slot} at {at:.0} s: {refused} refused (want at least {}), {spoke} \
                         got bytes",
                        FLOOD - MAX_CONNECTIONS
                    ));
                }
                format!("{FLOOD} on {} for {:.1} s: {refused} refused", cluster.nodes[slot].id, d.as_secs_f64())
            }
        };
        self.last_lifted = Instant::now();
        let line = format!("t={at:>6.1} s  {kind:?}: {what}");
        println!("soak: {line}");
        self.log.push(line);
        cluster.wait_ready().await;
        load.wait_flowing(FLOWING).await;
    }

    /// Waits `d`, sampling when a sample is due.
    async fn idle(&mut self, cluster: &Cluster, d: Duration) {
        let until = Instant::now() + d;
        loop {
            if self.last_sample.is_none_or(|last| last.elapsed() >= SAMPLE_EVERY) {
                self.sample(cluster).await;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep((until - now).min(Duration::from_secs(1))).await;
        }
    }

    /// Samples every running node and Redis.
    async fn sample(&mut self, cluster: &Cluster) {
        self.last_sample = Some(Instant::now());
        let nodes: Vec<NodeSample> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                let pid = n.pid()?;
                Some(NodeSample { id: n.id.clone(), rss_kib: rss_kib(pid)?, fds: fds(pid)? })
            })
            .collect();
        let redis_used = redis_used_memory(cluster.redis().addr()).await;
        let sample = Sample { at: self.elapsed(), nodes, redis_used };
        let nodes: Vec<String> =
            sample.nodes.iter().map(|n| format!("{} {} MiB {} fds", n.id, mib(n.rss_kib), n.fds)).collect();
        let redis = sample.redis_used.map_or("-".to_owned(), |b| format!("{} MiB", mib(b / 1024)));
        println!("soak: t={:>6.1} s  {}; redis {redis}", sample.at.as_secs_f64(), nodes.join(", "));
        self.samples.push(sample);
    }

    /// The soak's report: faults, memory and descriptors, and the checker's verdict.
    pub fn report(&self, checker: &Report, verdict: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== soak report");
        let _ = writeln!(
            out,
            "seed {} (PPP_SOAK_SEED={} replays the schedule), length {:.1} min, {} samples every {} s",
            self.settings.seed,
            self.settings.seed,
            self.settings.length.as_secs_f64() / 60.0,
            self.samples.len(),
            SAMPLE_EVERY.as_secs()
        );
        let total: usize = self.counts.values().sum();
        let counts: Vec<String> = KINDS.iter().map(|k| format!("{k:?} {}", self.counts.get(k).unwrap_or(&0))).collect();
        let _ = writeln!(out, "faults injected: {total} ({})", counts.join(", "));
        for line in &self.log {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "nodes (RSS compared from the first sample {} s after each start):", WARM_UP.as_secs());
        for line in self.node_lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "redis: {}", self.redis_line());
        let _ = writeln!(
            out,
            "messages: sent {}, delivered {}, echoed {}, lost {}, echo missing {}, exempt after a node close {}, \
             echo lost with a killed upstream {}, duplicates {} (echoes {}), misrouted {}; sockets {}, closed by the \
             node {} {:?}",
            checker.sent,
            checker.delivered,
            checker.echoed,
            checker.lost.len(),
            checker.echo_missing.len(),
            checker.exempt,
            checker.upstream_died_holding,
            checker.duplicates,
            checker.echo_duplicates,
            checker.misrouted.len(),
            checker.conns,
            checker.closed_by_node,
            checker.close_reasons
        );
        for lost in checker.lost.iter().take(10) {
            let _ = writeln!(out, "  lost: {lost}");
        }
        for trouble in &self.trouble {
            let _ = writeln!(out, "trouble: {trouble}");
        }
        let _ = writeln!(out, "checker: {verdict}");
        out
    }

    /// Per node incarnation: lifetime, RSS drift and trend after its warm-up, descriptors.
    fn node_lines(&self) -> Vec<String> {
        let last_at = self.samples.last().map_or(Duration::ZERO, |s| s.at);
        let mut lines = Vec::new();
        for (id, started) in &self.node_started {
            let series: Vec<(Duration, &NodeSample)> =
                self.samples.iter().filter_map(|s| Some((s.at, s.nodes.iter().find(|n| n.id == *id)?))).collect();
            let (Some(first), Some(last)) = (series.first(), series.last()) else { continue };
            let whole = *started == Duration::ZERO && last.0 == last_at;
            let life = format!(
                "{id} ({}, {:.0}-{:.0} s)",
                if whole { "never restarted" } else { "partial life" },
                started.as_secs_f64(),
                last.0.as_secs_f64()
            );
            let warm: Vec<(f64, f64)> = series
                .iter()
                .filter(|(at, _)| *at >= *started + WARM_UP)
                .map(|(at, n)| (at.as_secs_f64() / 60.0, n.rss_kib as f64))
                .collect();
            let rss = match (warm.first(), warm.last()) {
                (Some(a), Some(b)) if warm.len() >= 2 => format!(
                    "RSS {} MiB at {:.0} s -> {} MiB at {:.0} s: drift {:+.1} MiB ({:+.1} %), trend {:+.0} KiB/min, peak {} MiB",
                    mib(a.1 as u64),
                    a.0 * 60.0,
                    mib(b.1 as u64),
                    b.0 * 60.0,
                    (b.1 - a.1) / 1024.0,
                    (b.1 - a.1) / a.1 * 100.0,
                    slope(&warm),
                    mib(series.iter().map(|(_, n)| n.rss_kib).max().unwrap_or(0))
                ),
                _ => format!(
                    "RSS {} -> {} MiB (too short a life after its warm-up to compare)",
                    mib(first.1.rss_kib),
                    mib(last.1.rss_kib)
                ),
            };
            let fd_max = series.iter().map(|(_, n)| n.fds).max().unwrap_or(0);
            lines.push(format!("{life}: {rss}; fds {} -> {} (max {fd_max})", first.1.fds, last.1.fds));
        }
        lines
    }

    /// Redis's `used_memory`: first, last and peak sample (a restart empties it).
    fn redis_line(&self) -> String {
        let used: Vec<(Duration, u64)> = self.samples.iter().filter_map(|s| Some((s.at, s.redis_used?))).collect();
        let (Some(first), Some(last)) = (used.first(), used.last()) else { return "no sample".to_owned() };
        let peak = used.iter().map(|(_, b)| *b).max().unwrap_or(0);
        format!(
            "used_memory {:.2} MiB at {:.0} s -> {:.2} MiB at {:.0} s, peak {:.2} MiB{}",
            first.1 as f64 / 1048576.0,
            first.0.as_secs_f64(),
            last.1 as f64 / 1048576.0,
            last.0.as_secs_f64(),
            peak as f64 / 1048576.0,
            if self.redis_lost_data { " (restarted empty during the run)" } else { "" }
        )
    }
}

/// Lifts what a fault that panicked half way may have left in force: the proxies' faults and a
/// frozen Redis (best effort; SIGCONT to a running Redis does nothing).
fn lift_links(cluster: &Cluster) {
    for link in cluster.redis_links.iter().chain(&cluster.upstream_links) {
        link.set(Fault::None);
    }
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| cluster.redis().resume()));
}

/// The checker's verdict as a line: what broke, or `ok`.
pub fn verdict(report: &Report) -> String {
    match std::panic::catch_unwind(AssertUnwindSafe(|| report.assert_ok())) {
        Ok(()) => "ok: every invariant held".to_owned(),
        Err(panic) => format!("FAILED: {}", panic_message(&*panic)),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Opens `n` silent connections to `addr`, holds them for `hold`, and closes them; returns how
/// many the node closed meanwhile (refused past `--max-connections`) and how many received
/// bytes (a refused socket is closed without a word).
async fn flood(addr: SocketAddr, n: usize, hold: Duration) -> (usize, usize) {
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for _ in 0..n {
        let Ok(mut stream) = TcpStream::connect(addr).await else { continue };
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut b = [0; 1];
            tokio::select! {
                read = stream.read(&mut b) => Some(read.map_or(0, |k| k)),
                () = stop.cancelled() => None,
            }
        }));
    }
    tokio::time::sleep(hold).await;
    stop.cancel();
    let (mut refused, mut spoke) = (0, 0);
    for reader in readers {
        match reader.await {
            Ok(Some(0)) => refused += 1,
            Ok(Some(_)) => spoke += 1,
            _ => {}
        }
    }
    (refused, spoke)
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    crate::common::process::proc_status_kib(pid, "VmRSS")
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Redis's `used_memory`, straight to Redis (not through the nodes' proxies); none when it does
/// not answer within a second (down, or frozen).
async fn redis_used_memory(addr: SocketAddr) -> Option<u64> {
    let ask = async {
        let client = redis::Client::open(format!("redis://{addr}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.ok()?;
        info.lines().find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

/// KiB as whole MiB, rounded.
fn mib(kib: u64) -> u64 {
    (kib + 512) / 1024
}

/// The least-squares slope of `(x, y)` points: here KiB per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}
