//! One socket's life: `opened`, its messages, `closed`.
//!
//! Each socket has two tasks. The **reader** waits until the socket is readable, reads into a
//! buffer that exists only while bytes are waiting (an idle socket holds no read buffer), cuts
//! frames and hands each to the balancer, waiting when no upstream has room (inbound
//! backpressure). The **writer** drains the socket's bounded outbound queue, coalescing whatever
//! is queued into one write. Either side ending closes the socket with a reason; the reader's
//! task then waits for the writer, removes the socket and reports `closed`.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{
    FutureExt,
    future::{self, Either},
};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, warn};

use super::{
    admission::Admission,
    framing::{FrameDecoder, FrameError},
    tls::{TlsInbound, TlsOutbound, TlsSocket},
    transport::{self, Edge, Inbound, Transport},
    writer::write_loop,
};
use crate::{
    cluster::Records,
    config::Framing,
    metrics as m,
    socket::{
        CloseReason, QueueBounds, SocketState, SocketTable,
        event::{self, Event},
        unix_ms,
    },
    upstream::balancer::{Balancer, Route},
};

/// Bytes reserved per read. Reads go straight into a buffer that frames are split off without
/// copying; the buffer is released as soon as no partial frame is left in it.
pub const READ_CHUNK: usize = 16 << 10;
/// How long the `closed` event of a socket may wait for an upstream with room.
pub const CLOSED_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every socket's tasks need from the node. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Downstream {
    /// This node's id, for `SocketInfo.node_id`.
    pub node_id: Arc<str>,
    /// Where inbound events go.
    pub balancer: Balancer,
    /// The node's sockets.
    pub table: SocketTable,
    /// Where lifecycle records go (the only part of the backend the data path holds).
    pub records: Arc<dyn Records>,
    /// `--framing`.
    pub framing: Framing,
    /// `--max-frame`.
    pub max_frame: usize,
    /// `--write-queue` and `--write-queue-bytes`.
    pub write_queue: QueueBounds,
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
    // A debug span, as linkerd2-proxy's per-connection span: at the default `info` level it
    // costs nothing (an enabled span keeps its formatted fields, ~300 bytes a socket, for the
    // socket's whole life); what a socket logs above debug names its socket itself.
    let span = debug_span!("socket", socket.id = %socket.id, client.addr = %remote);
    async move {
        debug!("socket opened");
        ctx.table.insert(socket.clone());
        ctx.records.socket_opened(&socket);
        metrics::counter!(m::SOCKETS_OPENED).increment(1);
        run(&ctx, &socket, transport).await;
        // Boxed: it runs once, at the end, and inline it would cost every socket its size.
        Box::pin(closed(&ctx, &socket)).await;
        // Last, so that a drain, which waits for the table to empty before it ends the upstream
        // streams, never ends them before this `closed` event is queued.
        ctx.table.remove(socket.id);
        drop(permit);
    }
    .instrument(span)
}

/// Runs the socket's reader and writer concurrently in this one task (one task per socket keeps
/// an idle socket small); each ends by closing the socket, which ends the other. Plain TCP is
/// split into its owned halves; over TLS both halves borrow the boxed socket and share its
/// session. (A plain function, not an `async` one: the future it returns does not keep
/// `transport`.)
fn run<'a>(ctx: &'a Downstream, socket: &'a SocketState, transport: Transport) -> impl Future<Output = ()> + 'a {
    match transport {
        Transport::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            Either::Left(async move {
                tokio::join!(read_side(ctx, socket, read), write_loop(ctx.framing, socket, write));
            })
        }
        Transport::Tls(mut tls) => Either::Right(async move {
            let TlsSocket { tcp, session } = &mut *tls;
            let (read, write) = tcp.split();
            let (read, write) = (TlsInbound::new(read, session), TlsOutbound::new(write, session));
            tokio::join!(read_side(ctx, socket, read), write_loop(ctx.framing, socket, write));
        }),
    }
}

/// Announces the socket, then reads it until it closes.
async fn read_side(ctx: &Downstream, socket: &SocketState, read: impl Inbound) {
    let opened = try_forward(&ctx.balancer.route(), socket, event::opened(&ctx.node_id, socket, false));
    let reason = match opened {
        Some(waiting) => waiting.await,
        None => Ok(()),
    };
    let reason = match reason {
        Ok(()) => read_loop(ctx, socket, read).await,
        Err(reason) => reason,
    };
    socket.close(reason);
}

/// Records the socket's close and hands its `closed` event to an upstream.
async fn closed(ctx: &Downstream, socket: &SocketState) {
    let reason = socket.close_reason().unwrap_or(CloseReason::ClientClosed);
    debug!(%reason, "socket closed");
    metrics::counter!(m::SOCKETS_CLOSED, "reason" => reason.as_str()).increment(1);
    let recorded = ctx.records.socket_closed(socket, reason);
    // In a cluster, only once Redis has it: had the cluster reaped this node meanwhile, it
    // announced this socket's `closed` itself, and upstreams hear it once.
    let announce = match recorded {
        Some(recorded) => recorded.await.unwrap_or(true),
        None => true,
    };
    if !announce {
        debug!("closed already announced by the cluster (the node was reaped while cut off)");
        return;
    }
    let forward = ctx.balancer.forward(event::closed(&socket.id_str, reason), Some(socket), None);
    if tokio::time::timeout(CLOSED_EVENT_TIMEOUT, forward).await.is_err() {
        warn!(socket.id = %socket.id, "no upstream took the closed event");
        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "no_upstream").increment(1);
    }
}

