//! Test helpers: an in-process recording upstream (real tonic over loopback), a node on port 0,
//! and line clients over real TCP sockets. No fixed ports; waits are on conditions, with a
//! deadline that fails the test.

#![allow(dead_code)]

pub mod chaos;
pub mod external;
pub mod fault;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use ppp::{
    Node, UPSTREAM_SERVICE,
    config::Config,
    proto::{
        self, NodeEvent, UpstreamCommand,
        node_event::Event,
        upstream_command::Command,
        upstream_server::{Upstream, UpstreamServer},
    },
};
use redis::AsyncCommands;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::server::HealthReporter;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it is true; fails the test with `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls an async `check` until it is true; fails the test with `what` after [`DEADLINE`].
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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

/// A command with a `command_id`.
pub fn with_id(id: &str, command: Command) -> UpstreamCommand {
    UpstreamCommand { command_id: id.to_owned(), command: Some(command) }
}

/// A config for tests: loopback, quick health checks, everything else default.
pub fn test_config(upstreams: &[&TestUpstream]) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some("test-node".to_owned()),
        upstream: upstreams.iter().map(|u| u.uri()).collect(),
        health_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Starts a node on a free port and waits until all its configured upstreams are usable.
pub async fn start_node(config: Config) -> Node {
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let expected = config.upstream.len();
    let node = Node::start(config, listener).await.unwrap();
    let pool = node.upstreams().clone();
    eventually("upstreams usable", || pool.snapshot().iter().filter(|u| u.is_usable()).count() == expected).await;
    node
}

/// A downstream client over a real TCP socket, reading lines.
pub struct Client {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    /// Connects to a node.
    pub async fn connect(node: &Node) -> Self {
        let stream = TcpStream::connect(node.local_addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        Self { reader: BufReader::new(r), writer: w }
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one line (without `\n`); fails the test after the deadline or at EOF.
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        let n =
            tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line)).await.expect("a line in time").unwrap();
        assert!(n > 0, "unexpected EOF");
        line.trim_end_matches('\n').to_owned()
    }

    /// Reads exactly `n` bytes.
    pub async fn exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(DEADLINE, self.reader.read_exact(&mut buf)).await.expect("bytes in time").unwrap();
        buf
    }

    /// Waits for the node to close the socket, returning whatever was still delivered first.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, self.reader.read_to_end(&mut rest)).await.expect("close in time");
        // A reset after the node closed is also a close.
        let _ = read;
        rest
    }
}

/// A real `redis-server` on a free port, for one test; killed on drop.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts `redis-server` (no persistence) on a free port and waits until it answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    /// Starts it (again, empty) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        eventually_async("redis-server answers", || async { self.ping().await }).await;
    }

    /// Kills it (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
        else {
            return false;
        };
        redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
    }

    /// Its URL for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection, as `redis-cli` would have.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Waits until `key` exists.
    pub async fn wait_exists(&self, what: &str, key: &str) {
        eventually_async(what, || async { self.conn().await.exists::<_, bool>(key).await.unwrap() }).await;
    }

    /// How many times Redis ran a command (`INFO commandstats`), e.g. `incrby`.
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut self.conn().await).await.unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// A test config for a cluster member.
pub fn cluster_config(redis: &RedisServer, node_id: &str, upstreams: &[&TestUpstream]) -> Config {
    Config { redis: Some(redis.url()), node_id: Some(node_id.to_owned()), ..test_config(upstreams) }
}

/// A node serving its admin API on a free port, and an HTTP client for it.
pub struct AdminNode {
    pub node: Node,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// Sent as the bearer token when set.
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// An admin API answer: status and JSON body (`Null` when the body is not JSON).
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
    pub text: String,
}

impl AdminNode {
    /// Starts a node with its admin API (token from `config.admin_token`) and waits until its
    /// configured upstreams are usable.
    pub async fn start(config: Config) -> Self {
        let downstream = TcpListener::bind(config.listen).await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", admin.local_addr().unwrap());
        let token = config.admin_token.clone();
        let expected = config.upstream.len();
        let log = Arc::new(ppp::logging::LogFilter::detached("info"));
        let node = ppp::server::start(config, ppp::Listeners { downstream, admin: Some(admin) }, log).await.unwrap();
        let pool = node.upstreams().clone();
        eventually("upstreams usable", || pool.snapshot().iter().filter(|u| u.is_usable()).count() == expected).await;
        Self { node, base, token, http: reqwest::Client::new() }
    }

    /// The same node, asked with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        let token = token.map(str::to_owned);
        Self { node: self.node.clone(), base: self.base.clone(), token, http: self.http.clone() }
    }

    /// A request to `path` (with the token, if any).
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base)).timeout(DEADLINE);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and reads the answer.
    pub async fn send(&self, r: reqwest::RequestBuilder) -> Answer {
        let response = r.send().await.expect("an HTTP answer");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, json, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// POST or PATCH with a JSON body.
    pub async fn json(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> Answer {
        self.send(self.req(method, path).json(&body)).await
    }

    /// Every socket id `GET /v1/sockets{query}` lists, following the cursor.
    pub async fn all_socket_ids(&self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if query.is_empty() { "?" } else { "&" };
            let path = match &cursor {
                Some(c) => format!("/v1/sockets{query}{sep}cursor={c}"),
                None => format!("/v1/sockets{query}"),
            };
            let page = self.get(&path).await;
            assert_eq!(page.status, 200, "{}", page.text);
            ids.extend(page.json["sockets"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()));
            match page.json["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return ids,
            }
        }
    }
}

impl Answer {
    /// Asserts the status and that an error answer is JSON `{ "error": "…" }`.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        if status >= 400 {
            assert!(self.json["error"].is_string(), "an error answer is JSON {{\"error\": …}}: {}", self.text);
        }
        &self.json
    }
}
