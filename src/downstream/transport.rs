//! What a socket is before its bytes are messages: `open` reads its PROXY header and makes its
//! TLS handshake, as configured ([`Edge`]), and hands back the `Transport` its reader and
//! writer use, with the addresses and TLS server name the socket is known by.
//!
//! Both steps run in the socket's own task, before `opened` is sent, so one slow or bad client
//! never holds up the accept loop or anybody else. The plain path stays what it was: the reader
//! waits for readiness on the TCP socket and reads into a buffer that exists only while bytes
//! are waiting (`Inbound` for `OwnedReadHalf`). Over TLS it waits in the same way, and the
//! records it reads are decrypted straight into that buffer (`tls::TlsInbound`): an idle TLS
//! socket holds no read buffer either.

use std::{io, net::SocketAddr, sync::Arc};

use bytes::BufMut;
use ipnet::IpNet;
use tokio::{
    io::Interest,
    net::{TcpStream, tcp::OwnedReadHalf},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    proxy_header,
    tls::{Tls, TlsSocket},
};
use crate::{metrics as m, socket::CloseReason};

/// How sockets arrive at this node: `--proxy-protocol` with `--proxy-from`, `--tls-cert`.
#[derive(Clone, Default)]
pub struct Edge {
    /// With `--proxy-protocol`, the peers that may send a PROXY header (and must).
    pub proxy_from: Option<Arc<[IpNet]>>,
    /// With `--tls-cert`, downstream TLS.
    pub tls: Option<Tls>,
    /// Cancelled when the node stops accepting (a drain): a socket whose header or handshake is
    /// not done by then is refused (`shutdown`), so a drain never waits for a socket it did not
    /// know of.
    pub stop: CancellationToken,
}

impl Edge {
    /// Whether sockets come as they are: no PROXY header, no TLS, nothing to do before `opened`.
    pub(crate) fn is_plain(&self) -> bool {
        self.proxy_from.is_none() && self.tls.is_none()
    }
}

/// A socket's byte stream: the TCP socket, or TLS over it.
pub(crate) enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, with its session (boxed: see [`TlsSocket`]).
    Tls(Box<TlsSocket>),
}

/// A socket that passed [`open`]: how it is known, and its stream.
pub(crate) struct Opened {
    /// The client's address: the PROXY header's, else the TCP peer's.
    pub(crate) remote: SocketAddr,
    /// The address the client connected to: the PROXY header's, else the listener's.
    pub(crate) local: SocketAddr,
    /// The SNI name of a TLS client that sent one.
    pub(crate) tls_server_name: Option<Box<str>>,
    /// Its stream.
    pub(crate) transport: Transport,
}

/// Reads the socket's PROXY header and makes its TLS handshake, as `edge` says, unless the node
/// stops accepting first. `Err(None)`: the client was gone before anything happened;
/// `Err(Some(reason))`: the socket is refused with that reason, counted in
/// `ppp_sockets_closed_total` (it was never opened: no upstream hears of it).
pub(crate) async fn open(edge: &Edge, tcp: TcpStream) -> Result<Opened, Option<CloseReason>> {
    tokio::select! {
        biased;
        () = edge.stop.cancelled() => Err(Some(refused(CloseReason::Shutdown))),
        opened = open_edge(edge, tcp) => opened,
    }
}

/// [`open`] itself.
async fn open_edge(edge: &Edge, mut tcp: TcpStream) -> Result<Opened, Option<CloseReason>> {
    let (mut remote, mut local) = addresses(&tcp).ok_or(None)?;
    if let Some(proxy_from) = &edge.proxy_from {
        match proxy_header::read(&mut tcp, remote.ip(), proxy_from).await {
            Ok(proxied) => {
                metrics::counter!(m::PROXY_HEADERS, "outcome" => if proxied.is_some() { "ok" } else { "local" })
                    .increment(1);
                if let Some(p) = proxied {
                    (remote, local) = (p.remote, p.local);
                }
            }
            Err(e) => {
                debug!(client.addr = %remote, error = %e, "PROXY header refused; socket closed");
                metrics::counter!(m::PROXY_HEADERS, "outcome" => e.outcome()).increment(1);
                return Err(Some(refused(CloseReason::ProxyProtocol)));
            }
        }
    }
    let Some(tls) = &edge.tls else {
        return Ok(Opened { remote, local, tls_server_name: None, transport: Transport::Plain(tcp) });
    };
    match tls.handshake(tcp).await {
        Ok((socket, tls_server_name)) => {
            Ok(Opened { remote, local, tls_server_name, transport: Transport::Tls(socket) })
        }
        Err(e) => {
            debug!(client.addr = %remote, error = %e, "TLS handshake failed; socket closed");
            Err(Some(refused(CloseReason::TlsHandshake)))
        }
    }
}

/// [`open`] on an [`Edge::is_plain`] edge, with nothing to wait for: the TCP socket as it is.
/// `Err(None)`: the client is already gone.
pub(crate) fn plain(tcp: TcpStream) -> Result<Opened, Option<CloseReason>> {
    let (remote, local) = addresses(&tcp).ok_or(None)?;
    Ok(Opened { remote, local, tls_server_name: None, transport: Transport::Plain(tcp) })
}

/// The TCP peer's and the listener's addresses (turning Nagle off on the way); `None` when the
/// client is already gone: it was never a socket of ours.
fn addresses(tcp: &TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    let addresses = (tcp.peer_addr().ok()?, tcp.local_addr().ok()?);
    let _ = tcp.set_nodelay(true);
    Some(addresses)
}

/// Counts a socket closed before it opened.
fn refused(reason: CloseReason) -> CloseReason {
    metrics::counter!(m::SOCKETS_CLOSED, "reason" => reason.as_str()).increment(1);
    reason
}

/// What a socket's reader reads from: wait until there may be bytes, then take them without
/// waiting, so the buffer is reserved only when bytes are there.
pub(crate) trait Inbound {
    /// Resolves when a read may find bytes (or the end of the stream).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing read is lost.
    async fn ready(&mut self) -> io::Result<()>;

    /// Reads what is there into `buf` without waiting: `Ok(0)` at the end of the stream,
    /// `WouldBlock` when nothing is.
    fn try_read_buf<B: BufMut>(&mut self, buf: &mut B) -> io::Result<usize>;
}

impl Inbound for OwnedReadHalf {
    async fn ready(&mut self) -> io::Result<()> {
        self.readable().await
    }

    /// A read that found fewer bytes than it had room for emptied the socket: the readiness is
    /// cleared then, so the next [`Inbound::ready`] waits for new bytes instead of finding out
    /// with one more read that fails (what HAProxy does too). Tokio clears it only if no new
    /// bytes arrived since it was seen, so nothing is missed.
    fn try_read_buf<B: BufMut>(&mut self, buf: &mut B) -> io::Result<usize> {
        let room = buf.chunk_mut().len();
        let mut read = 0;
        let result = self.as_ref().try_io(Interest::READABLE, || {
            read = OwnedReadHalf::try_read_buf(self, buf)?;
            if read > 0 && read < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(read) }
        });
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
            other => other,
        }
    }
}
