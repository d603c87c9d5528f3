//! An example upstream: it echoes every message back to its socket, and understands a few
//! commands typed by the client, to show what an upstream can do:
//!
//! | typed                 | what the upstream does                                          |
//! |-----------------------|-----------------------------------------------------------------|
//! | `/help`               | replies with this list                                          |
//! | `/whoami`             | replies with the socket id, its node and its labels             |
//! | `/label k=v ...`      | `set_labels` (merge) on the socket; an empty value removes it   |
//! | `/broadcast text`     | `broadcast` to every socket of the cluster                      |
//! | `/to <socket> text`   | `send` to another socket, and reports the receipt               |
//! | `/close`              | `close` the socket                                              |
//! | anything else         | `send` it back                                                  |
//!
//! It is stateless about sockets: who is talking comes with every `data` event (`labels`).
//! The only state is per stream: which `command_id` belongs to which socket, to report receipts.
//! It acknowledges what it processed (`Ack`), so that after a broken stream only what it had not
//! processed comes again, and it serves both `Connect` and `ConnectBatch`.
//! `examples/echo_upstream.rs` serves it; `ppp demo` runs it in-process.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};

use crate::{
    UPSTREAM_SERVICE,
    proto::{
        self, NodeEvent, NodeEventBatch, UpstreamCommand, UpstreamCommandBatch,
        node_event::Event,
        upstream_command::Command,
        upstream_server::{Upstream as UpstreamService, UpstreamServer},
    },
};

const HELP: &str =
    "commands: /whoami, /label k=v ..., /broadcast text, /to <socket-id> text, /close, /help; anything else is echoed";

/// The echo upstream.
#[derive(Debug, Clone, Default)]
pub struct EchoUpstream {
    /// Greet every socket when it opens (the demo does; benchmarks and tests do not).
    pub greet: bool,
    /// Never acknowledge (as an upstream written before acks): the node falls back to health
    /// checks to confirm delivery. For the benchmark that compares the two.
    pub no_ack: bool,
    /// Answer `ConnectBatch` `UNIMPLEMENTED` (as an upstream written before batches): the node
    /// falls back to `Connect`. For the benchmark that compares the two.
    pub no_batch: bool,
}

impl EchoUpstream {
    /// An echo upstream that greets new sockets when `greet` is set.
    pub fn new(greet: bool) -> Self {
        Self { greet, no_ack: false, no_batch: false }
    }
}

/// Acks on `Connect` go out after this many processed events, or [`ACK_AFTER`] after the first
/// unacknowledged one, whichever comes first. One small message covers hundreds of events, so
/// acking costs next to nothing, and a crash leaves at most that much to be redelivered.
const ACK_EVERY: u64 = 256;
/// See [`ACK_EVERY`].
const ACK_AFTER: Duration = Duration::from_millis(50);

/// Commands waiting to be written to one stream (backpressure: a full channel stops the reader).
const OUT_QUEUE: usize = 4096;

#[tonic::async_trait]
impl UpstreamService for EchoUpstream {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<UpstreamCommand, Status>> + Send>>;
    type ConnectBatchStream = Pin<Box<dyn Stream<Item = Result<UpstreamCommandBatch, Status>> + Send>>;

