//! One `Connect` stream per upstream: open it (`hello` first), feed it from the upstream's queue,
//! carry out the commands that come back, and reopen it with capped exponential backoff and
//! jitter when it breaks. Events that could not be handed to a broken stream go to the next
//! usable upstream.
//!
//! **Replay.** gRPC says nothing about what the upstream received of a stream that breaks, and
//! the protocol has no acknowledgements. So the events a stream took are kept (the *replay
//! window*) until a health check sent after them on the same HTTP/2 connection is answered, which
//! proves they arrived (frames arrive in order). When a stream breaks, the events still in the
//! window go out again, to the next usable upstream: delivery is at least once, and an upstream
//! may see an event twice after a crash or a network cut (documented in `docs/protocol.md`).

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream};
use rand::Rng;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{health, pool::Upstream};
use crate::{
    command::{Command, Dispatcher, Receipt},
    metrics as m,
    proto::{self, CommandResult, NodeEvent, NodeHello, node_event, upstream_client::UpstreamClient},
    routing::Router,
};

/// Longest wait for an upstream to answer `Connect`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping interval: how liveness of a quiet upstream is checked.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keepalive ping may go unanswered before the connection is dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest command an upstream may send (a payload plus a little), in bytes.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;
/// Commands for other nodes' sockets waiting on one stream; when full, the stream stops reading
/// commands (HTTP/2 flow control holds the upstream).
const REMOTE_QUEUE: usize = 4096;
/// How long a new stream waits for the previous one to give the queue back.
const QUEUE_HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events kept unconfirmed per upstream for replay (about 200 bytes each plus payloads);
/// beyond it the oldest leave the window unconfirmed, counted in
/// `ppp_replay_window_overflow_total`.
pub const REPLAY_WINDOW: usize = 65_536;

/// What a stream task needs from its node.
#[derive(Clone)]
pub struct StreamContext {
    /// The first message of every stream.
    pub hello: NodeHello,
    /// Carries out the commands the upstream sends.
    pub dispatcher: Dispatcher,
    /// Reroutes events a broken stream could not take.
    pub router: Router,
    /// `--health-interval`.
    pub health_interval: Duration,
    /// Cancelled when the node drains: streams send what is queued, then end.
    pub finish: CancellationToken,
    /// Where the health task is spawned.
    pub tracker: TaskTracker,
}

/// The events waiting for an upstream: its queue, and those taken from the queue while the
/// stream was down and not yet rerouted. `pending` holds at most what the queue held: while the
/// stream is down the upstream is not usable, so nothing new is queued for it but receipts for
/// its own commands, and those stop with its stream.
struct Backlog {
    rx: mpsc::Receiver<NodeEvent>,
    pending: VecDeque<NodeEvent>,
    /// Events the current stream took, numbered, that no answered health check has confirmed
    /// yet: the replay window.
    unconfirmed: VecDeque<(u64, NodeEvent)>,
    /// `ppp_replay_window_overflow_total` for this upstream, looked up once: under a saturating
    /// load it is touched for every event.
    overflow: metrics::Counter,
}

impl Backlog {
    /// Notes that the stream takes `event`: it stays in the replay window until confirmed.
    /// Receipts are not kept: they belong to this upstream's commands and mean nothing to
    /// another.
    fn streamed(&mut self, upstream: &Upstream, event: &NodeEvent) {
        if matches!(event.event, Some(node_event::Event::Result(_))) {
            return;
        }
        // One stream at a time takes events, so this counter has one writer.
        let n = upstream.streamed.fetch_add(1, Ordering::AcqRel) + 1;
        let confirmed = upstream.confirmed.load(Ordering::Acquire);
        while self.unconfirmed.front().is_some_and(|(k, _)| *k <= confirmed) {
            self.unconfirmed.pop_front();
        }
        if self.unconfirmed.len() >= REPLAY_WINDOW {
            self.unconfirmed.pop_front();
            self.overflow.increment(1);
        }
        self.unconfirmed.push_back((n, event.clone()));
    }

