//! The node's side of a stream: `hello`, then what waits for the upstream, each event numbered
//! (`event_seq`) and kept in the replay window until the upstream confirms it.

use std::sync::Arc;

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{OwnedMutexGuard, oneshot};
use tokio_util::sync::CancellationToken;

use super::{backlog::Backlog, pool::Upstream, window::Kept};
use crate::proto::{NodeEvent, NodeHello, node_event};

/// The node's side of a stream: `hello`, then the backlog, then the queue as events arrive, each
/// numbered (`event_seq`) and kept in the replay window. `accepted` is told when the transport
/// takes `hello`: the call is accepted. When the node drains it ends after the last queued event;
/// when `end` is cancelled (the session is over) it ends at once, leaving what is queued for the
/// next stream. Holding the backlog's guard for the stream's life makes sure only one stream
/// drains it; the guard returns when the stream ends or is dropped.
pub(super) fn outbound(
    hello: NodeHello,
    guard: OwnedMutexGuard<Backlog>,
    upstream: Arc<Upstream>,
    finish: CancellationToken,
    end: CancellationToken,
    accepted: oneshot::Sender<()>,
) -> impl Stream<Item = NodeEvent> + Send + 'static {
    let hello = NodeEvent { event: Some(node_event::Event::Hello(hello)), event_seq: 1, redelivered: false };
    let first = stream::once(async move {
        let _ = accepted.send(());
        hello
    });
    let state = (guard, finish, end, 2u64);
    let rest = stream::unfold(state, move |(mut backlog, finish, end, event_seq)| {
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
            let mut event = next_event(&mut backlog, &finish, &end).await?;
            event.event_seq = event_seq;
            let backlog_ref = &mut *backlog;
            if backlog_ref.window.keep(&upstream.delivery, event_seq, &event) == Kept::Overflowed {
                backlog_ref.overflow.increment(1);
            }
            Some((event, (backlog, finish, end, event_seq + 1)))
        }
    });
    first.chain(rest)
}

/// The next event for the stream: what waits in the backlog first, then the queue. `None` when
/// the session ends, or when the node drains and the queue is empty.
async fn next_event(backlog: &mut Backlog, finish: &CancellationToken, end: &CancellationToken) -> Option<NodeEvent> {
    if let Some(event) = backlog.pending.pop_front() {
        return Some(event);
    }
    // Under load the queue is rarely empty: take what is there without building the
    // cancellation futures (which register and unregister a waiter every time).
    match backlog.rx.try_recv() {
        Ok(event) => Some(event),
        Err(_) => tokio::select! {
            biased;
            () = end.cancelled() => None,
            event = backlog.rx.recv() => event,
            () = finish.cancelled() => backlog.rx.try_recv().ok(),
        },
    }
}
