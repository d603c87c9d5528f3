//! The processes of a chaos cluster: a `redis-server` that can be killed, frozen, snapshotted and
//! restarted (empty or from an old snapshot), and nodes run as child processes of the real `ppp`
//! binary, so they can be killed with SIGKILL or drained with SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tokio::time::Instant;

/// The ports the harness picks from for processes that go down and come back on the same port
/// (Redis, nodes, upstreams): below the kernel's ephemeral range (32768-60999 by default on
/// Linux), from which every `bind(0)` and every outgoing connection takes its port. Were one of
/// those ports ephemeral, another test could take it while its process is down, and this test's
/// clients, reconnecting, would reach that other test's cluster.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port from [`PORTS`] (bound and released; the small race is accepted).
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends a signal (`-TERM`, `-STOP`, `-CONT`) to a process, as `kill` does; returns whether it
/// was delivered.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success())
}

/// A `redis-server` on a free port, with its own data directory (for `SAVE` and restarts from a
/// snapshot). Killed on drop.
pub struct RedisProc {
    /// Its port.
    pub port: u16,
    /// Its data directory (`dump.rdb` lives there).
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProc {
    /// Starts one (empty) in `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> Self {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { port: free_port(), dir, child: None };
        redis.start_again().await;
        redis
    }

    /// Starts it on its port, loading `dump.rdb` if there is one, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while !self.ping().await {
            assert!(started.elapsed() < Duration::from_secs(15), "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL): what it held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        assert!(signal(self.child.as_ref().expect("running").id(), "-STOP"), "SIGSTOP to redis-server");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        assert!(signal(self.child.as_ref().expect("running").id(), "-CONT"), "SIGCONT to redis-server");
    }

    /// Takes a snapshot now (`SAVE`) and keeps a copy of it; returns the copy's path.
    pub async fn snapshot(&self, name: &str) -> PathBuf {
        let _: () = redis::cmd("SAVE").query_async(&mut self.conn().await).await.unwrap();
        let copy = self.dir.join(name);
        std::fs::copy(self.dir.join("dump.rdb"), &copy).unwrap();
        copy
    }

    /// Makes `snapshot` what the next start loads (call it while Redis is down).
    pub fn restore(&self, snapshot: &Path) {
        assert!(self.child.is_none(), "restore a snapshot while redis-server is down");
        std::fs::copy(snapshot, self.dir.join("dump.rdb")).unwrap();
    }

    /// Forgets any snapshot, so the next start is empty.
    pub fn forget_data(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A connection, as `redis-cli` would have.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}", self.addr())).unwrap();
        client.get_multiplexed_async_connection().await.expect("redis answers")
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(format!("redis://{}", self.addr())) else { return false };
        let connect = tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection());
        let Ok(Ok(mut c)) = connect.await else { return false };
        redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOP) process too.
        self.kill();
    }
}

/// One node slot: a `ppp` child process on fixed (free) ports. Each start is a new
/// incarnation with a new node id (`n{slot}-{incarnation}`), as a restarted process with the
/// default `--node-id` is a new node (docs/operations.md), unless the slot has a fixed id
/// (`n{slot}`, every start: a fixed `--node-id`, whose every start is a new run of one node).
/// Killed on drop.
pub struct NodeProc {
    /// Its index in the cluster.
    pub slot: usize,
    /// `--listen`: the same for every incarnation, as a restarted container keeps its port.
    pub listen: SocketAddr,
    /// `--admin-listen`.
    pub admin: SocketAddr,
    /// The id of the current (or last) incarnation.
    pub id: String,
    /// Starts so far.
    incarnation: u32,
    /// Every flag but the node id.
    args: Vec<String>,
    /// Extra environment of every incarnation (the test-only `PPP_TEST_*` knobs).
    env: Vec<(String, String)>,
    /// Whether every incarnation has the same id, `n{slot}`.
    fixed_id: bool,
    /// Where each incarnation's log goes.
    dir: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    /// A slot (not started) with these flags and extra environment; `fixed_id`: every
    /// incarnation is `n{slot}`.
    pub fn new(slot: usize, args: Vec<String>, env: Vec<(String, String)>, fixed_id: bool, dir: &Path) -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = dir.to_owned();
        Self { slot, listen, admin, id: String::new(), incarnation: 0, args, env, fixed_id, dir, child: None }
    }

    /// Starts a new incarnation (does not wait for it to be ready).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        self.id =
            if self.fixed_id { format!("n{}", self.slot) } else { format!("n{}-{}", self.slot, self.incarnation) };
        self.incarnation += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ppp"))
            .args(["--node-id", &self.id])
            .args(["--listen", &self.listen.to_string(), "--admin-listen", &self.admin.to_string()])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the ppp binary runs");
        self.child = Some(child);
    }

    /// Where the current incarnation logs (`{id}.log`; with a fixed id, `{id}.{incarnation}.log`,
    /// from 1, so each run keeps its own).
    pub fn log_path(&self) -> PathBuf {
        match self.fixed_id {
            true => self.dir.join(format!("{}.{}.log", self.id, self.incarnation)),
            false => self.dir.join(format!("{}.log", self.id)),
        }
    }

    /// The current incarnation's log lines that contain every one of `needles` (the log so far).
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    /// Whether a process is running in this slot (started, not yet seen to exit).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The current incarnation's process id, while it was not seen to exit (for the soak's
    /// `/proc` samples).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM: the node drains (DESIGN §4).
    pub fn terminate(&self) {
        assert!(signal(self.child.as_ref().expect("running").id(), "-TERM"), "SIGTERM to node {}", self.id);
    }

    /// Waits for the process to exit by itself; fails the test after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < deadline, "node {} did not exit within {deadline:?}", self.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the node is ready (`/readyz`: listening and in touch with Redis) and streams
    /// to `upstreams` usable upstreams (`GET /v1/upstreams`).
    pub async fn wait_ready(&mut self, http: &reqwest::Client, upstreams: usize) {
        let started = Instant::now();
        loop {
            assert!(self.is_running(), "node {} exited; see {}", self.id, self.log_path().display());
            if self.ready(http, upstreams).await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node {} not ready; see {}",
                self.id,
                self.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&self, http: &reqwest::Client, upstreams: usize) -> bool {
        let get = |path: &str| http.get(format!("http://{}{path}", self.admin)).timeout(Duration::from_secs(2)).send();
        if !get("/readyz").await.is_ok_and(|r| r.status().is_success()) {
            return false;
        }
        let Ok(answer) = get("/v1/upstreams").await else { return false };
        let Ok(json) = answer.json::<serde_json::Value>().await else { return false };
        let list = json["upstreams"].as_array().cloned().unwrap_or_default();
        list.len() == upstreams && list.iter().all(|u| u["ready"] == true && u["open"] == true)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}
