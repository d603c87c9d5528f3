//! One `Connect` stream per upstream: open it (`hello` first), feed it from the upstream's queue,
//! carry out the commands that come back, and reopen it with capped exponential backoff and
//! jitter when it breaks. Events that could not be handed to a broken stream go to the next
//! usable upstream.
//!
//! **Open without headers.** The stream counts as open as soon as the call is accepted (the
//! transport takes its first message, `hello`): the node never waits for response headers, which
//! some servers (grpcio, grpc-go) send only with their first message. A dead or hung upstream is
//! found by the health checks ([`super::health`]) and by HTTP/2 keepalive.
//!
//! **Replay.** Every event a stream writes carries its `event_seq` and stays in the replay window
//! ([`super::window`]) until the upstream acknowledges it, or, for an upstream that never acks,
//! until a health check sent after it is answered. When a stream breaks, what is unconfirmed goes
//! out again, flagged `redelivered`, to the next usable upstream: delivery is at least once.

use std::{collections::VecDeque, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    UriError,
    backlog::Backlog,
    backoff::Backoff,
    commands::{handle_command, remote_commands},
    health,
    outbound::outbound,
    pool::Upstream,
    queue::QueueRx,
    rpc::{self, Commands},
    tls::UpstreamTls,
    window::ReplayWindow,
};
use crate::{
    command::{Command, Dispatcher},
    metrics as m,
    proto::NodeHello,
    upstream::balancer::Balancer,
};

/// Longest wait for the TCP (and HTTP/2) connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive: a ping after this long without a frame from the upstream. Stock gRPC
/// servers (grpc-core in Python, C++, Ruby; grpc-go; grpc-java) by default accept at most one
/// ping per 5 minutes while they send nothing, and end the connection (`GOAWAY too_many_pings`)
/// after a few more; any answer they send (a health check's, a command) resets that count. So the
/// node pings no more often than that, whatever `--health-interval` is, and finds a hung upstream
/// sooner through the health checks, which have deadlines.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(300);
/// How long a keepalive ping may go unanswered before the connection is dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Commands for other nodes' sockets waiting on one stream; when full, the stream stops reading
/// commands (HTTP/2 flow control holds the upstream).
const REMOTE_QUEUE: usize = 4096;
/// How long a new stream waits for the previous one to give the queue back.
const QUEUE_HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a stream task needs from its node.
#[derive(Clone)]
pub struct StreamContext {
    /// The first message of every stream.
    pub hello: NodeHello,
    /// Carries out the commands the upstream sends.
    pub dispatcher: Dispatcher,
    /// Reroutes events a broken stream could not take.
    pub balancer: Balancer,
    /// `--health-interval`.
    pub health_interval: Duration,
    /// Cancelled when the node drains: streams send what is queued, then end.
    pub finish: CancellationToken,
    /// Where the health task is spawned.
    pub tracker: TaskTracker,
    /// What `https://` upstreams are dialled with.
    pub tls: UpstreamTls,
}

/// How a stream ended.
enum Outcome {
    /// The upstream was removed.
    Stopped,
    /// The node is draining and the stream ended cleanly.
    Finished,
    /// The upstream does not implement `ConnectBatch`: open `Connect` at once, with everything
    /// the refused call took handed out again (it was not processed).
    Unimplemented,
    /// It broke; reconnect. `opened` says whether it had been open (resets the backoff).
    Broken { error: String, opened: bool },
}

/// The gRPC endpoint for an upstream URI, with keepalive and timeouts set.
///
/// # Errors
/// [`UriError::NotAUri`] when the URI is not valid.
pub fn endpoint(uri: &str) -> Result<Endpoint, UriError> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|e| UriError::NotAUri { uri: uri.to_owned(), reason: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20)))
}

/// Runs the upstream's stream (and its health polling) until it is removed or the node drains.
pub async fn run(upstream: Arc<Upstream>, rx: QueueRx, ctx: StreamContext) {
    let Some(channel) = channel(&upstream, &ctx) else { return };
    // Health polling lives exactly as long as this task: the guard stops it on every way out.
    let _health_guard = spawn_health(&upstream, &channel, &ctx);
    let overflow = metrics::counter!(m::REPLAY_WINDOW_OVERFLOW, "upstream" => upstream.id.clone());
    let backlog =
        Arc::new(Mutex::new(Backlog { rx, pending: VecDeque::new(), window: ReplayWindow::default(), overflow }));
    let mut backoff = Backoff::default();
    loop {
        let outcome = session(&upstream, &channel, &backlog, &ctx).await;
        upstream.set_open(false);
        match outcome {
            // The node ended its side and the upstream ended its own after reading everything.
            Outcome::Finished => {
                backlog.lock().await.window.clear();
                break;
            }
            Outcome::Stopped => break,
            Outcome::Unimplemented => {
                backlog.lock().await.unsend();
                continue;
            }
            Outcome::Broken { error, opened } => {
                warn!(error = %error, "upstream stream broken");
                metrics::counter!(m::UPSTREAM_RECONNECTS, "upstream" => upstream.id.clone()).increment(1);
                upstream.set_last_error(error);
                if opened {
                    backoff.reset();
                }
            }
        }
        reroute(&upstream, &backlog, &ctx.balancer).await;
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = upstream.stop.cancelled() => break,
            () = ctx.finish.cancelled() => break,
        }
    }
    upstream.set_open(false);
    reroute(&upstream, &backlog, &ctx.balancer).await;
    let left = backlog.lock().await.pending.len();
    if left > 0 {
        warn!(events = left, "upstream gone with events no other upstream could take");
        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "upstream_gone").increment(left as u64);
    }
}