    /// Puts the events of the replay window that are still unconfirmed back in front of the
    /// queue, for the next stream or another upstream; returns how many.
    fn replay(&mut self, upstream: &Upstream) -> usize {
        let confirmed = upstream.confirmed.load(Ordering::Acquire);
        let replay = std::mem::take(&mut self.unconfirmed);
        let mut n = 0;
        for (_, event) in replay.into_iter().rev().take_while(|(k, _)| *k > confirmed) {
            self.pending.push_front(event);
            n += 1;
        }
        n
    }
}

/// How a stream ended.
enum Outcome {
    /// The upstream was removed.
    Stopped,
    /// The node is draining and the stream ended cleanly.
    Finished,
    /// It broke; reconnect. `opened` says whether it had been open (resets the backoff).
    Broken { error: String, opened: bool },
}

/// The gRPC endpoint for an upstream URI, with keepalive and timeouts set.
///
/// # Errors
/// A message when the URI is not valid.
pub fn endpoint(uri: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|e| format!("upstream `{uri}`: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20)))
}

/// Runs the upstream's stream (and its health polling) until it is removed or the node drains.
pub async fn run(upstream: Arc<Upstream>, rx: mpsc::Receiver<NodeEvent>, ctx: StreamContext) {
    let channel = match endpoint(&upstream.uri) {
        Ok(e) => e.connect_lazy(),
        Err(e) => {
            warn!(error = %e, "upstream not started");
            upstream.set_last_error(e);
            return;
        }
    };
    // Health polling lives exactly as long as this task: the guard stops it on every way out.
    let health_stop = upstream.stop.child_token();
    let _health_guard = health_stop.clone().drop_guard();
    let span = info_span!("health", upstream = %upstream.id);
    let health = health::run(upstream.clone(), channel.clone(), ctx.health_interval, health_stop);
    ctx.tracker.spawn(health.instrument(span));
    let overflow = metrics::counter!(m::REPLAY_WINDOW_OVERFLOW, "upstream" => upstream.id.clone());
    let backlog =
        Arc::new(Mutex::new(Backlog { rx, pending: VecDeque::new(), unconfirmed: VecDeque::new(), overflow }));
    let mut backoff = Backoff::default();
    loop {
        let outcome = session(&upstream, &channel, &backlog, &ctx).await;
        upstream.set_open(false);
        match outcome {
            // The node ended its side and the upstream ended its own after reading everything.
            Outcome::Finished => {
                backlog.lock().await.unconfirmed.clear();
                break;
            }
            Outcome::Stopped => break,
            Outcome::Broken { error, opened } => {
                warn!(error = %error, "upstream stream broken");
                metrics::counter!(m::UPSTREAM_RECONNECTS, "upstream" => upstream.id.clone()).increment(1);
                upstream.set_last_error(error);
                if opened {
                    backoff.reset();
                }
            }
        }
        reroute(&upstream, &backlog, &ctx.router).await;
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = upstream.stop.cancelled() => break,
            () = ctx.finish.cancelled() => break,
        }
    }
    upstream.set_open(false);
    reroute(&upstream, &backlog, &ctx.router).await;
    let left = backlog.lock().await.pending.len();
    if left > 0 {
        warn!(events = left, "upstream gone with events no other upstream could take");
        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "upstream_gone").increment(left as u64);
    }
}

