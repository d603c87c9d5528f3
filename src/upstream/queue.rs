//! An upstream's event queue: bounded in events ([`UPSTREAM_QUEUE`]), and taking the events of
//! one read in one go, so a read of many frames is one channel operation and one wake-up of the
//! stream task, not one per frame.
//!
//! The channel carries batches; a semaphore of [`UPSTREAM_QUEUE`] permits, one per event, is
//! the bound: a sender takes the permits of its events before it sends them, the receiver gives
//! them back as it takes a batch off the channel. Between the two, the receiver holds at most
//! the rest of one batch.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::socket::event::Event;

/// Capacity of each upstream's event queue. When every usable upstream's queue is full the node
/// stops reading sockets (TCP flow control holds the clients).
pub const UPSTREAM_QUEUE: usize = 8192;

/// What the channel carries: one event (no allocation), or the events of one read.
enum Batch {
    One(Event),
    Many(Vec<Event>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(events) => events.len(),
        }
    }
}

/// A new queue's two ends.
pub fn queue() -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(UPSTREAM_QUEUE));
    (QueueTx { tx, room: room.clone() }, QueueRx { rx, room, current: VecDeque::new() })
}

/// The sending end (the balancer's, and receipts').
#[derive(Debug)]
pub struct QueueTx {
    tx: mpsc::UnboundedSender<Batch>,
    /// Room left, in events.
    room: Arc<Semaphore>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({})", self.len())
    }
}

impl QueueTx {
    /// Queues `event` if there is room.
    ///
    /// # Errors
    /// The event, when the queue is full or its receiver gone.
    #[allow(clippy::result_large_err)] // handed back, not boxed: that would allocate per event
    pub fn try_send(&self, event: Event) -> Result<(), Event> {
        let Ok(permit) = self.room.try_acquire() else { return Err(event) };
        permit.forget();
        self.send(Batch::One(event)).map_err(|batch| match batch {
            Batch::One(event) => event,
            Batch::Many(_) => unreachable!("sent as one"),
        })
    }

    /// Queues all of `events` if there is room for all of them.
    ///
    /// # Errors
    /// The events, when there is not or the receiver is gone.
    pub fn try_send_all(&self, events: Vec<Event>) -> Result<(), Vec<Event>> {
        if events.is_empty() {
            return Ok(());
        }
        let Ok(n) = u32::try_from(events.len()) else { return Err(events) };
        let Ok(permits) = self.room.try_acquire_many(n) else { return Err(events) };
        permits.forget();
        self.send(Batch::Many(events)).map_err(|batch| match batch {
            Batch::Many(events) => events,
            Batch::One(event) => vec![event],
        })
    }

    /// Waits for room for one event and reserves it; `None` once the receiver is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a reservation not yet returned is released.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.room.clone().acquire_owned().await.ok()
    }

    /// Queues `event` in the room `permit` reserved.
    pub fn send_reserved(&self, permit: OwnedSemaphorePermit, event: Event) {
        permit.forget();
        // The receiver is gone if this fails: so is the upstream.
        let _ = self.send(Batch::One(event));
    }

    /// Events queued now.
    pub fn queued(&self) -> usize {
        UPSTREAM_QUEUE.saturating_sub(self.room.available_permits())
    }

    /// Sends a batch whose permits are taken; gives them back, and the batch, if the receiver
    /// is gone.
    fn send(&self, batch: Batch) -> Result<(), Batch> {
        self.tx.send(batch).map_err(|mpsc::error::SendError(batch)| {
            self.room.add_permits(batch.len());
            batch
        })
    }
}

/// The receiving end (the upstream's stream task).
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::UnboundedReceiver<Batch>,
    /// The senders' room, given back as batches are taken.
    room: Arc<Semaphore>,
    /// The rest of the batch last taken.
    current: VecDeque<Event>,
}

impl QueueRx {
    /// The next event if one is there now.
    pub fn try_recv(&mut self) -> Option<Event> {
        if let Some(event) = self.current.pop_front() {
            return Some(event);
        }
        let batch = self.rx.try_recv().ok()?;
        Some(self.take(batch))
    }

    /// The next event, waiting for one; `None` once every sender is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: no event is lost.
    pub async fn recv(&mut self) -> Option<Event> {
        if let Some(event) = self.current.pop_front() {
            return Some(event);
        }
        let batch = self.rx.recv().await?;
        Some(self.take(batch))
    }

    /// Gives back a batch's room and returns its first event, keeping the rest.
    fn take(&mut self, batch: Batch) -> Event {
        self.room.add_permits(batch.len());
        match batch {
            Batch::One(event) => event,
            Batch::Many(events) => {
                self.current = VecDeque::from(events);
                self.current.pop_front().expect("a batch is never empty")
            }
        }
    }
}

impl Drop for QueueRx {
    /// Senders waiting for room see the queue is gone.
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{CloseReason, event};

    fn events(n: usize) -> Vec<Event> {
        (0..n).map(|i| event::closed(&i.to_string(), CloseReason::ClientClosed)).collect()
    }

    #[test]
    fn the_bound_is_in_events_and_a_batch_is_all_or_nothing() {
        let (tx, mut rx) = queue();
        tx.try_send_all(events(UPSTREAM_QUEUE - 1)).unwrap();
        assert_eq!(tx.try_send_all(events(2)).unwrap_err().len(), 2, "no room for both: neither goes");
        tx.try_send(events(1).remove(0)).unwrap();
        assert!(tx.try_send(events(1).remove(0)).is_err(), "full");
        assert_eq!(tx.queued(), UPSTREAM_QUEUE);
        // Taking the big batch gives its room back at once; its events still come out in order.
        let first = rx.try_recv().unwrap();
        assert_eq!(first.to_proto(), events(1)[0].to_proto());
        assert_eq!(tx.queued(), 1);
        let mut n = 1;
        while rx.try_recv().is_some() {
            n += 1;
        }
        assert_eq!(n, UPSTREAM_QUEUE);
        drop(rx);
        assert!(tx.try_send(events(1).remove(0)).is_err(), "the receiver is gone");
    }
}