/// The channel to the upstream (TLS as configured), connected lazily; `None` (and the error
/// shown on the upstream) when its URI or TLS settings cannot be used.
fn channel(upstream: &Upstream, ctx: &StreamContext) -> Option<Channel> {
    let dialled = endpoint(&upstream.uri).map_err(|e| e.to_string());
    match dialled.and_then(|e| ctx.tls.apply(e).map_err(|e| e.to_string())) {
        Ok(e) => Some(e.connect_lazy()),
        Err(e) => {
            warn!(error = %e, "upstream not started");
            upstream.set_last_error(e);
            None
        }
    }
}

/// Starts the upstream's health polling on the same channel; it stops when the guard drops.
fn spawn_health(upstream: &Arc<Upstream>, channel: &Channel, ctx: &StreamContext) -> DropGuard {
    let stop = upstream.stop.child_token();
    let guard = stop.clone().drop_guard();
    let span = info_span!("health", upstream = %upstream.id);
    ctx.tracker.spawn(health::run(upstream.clone(), channel.clone(), ctx.health_interval, stop).instrument(span));
    guard
}

/// One stream, from `Connect` until it ends.
async fn session(
    upstream: &Arc<Upstream>,
    channel: &Channel,
    backlog: &Arc<Mutex<Backlog>>,
    ctx: &StreamContext,
) -> Outcome {
    let Ok(mut guard) = tokio::time::timeout(QUEUE_HANDOVER_TIMEOUT, backlog.clone().lock_owned()).await else {
        return broken("the previous stream did not release the queue");
    };
    // What the previous stream left unconfirmed, if the reroute could not take it: first in line.
    guard.replay(upstream);
    upstream.delivery.new_stream();
    // Ends the node's side of the stream whenever this session ends, however it ends (the
    // upstream's side broke, a command could not be decoded, the upstream was removed): the
    // request stream then gives the queue back for the next session, and the upstream sees the
    // end of the stream as the protocol promises.
    let session_end = CancellationToken::new();
    let _end_guard = session_end.clone().drop_guard();
    let (accepted_tx, accepted) = oneshot::channel();
    let outbound =
        outbound(ctx.hello.clone(), guard, upstream.clone(), ctx.finish.clone(), session_end.clone(), accepted_tx);
    let mut lost = upstream.lost();
    // Pinned once for the session: building it per command would cost a waiter registration
    // for every command of a busy stream.
    let lost = lost.changed();
    tokio::pin!(lost);
    let inbound =
        match open(upstream, rpc::call(&upstream.rpc, channel.clone(), outbound), accepted, lost.as_mut()).await {
            Ok(inbound) => inbound,
            Err(outcome) => return outcome,
        };
    mark_open(upstream);
    serve(upstream, inbound, ctx, &session_end, lost).await
}

/// An outcome for a stream that broke before it was open.
fn broken(error: impl Into<String>) -> Outcome {
    Outcome::Broken { error: error.into(), opened: false }
}

/// Waits for the upstream's answer to the call (its response headers may come late: with some
/// servers only with their first command). Meanwhile the stream is open as soon as the transport
/// took `hello` (`accepted`).
async fn open<L: Future>(
    upstream: &Upstream,
    call: rpc::Call,
    accepted: oneshot::Receiver<()>,
    mut lost: Pin<&mut L>,
) -> Result<Commands, Outcome> {
    tokio::pin!(call, accepted);
    let mut accepted_seen = false;
    let response = loop {
        tokio::select! {
            r = &mut call => break r,
            r = &mut accepted, if !accepted_seen => {
                accepted_seen = true;
                if r.is_ok() {
                    mark_open(upstream);
                }
            }
            () = upstream.stop.cancelled() => return Err(Outcome::Stopped),
            _ = &mut lost => return Err(broken("the upstream answers no health check")),
        }
    };
    response.map_err(|status| {
        if upstream.rpc.falls_back(&status) {
            info!("the upstream does not implement ConnectBatch; using Connect");
            return Outcome::Unimplemented;
        }
        broken(format!("connect failed: {}", super::describe(&status)))
    })
}