/// One stream, from `Connect` until it ends.
async fn session(
    upstream: &Arc<Upstream>,
    channel: &Channel,
    backlog: &Arc<Mutex<Backlog>>,
    ctx: &StreamContext,
) -> Outcome {
    let broken = |error: String| Outcome::Broken { error, opened: false };
    let Ok(mut guard) = tokio::time::timeout(QUEUE_HANDOVER_TIMEOUT, backlog.clone().lock_owned()).await else {
        return broken("the previous stream did not release the queue".to_owned());
    };
    // What the previous stream left unconfirmed, if the reroute could not take it: first in line.
    guard.replay(upstream);
    // Ends the node's side of the stream whenever this session ends, however it ends (the
    // upstream's side broke, a command could not be decoded, the upstream was removed): the
    // request stream then gives the queue back for the next session, and the upstream sees the
    // end of the stream as the protocol promises.
    let session_end = CancellationToken::new();
    let _end_guard = session_end.clone().drop_guard();
    let outbound = outbound(ctx.hello.clone(), guard, upstream.clone(), ctx.finish.clone(), session_end.clone());
    let mut client = UpstreamClient::new(channel.clone()).max_decoding_message_size(MAX_COMMAND_BYTES);
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, client.connect(outbound));
    let response = tokio::select! {
        r = connect => r,
        () = upstream.stop.cancelled() => return Outcome::Stopped,
    };
    let mut inbound = match response {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return broken(format!("connect failed: {}", status.message())),
        Err(_) => return broken(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    };
    upstream.set_open(true);
    info!("upstream stream open");
    let (remote, remote_rx) = mpsc::channel(REMOTE_QUEUE);
    ctx.tracker.spawn(remote_commands(upstream.clone(), remote_rx, ctx.dispatcher.clone()).in_current_span());
    let stopped = upstream.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            biased;
            () = &mut stopped => return removed(upstream, inbound, ctx, &remote, &session_end).await,
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(command)) => {
                handle_command(upstream, command, &ctx.dispatcher, &remote).await;
                // A burst of commands arrives already decoded, so this loop would not yield on
                // its own: give the sockets' writers a turn to drain their queues, or a burst
                // longer than --write-queue for one socket would close it as a slow consumer
                // however fast its client reads.
                tokio::task::consume_budget().await;
            }
            Ok(None) if ctx.finish.is_cancelled() => return Outcome::Finished,
            Ok(None) => {
                return Outcome::Broken { error: "the upstream ended the stream".to_owned(), opened: true };
            }
            Err(status) => {
                return Outcome::Broken { error: format!("stream error: {}", status.message()), opened: true };
            }
        }
    }
}

/// The upstream was removed: end the node's side of the stream and give the upstream
/// [`REMOVAL_GRACE`] to read what it was sent and end its own side (carrying out its last
/// commands meanwhile), as when the node drains. If it does, everything the stream took arrived
/// and nothing is replayed; if it does not, the replay window is handed out again.
async fn removed(
    upstream: &Upstream,
    mut inbound: tonic::Streaming<proto::UpstreamCommand>,
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

/// The node's side of a stream: `hello`, then the backlog, then the queue as events arrive. When
/// the node drains it ends after the last queued event; when `end` is cancelled (the session is
/// over) it ends at once, leaving what is queued for the next stream. Holding the backlog's guard
/// for the stream's life makes sure only one stream drains it; the guard returns when the stream
/// ends or is dropped.
fn outbound(
    hello: NodeHello,
    guard: OwnedMutexGuard<Backlog>,
    upstream: Arc<Upstream>,
    finish: CancellationToken,
    end: CancellationToken,
) -> impl Stream<Item = NodeEvent> + Send + 'static {
    let hello = NodeEvent { event: Some(node_event::Event::Hello(hello)) };
    let rest = stream::unfold((guard, finish, end), move |(mut backlog, finish, end)| {
        let upstream = upstream.clone();
        async move {
            if end.is_cancelled() {
                return None;
            }
            let event = match backlog.pending.pop_front() {
                Some(event) => event,
                // Under load the queue is rarely empty: take what is there without building the
                // cancellation futures (which register and unregister a waiter every time).
                None => match backlog.rx.try_recv() {
                    Ok(event) => event,
                    Err(_) => tokio::select! {
                        biased;
                        () = end.cancelled() => None,
                        event = backlog.rx.recv() => event,
                        () = finish.cancelled() => backlog.rx.try_recv().ok(),
                    }?,
                },
            };
            backlog.streamed(&upstream, &event);
            Some((event, (backlog, finish, end)))
        }
    });
    stream::once(async { hello }).chain(rest)
}

