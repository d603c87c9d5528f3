//! One socket's life: `opened`, its messages, `closed`.
//!
//! Each socket has two tasks. The **reader** waits until the socket is readable, reads into a
//! buffer that exists only while bytes are waiting (an idle socket holds no read buffer), cuts
//! frames and hands each to the router, waiting when no upstream has room (inbound
//! backpressure). The **writer** drains the socket's bounded outbound queue, coalescing whatever
//! is queued into one write. Either side ending closes the socket with a reason; the reader's
//! task then waits for the writer, removes the socket and reports `closed`.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{
    FutureExt,
    future::{self, Either},
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tracing::{Instrument, debug, info_span, warn};

use super::{
    admission::Admission,
    framing::{self, FrameDecoder, FrameError},
    table::SocketTable,
    transport::{self, Edge, Inbound, TlsInbound, Transport},
};
use crate::{
    cluster::Backend,
    config::Framing,
    metrics as m,
    proto::{NodeEvent, SocketClosed, SocketData, SocketInfo, SocketOpened, node_event::Event},
    settings::Settings,
    socket::{CloseReason, SocketState, unix_ms},
    upstream::router::Router,
};

/// Bytes reserved per read. Reads go straight into a buffer that frames are split off without
/// copying; the buffer is released as soon as no partial frame is left in it.
pub const READ_CHUNK: usize = 16 << 10;
/// How long queued messages may take to flush when a socket closes gracefully.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the `closed` event of a socket may wait for an upstream with room.
pub const CLOSED_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every socket's tasks need from the node. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Downstream {
    /// This node's id, for `SocketInfo.node_id`.
    pub node_id: Arc<str>,
    /// Where inbound events go.
    pub router: Router,
    /// The node's sockets.
    pub table: SocketTable,
    /// Where lifecycle records go.
    pub backend: Arc<dyn Backend>,
    /// Idle settings.
    pub settings: Arc<Settings>,
    /// `--framing`.
    pub framing: Framing,
    /// `--max-frame`.
    pub max_frame: usize,
    /// `--write-queue`.
    pub write_queue: usize,
    /// PROXY protocol and TLS, as configured.
    pub edge: Edge,
}

/// Serves one accepted socket until it closes. `permit` is its place under `--max-connections`.
///
/// Not an `async fn`: an `async fn` keeps its arguments in its future besides what its body moves
/// them into, and every socket's task is that future, for the socket's whole life. Everything
/// runs in the socket's task, from its first poll (`start`), never in the accept loop.
pub fn serve(ctx: Downstream, stream: TcpStream, permit: Admission) -> impl Future<Output = ()> + Send + 'static {
    future::lazy(move |_| start(ctx, stream, permit)).flatten()
}

/// The socket's life from its first poll: plain, or after its PROXY header and TLS handshake.
fn start(ctx: Downstream, stream: TcpStream, permit: Admission) -> impl Future<Output = ()> + Send + 'static {
    if ctx.edge.is_plain() {
        return Either::Left(match transport::plain(stream) {
            Ok(opened) => Either::Left(serve_opened(ctx, opened, permit)),
            Err(_) => Either::Right(std::future::ready(())), // the client is already gone
        });
    }
    // The PROXY header and the TLS handshake, here in the socket's own task, in a future of its
    // own (boxed, gone once they are done: a TLS session being made is big), which hands back
    // what it was given so that the socket's future holds only the box meanwhile.
    let opening = Box::pin(async move {
        let opened = transport::open(&ctx.edge, stream).await;
        (ctx, opened, permit)
    });
    Either::Right(async move {
        let (ctx, Ok(opened), permit) = opening.await else { return };
        serve_opened(ctx, opened, permit).await;
    })
}

/// [`serve`], once the socket is [`transport::open`]: `opened`, its messages, `closed`.
fn serve_opened(ctx: Downstream, opened: transport::Opened, permit: Admission) -> impl Future<Output = ()> + Send {
    let transport::Opened { remote, local, tls_server_name, transport } = opened;
    let socket = SocketState::with_tls(remote, local, ctx.write_queue, tls_server_name);
    let span = info_span!("socket", socket.id = %socket.id, client.addr = %remote);
    async move {
        debug!("socket opened");
        ctx.table.insert(socket.clone());
        ctx.backend.socket_opened(&socket);
        metrics::counter!(m::SOCKETS_OPENED).increment(1);
        run(&ctx, &socket, transport).await;
        let reason = socket.close_reason().unwrap_or(CloseReason::ClientClosed);
        debug!(%reason, "socket closed");
        metrics::counter!(m::SOCKETS_CLOSED, "reason" => reason.as_str()).increment(1);
        let recorded = ctx.backend.socket_closed(&socket, reason);
        let closed = NodeEvent {
            event: Some(Event::Closed(SocketClosed {
                socket_id: socket.id_str.to_string(),
                reason: reason.to_string(),
            })),
            ..NodeEvent::default()
        };
        // In a cluster, only once Redis has it: had the cluster reaped this node meanwhile, it
        // announced this socket's `closed` itself, and upstreams hear it once.
        let announce = match recorded {
            Some(recorded) => recorded.await.unwrap_or(true),
            None => true,
        };
        if announce {
            let forward = ctx.router.forward(closed, Some(&socket), None);
            if tokio::time::timeout(CLOSED_EVENT_TIMEOUT, forward).await.is_err() {
                warn!("no upstream took the closed event");
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "no_upstream").increment(1);
            }
        } else {
            debug!("closed already announced by the cluster (the node was reaped while cut off)");
        }
        // Last, so that a drain, which waits for the table to empty before it ends the upstream
        // streams, never ends them before this `closed` event is queued.
        ctx.table.remove(socket.id);
        drop(permit);
    }
    .instrument(span)
}