    async fn connect(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        tokio::spawn(serve_events(request.into_inner(), tx, Session::new(self.greet), self.no_ack));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn connect_batch(
        &self,
        request: Request<Streaming<NodeEventBatch>>,
    ) -> Result<Response<Self::ConnectBatchStream>, Status> {
        if self.no_batch {
            return Err(Status::unimplemented("ConnectBatch"));
        }
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        tokio::spawn(serve_batches(request.into_inner(), tx, Session::new(self.greet), self.no_ack));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves one `Connect` stream: answers each event, acks every [`ACK_EVERY`] events or
/// [`ACK_AFTER`].
async fn serve_events(
    mut inbound: Streaming<NodeEvent>,
    tx: mpsc::Sender<Result<UpstreamCommand, Status>>,
    mut session: Session,
    no_ack: bool,
) {
    // One timer for the stream, reset when an ack becomes due: a timer per event would
    // cost more than the acks save.
    let ack_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(ack_timer);
    let mut out = Vec::new();
    let mut acks = Acks::default();
    // The stream ends when the node ends its side; dropping `tx` then ends ours.
    loop {
        // Under load the next event is already there: no select, no timer.
        let ready = inbound.message().now_or_never();
        let event = match ready {
            Some(Ok(Some(event))) => event,
            Some(_) => return,
            None => tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(event)) => event,
                    _ => return,
                },
                () = &mut ack_timer, if acks.deadline().is_some() => {
                    out.extend(acks.take());
                    if send_all(&tx, &mut out).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
        };
        if !no_ack
            && acks.processed(event.event_seq)
            && let Some(due) = acks.deadline()
        {
            ack_timer.as_mut().reset(due.into());
        }
        session.handle(event, &mut out);
        if acks.unacked() >= ACK_EVERY || acks.deadline().is_some_and(|due| due <= Instant::now()) {
            out.extend(acks.take());
        }
        if send_all(&tx, &mut out).await.is_err() {
            return;
        }
    }
}

/// Serves one `ConnectBatch` stream: a batch of answers per batch of events, with an ack in it.
async fn serve_batches(
    mut inbound: Streaming<NodeEventBatch>,
    tx: mpsc::Sender<Result<UpstreamCommandBatch, Status>>,
    mut session: Session,
    no_ack: bool,
) {
    let mut acks = Acks::default();
    while let Ok(Some(batch)) = inbound.message().await {
        let mut commands = Vec::new();
        for event in batch.events {
            if !no_ack {
                acks.processed(event.event_seq);
            }
            session.handle(event, &mut commands);
        }
        // An ack per batch rides in the batch: it costs no message of its own.
        commands.extend(acks.take());
        if tx.send(Ok(UpstreamCommandBatch { commands })).await.is_err() {
            return;
        }
    }
}

/// Sends every command of `out` (emptying it), in order.
async fn send_all(
    tx: &mpsc::Sender<Result<UpstreamCommand, Status>>,
    out: &mut Vec<UpstreamCommand>,
) -> Result<(), mpsc::error::SendError<Result<UpstreamCommand, Status>>> {
    for command in out.drain(..) {
        tx.send(Ok(command)).await?;
    }
    Ok(())
}

/// What a stream has processed and acknowledged.
#[derive(Debug, Default)]
struct Acks {
    /// The `event_seq` of the last event processed.
    processed: u64,
    /// The `event_seq` of the last ack sent.
    acked: u64,
    /// When the oldest processed event not yet acknowledged was processed.
    since: Option<Instant>,
}

impl Acks {
    /// Notes a processed event; `true` when it is the first one waiting for an ack (the
    /// deadline starts).
    fn processed(&mut self, event_seq: u64) -> bool {
        self.processed = self.processed.max(event_seq);
        let first = self.since.is_none();
        if first {
            self.since = Some(Instant::now());
        }
        first
    }

    fn unacked(&self) -> u64 {
        self.processed - self.acked
    }

    /// When the next ack is due, if anything waits for one.
    fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + ACK_AFTER)
    }

    /// The ack for everything processed so far, if anything is unacknowledged.
    fn take(&mut self) -> Option<UpstreamCommand> {
        self.since = None;
        if self.processed == self.acked {
            return None;
        }
        self.acked = self.processed;
        let ack = Command::Ack(proto::Ack { event_seq: self.acked });
        Some(UpstreamCommand { command_id: String::new(), command: Some(ack) })
    }
}

/// One node's stream.
struct Session {
    greet: bool,
    /// `command_id` → the socket to tell about its receipt.
    pending: HashMap<String, String>,
    next_id: u64,
}

