//! The PROXY protocol (`--proxy-protocol`): behind a TCP load balancer (HAProxy `send-proxy` or
//! `send-proxy-v2`, AWS NLB, Envoy) every socket starts with a header, text (v1) or binary (v2),
//! that names the client the balancer accepted. Both versions are accepted, told apart by their
//! signature.
//!
//! The header is read with `peek` and consumed exactly: bytes are taken from the socket only once
//! they are known to be header bytes (the header does not end within them), so a header split over
//! any number of reads is put together, and the client's first bytes after it (its TLS
//! `ClientHello`, or its first message) stay in the socket for whoever reads next: nothing read
//! too far has to be handed over, so nothing can be lost. The parsing itself is the `ppp` crate's.
//!
//! Limits: the whole header within [`HEADER_TIMEOUT`], a v1 header within [`MAX_V1`] bytes (the
//! specification's own bound), a v2 header within [`MAX_V2`] bytes; only peers in `--proxy-from`
//! may send one. A v2 `LOCAL` header (a balancer's own connection, e.g. a health check with
//! HAProxy's `check-send-proxy`) and a v1 `UNKNOWN` one carry no client: the socket keeps the
//! addresses of the TCP connection, as the specification says.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use ppp_header::{v1, v2};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// How long a socket may take to send its whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest v1 header, `\r\n` included (the specification's bound).
pub const MAX_V1: usize = 107;
/// Longest v2 header taken: its 16 fixed bytes and up to 4080 bytes of addresses and TLVs. The
/// format allows 64 KiB; balancers send a few dozen bytes (AWS NLB's TLVs included), and this
/// bounds what a socket can make the node buffer before it is known.
pub const MAX_V2: usize = 4096;
/// The v2 signature: its first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Bytes peeked at a time.
const PEEK_CHUNK: usize = 512;

/// `--proxy-from`'s default: loopback and the private ranges, where balancers live.
pub const DEFAULT_PROXY_FROM: [&str; 6] =
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// Why a socket's PROXY header was refused. Downstream-side: the peer's doing (or its
/// balancer's); the socket is closed with reason `proxy_protocol` and nothing else is disturbed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The peer is not in `--proxy-from`: it may not say who the client is.
    #[error("downstream: {peer} is not in --proxy-from and may not send a PROXY header")]
    Untrusted {
        /// The peer's address.
        peer: IpAddr,
    },
    /// The header did not complete within [`HEADER_TIMEOUT`].
    #[error("downstream: no complete PROXY header within {} s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    /// The socket does not start with a PROXY header signature.
    #[error("downstream: the socket does not start with a PROXY protocol header")]
    Missing,
    /// The header is longer than [`MAX_V1`] or [`MAX_V2`].
    #[error("downstream: the PROXY header is longer than {max} bytes")]
    TooLong {
        /// The bound it broke.
        max: usize,
    },
    /// The header has the signature but does not parse.
    #[error("downstream: invalid PROXY v{version} header: {detail}")]
    Invalid {
        /// 1 or 2.
        version: u8,
        /// What the parser said.
        detail: String,
    },
    /// The client closed before its header was complete.
    #[error("downstream: the client closed before its PROXY header was complete")]
    Closed,
    /// Reading the socket failed.
    #[error("downstream: reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyHeaderError {
    /// The `outcome` label of [`crate::metrics::PROXY_HEADERS`].
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Untrusted { .. } => "untrusted",
            Self::Timeout => "timeout",
            Self::Missing | Self::Invalid { .. } => "invalid",
            Self::TooLong { .. } => "too_long",
            Self::Closed | Self::Io(_) => "client_closed",
        }
    }
}

/// The addresses a header carried: the client's, and the one it connected to on the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    /// The client's address (becomes the socket's `remote_addr`).
    pub remote: SocketAddr,
    /// The address the client connected to (becomes the socket's `local_addr`).
    pub local: SocketAddr,
}

/// Whether `peer` may send a PROXY header. An IPv4 peer seen on a dual-stack listener
/// (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
pub fn trusted(peer: IpAddr, proxy_from: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    proxy_from.iter().any(|net| net.contains(&peer))
}

/// Reads the PROXY header at the start of `tcp`, from `peer`, consuming exactly its bytes.
/// `Ok(None)`: a header without a client (v2 `LOCAL`, v1 `UNKNOWN`, a v2 address family other
/// than IPv4 and IPv6): the socket keeps its TCP addresses.
///
/// # Errors
/// [`ProxyHeaderError`]: the socket is to be closed with reason `proxy_protocol`.
pub async fn read(
    tcp: &mut TcpStream,
    peer: IpAddr,
    proxy_from: &[IpNet],
) -> Result<Option<Proxied>, ProxyHeaderError> {
    if !trusted(peer, proxy_from) {
        return Err(ProxyHeaderError::Untrusted { peer });
    }
    tokio::time::timeout(HEADER_TIMEOUT, read_header(tcp)).await.map_err(|_| ProxyHeaderError::Timeout)?
}

