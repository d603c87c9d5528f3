//! A recording, echoing upstream for the chaos harness: real gRPC over loopback, every event it
//! receives stamped with its arrival time, every `data` payload sent straight back to its socket.
//! It can be killed (every connection drops at once, as when the process dies) and restarted on
//! the same port. It may acknowledge what it processed ([`Acks`]): after the echo of an event, on
//! the same stream, an `Ack` covering every event up to it, coalesced (every 64 events or 20 ms),
//! as a real upstream would; by default it never acks (the node's fallback rule then applies).
//!
//! (`TestUpstream` in `common` records too, but without arrival times, which the checker needs
//! to tell "the upstream died holding this message" from "the node lost it".)

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ppp::{
    UPSTREAM_SERVICE,
    proto::{
        self, NodeEvent, UpstreamCommand,
        node_event::Event,
        upstream_command::Command,
        upstream_server::{Upstream, UpstreamServer},
    },
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;

/// Commands an upstream's stream may hold for a node that does not read them; beyond it the
/// upstream stops reading that node's events (HTTP/2 flow control), as a real one would.
const COMMAND_QUEUE: usize = 4096;

/// Streams accepted so far, by every upstream of the process: each stream's number.
static STREAMS: AtomicU64 = AtomicU64::new(0);

/// Whether (and how) an upstream acknowledges the events it processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Never (an upstream written before `Ack`): the node keeps what a health check has not
    /// confirmed.
    #[default]
    Never,
    /// After `every` events, or `after` once the first unacknowledged one was processed,
    /// whichever comes first.
    Coalesced {
        /// Events per ack, at most.
        every: u64,
        /// Longest an event waits for its ack.
        after: Duration,
    },
}

impl Acks {
    /// What the harness's acking upstreams do: every 64 events or 20 ms.
    pub const COALESCED: Self = Self::Coalesced { every: 64, after: Duration::from_millis(20) };
}

/// What an upstream saw, as the checker needs it.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A stream opened (`hello`).
    Hello {
        /// The node that opened it.
        node_id: String,
        /// That run of the node process.
        run_id: String,
    },
    /// `opened`.
    Opened {
        /// The socket.
        socket_id: String,
        /// The node that holds it.
        node_id: String,
        /// The client's address as the node saw it: how the harness maps its client
        /// connections to socket ids.
        remote_addr: String,
        /// Announced again by a node back in the cluster after it was reported `node_lost`: a
        /// new life of the socket, which needs its own `closed`.
        resumed: bool,
    },
    /// `data`.
    Data {
        /// The socket.
        socket_id: String,
        /// The node's count of the socket's inbound messages.
        seq: u64,
        /// The message.
        payload: Bytes,
    },
    /// `closed`.
    Closed {
        /// The socket.
        socket_id: String,
        /// Why.
        reason: String,
    },
    /// Not an event: the upstream handed `Ack { event_seq: up_to }` to its stream (recorded when
    /// the gRPC stream took it, after every echo before it).
    Acked {
        /// Every event of the stream up to this `event_seq` was processed.
        up_to: u64,
    },
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it arrived (for [`Seen::Acked`], when the ack left).
    pub at: Instant,
    /// The stream it came on: a number unique in the process (not the node's).
    pub stream: u64,
    /// Its `event_seq` on that stream (0 for [`Seen::Acked`]).
    pub event_seq: u64,
    /// Whether the node flagged it `redelivered`.
    pub redelivered: bool,
    /// What it was.
    pub seen: Seen,
}

/// A recording, echoing upstream.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everything it received, over all its lives.
    log: Arc<Mutex<Vec<Record>>>,
    /// Its health service.
    health: HealthReporter,
    /// The server's own runtime on its own thread, so killing it drops every connection at
    /// once: (stop signal, thread).
    server: Option<crate::common::ServerHandle>,
    /// When it was killed, each time.
    pub kills: Vec<Instant>,
    /// Whether it acknowledges.
    pub acks: Acks,
}

/// A stream's commands to the node, as the gRPC server takes them.
type Commands = Pin<Box<dyn Stream<Item = Result<UpstreamCommand, Status>> + Send>>;

struct Service {
    log: Arc<Mutex<Vec<Record>>>,
    acks: Acks,
}

#[tonic::async_trait]
impl Upstream for Service {
    type ConnectStream = Commands;
    type ConnectBatchStream = ReceiverStream<Result<ppp::proto::UpstreamCommandBatch, Status>>;

    /// Not implemented, as in an upstream written before batches: the node falls back to `Connect`.
    async fn connect_batch(
        &self,
        _request: Request<Streaming<ppp::proto::NodeEventBatch>>,
    ) -> Result<Response<Self::ConnectBatchStream>, Status> {
        Err(Status::unimplemented("ConnectBatch"))
    }