/// Carries out the commands of an open stream until it ends.
async fn serve<L: Future>(
    upstream: &Arc<Upstream>,
    mut inbound: Commands,
    ctx: &StreamContext,
    session_end: &CancellationToken,
    mut lost: Pin<&mut L>,
) -> Outcome {
    let (remote, remote_rx) = mpsc::channel(REMOTE_QUEUE);
    ctx.tracker.spawn(remote_commands(upstream.clone(), remote_rx, ctx.dispatcher.clone()).in_current_span());
    let stopped = upstream.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            biased;
            () = &mut stopped => return removed(upstream, inbound, ctx, &remote, session_end).await,
            _ = &mut lost => {
                return Outcome::Broken { error: "the upstream answers no health check".to_owned(), opened: true };
            }
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(command)) => {
                let mut command = Some(command);
                // The rest of a batch is already here: carried out without looking at the stop
                // and loss signals after each command (polling them is a lock and a waiter
                // registration each time).
                while let Some(next) = command.take() {
                    handle_command(upstream, next, &ctx.dispatcher, &remote).await;
                    // A burst of commands arrives already decoded, so this loop would not yield
                    // on its own: give the sockets' writers a turn to drain their queues, or a
                    // burst longer than --write-queue for one socket would close it as a slow
                    // consumer however fast its client reads.
                    tokio::task::consume_budget().await;
                    command = inbound.next_ready();
                }
            }
            Ok(None) if ctx.finish.is_cancelled() => return Outcome::Finished,
            Ok(None) => {
                return Outcome::Broken { error: "the upstream ended the stream".to_owned(), opened: true };
            }
            Err(status) => {
                return Outcome::Broken { error: format!("stream error: {}", super::describe(&status)), opened: true };
            }
        }
    }
}

/// The stream is open: the balancer may hand the upstream events (once it is also ready).
fn mark_open(upstream: &Upstream) {
    if !upstream.is_open() {
        upstream.set_open(true);
        info!("upstream stream open");
    }
}

/// The upstream was removed: end the node's side of the stream and give the upstream
/// [`REMOVAL_GRACE`] to read what it was sent and end its own side (carrying out its last
/// commands meanwhile), as when the node drains. If it does, everything the stream took arrived
/// and nothing is replayed; if it does not, the replay window is handed out again.
async fn removed(
    upstream: &Upstream,
    mut inbound: Commands,
    ctx: &StreamContext,
    remote: &mpsc::Sender<(Option<String>, Command)>,
    session_end: &CancellationToken,
) -> Outcome {
    session_end.cancel();
    let finished = async {
        loop {
            match inbound.message().await {
                Ok(Some(command)) => handle_command(upstream, command, &ctx.dispatcher, remote).await,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(REMOVAL_GRACE, finished).await {
        Ok(true) => Outcome::Finished,
        _ => Outcome::Stopped,
    }
}

/// How long a removed upstream has to end its side of the stream.
const REMOVAL_GRACE: Duration = Duration::from_secs(2);

/// Hands what waits for a broken or removed upstream to other usable upstreams, without waiting;
/// what none can take stays for this upstream's next stream. Receipts stay: they are for this
/// upstream only.
async fn reroute(upstream: &Upstream, backlog: &Arc<Mutex<Backlog>>, balancer: &Balancer) {
    let Ok(mut backlog) = tokio::time::timeout(QUEUE_HANDOVER_TIMEOUT, backlog.lock()).await else {
        warn!("could not reroute: the stream still holds the queue");
        return;
    };
    let replayed = backlog.replay(upstream);
    if replayed > 0 {
        warn!(events = replayed, "handing out again the events the upstream may not have received");
        metrics::counter!(m::EVENTS_REPLAYED, "upstream" => upstream.id.clone()).increment(replayed as u64);
    }
    while let Some(event) = backlog.rx.try_recv() {
        backlog.pending.push_back(event);
    }
    let mut kept = VecDeque::new();
    let mut moved = 0u64;
    for event in std::mem::take(&mut backlog.pending) {
        if event.is_receipt() {
            kept.push_back(event);
            continue;
        }
        match balancer.try_forward(event, None, Some(&upstream.id)) {
            Ok(()) => moved += 1,
            Err(event) => kept.push_back(event),
        }
    }
    backlog.pending = kept;
    if moved > 0 {
        debug!(events = moved, "rerouted to other upstreams");
        metrics::counter!(m::EVENTS_REROUTED).increment(moved);
    }
}
