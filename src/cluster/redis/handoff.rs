//! A bounded channel between the backend's tasks and the node, whose receiving end the node
//! takes once (the reaper's announcements, the commands from other nodes).

use std::sync::Mutex;

use tokio::sync::mpsc;

/// A bounded channel whose receiving end one consumer (the node) takes, once.
pub struct Handoff<T> {
    /// The sending end, for the backend's tasks.
    tx: mpsc::Sender<T>,
    /// The receiving end, until it is taken.
    rx: Mutex<Option<mpsc::Receiver<T>>>,
}

impl<T> Handoff<T> {
    /// A channel of `bound` items.
    pub fn new(bound: usize) -> Self {
        let (tx, rx) = mpsc::channel(bound);
        Self { tx, rx: Mutex::new(Some(rx)) }
    }

    /// The sending end.
    pub fn sender(&self) -> &mpsc::Sender<T> {
        &self.tx
    }

    /// The receiving end; `None` once taken.
    pub fn take(&self) -> Option<mpsc::Receiver<T>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
