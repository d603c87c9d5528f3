//! A real `haproxy` (Debian's package; `scripts/test.sh` installs it) in TCP mode on a free
//! port, in front of one node, with a generated configuration. Killed on drop.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use super::{
    process::{TempDir, free_port},
    wait::eventually,
};

/// A running `haproxy`.
pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts one that forwards every connection to `node` with the `server` line's `options`
    /// (e.g. `send-proxy-v2`, `send-proxy check check-send-proxy inter 100ms`), and waits until it
    /// listens.
    pub async fn start(node: SocketAddr, options: &str) -> Self {
        let dir = TempDir::new("ppp-haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    \
             timeout server 1m\n\nfrontend edge\n    bind {addr}\n    default_backend nodes\n\nbackend nodes\n    \
             server node {node} {options}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        // Debian puts it in /usr/sbin, which not every PATH has.
        let spawn = |bin: &str| {
            Command::new(bin).arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
        };
        let child = spawn("haproxy")
            .or_else(|_| spawn("/usr/sbin/haproxy"))
            .expect("haproxy is installed (scripts/test.sh installs it)");
        // Not by connecting: that would make a socket on the node. Listening, it holds the port.
        eventually("haproxy listens", || std::net::TcpListener::bind(addr).is_err()).await;
        Self { addr, child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
