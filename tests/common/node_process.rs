//! A node run as a child process of the real `ppp` binary, so it can be killed with SIGKILL or
//! drained with SIGTERM, and its memory (`/proc/{pid}/status`) is its own: the chaos cluster's
//! nodes, the victim of a reap, the node whose memory a bad length prefix must not grow.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    client::Client,
    process::{TempDir, free_port, proc_status_kib, signal},
    wait::eventually,
};

/// The node id of each start of a [`NodeProc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIds {
    /// A new id each start, `n{slot}-{incarnation}`, as a restarted process with the default
    /// `--node-id` is a new node (docs/operations.md).
    PerStart,
    /// This id every start: a fixed `--node-id`, whose every start is a new run of one node.
    Fixed(String),
}

/// One node slot: a `ppp` child process on fixed (free) ports. Each start is a new
/// incarnation, with the id [`NodeIds`] gives it. Killed on drop.
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
    /// Each incarnation's id.
    ids: NodeIds,
    /// Where each incarnation's log goes.
    dir: PathBuf,
    /// The temporary folder `dir` is, when the slot owns it (removed on drop).
    _temp: Option<TempDir>,
    child: Option<Child>,
}

impl NodeProc {
    /// A slot (not started) with these flags and extra environment, logging into `dir`.
    pub fn new(slot: usize, args: Vec<String>, env: Vec<(String, String)>, ids: NodeIds, dir: &Path) -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (id, incarnation, dir, _temp, child) = (String::new(), 0, dir.to_owned(), None, None);
        Self { slot, listen, admin, id, incarnation, args, env, ids, dir, _temp, child }
    }

    /// One node `id` with these flags, started and ready (its `upstreams` usable), logging into
    /// a temporary folder of its own.
    pub async fn start(id: &str, args: &[&str], upstreams: usize) -> Self {
        let temp = TempDir::new("ppp-node");
        let args = args.iter().map(|&a| a.to_owned()).collect();
        let mut node = Self::new(0, args, Vec::new(), NodeIds::Fixed(id.to_owned()), temp.path());
        node._temp = Some(temp);
        node.spawn();
        node.wait_ready(&reqwest::Client::new(), upstreams).await;
        node
    }

    /// Starts a new incarnation (does not wait for it to be ready).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        self.id = match &self.ids {
            NodeIds::Fixed(id) => id.clone(),
            NodeIds::PerStart => format!("n{}-{}", self.slot, self.incarnation),
        };
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
        match self.ids {
            NodeIds::Fixed(_) => self.dir.join(format!("{}.{}.log", self.id, self.incarnation)),
            NodeIds::PerStart => self.dir.join(format!("{}.log", self.id)),
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

    /// A field of the running process's `/proc/{pid}/status`, in KiB (`VmRSS`, `VmSize`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid().expect("running"), field).expect("the node's /proc/{pid}/status")
    }

    /// Waits until the node has read every byte its clients sent: the receive queue of each of its
    /// established sockets (`/proc/net/tcp`, the node's side) is empty.
    pub async fn wait_read_all(&self) {
        let port = format!(":{:04X}", self.listen.port());
        eventually("the node read everything sent to it", || {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            table.lines().skip(1).all(|row| {
                let cols: Vec<&str> = row.split_whitespace().collect();
                let (local, state, queues) = (cols[1], cols[3], cols[4]);
                let rx_queue = queues.split(':').nth(1).unwrap();
                !(local.ends_with(&port) && state == "01") || u64::from_str_radix(rx_queue, 16).unwrap() == 0
            })
        })
        .await;
    }

    /// A line client connected to its `--listen`.
    pub async fn connect(&self) -> Client {
        Client::connect_to(self.listen).await
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