/// [`read`] without its checks: peeks, parses, and consumes what is known to be header.
async fn read_header(tcp: &mut TcpStream) -> Result<Option<Proxied>, ProxyHeaderError> {
    // The header bytes consumed so far, followed by what the last peek saw.
    let mut seen: Vec<u8> = Vec::new();
    let mut chunk = [0u8; PEEK_CHUNK];
    loop {
        let consumed = seen.len();
        let n = tcp.peek(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        seen.extend_from_slice(&chunk[..n]);
        match parse(&seen)? {
            Parsed::Incomplete => {
                // The header goes on past these bytes: they are all header, take them.
                tcp.read_exact(&mut chunk[..n]).await?;
            }
            Parsed::Complete { len, proxied } => {
                // Only the header's own bytes; what follows stays in the socket.
                tcp.read_exact(&mut chunk[..len - consumed]).await?;
                return Ok(proxied);
            }
        }
    }
}

/// What the bytes seen so far make.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A header that goes on past them.
    Incomplete,
    /// A whole header of `len` bytes.
    Complete {
        /// Its length, from the first byte of the socket.
        len: usize,
        /// What it said.
        proxied: Option<Proxied>,
    },
}

/// Tells the version by its signature and parses the header, from the start of `seen`.
fn parse(seen: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let starts = |signature: &[u8]| seen.starts_with(signature) || signature.starts_with(seen);
    if starts(V2_SIGNATURE) {
        parse_v2(seen)
    } else if starts(V1_PREFIX) {
        parse_v1(seen)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// A v2 header: 16 fixed bytes, the last two the length of what follows.
fn parse_v2(seen: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(&[high, low]) = seen.get(14..16) else { return Ok(Parsed::Incomplete) };
    let len = 16 + usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_V2 {
        return Err(ProxyHeaderError::TooLong { max: MAX_V2 });
    }
    let Some(bytes) = seen.get(..len) else { return Ok(Parsed::Incomplete) };
    let header =
        v2::Header::try_from(bytes).map_err(|e| ProxyHeaderError::Invalid { version: 2, detail: e.to_string() })?;
    let proxied = match (header.command, header.addresses) {
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(Proxied {
            remote: SocketAddr::from((a.source_address, a.source_port)),
            local: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(Proxied {
            remote: SocketAddr::from((a.source_address, a.source_port)),
            local: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        // LOCAL (the balancer's own connection), or no address the socket could take.
        _ => None,
    };
    Ok(Parsed::Complete { len, proxied })
}

/// A v1 header: one line of text ending in `\r\n`.
fn parse_v1(seen: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &seen[..seen.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if seen.len() >= MAX_V1 {
            Err(ProxyHeaderError::TooLong { max: MAX_V1 })
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let len = end + 2;
    let header = v1::Header::try_from(&seen[..len])
        .map_err(|e| ProxyHeaderError::Invalid { version: 1, detail: e.to_string() })?;
    let proxied = match header.addresses {
        v1::Addresses::Tcp4(a) => Some(Proxied {
            remote: SocketAddr::from((a.source_address, a.source_port)),
            local: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Tcp6(a) => Some(Proxied {
            remote: SocketAddr::from((a.source_address, a.source_port)),
            local: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Complete { len, proxied })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_tcp4(command: u8) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | command, 0x11, 0, 12, 192, 0, 2, 1, 10, 0, 0, 1, 0xc3, 0x50, 0x1f, 0x90]);
        h
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_and_the_whole_one_parses() {
        let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 50000 8080\r\n".to_vec();
        for header in [v1, v2_tcp4(1)] {
            for cut in 1..header.len() {
                assert_eq!(parse(&header[..cut]).unwrap(), Parsed::Incomplete, "{cut} bytes");
            }
            let mut with_data = header.clone();
            with_data.extend_from_slice(b"hello\n");
            let proxied =
                Some(Proxied { remote: "192.0.2.1:50000".parse().unwrap(), local: "10.0.0.1:8080".parse().unwrap() });
            assert_eq!(parse(&with_data).unwrap(), Parsed::Complete { len: header.len(), proxied });
        }
    }

    #[test]
    fn local_and_unknown_keep_the_tcp_addresses() {
        assert_eq!(parse(&v2_tcp4(0)).unwrap(), Parsed::Complete { len: 28, proxied: None });
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Parsed::Complete { len: 15, proxied: None });
    }

    #[test]
    fn garbage_and_oversized_headers_are_refused() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing)));
        assert!(matches!(parse(b"\x16\x03\x01"), Err(ProxyHeaderError::Missing)));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyHeaderError::TooLong { max: MAX_V1 })));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Err(ProxyHeaderError::TooLong { max: MAX_V2 })));
        assert!(matches!(parse(b"PROXY TCP4 nonsense here\r\n"), Err(ProxyHeaderError::Invalid { version: 1, .. })));
    }

    #[test]
    fn proxy_from_matches_mapped_ipv4() {
        let nets: Vec<IpNet> = DEFAULT_PROXY_FROM.iter().map(|n| n.parse().unwrap()).collect();
        assert!(trusted("127.0.0.1".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("fd00::1".parse().unwrap(), &nets));
        assert!(!trusted("192.0.2.1".parse().unwrap(), &nets));
    }
}
