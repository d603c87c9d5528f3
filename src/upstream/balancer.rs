//! The balancer: which upstream gets each inbound event, and inbound backpressure.
//!
//! `round-robin` hands each event to the next usable upstream by the shared counter (upstreams
//! are ordered by id on every node, so the split is fair cluster-wide); when that one's queue is
//! full the next one is tried. `sticky` binds a socket to the upstream that took its first event
//! and rebinds it only when that upstream is no longer usable. When no usable upstream can take
//! the event, [`Balancer::forward`] waits, so the socket's reader stops reading and TCP flow control
//! holds the client: nothing is buffered without bound and nothing is dropped.

use std::sync::Arc;

use futures_util::future::select_all;

use super::{
    balance::Balance,
    pool::{Upstream, UpstreamPool},
};
use crate::{
    cluster::Counter,
    settings::Settings,
    socket::{SocketState, event::Event},
};

/// Picks upstreams for inbound events. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Balancer {
    /// The upstreams.
    pool: UpstreamPool,
    /// The (cluster-wide) round-robin counter.
    counter: Arc<dyn Counter>,
    /// For the balance mode.
    settings: Arc<Settings>,
}

impl Balancer {
    /// A balancer over `pool`.
    pub fn new(pool: UpstreamPool, counter: Arc<dyn Counter>, settings: Arc<Settings>) -> Self {
        Self { pool, counter, settings }
    }

    /// Hands `event` (of `socket`, if it belongs to one) to an upstream, waiting as long as no
    /// usable upstream has room. `exclude` names an upstream that must not get it (the one it is
    /// being rerouted away from).
    ///
    /// # Cancel safety
    /// Cancel safe: when cancelled, the event was not handed to anyone.
    pub async fn forward(&self, event: Event, socket: Option<&SocketState>, exclude: Option<&str>) {
        if let Err(event) = self.try_forward(event, socket, exclude) {
            // Boxed: the waiting path is rare, and keeping it out of line keeps every socket's
            // task small.
            Box::pin(self.wait_and_forward(event, socket, exclude)).await;
        }
    }

    /// [`Balancer::forward`] once the first try failed: wait for room or a change, try again.
    async fn wait_and_forward(&self, mut event: Event, socket: Option<&SocketState>, exclude: Option<&str>) {
        let mut changes = None;
        loop {
            event = match self.try_forward(event, socket, exclude) {
                Ok(()) => return,
                Err(event) => event,
            };
            // Subscribe before looking again, so no change between the look and the wait is missed.
            let Some(rx) = &mut changes else {
                changes = Some(self.pool.subscribe());
                continue;
            };
            let candidates = self.candidates(socket, exclude);
            if candidates.is_empty() {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            let waits = candidates.into_iter().map(|u| Box::pin(u.reserve()));
            tokio::select! {
                _ = rx.changed() => {}
                (Some((up, permit)), ..) = select_all(waits) => {
                    up.forward_reserved(permit, event);
                    self.bind(socket, &up);
                    return;
                }
            }
        }
    }

    /// Hands `event` to a usable upstream with room, without waiting.
    ///
    /// # Errors
    /// The event, when none could take it now.
    // The event is handed back, not boxed: boxing would cost an allocation per message.
    #[allow(clippy::result_large_err)]
    pub fn try_forward(&self, event: Event, socket: Option<&SocketState>, exclude: Option<&str>) -> Result<(), Event> {
        self.route().try_forward(event, socket, exclude)
    }

    /// The upstreams as they are now, for the events of one read: looked up once for all of
    /// them (the pool's list is shared by every socket, and reading it is a lock and a count).
    pub fn route(&self) -> Route<'_> {
        Route { balancer: self, list: self.pool.snapshot() }
    }

    /// The upstreams worth waiting on: the socket's bound one if usable, else every usable one.
    fn candidates(&self, socket: Option<&SocketState>, exclude: Option<&str>) -> Vec<Arc<Upstream>> {
        let usable = |u: &Arc<Upstream>| u.is_usable() && Some(u.id.as_str()) != exclude;
        let list = self.pool.snapshot();
        if let Some(bound) = self.bound_in(socket, &list).filter(|b| usable(b)) {
            return vec![bound];
        }
        list.iter().filter(|u| usable(u)).cloned().collect()
    }

    /// The upstream a socket is bound to, in sticky mode, among `list`.
    fn bound_in(&self, socket: Option<&SocketState>, list: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        if self.settings.balance() != Balance::Sticky {
            return None;
        }
        let id = socket?.sticky.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        list.iter().find(|u| u.id.as_str() == &*id).cloned()
    }

    /// Binds a socket to the upstream that took its event, in sticky mode.
    fn bind(&self, socket: Option<&SocketState>, up: &Arc<Upstream>) {
        if self.settings.balance() != Balance::Sticky {
            return;
        }
        if let Some(socket) = socket {
            let mut bound = socket.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if bound.as_deref() != Some(up.id.as_str()) {
                *bound = Some(up.id.as_str().into());
            }
        }
    }
}

/// The upstreams as [`Balancer::route`] found them: where the events of one read go.
pub struct Route<'a> {
    /// The balancer whose rules apply.
    balancer: &'a Balancer,
    /// The pool's upstreams when the route was made.
    list: Arc<[Arc<Upstream>]>,
}

impl<'a> Route<'a> {
    /// [`Balancer::try_forward`], among the route's upstreams.
    ///
    /// # Errors
    /// The event, when none could take it now.
    #[allow(clippy::result_large_err)]
    pub fn try_forward(&self, event: Event, socket: Option<&SocketState>, exclude: Option<&str>) -> Result<(), Event> {
        let balancer = self.balancer;
        let usable = |u: &&Arc<Upstream>| u.is_usable() && Some(u.id.as_str()) != exclude;
        if let Some(bound) = balancer.bound_in(socket, &self.list).filter(|b| usable(&b)) {
            return bound.try_forward(event);
        }
        let count = self.list.iter().filter(usable).count();
        if count == 0 {
            return Err(event);
        }
        let start = (balancer.counter.next() % count as u64) as usize;
        let mut event = event;
        for up in self.list.iter().filter(usable).cycle().skip(start).take(count) {
            event = match up.try_forward(event) {
                Ok(()) => {
                    balancer.bind(socket, up);
                    return Ok(());
                }
                Err(event) => event,
            };
        }
        Err(event)
    }

    /// Hands all of `events` (of `socket`, in its order) to one upstream in one go when the
    /// rules send them all to one: the socket's bound upstream (`sticky`), or the only usable
    /// one. Returns what was not handed over, in order, for [`Route::try_forward`] one by one:
    /// everything when several upstreams share them (each event has its own turn) or when the
    /// one has no room for all.
    pub fn try_forward_all(&self, events: Vec<Event>, socket: &SocketState) -> Vec<Event> {
        let balancer = self.balancer;
        let one = match balancer.bound_in(Some(socket), &self.list).filter(|b| b.is_usable()) {
            Some(bound) => bound,
            None => {
                let mut usable = self.list.iter().filter(|u| u.is_usable());
                match (usable.next(), usable.next()) {
                    (Some(only), None) => only.clone(),
                    _ => return events,
                }
            }
        };
        match one.try_forward_all(events) {
            Ok(()) => {
                balancer.bind(Some(socket), &one);
                Vec::new()
            }
            Err(events) => events,
        }
    }

    /// The balancer, to wait on when no upstream of the route has room.
    pub fn balancer(&self) -> &'a Balancer {
        self.balancer
    }
}
