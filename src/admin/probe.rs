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

/// Longest the whole probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `GET /readyz` of the admin API bound to `admin` (an unspecified address such as
/// `0.0.0.0` is asked on loopback).
///
/// # Errors
/// Why the node is not ready: it did not answer, or answered something other than 200.
pub async fn ready(admin: SocketAddr) -> Result<(), String> {
    ask(admin, "GET /readyz", None).await.map_err(|e| format!("not ready: {e}"))
}

/// Asks `POST /v1/drain` of the admin API bound to `admin`, with the bearer `token` if any:
/// the node starts its graceful drain (as on SIGTERM, which then joins the same drain). Returns
/// once the drain has begun.
///
/// # Errors
/// The node did not answer, or answered something other than 202.
pub async fn drain(admin: SocketAddr, token: Option<&str>) -> Result<(), String> {
    ask(admin, "POST /v1/drain", token).await.map_err(|e| format!("drain not started: {e}"))
}

/// Sends one request line (no body) and expects a 2xx answer, within [`PROBE_TIMEOUT`].
async fn ask(admin: SocketAddr, request_line: &str, token: Option<&str>) -> Result<(), String> {
    let target = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port()),
        _ => admin,
    };
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let ask = async {
        let mut stream = TcpStream::connect(target).await.map_err(|e| format!("{target}: {e}"))?;
        let request = format!(
            "{request_line} HTTP/1.1\r\nhost: {target}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // The status line and the short JSON body fit in far less.
        stream.take(4096).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1).is_some_and(|code| code.starts_with('2')) {
            Ok(())
        } else {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            Err(format!("{status} {body}"))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask).await.unwrap_or_else(|_| Err(format!("{target} did not answer in time")))
}
