//! The recording upstream: real tonic gRPC over loopback, on its own runtime thread, with
//! controllable health; it can be killed (every connection drops at once) and restarted on the
//! same port.

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
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::server::HealthReporter;

use super::wait::{DEADLINE, eventually};

/// State shared between a [`TestUpstream`] and its gRPC service.
#[derive(Default)]
struct Recorder {
    /// Every event received, in order of arrival, over all streams.
    events: Mutex<Vec<NodeEvent>>,
    /// Bumped on every event.
    seen: watch::Sender<usize>,
    /// The command senders of the open streams (latest last).
    streams: Mutex<Vec<mpsc::Sender<Result<UpstreamCommand, Status>>>>,
    /// Echo every data payload back to its socket.
    echo: bool,
}

/// A recording upstream: real gRPC over loopback, health controllable, stoppable and
/// restartable on the same port.
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    health: HealthReporter,
    /// The server's own runtime on its own thread, so killing it drops every connection at
    /// once, as when a process dies: (stop signal, thread).
    server: Option<ServerHandle>,
}

struct RecordingService(Arc<Recorder>);

#[tonic::async_trait]
impl Upstream for RecordingService {
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
        let (tx, rx) = mpsc::channel(100_000);
        self.0.streams.lock().unwrap().push(tx.clone());
        let recorder = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = inbound.message().await {
                if recorder.echo
                    && let Some(Event::Data(d)) = &event.event
                {
                    let _ = tx.send(Ok(send_cmd(&d.socket_id, d.payload.clone()))).await;
                }
                recorder.events.lock().unwrap().push(event);
                recorder.seen.send_modify(|n| *n += 1);
            }
            // The node ended its side: end ours, as a well-behaved upstream does.
            recorder.streams.lock().unwrap().retain(|s| !s.same_channel(&tx));
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl TestUpstream {
    /// Starts an upstream on a free port; with `echo` it sends every payload back.
    pub async fn start(echo: bool) -> Self {
        let listener = bind("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let recorder = Arc::new(Recorder { echo, seen: watch::Sender::new(0), ..Default::default() });
        let mut up = Self { addr, recorder, health, server: None };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        let service = UpstreamServer::new(RecordingService(self.recorder.clone()));
        self.server = Some(serve_upstream(listener, &self.health, service));
    }

    /// Its URI for `--upstream`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its id in the registry.
    pub fn id(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the server: every connection drops at once, as when the process dies.
    pub async fn kill(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(());
            tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
        }
        for s in self.recorder.streams.lock().unwrap().drain(..) {
            drop(s);
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.serve(bind(self.addr));
    }

    /// Makes health answer SERVING or NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        let status =
            if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
        self.health.set_service_status(UPSTREAM_SERVICE, status).await;
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<NodeEvent> {
        self.recorder.events.lock().unwrap().clone()
    }

    /// The data events received so far.
    pub fn data(&self) -> Vec<proto::SocketData> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.event {
                Some(Event::Data(d)) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// The receipts received so far.
    pub fn results(&self) -> Vec<proto::CommandResult> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.event {
                Some(Event::Result(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The closed events received so far, as (socket, reason).
    pub fn closed(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.event {
                Some(Event::Closed(c)) => Some((c.socket_id, c.reason)),
                _ => None,
            })
            .collect()
    }

    /// The opened sockets' ids so far.
    pub fn opened(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.event {
                Some(Event::Opened(o)) => o.socket.map(|s| s.id),
                _ => None,
            })
            .collect()
    }

    /// Waits until the recorded events satisfy `check`.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[NodeEvent]) -> bool) {
        let mut seen = self.recorder.seen.subscribe();
        let waiting = async {
            loop {
                let events = self.events(); // Not under the lock: `check` may read events too.
                if check(&events) {
                    return;
                }
                seen.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
            panic!("timed out waiting for: {what}; events: {:#?}", self.events());
        }
    }

    /// Waits until a socket has opened and returns its id.
    pub async fn wait_opened(&self, count: usize) -> Vec<String> {
        self.wait_for("sockets opened", |e| opened_count(e) >= count).await;
        self.opened()
    }

    /// Sends a command on the latest open stream.
    pub async fn command(&self, command: UpstreamCommand) {
        eventually("an open stream", || !self.recorder.streams.lock().unwrap().is_empty()).await;
        let tx = self.recorder.streams.lock().unwrap().last().unwrap().clone();
        tx.send(Ok(command)).await.unwrap();
    }

    /// How many streams are open to it.
    pub fn open_streams(&self) -> usize {
        self.recorder.streams.lock().unwrap().len()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some((stop, _thread)) = self.server.take() {
            let _ = stop.send(());
        }
    }
}

/// A non-blocking std listener (handed to the upstream's own runtime).
pub fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn opened_count(events: &[NodeEvent]) -> usize {
    events.iter().filter(|e| matches!(e.event, Some(Event::Opened(_)))).count()
}

/// A `send` command without a receipt.
pub fn send_cmd(socket: &str, payload: impl Into<Bytes>) -> UpstreamCommand {
    UpstreamCommand {
        command_id: String::new(),
        command: Some(Command::Send(proto::Send { socket_id: socket.to_owned(), payload: payload.into() })),
    }
}

/// A running upstream server: send on the sender, then join the thread, to stop it.
pub type ServerHandle = (tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>);

/// Serves `service` and the health service of `health` on `listener`, on a runtime thread of its
/// own. Stopping it drops the runtime, so every connection closes at once, as when an upstream
/// process dies.
pub fn serve_upstream<S: Upstream>(
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

/// A `send` command, to wrap with [`with_id`] or [`send_cmd`]'s empty id.
pub fn send_command(socket: &str, payload: impl Into<Bytes>) -> Command {
    Command::Send(proto::Send { socket_id: socket.to_owned(), payload: payload.into() })
}

/// A command with a `command_id`.
pub fn with_id(id: &str, command: Command) -> UpstreamCommand {
    UpstreamCommand { command_id: id.to_owned(), command: Some(command) }
}