/// Waiting until an upstream takes an event (boxed: see [`forward`]).
type Waiting<'a> = Pin<Box<dyn Future<Output = Result<(), CloseReason>> + Send + 'a>>;

/// Hands an event to an upstream with room now (the common case: no waiting, no cancellation
/// future), or returns the wait for one, which ends when an upstream took it or the socket
/// closes first. The wait is boxed, and only built when needed: held
/// inline, it would be part of every socket's task, idle or not, and make each idle socket cost
/// its size (with the event) in memory.
fn try_forward<'a>(route: &Route<'a>, socket: &'a SocketState, event: Event) -> Option<Waiting<'a>> {
    let event = route.try_forward(event, Some(socket), None).err()?;
    let balancer = route.balancer();
    Some(Box::pin(async move {
        tokio::select! {
            biased;
            () = socket.closing() => Err(socket.close_reason().unwrap_or(CloseReason::Shutdown)),
            () = balancer.forward(event, Some(socket), None) => Ok(()),
        }
    }))
}

/// Reads, frames and forwards until the socket closes; returns why it closed.
async fn read_loop(ctx: &Downstream, socket: &SocketState, mut read: impl Inbound) -> CloseReason {
    let mut decoder = FrameDecoder::new(ctx.framing, ctx.max_frame);
    let mut buf = BytesMut::new();
    // A raw read is one message, so it may not exceed --max-frame.
    let read_size = if ctx.framing == Framing::Raw { READ_CHUNK.min(ctx.max_frame) } else { READ_CHUNK };
    // Built once: building it per read would register and unregister a waiter every time.
    // (`--idle-timeout` closes the socket through it too: `super::idle`.)
    let closing = socket.closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            biased;
            () = &mut closing => return socket.close_reason().unwrap_or(CloseReason::Shutdown),
            ready = read.ready() => if ready.is_err() { return CloseReason::ClientError },
        }
        match read_into(&mut read, &mut buf, read_size) {
            Read::Bytes => {}
            Read::Spurious => continue,
            Read::Eof => return eof(ctx, socket, &mut decoder, &mut buf).await,
            Read::Failed => return CloseReason::ClientError,
        }
        if let Err(reason) = forward_frames(ctx, socket, &mut decoder, &mut buf).await {
            return reason;
        }
        if buf.is_empty() {
            buf = BytesMut::new(); // Hold no memory while the socket is quiet.
        }
    }
}

/// What one read from the client gave.
enum Read {
    /// Bytes, now in the buffer.
    Bytes,
    /// Nothing after all (a spurious wake-up: every new socket gets one).
    Spurious,
    /// The client closed its side.
    Eof,
    /// The read failed (reset).
    Failed,
}

/// Reads what the socket has, at most `read_size` bytes, into `buf`, without waiting.
fn read_into(read: &mut impl Inbound, buf: &mut BytesMut, read_size: usize) -> Read {
    if buf.capacity() - buf.len() < read_size {
        buf.reserve(read_size);
    }
    match read.try_read_buf(&mut (&mut *buf).limit(read_size)) {
        Ok(0) => Read::Eof,
        Ok(_) => Read::Bytes,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            if buf.is_empty() {
                *buf = BytesMut::new(); // Give the buffer back.
            }
            Read::Spurious
        }
        Err(_) => Read::Failed,
    }
}

/// Cuts every whole frame out of `buf` and forwards them, in order: all in one go when they go
/// to one upstream ([`Route::try_forward_all`]), else one by one. The node's counters are added
/// to once for all of them.
async fn forward_frames(
    ctx: &Downstream,
    socket: &SocketState,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> Result<(), CloseReason> {
    let now = unix_ms();
    let mut tally = Tally::default();
    let mut events = Vec::new();
    let decoded = loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                tally.note(&frame);
                events.push(data_event(socket, frame, now));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(frame_error(e)),
        }
    };
    tally.count();
    let route = ctx.balancer.route();
    let rest = if events.len() > 1 { route.try_forward_all(events, socket) } else { events };
    for event in rest {
        if let Some(waiting) = try_forward(&route, socket, event) {
            waiting.await?;
        }
    }
    decoded
}

/// The messages and bytes of one read, added to the node's counters at once: they are shared by
/// every socket, so adding to them per message would make every socket's reader contend for them.
#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
}

impl Tally {
    fn note(&mut self, frame: &Bytes) {
        self.messages += 1;
        self.bytes += frame.len() as u64;
    }

    fn count(self) {
        if self.messages > 0 {
            let hot = m::hot();
            hot.messages_in.increment(self.messages);
            hot.bytes_in.increment(self.bytes);
        }
    }
}

/// The client closed: a last unterminated line is still a message.
async fn eof(ctx: &Downstream, socket: &SocketState, decoder: &mut FrameDecoder, buf: &mut BytesMut) -> CloseReason {
    match decoder.decode_eof(buf) {
        Ok(Some(frame)) => {
            let mut tally = Tally::default();
            tally.note(&frame);
            tally.count();
            if let Some(waiting) = try_forward(&ctx.balancer.route(), socket, data_event(socket, frame, unix_ms()))
                && let Err(reason) = waiting.await
            {
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

/// The `data` event for one inbound frame, noting it in the socket's counters (the node's are
/// the caller's: [`Tally`]).
fn data_event(socket: &SocketState, payload: Bytes, now_ms: i64) -> Event {
    let seq = socket.note_inbound(payload.len(), now_ms);
    event::data(socket, seq, payload)
}
