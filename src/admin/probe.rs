//! `ppp ready` and `ppp drain`: ask a node's own admin API, for container health checks and
//! Kubernetes' `preStop` hook (the runtime image holds no curl, nor a shell).

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
    /// It answered, and not 2xx: the status line and the body.
    #[error("{what}: {answer}")]
    Refused {
        /// What was not done (`not ready`, `drain not started`).
        what: &'static str,
        /// The status line and the body.
        answer: String,
    },
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
/// Why the node is not ready: it did not answer, or answered something other than 2xx.
pub async fn ready(admin: SocketAddr) -> Result<(), ProbeError> {
    ask(admin, "GET /readyz", None, "not ready").await
}

/// Asks `POST /v1/drain` of the admin API bound to `admin`, with the bearer `token` if any:
/// the node starts its graceful drain (as on SIGTERM, which then joins the same drain). Returns
/// once the drain has begun.
///
/// # Errors
/// The node did not answer, or answered something other than 2xx.
pub async fn drain(admin: SocketAddr, token: Option<&str>) -> Result<(), ProbeError> {
    ask(admin, "POST /v1/drain", token, "drain not started").await
}

/// Sends one request line (no body) and expects a 2xx answer, within [`PROBE_TIMEOUT`].
async fn ask(admin: SocketAddr, request_line: &str, token: Option<&str>, what: &'static str) -> Result<(), ProbeError> {
    let target = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port()),
        _ => admin,
    };
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let ask = async {
        let io = |e: std::io::Error| ProbeError::Io { target, reason: e.to_string() };
        let mut stream = TcpStream::connect(target).await.map_err(io)?;
        let request = format!(
            "{request_line} HTTP/1.1\r\nhost: {target}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        // The status line and the short JSON body fit in far less.
        stream.take(4096).read_to_end(&mut answer).await.map_err(io)?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1).is_some_and(|code| code.starts_with('2')) {
            Ok(())
        } else {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            Err(ProbeError::Refused { what, answer: format!("{status} {body}") })
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask).await.unwrap_or(Err(ProbeError::Timeout(target)))
}
