//! `ppp ready`: asks a node's own `/readyz`, for container health checks (the runtime image holds
//! no curl).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The admin API could not be reached.
    #[error("{target}: {reason}")]
    Io {
        /// Where the probe went.
        target: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// It answered, and not 200.
    #[error("not ready: {0}")]
    NotReady(String),
    /// It did not answer within [`PROBE_TIMEOUT`].
    #[error("{0} did not answer in time")]
    Timeout(SocketAddr),
}

/// Longest the whole probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `GET /readyz` of the admin API bound to `admin` (an unspecified address such as
/// `0.0.0.0` is asked on loopback).
///
/// # Errors
/// Why the node is not ready: it did not answer, or answered something other than 200.
pub async fn ready(admin: SocketAddr) -> Result<(), ProbeError> {
    let target = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port()),
        _ => admin,
    };
    let ask = async {
        let io = |e: std::io::Error| ProbeError::Io { target, reason: e.to_string() };
        let mut stream = TcpStream::connect(target).await.map_err(io)?;
        let request = format!("GET /readyz HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        // The status line and the short JSON body fit in far less.
        stream.take(4096).read_to_end(&mut answer).await.map_err(io)?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            Err(ProbeError::NotReady(format!("{status} {body}")))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask).await.unwrap_or(Err(ProbeError::Timeout(target)))
}