/// Runs the socket's reader and writer concurrently in this one task (one task per socket keeps
/// an idle socket small); each ends by closing the socket, which ends the other. Plain TCP is
/// split into its owned halves; TLS, one session for both directions, with `tokio::io::split`.
/// (A plain function, not an `async` one: the future it returns does not keep `transport`.)
fn run<'a>(ctx: &'a Downstream, socket: &'a SocketState, transport: Transport) -> impl Future<Output = ()> + 'a {
    match transport {
        Transport::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            Either::Left(async move {
                tokio::join!(read_side(ctx, socket, read), write_loop(ctx.framing, socket, write));
            })
        }
        Transport::Tls(tls) => {
            let (read, write) = tokio::io::split(*tls);
            Either::Right(async move {
                tokio::join!(read_side(ctx, socket, TlsInbound::new(read)), write_loop(ctx.framing, socket, write));
            })
        }
    }
}

/// Announces the socket, then reads it until it closes.
async fn read_side(ctx: &Downstream, socket: &SocketState, read: impl Inbound) {
    let reason = match deliver(&ctx.router, socket, opened_event(&ctx.node_id, socket, false)).await {
        Ok(()) => read_loop(ctx, socket, read).await,
        Err(reason) => reason,
    };
    socket.close(reason);
}

/// The `opened` event for a socket; `resumed` when it is announced again after the cluster
/// reaped it while this node was cut off.
pub fn opened_event(node_id: &str, socket: &SocketState, resumed: bool) -> NodeEvent {
    let info = SocketInfo {
        id: socket.id_str.to_string(),
        node_id: node_id.to_owned(),
        remote_addr: socket.remote_addr.to_string(),
        local_addr: socket.local_addr.to_string(),
        connected_at_unix_ms: socket.connected_at_ms,
        labels: (*socket.labels()).clone(),
        tls_server_name: socket.tls_server_name.as_deref().unwrap_or_default().to_owned(),
    };
    NodeEvent { event: Some(Event::Opened(SocketOpened { socket: Some(info), resumed })), ..NodeEvent::default() }
}

/// Hands an event to an upstream, waiting as needed, unless the socket closes first.
async fn deliver(router: &Router, socket: &SocketState, event: NodeEvent) -> Result<(), CloseReason> {
    // The common case, an upstream with room, needs no waiting and no cancellation future.
    let Err(event) = router.try_forward(event, Some(socket), None) else {
        return Ok(());
    };
    tokio::select! {
        biased;
        () = socket.closing.cancelled() => Err(socket.close_reason().unwrap_or(CloseReason::Shutdown)),
        () = router.forward(event, Some(socket), None) => Ok(()),
    }
}

/// Reads, frames and forwards until the socket closes; returns why it closed.
async fn read_loop(ctx: &Downstream, socket: &SocketState, mut read: impl Inbound) -> CloseReason {
    let mut decoder = FrameDecoder::new(ctx.framing, ctx.max_frame);
    let mut buf = BytesMut::new();
    // A raw read is one message, so it may not exceed --max-frame.
    let read_size = if ctx.framing == Framing::Raw { READ_CHUNK.min(ctx.max_frame) } else { READ_CHUNK };
    // Built once: building it per read would register and unregister a waiter every time.
    let closing = socket.closing.cancelled();
    tokio::pin!(closing);
    // Likewise built once, and again only after `--idle-timeout` changed at run time.
    let idle_changed = ctx.settings.idle_changed();
    tokio::pin!(idle_changed);
    loop {
        let deadline = ctx.settings.idle_timeout().and_then(|t| idle_deadline(socket, t));
        tokio::select! {
            biased;
            () = &mut closing => return socket.close_reason().unwrap_or(CloseReason::Shutdown),
            () = sleep_until(deadline) => {
                if ctx.settings.idle_timeout().and_then(|t| idle_deadline(socket, t)).is_some_and(|d| d <= Instant::now()) {
                    return CloseReason::Idle;
                }
                continue;
            }
            () = &mut idle_changed => {
                idle_changed.set(ctx.settings.idle_changed());
                continue;
            }
            ready = read.ready() => if ready.is_err() { return CloseReason::ClientError },
        }
        if buf.capacity() - buf.len() < read_size {
            buf.reserve(read_size);
        }
        match read.try_read_buf(&mut (&mut buf).limit(read_size)) {
            Ok(0) => return eof(ctx, socket, &mut decoder, &mut buf).await,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // A spurious wake-up (every new socket gets one): give the buffer back.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                continue;
            }
            Err(_) => return CloseReason::ClientError,
        }
        let now = unix_ms();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(reason) = deliver(&ctx.router, socket, data_event(socket, frame, now)).await {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(e) => return frame_error(e),
            }
        }
        if buf.is_empty() {
            buf = BytesMut::new(); // Hold no memory while the socket is quiet.
        }
    }
}

