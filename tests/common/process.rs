//! What every helper that runs a child process needs: ports it can come back on, signals, and a
//! temporary folder.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The ports picked for processes that go down and come back on the same port (Redis, nodes,
/// upstreams): below the kernel's ephemeral range (32768-60999 by default on Linux), from which
/// every `bind(0)` and every outgoing connection takes its port. Were one of those ports
/// ephemeral, another test could take it while its process is down, and this test's clients,
/// reconnecting, would reach that other test's process.
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
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success())
}

/// A field of `/proc/{pid}/status`, in KiB (`VmRSS`, `VmSize`, `VmHWM`); `None` once the
/// process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty folder under the system's temporary folder, named `{prefix}-{uuid}`.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct ChildProcess(Option<std::process::Child>);

impl ChildProcess {
    /// Spawns `command`, its output discarded; fails the test, saying `what` is missing, when it
    /// cannot.
    pub fn spawn(command: &mut Command, what: &str) -> Self {
        let child = command.stdout(std::process::Stdio::null()).spawn();
        Self(Some(child.unwrap_or_else(|e| panic!("{what} runs (scripts/test.sh installs it): {e}"))))
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it was not killed.
    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Its process id, while it was not killed.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(std::process::Child::id)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
