//! What waits for one upstream: its queue, what a broken stream left, and the current stream's
//! replay window.

use std::collections::VecDeque;

use super::{pool::Upstream, queue::QueueRx, window::ReplayWindow};
use crate::socket::event::Event;

/// The events waiting for an upstream: its queue, and those taken from the queue while the
/// stream was down and not yet rerouted. `pending` holds at most what the queue held plus one
/// replay window: while the stream is down the upstream is not usable, so nothing new is queued
/// for it but receipts for its own commands, and those stop with its stream.
pub(super) struct Backlog {
    pub(super) rx: QueueRx,
    pub(super) pending: VecDeque<Event>,
    /// Events the current stream wrote that the upstream has not confirmed.
    pub(super) window: ReplayWindow,
    /// `ppp_replay_window_overflow_total` for this upstream, looked up once: under a saturating
    /// load it is touched for every event.
    pub(super) overflow: metrics::Counter,
}

impl Backlog {
    /// Puts the events of the replay window that are still unconfirmed back in front of the
    /// queue, flagged `redelivered`, for the next stream or another upstream; returns how many.
    pub(super) fn replay(&mut self, upstream: &Upstream) -> usize {
        let again = self.window.take_unconfirmed(&upstream.delivery);
        let n = again.len();
        for event in again.into_iter().rev() {
            self.pending.push_front(event);
        }
        n
    }

    /// Puts every event the window holds back in front of the queue, unflagged: the stream that
    /// wrote them was refused (`UNIMPLEMENTED`), so nobody processed them.
    pub(super) fn unsend(&mut self) {
        for event in self.window.take_all().into_iter().rev() {
            self.pending.push_front(event);
        }
    }
}
