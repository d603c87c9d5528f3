//! A recording, echoing upstream for the chaos harness: real gRPC over loopback, every event it
//! receives stamped with its arrival time, every `data` payload sent straight back to its socket.
//! It can be killed (every connection drops at once, as when the process dies) and restarted on
//! the same port.
//!
//! (`TestUpstream` in `common` records too, but without arrival times, which the checker needs
//! to tell "the upstream died holding this message" from "the node lost it".)

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
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
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;

/// Commands an upstream's stream may hold for a node that does not read them; beyond it the
/// upstream stops reading that node's events (HTTP/2 flow control), as a real one would.
const COMMAND_QUEUE: usize = 4096;

/// What an upstream saw, as the checker needs it.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A stream opened (`hello`).
    Hello {
        /// The node that opened it.
        node_id: String,
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
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it arrived.
    pub at: Instant,
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
}

struct Service(Arc<Mutex<Vec<Record>>>);

#[tonic::async_trait]
impl Upstream for Service {
    type ConnectStream = ReceiverStream<Result<UpstreamCommand, Status>>;
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
        let log = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = inbound.message().await {
                let Some(seen) = seen(event) else { continue };
                let echo = match &seen {
                    Seen::Data { socket_id, payload, .. } => Some(send(socket_id, payload.clone())),
                    _ => None,
                };
                log.lock().unwrap().push(Record { at: Instant::now(), seen });
                if let Some(echo) = echo
                    && tx.send(Ok(echo)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The part of an event the checker needs.
fn seen(event: NodeEvent) -> Option<Seen> {
    Some(match event.event? {
        Event::Hello(h) => Seen::Hello { node_id: h.node_id },
        Event::Opened(o) => {
            let s = o.socket?;
            Seen::Opened { socket_id: s.id, node_id: s.node_id, remote_addr: s.remote_addr }
        }
        Event::Data(d) => Seen::Data { socket_id: d.socket_id, seq: d.seq, payload: d.payload },
        Event::Closed(c) => Seen::Closed { socket_id: c.socket_id, reason: c.reason },
        Event::Result(_) => return None,
    })
}

/// A `send` command without a receipt: the echo.
fn send(socket: &str, payload: Bytes) -> UpstreamCommand {
    UpstreamCommand {
        command_id: String::new(),
        command: Some(Command::Send(proto::Send { socket_id: socket.to_owned(), payload })),
    }
}

impl EchoUpstream {
    /// Starts one on a free port, serving and healthy.
    pub async fn start() -> Self {
        // Not port 0: it comes back on the same port after a kill (see `free_port`).
        let listener = crate::common::bind(SocketAddr::from(([127, 0, 0, 1], super::process::free_port())));
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let mut up = Self { addr, log: Arc::default(), health, server: None, kills: Vec::new() };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        let service = UpstreamServer::new(Service(self.log.clone()));
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

    /// How many `data` events it received so far.
    pub fn data_count(&self) -> usize {
        self.log.lock().unwrap().iter().filter(|r| matches!(r.seen, Seen::Data { .. })).count()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some((stop, _thread)) = self.server.take() {
            let _ = stop.send(());
        }
    }
}
