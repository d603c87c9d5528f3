//! The gRPC side of [`TestUpstream`](super::TestUpstream): the `Upstream` service that records
//! every event with its arrival time and stream, echoes `data` back if asked, acknowledges as
//! [`Acks`] says, and the server that runs it on a runtime thread of its own.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ppp::proto::{
    self, NodeEvent, UpstreamCommand,
    node_event::Event,
    upstream_command::Command,
    upstream_server::{Upstream as UpstreamService, UpstreamServer},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::server::HealthReporter;

use super::upstream::send_cmd;

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
    /// whichever comes first: an `Ack` covering every event up to the last, on the same stream,
    /// after the echo of that event, as a real upstream would.
    Coalesced {
        /// Events per ack, at most.
        every: u64,
        /// Longest an event waits for its ack.
        after: Duration,
    },
}

impl Acks {
    /// What the chaos harness's acking upstreams do: every 64 events or 20 ms.
    pub const COALESCED: Self = Self::Coalesced { every: 64, after: Duration::from_millis(20) };
}

/// What an upstream recorded.
#[derive(Debug, Clone)]
pub enum Arrived {
    /// An event from a node.
    Event(NodeEvent),
    /// Not an event: the upstream handed `Ack { event_seq: up_to }` to its stream (recorded when
    /// the gRPC stream took it, after every echo before it).
    Acked {
        /// Every event of the stream up to this `event_seq` was processed.
        up_to: u64,
    },
}

/// One record: what, when (for an ack, when it left), and on which stream (a number unique in
/// the process, not the node's).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub stream: u64,
    pub what: Arrived,
}

/// What an upstream's service does and what it saw, shared by its [`TestUpstream`](super::TestUpstream)
/// handle and every life of its server: a cheap `Clone` handle.
#[derive(Clone)]
pub struct Recording(Arc<Recorder>);

struct Recorder {
    /// Everything received, in order of arrival, over all streams and lives.
    log: Mutex<Vec<Arrival>>,
    /// Bumped on every record.
    seen: watch::Sender<usize>,
    /// The command senders of the open streams (latest last).
    streams: Mutex<Vec<mpsc::Sender<Result<UpstreamCommand, Status>>>>,
    /// Echo every data payload back to its socket.
    echo: bool,
    acks: Acks,
    /// Commands a stream may hold for a node that does not read them; beyond it the upstream
    /// stops reading that node's events (HTTP/2 flow control), as a real one would.
    queue: usize,
    /// `ConnectBatch` calls refused (`UNIMPLEMENTED`).
    batch_calls: AtomicU64,
}

impl Recording {
    pub fn new(echo: bool, acks: Acks, queue: usize) -> Self {
        let (log, seen, streams) = (Mutex::default(), watch::Sender::new(0), Mutex::default());
        Self(Arc::new(Recorder { log, seen, streams, echo, acks, queue, batch_calls: AtomicU64::new(0) }))
    }

    /// How many `ConnectBatch` calls it refused.
    pub fn batch_calls(&self) -> u64 {
        self.0.batch_calls.load(Ordering::Relaxed)
    }

    /// Everything recorded so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.0.log.lock().unwrap().clone()
    }

    /// Every event received so far (not the acks).
    pub fn events(&self) -> Vec<NodeEvent> {
        let log = self.0.log.lock().unwrap();
        log.iter().filter_map(|a| if let Arrived::Event(e) = &a.what { Some(e.clone()) } else { None }).collect()
    }

    /// A receiver that sees every new record.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.0.seen.subscribe()
    }

    /// The command senders of the open streams, latest last.
    pub fn streams(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::Sender<Result<UpstreamCommand, Status>>>> {
        self.0.streams.lock().unwrap()
    }

    fn record(&self, stream: u64, what: Arrived) {
        self.0.log.lock().unwrap().push(Arrival { at: Instant::now(), stream, what });
        self.0.seen.send_modify(|n| *n += 1);
    }
}

/// A stream's commands to the node, as the gRPC server takes them.
type Commands = Pin<Box<dyn Stream<Item = Result<UpstreamCommand, Status>> + Send>>;

/// The recording `Upstream` service.
pub struct RecordingService(pub Recording);

#[tonic::async_trait]
impl UpstreamService for RecordingService {
    type ConnectStream = Commands;
    type ConnectBatchStream = ReceiverStream<Result<proto::UpstreamCommandBatch, Status>>;

    /// Not implemented, as in an upstream written before batches: the node falls back to `Connect`.
    async fn connect_batch(
        &self,
        _request: Request<Streaming<proto::NodeEventBatch>>,
    ) -> Result<Response<Self::ConnectBatchStream>, Status> {
        self.0.0.batch_calls.fetch_add(1, Ordering::Relaxed);
        Err(Status::unimplemented("ConnectBatch"))
    }

    async fn connect(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(self.0.0.queue);
        let stream = STREAMS.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.streams().push(tx.clone());
        let recording = self.0.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move {
            serve_stream(&recording, stream, inbound, &tx).await;
            // The node ended its side (or ours is gone): end ours, as a well-behaved upstream does.
            recording.streams().retain(|s| !s.same_channel(&tx));
        });
        // An ack is recorded when the server takes it from the queue to write it, so the chaos
        // checker knows when it left.
        let recording = self.0.clone();
        let commands = ReceiverStream::new(rx).map(move |command: Result<UpstreamCommand, Status>| {
            if let Ok(UpstreamCommand { command: Some(Command::Ack(a)), .. }) = &command {
                recording.record(stream, Arrived::Acked { up_to: a.event_seq });
            }
            command
        });
        Ok(Response::new(Box::pin(commands)))
    }
}

/// Records, echoes and acknowledges one stream's events until the node ends it or its commands
/// can no longer be sent.
async fn serve_stream(
    recording: &Recording,
    stream: u64,
    mut inbound: Streaming<NodeEvent>,
    tx: &mpsc::Sender<Result<UpstreamCommand, Status>>,
) {
    let (echo, acks) = (recording.0.echo, recording.0.acks);
    // The last event processed, how many since the last ack, when the first of those was.
    let (mut last, mut unacked, mut ack_due) = (0, 0, None::<Instant>);
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
        let event_seq = event.event_seq;
        let reply = match &event.event {
            Some(Event::Data(d)) if echo => Some(send_cmd(&d.socket_id, d.payload.clone())),
            _ => None,
        };
        recording.record(stream, Arrived::Event(event));
        if let Some(reply) = reply
            && tx.send(Ok(reply)).await.is_err()
        {
            return;
        }
        // Processed (a receipt too): due for an ack.
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
}

/// An `Ack` of every event up to `event_seq`.
fn ack(event_seq: u64) -> UpstreamCommand {
    UpstreamCommand { command_id: String::new(), command: Some(Command::Ack(proto::Ack { event_seq })) }
}

/// A non-blocking std listener (handed to the upstream's own runtime).
pub fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// A running upstream server: send on the sender, then join the thread, to stop it.
pub type ServerHandle = (tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>);

/// Serves `service` and the health service of `health` on `listener`, on a runtime thread of its
/// own. Stopping it drops the runtime, so every connection closes at once, as when an upstream
/// process dies.
pub fn serve_upstream<S: UpstreamService>(
    listener: std::net::TcpListener,
    health: &HealthReporter,
    service: UpstreamServer<S>,
) -> ServerHandle {
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let server = Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
            tokio::select! {
                _ = server => {}
                _ = stopped => {}
            }
        });
    });
    (stop, thread)
}