/// The client closed: a last unterminated line is still a message.
async fn eof(ctx: &Downstream, socket: &SocketState, decoder: &mut FrameDecoder, buf: &mut BytesMut) -> CloseReason {
    match decoder.decode_eof(buf) {
        Ok(Some(frame)) => {
            if let Err(reason) = deliver(&ctx.router, socket, data_event(socket, frame, unix_ms())).await {
                return reason;
            }
        }
        Ok(None) if !buf.is_empty() => {
            debug!(bytes = buf.len(), "client closed in the middle of a frame");
            metrics::counter!(m::MESSAGES_REFUSED, "reason" => "truncated_frame").increment(1);
        }
        Ok(None) => {}
        Err(e) => return frame_error(e),
    }
    CloseReason::ClientClosed
}

fn frame_error(e: FrameError) -> CloseReason {
    debug!(error = %e, "bad frame");
    match e {
        FrameError::TooLarge { .. } => CloseReason::FrameTooLarge,
        FrameError::Io(_) => CloseReason::ClientError,
    }
}

/// The `data` event for one inbound frame, noting it in the socket's counters.
fn data_event(socket: &SocketState, payload: Bytes, now_ms: i64) -> NodeEvent {
    let seq = socket.note_inbound(payload.len(), now_ms);
    let hot = m::hot();
    hot.messages_in.increment(1);
    hot.bytes_in.increment(payload.len() as u64);
    let data = SocketData { socket_id: socket.id_str.to_string(), seq, payload, labels: (*socket.labels()).clone() };
    NodeEvent { event: Some(Event::Data(data)), ..NodeEvent::default() }
}

/// When the socket becomes idle for `timeout`, as a tokio instant; `None` when that is beyond
/// what an `Instant` can hold (never).
fn idle_deadline(socket: &SocketState, timeout: Duration) -> Option<Instant> {
    let silent_ms = (unix_ms() - socket.last_seen_ms()).max(0) as u64;
    // `None` (never) if the deadline is beyond what `Instant` can hold.
    let deadline = Instant::now().checked_add(timeout)?;
    Some(deadline.checked_sub(Duration::from_millis(silent_ms)).unwrap_or_else(Instant::now))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes queued messages until the socket closes; on a graceful close, flushes what is queued.
async fn write_loop(framing: Framing, socket: &SocketState, mut write: impl AsyncWrite + Unpin) {
    let mut out = BytesMut::new();
    let closing = socket.closing.cancelled();
    tokio::pin!(closing);
    loop {
        let queued = socket.take_outbound();
        if queued.is_empty() {
            tokio::select! {
                biased;
                () = socket.outbound_ready() => continue,
                () = &mut closing => break,
            }
        }
        encode_all(framing, socket, queued, &mut out);
        let written = tokio::select! {
            biased;
            // The flush is a no-op on plain TCP; TLS may hold back the last record until it.
            r = async { write.write_all(&out).await?; write.flush().await } => r,
            () = abort(socket) => return,
        };
        if written.is_err() {
            socket.close(CloseReason::ClientError);
            return;
        }
        out = BytesMut::new(); // Hold no memory while the socket is quiet.
    }
    let rest = socket.seal_outbound();
    if socket.close_reason().is_some_and(CloseReason::flushes) {
        encode_all(framing, socket, rest, &mut out);
        let flush = async {
            write.write_all(&out).await?;
            write.shutdown().await
        };
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
    }
}

/// Frames every queued payload into `out`, counting them.
fn encode_all(framing: Framing, socket: &SocketState, queued: VecDeque<Bytes>, out: &mut BytesMut) {
    let messages = queued.len() as u64;
    let mut bytes = 0u64;
    for payload in queued {
        framing::encode(framing, &payload, out);
        bytes += payload.len() as u64;
    }
    socket.messages_out.fetch_add(messages, std::sync::atomic::Ordering::Relaxed);
    socket.bytes_out.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    let hot = m::hot();
    hot.messages_out.increment(messages);
    hot.bytes_out.increment(bytes);
}

/// Resolves when the socket closes for a reason that does not flush (a write in progress is
/// abandoned then); never resolves for a graceful close.
async fn abort(socket: &SocketState) {
    socket.closing.cancelled().await;
    if socket.close_reason().is_some_and(CloseReason::flushes) {
        std::future::pending::<()>().await;
    }
}
