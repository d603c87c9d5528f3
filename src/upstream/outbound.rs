//! The node's side of a stream: `hello`, then what waits for the upstream, in batches of what is
//! ready together, each event numbered (`event_seq`) and kept in the replay window until the
//! upstream confirms it.

use std::sync::Arc;

use futures_util::{Stream, StreamExt as _, stream};
use prost::Message;
use tokio::sync::{OwnedMutexGuard, oneshot};
use tokio_util::sync::CancellationToken;

use super::{backlog::Backlog, pool::Upstream, window::Kept};
use crate::{
    proto::NodeHello,
    socket::{event::Event, wire::EventBatch},
};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Most encoded bytes of events in one batch (an event larger than this goes alone): well below
/// the 4 MiB a stock gRPC server accepts per message by default.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The node's side of a stream: `hello`, then the backlog, then the queue as events arrive, in
/// batches of what is ready together (never waiting to fill one, so batching adds no latency),
/// each event numbered (`event_seq`) and kept in the replay window. `accepted` is told when the
/// transport takes `hello`: the call is accepted. When the node drains it ends after the last
/// queued event; when `end` is cancelled (the session is over) it ends at once, leaving what is
/// queued for the next stream. Holding the backlog's guard for the stream's life makes sure only
/// one stream drains it; the guard returns when the stream ends or is dropped.
pub(super) fn outbound(
    hello: NodeHello,
    guard: OwnedMutexGuard<Backlog>,
    upstream: Arc<Upstream>,
    finish: CancellationToken,
    end: CancellationToken,
    accepted: oneshot::Sender<()>,
) -> impl Stream<Item = EventBatch> + Send + 'static {
    let hello = Event { event_seq: 1, ..Event::hello(hello) };
    let first = stream::once(async move {
        let _ = accepted.send(());
        EventBatch { events: vec![hello] }
    });
    let state = (guard, finish, end, 2u64);
    let rest = stream::unfold(state, move |(mut backlog, finish, end, mut event_seq)| {
        let upstream = upstream.clone();
        async move {
            if end.is_cancelled() {
                return None;
            }
            if backlog.window.must_wait(&upstream.delivery) {
                // An acknowledging upstream is a whole window behind: wait for its acks
                // (backpressure) rather than let events go unconfirmed.
                tokio::select! {
                    () = end.cancelled() => return None,
                    () = backlog.window.wait_for_room(&upstream.delivery) => {}
                }
            }
            let first = next_event(&mut backlog, &finish, &end).await?;
            let batch = fill(&mut backlog, &upstream, first, &mut event_seq);
            Some((batch, (backlog, finish, end, event_seq)))
        }
    });
    first.chain(rest)
}

/// A batch: `first`, then whatever else is ready now, up to [`MAX_BATCH_EVENTS`] and
/// [`MAX_BATCH_BYTES`], and no further than the replay window lets an acknowledging stream go.
/// Each event is numbered from `event_seq` on and kept in the window.
fn fill(backlog: &mut Backlog, upstream: &Upstream, first: Event, event_seq: &mut u64) -> EventBatch {
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(mut event) = next.take() {
        let len = event.encoded_len();
        if !events.is_empty() && bytes + len > MAX_BATCH_BYTES {
            backlog.pending.push_front(event); // The first of the next batch.
            break;
        }
        bytes += len;
        event.event_seq = *event_seq;
        if backlog.window.keep(&upstream.delivery, *event_seq, &event) == Kept::Overflowed {
            backlog.overflow.increment(1);
        }
        *event_seq += 1;
        events.push(event);
        if events.len() < MAX_BATCH_EVENTS && !backlog.window.must_wait(&upstream.delivery) {
            next = ready_event(backlog);
        }
    }
    EventBatch { events }
}

/// The next event that is there without waiting: the backlog's first, else the queue's.
fn ready_event(backlog: &mut Backlog) -> Option<Event> {
    backlog.pending.pop_front().or_else(|| backlog.rx.try_recv())
}

/// The next event for the stream: what waits in the backlog first, then the queue. `None` when
/// the session ends, or when the node drains and the queue is empty.
async fn next_event(backlog: &mut Backlog, finish: &CancellationToken, end: &CancellationToken) -> Option<Event> {
    // Under load the queue is rarely empty: take what is there without building the
    // cancellation futures (which register and unregister a waiter every time).
    if let Some(event) = ready_event(backlog) {
        return Some(event);
    }
    tokio::select! {
        biased;
        () = end.cancelled() => None,
        event = backlog.rx.recv() => event,
        () = finish.cancelled() => backlog.rx.try_recv(),
    }
}