impl Session {
    fn new(greet: bool) -> Self {
        Self { greet, pending: HashMap::new(), next_id: 0 }
    }

    fn handle(&mut self, event: NodeEvent, out: &mut Vec<UpstreamCommand>) {
        match event.event {
            // A socket announced again (`resumed`) was greeted when it first opened.
            Some(Event::Opened(o)) if self.greet && !o.resumed => {
                let id = o.socket.map(|s| s.id).unwrap_or_default();
                out.push(send(&id, format!("welcome, you are {id}. {HELP}")));
            }
            Some(Event::Data(d)) => self.data(d, out),
            Some(Event::Closed(c)) => {
                tracing::debug!(socket = %c.socket_id, reason = %c.reason, redelivered = event.redelivered, "closed");
            }
            Some(Event::Result(r)) => {
                if let Some(socket) = self.pending.remove(&r.command_id) {
                    let status = proto::Status::try_from(r.status).map_or("unknown", |s| s.as_str_name());
                    out.push(send(&socket, format!("receipt {}: {status} {}", r.command_id, r.detail)));
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, d: proto::SocketData, out: &mut Vec<UpstreamCommand>) {
        let text = String::from_utf8_lossy(&d.payload);
        let (verb, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let me = d.socket_id.as_str();
        match verb {
            "/help" => out.push(send(me, HELP.to_owned())),
            "/whoami" => {
                let mut labels: Vec<_> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                out.push(send(me, format!("you are {me}, seq {}, labels [{}]", d.seq, labels.join(","))));
            }
            "/label" => {
                let labels = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()));
                let command = Command::SetLabels(proto::SetLabels {
                    socket_id: me.to_owned(),
                    labels: labels.collect(),
                    replace: false,
                });
                out.push(self.tracked(me, command));
            }
            "/broadcast" => {
                let payload = Bytes::from(format!("broadcast from {me}: {rest}"));
                let command = Command::Broadcast(proto::Broadcast {
                    scope: proto::Scope::All as i32,
                    payload,
                    selector: HashMap::new(),
                });
                out.push(UpstreamCommand { command_id: String::new(), command: Some(command) });
            }
            "/to" => {
                let (target, message) = rest.split_once(' ').unwrap_or((rest, ""));
                let payload = Bytes::from(format!("from {me}: {message}"));
                out.push(self.tracked(me, Command::Send(proto::Send { socket_id: target.to_owned(), payload })));
            }
            "/close" => out.push(UpstreamCommand {
                command_id: String::new(),
                command: Some(Command::Close(proto::Close {
                    socket_id: me.to_owned(),
                    reason: "asked for it".to_owned(),
                })),
            }),
            _ => out.push(UpstreamCommand {
                command_id: String::new(),
                command: Some(Command::Send(proto::Send { socket_id: d.socket_id, payload: d.payload })),
            }),
        }
    }

    /// A command with a `command_id`, whose receipt is reported to `socket`.
    fn tracked(&mut self, socket: &str, command: Command) -> UpstreamCommand {
        self.next_id += 1;
        let command_id = format!("echo-{}", self.next_id);
        self.pending.insert(command_id.clone(), socket.to_owned());
        UpstreamCommand { command_id, command: Some(command) }
    }
}

fn send(socket: &str, text: String) -> UpstreamCommand {
    UpstreamCommand {
        command_id: String::new(),
        command: Some(Command::Send(proto::Send { socket_id: socket.to_owned(), payload: Bytes::from(text) })),
    }
}

/// Serves the echo upstream and the gRPC health service (SERVING for `ppp.v1.Upstream`) on
/// `listener` until `shutdown` resolves.
///
/// # Errors
/// The transport error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    upstream: EchoUpstream,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
    Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(health)
        .add_service(UpstreamServer::new(upstream))
        // `Server::tcp_nodelay` applies only to listeners tonic binds itself; without it the last
        // small write of a burst waits for a delayed ACK (40 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}