/// Carries out one command and, when it carries a `command_id`, queues its receipt. A command
/// for a socket of another node waits for that node; it goes to `remote` (carried out in order by
/// [`remote_commands`]) so that it never holds up the commands behind it on this stream.
async fn handle_command(
    upstream: &Upstream,
    command: proto::UpstreamCommand,
    dispatcher: &Dispatcher,
    remote: &mpsc::Sender<(Option<String>, Command)>,
) {
    let (command_id, parsed) = Command::from_proto(command);
    let receipt = match parsed {
        Ok(command) if command.socket().is_some() => match dispatcher.execute_local(&command) {
            Some(receipt) => {
                m::hot().command(command.kind(), receipt.status_label());
                receipt
            }
            None => {
                if let Err(mpsc::error::SendError((command_id, _))) = remote.send((command_id, command)).await {
                    send_receipt(upstream, command_id, Receipt::failed("the stream is closing"));
                }
                return;
            }
        },
        Ok(command) => dispatcher.execute(&command).await,
        Err(e) => {
            warn!(error = %e, command_id = command_id.as_deref().unwrap_or(""), "invalid command");
            m::hot().command("invalid", "failed");
            Receipt::failed(e.to_string())
        }
    };
    send_receipt(upstream, command_id, receipt);
}

/// Carries out, in order, the commands of one stream for sockets held by other nodes.
async fn remote_commands(
    upstream: Arc<Upstream>,
    mut commands: mpsc::Receiver<(Option<String>, Command)>,
    dispatcher: Dispatcher,
) {
    while let Some((command_id, command)) = commands.recv().await {
        let receipt = dispatcher.execute(&command).await;
        send_receipt(&upstream, command_id, receipt);
    }
}

/// Queues the receipt of a command that carried a `command_id`.
fn send_receipt(upstream: &Upstream, command_id: Option<String>, receipt: Receipt) {
    let Some(command_id) = command_id else { return };
    let result = CommandResult { command_id, status: receipt.status as i32, detail: receipt.detail };
    let event = NodeEvent { event: Some(node_event::Event::Result(result)) };
    if upstream.try_hand(event).is_err() {
        warn!("receipt refused: the upstream's queue is full");
        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "receipt_queue_full").increment(1);
    }
}

/// Hands what waits for a broken or removed upstream to other usable upstreams, without waiting;
/// what none can take stays for this upstream's next stream. Receipts stay: they are for this
/// upstream only.
async fn reroute(upstream: &Upstream, backlog: &Arc<Mutex<Backlog>>, router: &Router) {
    let Ok(mut backlog) = tokio::time::timeout(QUEUE_HANDOVER_TIMEOUT, backlog.lock()).await else {
        warn!("could not reroute: the stream still holds the queue");
        return;
    };
    let replayed = backlog.replay(upstream);
    if replayed > 0 {
        warn!(events = replayed, "handing out again the events the upstream may not have received");
        metrics::counter!(m::EVENTS_REPLAYED, "upstream" => upstream.id.clone()).increment(replayed as u64);
    }
    while let Ok(event) = backlog.rx.try_recv() {
        backlog.pending.push_back(event);
    }
    let mut kept = VecDeque::new();
    let mut moved = 0u64;
    for event in std::mem::take(&mut backlog.pending) {
        if matches!(event.event, Some(node_event::Event::Result(_))) {
            kept.push_back(event);
            continue;
        }
        match router.try_forward(event, None, Some(&upstream.id)) {
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

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of the
/// current step, so nodes that lost an upstream together do not reconnect in lockstep.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let step = BACKOFF_BASE.saturating_mul(1 << self.failures.min(16)).min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE);
        for _ in 0..20 {
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
