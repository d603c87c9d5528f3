//! A real `redis-server` on a free port, for one test or one chaos cluster: it can be killed,
//! frozen, snapshotted and restarted (empty, or from a snapshot) on the same port. Killed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    process::{TempDir, free_port, signal},
    wait::eventually_async,
};

/// A `redis-server` with its own data directory (for `SAVE` and restarts from a snapshot).
pub struct RedisServer {
    /// Its port: not ephemeral, so that it comes back on it after a kill (see [`free_port`]).
    pub port: u16,
    /// Its data directory (`dump.rdb` lives there).
    dir: PathBuf,
    /// The temporary folder `dir` is in, when the server owns it (removed on drop).
    _temp: Option<TempDir>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one (empty, no persistence) in a temporary folder of its own and waits until it
    /// answers.
    pub async fn start() -> Self {
        let temp = TempDir::new("ppp-redis");
        let mut server = Self::new(temp.path());
        server._temp = Some(temp);
        server.restart().await;
        server
    }

    /// Starts one (empty) with its data in `dir/redis` and waits until it answers.
    pub async fn start_in(dir: &Path) -> Self {
        let mut server = Self::new(dir);
        server.restart().await;
        server
    }

    fn new(dir: &Path) -> Self {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        Self { port: free_port(), dir, _temp: None, child: None }
    }

    /// Starts it (again) on its port, loading `dump.rdb` if there is one (a [`Self::snapshot`]
    /// made it, or [`Self::restore`]; otherwise it starts empty), and waits until it answers.
    pub async fn restart(&mut self) {
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
        eventually_async("redis-server answers", || async { self.ping().await }).await;
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

    /// Its URL for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// A connection, as `redis-cli` would have.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.expect("redis answers")
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let connect = tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection());
        let Ok(Ok(mut c)) = connect.await else { return false };
        redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOP) process too.
        self.kill();
    }
}
