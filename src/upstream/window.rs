//! The replay window: the events a stream wrote that the upstream has not confirmed yet, and the
//! state that confirms them.
//!
//! gRPC says nothing about what an upstream received of a stream that breaks. So the events a
//! stream writes stay in the window until they are confirmed, one of two ways:
//!
//! - **acknowledged**: the upstream sent `Ack { event_seq }` on this stream, saying it processed
//!   every event up to that one. Once it has sent one, only acks confirm events of that stream,
//!   and a full window makes the stream wait for the next ack instead of letting events go.
//! - **received** (the fallback for upstreams that never ack): a health check sent after the event
//!   on the same HTTP/2 connection was answered, which proves the event arrived (frames arrive in
//!   order). A full window then lets its oldest event go unconfirmed, counted.
//!
//! When a stream breaks, what is still unconfirmed is handed out again, flagged `redelivered`:
//! delivery is at least once, and nothing an upstream acknowledged is sent again.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::Notify;

use crate::socket::event::Event;

/// Most events kept unconfirmed per upstream (about 90 bytes each, an [`Event`] and its number,
/// plus payloads). Beyond it an acknowledging stream waits for acks; a stream without acks lets
/// the oldest go unconfirmed, counted in `ppp_replay_window_overflow_total`.
pub const REPLAY_WINDOW: usize = 65_536;

/// How far an upstream has confirmed what its streams wrote. Shared by the stream task (which
/// writes events and reads acks) and the health task (which confirms receipt).
#[derive(Debug, Default)]
pub struct Delivery {
    /// Events the upstream's streams have taken so far, across streams: numbers them for the
    /// health checks' confirmations.
    pub streamed: AtomicU64,
    /// Every event numbered up to this reached the upstream: a health check sent after it on the
    /// same connection was answered.
    pub confirmed: AtomicU64,
    /// The highest `event_seq` written on the current stream (an ack cannot go beyond it).
    written: AtomicU64,
    /// The highest `event_seq` the upstream acknowledged on the current stream.
    acked: AtomicU64,
    /// The upstream sent an `Ack` on the current stream: from then on only acks confirm.
    acking: AtomicBool,
    /// Woken by every ack, for a stream that waits on a full window.
    ack_arrived: Notify,
}

impl Delivery {
    /// A new stream starts: its `event_seq`s start again from 1 and it has acknowledged nothing.
    pub fn new_stream(&self) {
        self.written.store(0, Ordering::Release);
        self.acked.store(0, Ordering::Release);
        self.acking.store(false, Ordering::Release);
    }

    /// Notes that the current stream wrote the event numbered `event_seq`.
    pub fn wrote(&self, event_seq: u64) {
        self.written.store(event_seq, Ordering::Release);
    }

    /// The upstream acknowledged every event of the current stream up to `event_seq`. An ack
    /// beyond what was written counts as one for everything written: events not yet written are
    /// never confirmed ahead of time.
    pub fn ack(&self, event_seq: u64) {
        let event_seq = event_seq.min(self.written.load(Ordering::Acquire));
        self.acked.fetch_max(event_seq, Ordering::AcqRel);
        self.acking.store(true, Ordering::Release);
        self.ack_arrived.notify_waiters();
    }

    /// Whether the upstream acknowledges on the current stream.
    pub fn is_acking(&self) -> bool {
        self.acking.load(Ordering::Acquire)
    }

    /// Whether an entry no longer needs keeping.
    fn is_confirmed(&self, entry: &Entry) -> bool {
        if self.is_acking() {
            entry.event_seq <= self.acked.load(Ordering::Acquire)
        } else {
            entry.number <= self.confirmed.load(Ordering::Acquire)
        }
    }
}

/// One event kept for replay.
#[derive(Debug)]
struct Entry {
    /// Its number across the upstream's streams (for health confirmations).
    number: u64,
    /// Its `event_seq` on the stream that wrote it (for acks).
    event_seq: u64,
    /// The event itself.
    event: Event,
}

/// What happened when a stream tried to keep an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Kept (or nothing to keep: receipts are not replayed).
    Yes,
    /// Kept, and the oldest unconfirmed event left the window (a stream without acks).
    Overflowed,
}

/// The events of the current stream not yet confirmed, oldest first.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    entries: VecDeque<Entry>,
}

impl ReplayWindow {
    /// Drops what is confirmed from the front (the window is pruned lazily, as events arrive).
    fn prune(&mut self, delivery: &Delivery) {
        while self.entries.front().is_some_and(|e| delivery.is_confirmed(e)) {
            self.entries.pop_front();
        }
    }

