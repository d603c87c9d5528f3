//! The recording upstream, [`TestUpstream`]: real tonic gRPC over loopback, on its own runtime
//! thread, with controllable health; it records every event (with its arrival time and stream,
//! for the chaos checker), may echo `data` back and acknowledge what it processed
//! ([`UpstreamOptions`]), and can be killed (every connection drops at once, as when the
//! process dies) and restarted on the same port. Its gRPC side is in [`super::recorder`].

use std::net::SocketAddr;

use bytes::Bytes;
use ppp::{
    UPSTREAM_SERVICE,
    proto::{
        self, NodeEvent, UpstreamCommand, node_event::Event, upstream_command::Command, upstream_server::UpstreamServer,
    },
};
use tokio::time::Instant;
use tonic_health::server::HealthReporter;

use super::{
    process::free_port,
    recorder::{Acks, Recording, RecordingService, ServerHandle, bind, serve_upstream},
    wait::{DEADLINE, eventually},
};

/// How a [`TestUpstream`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    /// Echo every `data` payload back to its socket.
    pub echo: bool,
    /// Whether it acknowledges what it processed.
    pub acks: Acks,
    /// Commands a stream may hold for a node that does not read them.
    pub queue: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self { echo: false, acks: Acks::Never, queue: 100_000 }
    }
}

/// A recording upstream.
pub struct TestUpstream {
    /// Where it listens: not an ephemeral port, so it can come back on it (see [`free_port`]).
    pub addr: SocketAddr,
    recording: Recording,
    health: HealthReporter,
    /// The server's own runtime on its own thread, so killing it drops every connection at
    /// once, as when a process dies.
    server: Option<ServerHandle>,
    /// When it was killed, each time.
    kills: Vec<Instant>,
}

impl TestUpstream {
    /// Starts an upstream on a free port, serving and healthy, that never acks; with `echo` it
    /// sends every payload back.
    pub async fn start(echo: bool) -> Self {
        Self::start_with(UpstreamOptions { echo, ..UpstreamOptions::default() }).await
    }

    /// Starts an upstream on a free port, serving and healthy, behaving as `options` say.
    pub async fn start_with(options: UpstreamOptions) -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], free_port())), options).await
    }

    /// Starts an upstream on `addr` (e.g. another loopback address, `127.0.0.2:{port}`, for an
    /// upstream found through DNS), serving and healthy, behaving as `options` say.
    pub async fn start_at(addr: SocketAddr, options: UpstreamOptions) -> Self {
        let listener = bind(addr);
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let recording = Recording::new(options.echo, options.acks, options.queue);
        let mut up = Self { addr, recording, health, server: None, kills: Vec::new() };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        let service = UpstreamServer::new(RecordingService(self.recording.clone()));
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
            self.kills.push(Instant::now());
            let _ = stop.send(());
            tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
        }
        self.recording.streams().clear();
    }

    /// When it was killed, each time.
    pub fn kills(&self) -> Vec<Instant> {
        self.kills.clone()
    }

    /// What it recorded, as a handle that sees later records too.
    pub fn recording(&self) -> Recording {
        self.recording.clone()
    }

    /// Serves again on the same port, with the same records.
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
        self.recording.events()
    }

    /// What `pick` takes from each event received so far (in order of arrival).
    fn picked<T>(&self, pick: impl Fn(Event) -> Option<T>) -> Vec<T> {
        self.events().into_iter().filter_map(|e| pick(e.event?)).collect()
    }

    /// The data events received so far.
    pub fn data(&self) -> Vec<proto::SocketData> {
        self.picked(|e| if let Event::Data(d) = e { Some(d) } else { None })
    }

    /// The receipts received so far.
    pub fn results(&self) -> Vec<proto::CommandResult> {
        self.picked(|e| if let Event::Result(r) = e { Some(r) } else { None })
    }

    /// The closed events received so far, as (socket, reason).
    pub fn closed(&self) -> Vec<(String, String)> {
        self.picked(|e| if let Event::Closed(c) = e { Some((c.socket_id, c.reason)) } else { None })
    }

    /// The opened sockets' ids so far.
    pub fn opened(&self) -> Vec<String> {
        self.picked(|e| if let Event::Opened(o) = e { o.socket.map(|s| s.id) } else { None })
    }

    /// Waits until the recorded events satisfy `check`.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[NodeEvent]) -> bool) {
        let mut seen = self.recording.subscribe();
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
        eventually("an open stream", || !self.recording.streams().is_empty()).await;
        let tx = self.recording.streams().last().unwrap().clone();
        tx.send(Ok(command)).await.unwrap();
    }

    /// How many streams are open to it.
    pub fn open_streams(&self) -> usize {
        self.recording.streams().len()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some((stop, _thread)) = self.server.take() {
            let _ = stop.send(());
        }
    }
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

/// A `send` command, to wrap with [`with_id`] or [`send_cmd`]'s empty id.
pub fn send_command(socket: &str, payload: impl Into<Bytes>) -> Command {
    Command::Send(proto::Send { socket_id: socket.to_owned(), payload: payload.into() })
}

/// A command with a `command_id`.
pub fn with_id(id: &str, command: Command) -> UpstreamCommand {
    UpstreamCommand { command_id: id.to_owned(), command: Some(command) }
}

/// The node's example echo upstream (`ppp::echo`), served like a [`TestUpstream`], counting
/// which RPC each stream used.
pub struct EchoServer {
    addr: SocketAddr,
    counts: std::sync::Arc<RpcCounts>,
    _server: ServerHandle,
}

/// Streams an [`EchoServer`] served, by RPC.
#[derive(Debug, Default)]
pub struct RpcCounts {
    batch: std::sync::atomic::AtomicU64,
    single: std::sync::atomic::AtomicU64,
}

/// [`ppp::echo::EchoUpstream`], counting its streams.
struct CountingEcho(ppp::echo::EchoUpstream, std::sync::Arc<RpcCounts>);

#[tonic::async_trait]
impl proto::upstream_server::Upstream for CountingEcho {
    type ConnectStream = <ppp::echo::EchoUpstream as proto::upstream_server::Upstream>::ConnectStream;
    type ConnectBatchStream = <ppp::echo::EchoUpstream as proto::upstream_server::Upstream>::ConnectBatchStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<NodeEvent>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        self.1.single.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.connect(request).await
    }

    async fn connect_batch(
        &self,
        request: tonic::Request<tonic::Streaming<proto::NodeEventBatch>>,
    ) -> Result<tonic::Response<Self::ConnectBatchStream>, tonic::Status> {
        self.1.batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.connect_batch(request).await
    }
}

impl EchoServer {
    /// Serves `echo` on a free port, healthy.
    pub async fn start(echo: ppp::echo::EchoUpstream) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = listener.local_addr().unwrap();
        let health = HealthReporter::new();
        health.set_service_status(UPSTREAM_SERVICE, tonic_health::ServingStatus::Serving).await;
        let counts = std::sync::Arc::new(RpcCounts::default());
        let service = UpstreamServer::new(CountingEcho(echo, counts.clone()));
        Self { addr, counts, _server: serve_upstream(listener, &health, service) }
    }

    /// Its URI.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ConnectBatch` streams it served.
    pub fn batch_streams(&self) -> u64 {
        self.counts.batch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Connect` streams it served.
    pub fn single_streams(&self) -> u64 {
        self.counts.single.load(std::sync::atomic::Ordering::Relaxed)
    }
}
