//! Close reasons: why a socket closed, one closed set for the wire, the lifecycle records and
//! the metrics.

use std::fmt;

/// Why a socket closed: a closed set, documented in `docs/protocol.md`, reported in
/// `SocketClosed.reason`, in lifecycle records and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed its side (EOF).
    ClientClosed,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientError,
    /// Inactive for `--idle-timeout`.
    Idle,
    /// The client sent a frame longer than `--max-frame`.
    FrameTooLarge,
    /// The socket's outbound queue (`--write-queue`) was full.
    SlowConsumer,
    /// An upstream sent `Close`.
    Upstream,
    /// An operator closed it through the admin API.
    Admin,
    /// The node is draining or shutting down.
    Shutdown,
    /// The node holding it died and was reaped (recorded by another node).
    NodeLost,
    /// The TLS handshake failed or did not finish within its time (`--tls-cert`). The socket
    /// was never opened: no upstream hears of it, metrics and the log do.
    TlsHandshake,
    /// No valid PROXY protocol header in time, or one from a peer outside `--proxy-from`
    /// (`--proxy-protocol`). Never opened either.
    ProxyProtocol,
}

impl CloseReason {
    /// Every reason, for docs and metrics.
    pub const ALL: [CloseReason; 11] = [
        Self::ClientClosed,
        Self::ClientError,
        Self::Idle,
        Self::FrameTooLarge,
        Self::SlowConsumer,
        Self::Upstream,
        Self::Admin,
        Self::Shutdown,
        Self::NodeLost,
        Self::TlsHandshake,
        Self::ProxyProtocol,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientError => "client_error",
            Self::Idle => "idle",
            Self::FrameTooLarge => "frame_too_large",
            Self::SlowConsumer => "slow_consumer",
            Self::Upstream => "upstream",
            Self::Admin => "admin",
            Self::Shutdown => "shutdown",
            Self::NodeLost => "node_lost",
            Self::TlsHandshake => "tls_handshake",
            Self::ProxyProtocol => "proxy_protocol",
        }
    }

    /// Whether messages already queued for the socket are written before it closes. A slow
    /// consumer or a broken socket cannot take them; everyone else deserves them.
    pub fn flushes(self) -> bool {
        matches!(self, Self::Upstream | Self::Admin | Self::Shutdown | Self::Idle)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