    /// Whether an acknowledging stream must wait for an ack before it writes more.
    pub fn must_wait(&mut self, delivery: &Delivery) -> bool {
        if !delivery.is_acking() || self.entries.len() < REPLAY_WINDOW {
            return false;
        }
        self.prune(delivery);
        self.entries.len() >= REPLAY_WINDOW
    }

    /// Waits until an ack arrives or the window has room.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn wait_for_room(&mut self, delivery: &Delivery) {
        loop {
            let ack = delivery.ack_arrived.notified();
            if !self.must_wait(delivery) {
                return;
            }
            ack.await;
        }
    }

    /// Keeps `event`, written as `event_seq` on the current stream, until it is confirmed.
    /// Receipts are not kept: they answer this upstream's commands and mean nothing to another.
    pub fn keep(&mut self, delivery: &Delivery, event_seq: u64, event: &Event) -> Kept {
        delivery.wrote(event_seq);
        if event.is_receipt() {
            return Kept::Yes;
        }
        // One stream at a time writes, so this counter has one writer.
        let number = delivery.streamed.fetch_add(1, Ordering::AcqRel) + 1;
        self.prune(delivery);
        let mut kept = Kept::Yes;
        if self.entries.len() >= REPLAY_WINDOW {
            self.entries.pop_front();
            kept = Kept::Overflowed;
        }
        self.entries.push_back(Entry { number, event_seq, event: event.clone() });
        kept
    }

    /// Takes the events still unconfirmed, oldest first, each flagged `redelivered`; the window
    /// is empty afterwards.
    pub fn take_unconfirmed(&mut self, delivery: &Delivery) -> Vec<Event> {
        self.prune(delivery);
        std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|e| !delivery.is_confirmed(e))
            .map(|e| Event { redelivered: true, ..e.event })
            .collect()
    }

    /// Takes every event kept, confirmed or not, oldest first, as it was first written; the window
    /// is empty afterwards.
    pub fn take_all(&mut self) -> Vec<Event> {
        self.entries.drain(..).map(|e| e.event).collect()
    }

    /// Forgets everything (the upstream read the whole stream to its end).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        proto::node_event,
        socket::{CloseReason, event},
    };

    fn closed(n: u64) -> Event {
        event::closed(&n.to_string(), CloseReason::ClientClosed)
    }

    fn ids(events: &[Event]) -> Vec<String> {
        let id = |e: &Event| match e.to_proto().event {
            Some(node_event::Event::Closed(c)) => c.socket_id,
            _ => String::new(),
        };
        events.iter().map(id).collect()
    }

    /// A new stream whose window keeps the events of `seqs`.
    fn kept(seqs: std::ops::RangeInclusive<u64>) -> (Delivery, ReplayWindow) {
        let delivery = Delivery::default();
        let mut window = ReplayWindow::default();
        delivery.new_stream();
        for seq in seqs {
            window.keep(&delivery, seq, &closed(seq));
        }
        (delivery, window)
    }

    #[test]
    fn acked_events_are_never_handed_out_again() {
        let (delivery, mut window) = kept(2..=6);
        // The health check confirmed everything, but the upstream acks: only acks count.
        delivery.confirmed.store(u64::MAX, Ordering::Release);
        delivery.ack(4);
        let again = window.take_unconfirmed(&delivery);
        assert_eq!(ids(&again), ["5", "6"]);
        assert!(again.iter().all(|e| e.redelivered));
        assert!(window.is_empty());
    }

    #[test]
    fn without_acks_the_health_checks_confirm() {
        let (delivery, mut window) = kept(2..=5);
        delivery.confirmed.store(2, Ordering::Release);
        assert_eq!(ids(&window.take_unconfirmed(&delivery)), ["4", "5"]);
    }

    #[test]
    fn an_ack_beyond_what_was_written_confirms_only_what_was_written() {
        let delivery = Delivery::default();
        let mut window = ReplayWindow::default();
        delivery.new_stream();
        window.keep(&delivery, 2, &closed(2));
        delivery.ack(u64::MAX);
        window.keep(&delivery, 3, &closed(3));
        assert_eq!(ids(&window.take_unconfirmed(&delivery)), ["3"]);
    }

    #[test]
    fn a_full_window_waits_for_acks_and_overflows_without() {
        let delivery = Delivery::default();
        let mut window = ReplayWindow::default();
        delivery.new_stream();
        for seq in 0..REPLAY_WINDOW as u64 {
            assert_eq!(window.keep(&delivery, seq + 2, &closed(seq)), Kept::Yes);
        }
        assert!(!window.must_wait(&delivery), "no acks: never waits");
        assert_eq!(window.keep(&delivery, REPLAY_WINDOW as u64 + 2, &closed(0)), Kept::Overflowed);
        delivery.ack(1);
        assert!(window.must_wait(&delivery));
        delivery.ack(10);
        assert!(!window.must_wait(&delivery));
    }
}