    async fn connect(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let stream = STREAMS.fetch_add(1, Ordering::Relaxed) + 1;
        let log = self.log.clone();
        let acks = self.acks;
        tokio::spawn(async move {
            // The last event processed, how many since the last ack, when the first of those was.
            let mut last = 0;
            let mut unacked = 0;
            let mut ack_due: Option<Instant> = None;
            loop {
                let next = match ack_due {
                    // `Streaming::message` is cancel safe: a message is not lost to the timer.
                    Some(due) => tokio::select! {
                        next = inbound.message() => next,
                        () = tokio::time::sleep_until(due) => {
                            (unacked, ack_due) = (0, None);
                            if tx.send(Ok(ack(last))).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    },
                    None => inbound.message().await,
                };
                let Ok(Some(event)) = next else { return };
                let (event_seq, redelivered) = (event.event_seq, event.redelivered);
                if let Some(seen) = seen(event) {
                    let echo = match &seen {
                        Seen::Data { socket_id, payload, .. } => Some(send(socket_id, payload.clone())),
                        _ => None,
                    };
                    log.lock().unwrap().push(Record { at: Instant::now(), stream, event_seq, redelivered, seen });
                    if let Some(echo) = echo
                        && tx.send(Ok(echo)).await.is_err()
                    {
                        return;
                    }
                }
                // Processed (a receipt too, which is not recorded): due for an ack.
                let Acks::Coalesced { every, after } = acks else { continue };
                last = last.max(event_seq);
                unacked += 1;
                if unacked >= every {
                    (unacked, ack_due) = (0, None);
                    if tx.send(Ok(ack(last))).await.is_err() {
                        return;
                    }
                } else if ack_due.is_none() {
                    ack_due = Some(Instant::now() + after);
                }
            }
        });
        // An ack is recorded when the server takes it from the queue to write it, so the checker
        // knows when it left.
        let log = self.log.clone();
        let commands = ReceiverStream::new(rx).map(move |command: Result<UpstreamCommand, Status>| {
            if let Ok(UpstreamCommand { command: Some(Command::Ack(a)), .. }) = &command {
                let seen = Seen::Acked { up_to: a.event_seq };
                log.lock().unwrap().push(Record { at: Instant::now(), stream, event_seq: 0, redelivered: false, seen });
            }
            command
        });
        Ok(Response::new(Box::pin(commands)))
    }
}

/// The part of an event the checker needs.
fn seen(event: NodeEvent) -> Option<Seen> {
    Some(match event.event? {
        Event::Hello(h) => Seen::Hello { node_id: h.node_id, run_id: h.run_id },
        Event::Opened(o) => {
            let s = o.socket?;
            Seen::Opened { socket_id: s.id, node_id: s.node_id, remote_addr: s.remote_addr, resumed: o.resumed }
        }
        Event::Data(d) => Seen::Data { socket_id: d.socket_id, seq: d.seq, payload: d.payload },
        Event::Closed(c) => Seen::Closed { socket_id: c.socket_id, reason: c.reason },
        Event::Result(_) => return None,
    })
}

/// An `Ack` of every event up to `event_seq`.
fn ack(event_seq: u64) -> UpstreamCommand {
    UpstreamCommand { command_id: String::new(), command: Some(Command::Ack(proto::Ack { event_seq })) }
}

/// A `send` command without a receipt: the echo.
fn send(socket: &str, payload: Bytes) -> UpstreamCommand {
    UpstreamCommand {
        command_id: String::new(),
        command: Some(Command::Send(proto::Send { socket_id: socket.to_owned(), payload })),
    }
}

impl EchoUpstream {
    /// Starts one on a free port, serving and healthy, acknowledging as `acks` says.
    pub async fn start_with(acks: Acks) -> Self {
        // Not port 0: it comes back on the same port after a kill (see `free_port`).
        let listener = crate::common::bind(SocketAddr::from(([127, 0, 0, 1], super::process::free_port())));
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let mut up = Self { addr, log: Arc::default(), health, server: None, kills: Vec::new(), acks };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        let service = UpstreamServer::new(Service { log: self.log.clone(), acks: self.acks });
        self.server = Some(crate::common::serve_upstream(listener, &self.health, service));
    }

    /// Kills it: every connection drops at once, as when the process dies.
    pub async fn kill(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            self.kills.push(Instant::now());
            let _ = stop.send(());
            tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
        }
    }

    /// Serves again on the same port, with the same log.
    pub fn restart(&mut self) {
        self.serve(crate::common::bind(self.addr));
    }

    /// Everything received so far.
    pub fn records(&self) -> Vec<Record> {
        self.log.lock().unwrap().clone()
    }

    /// The log itself, for a checker that looks again later.
    pub fn log(&self) -> Arc<Mutex<Vec<Record>>> {
        self.log.clone()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some((stop, _thread)) = self.server.take() {
            let _ = stop.send(());
        }
    }
}
