//! A load generator for the node benchmark (`bench/run.sh`, `docs/benchmarks.md`).
//!
//! It runs on one thread (a current-thread tokio runtime), so it takes at most one core, and it
//! speaks plain `\n`-terminated lines, so the same run can target a node (with the echo upstream
//! behind it) or any line-echo server (HAProxy fronting `line_echo`).
//!
//! ```text
//! loadgen throughput --target 127.0.0.1:7999 --sockets 100 --burst 16 --warmup 2s --duration 10s
//! loadgen latency    --target 127.0.0.1:7999 --sockets 100 --rate 10000 --warmup 2s --duration 10s
//! loadgen idle       --target 127.0.0.1:7999 --sockets 10000 --duration 120s
//! loadgen handshakes --target 127.0.0.1:7999 --tls-ca ca.pem --concurrency 32 --duration 10s
//! ```
//!
//! `throughput` and `idle` speak TLS with `--tls-ca PATH` (the CA to trust) and `--tls-name`
//! (the name to ask for, default `localhost`), for `bench/tls.sh`.
//!
//! - `throughput` is a closed loop: each socket writes a burst of lines in one write, reads until
//!   every reply is back, and goes again.
//! - `latency` is an open loop: message `n` is due at `start + n/rate` on socket `n % sockets`,
//!   whatever the replies do, and its latency is measured from that due time (not from when it
//!   was actually written), so a stall is charged to every message it delays (no coordinated
//!   omission). The last stretch before a message is due is waited with microsecond sleeps, not
//!   tokio's millisecond timer; how late the generator itself wrote is reported as `send_lag_*`.
//! - `idle` connects sockets and holds them, silent, for `--duration`; with `--messages N`, each
//!   socket first sends N lines and reads their echoes, so that it has carried traffic.
//! - `handshakes` is a closed loop of TLS connects: each of `--concurrency` workers connects,
//!   makes the handshake, closes (with a reset, so no port is left in TIME_WAIT) and goes again.
//!
//! Each mode prints one machine-readable line on stdout (`mode key=value ...`); progress and
//! errors go to stderr. Every mode stops by itself. `idle` needs `ulimit -n` above `--sockets`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Buf, BytesMut};
use clap::{Args, Parser, Subcommand};
use futures_util::{StreamExt, TryStreamExt, stream};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinSet,
    time::Instant,
};

/// How many connects are in flight at once; more overflow the server's listen backlog.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest wait for any one reply in `throughput` mode before the run is declared broken.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the sockets' tasks to finish once a run is over.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// In `latency`, waits longer than this before a message is due go to tokio's timer (good to
/// about a millisecond); the rest is waited in [`FINE_WAIT`] steps.
const COARSE_MARGIN: Duration = Duration::from_millis(2);
/// Longest thread sleep in `latency`'s fine wait: how late a reply may be timestamped.
const FINE_WAIT: Duration = Duration::from_micros(50);
/// Bytes of the `latency` header: 16 hex digits of due time, a space, 8 of sequence, a space.
const LATENCY_HEADER: usize = 26;

/// The command line.
#[derive(Parser)]
#[command(about = "Line-protocol load generator for the ppp benchmark (one thread)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// What to measure.
#[derive(Subcommand)]
enum Mode {
    /// Closed loop: bursts of lines per socket, as fast as replies come back.
    Throughput(ThroughputArgs),
    /// Open loop at a fixed rate: latency percentiles from each message's due time.
    Latency(LatencyArgs),
    /// Many silent sockets, held open.
    Idle(IdleArgs),
    /// TLS handshakes per second: connect, handshake, close, again.
    Handshakes(HandshakeArgs),
}

/// TLS, for the modes that can speak it.
#[derive(Args, Clone)]
struct TlsArgs {
    /// Speak TLS, trusting the CA in this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The server name to ask for (SNI) and to verify the certificate against.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
}

/// A TLS client: the connector and the name it asks for.
#[derive(Clone)]
struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsArgs {
    /// The client, when `--tls-ca` is given.
    fn client(&self) -> Result<Option<TlsClient>> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(self.tls_name.clone())?;
        Ok(Some(TlsClient { connector: Arc::new(config).into(), name }))
    }
}

impl TlsClient {
    /// The handshake over a connected socket.
    async fn handshake(&self, socket: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        Ok(tokio::time::timeout(REPLY_TIMEOUT, self.connector.connect(self.name.clone(), socket)).await??)
    }
}

/// Options of `handshakes`.
#[derive(Args)]
struct HandshakeArgs {
    /// Server to connect to (`host:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Load before measuring starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Options of `throughput`.
#[derive(Args)]
struct ThroughputArgs {
    /// Server to load (`host:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Sockets, each running its own closed loop.
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// Lines written per burst, in one write.
    #[arg(long, default_value_t = 16)]
    burst: usize,
    /// Payload bytes per line (the `\n` comes on top).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Load before measuring starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Options of `latency`.
#[derive(Args)]
struct LatencyArgs {
    /// Server to load (`host:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Sockets the rate is spread over.
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// Messages per second, over all sockets.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Payload bytes per line (the `\n` comes on top); at least the 26-byte header.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Load before measuring starts (its messages are not recorded).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to wait for the last replies after the last message is sent.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

/// Options of `idle`.
#[derive(Args)]
struct IdleArgs {
    /// Server to connect to (`host:port`).
    #[arg(long)]
    target: SocketAddr,
    /// Sockets to hold.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// How long to hold them once all are connected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Lines each socket sends (one at a time, each echo read back) before it goes silent.
    #[arg(long, default_value_t = 0)]
    messages: usize,
    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Throughput(args) => throughput(args).await,
            Mode::Latency(args) => latency(args).await,
            Mode::Idle(args) => idle(args).await,
            Mode::Handshakes(args) => handshakes(args).await,
        }
    })
}

/// Opens `n` sockets to `target`, [`CONNECT_CONCURRENCY`] at a time.
async fn connect_all(target: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    stream::iter(0..n)
        .map(|i| async move {
            let socket = TcpStream::connect(target).await.with_context(|| format!("connect #{i} to {target}"))?;
            socket.set_nodelay(true)?;
            anyhow::Ok(socket)
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// The number of `\n` in `bytes`.
fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`; `None` off Linux.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // Clock ticks are 100 Hz on every Linux platform this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// CPU used between two [`cpu_time`] readings, as a percentage of one core over `wall`.
fn cpu_percent(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{:.0}", (a - b).as_secs_f64() / wall.as_secs_f64() * 100.0),
        _ => "na".to_owned(),
    }
}

async fn throughput(args: ThroughputArgs) -> Result<()> {
    ensure!(args.sockets > 0 && args.burst > 0 && !args.duration.is_zero(), "sockets, burst and duration must be > 0");
    let tls = args.tls.client()?;
    let sockets = connect_all(args.target, args.sockets).await?;
    let mut burst = Vec::with_capacity(args.burst * (args.size + 1));
    for _ in 0..args.burst {
        burst.extend(std::iter::repeat_n(b'x', args.size));
        burst.push(b'\n');
    }
    let burst: Arc<[u8]> = burst.into();
    let replies = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let stop = measure_from + args.duration;
    let mut tasks = JoinSet::new();
    for socket in sockets {
        match &tls {
            None => tasks.spawn(closed_loop(socket, burst.clone(), args.burst, replies.clone(), stop)),
            Some(tls) => {
                let socket = tls.handshake(socket).await?;
                tasks.spawn(closed_loop(socket, burst.clone(), args.burst, replies.clone(), stop))
            }
        };
    }
    tokio::time::sleep_until(measure_from).await;
    let (from, count_from, cpu_from) = (Instant::now(), replies.load(Ordering::Relaxed), cpu_time());
    tokio::time::sleep_until(stop).await;
    let (to, count_to, cpu_to) = (Instant::now(), replies.load(Ordering::Relaxed), cpu_time());
    join_all(tasks).await?;
    let wall = to - from;
    let messages = count_to - count_from;
    println!(
        "throughput msgs_per_sec={:.0} sockets={} burst={} size={} messages={messages} seconds={:.2} loadgen_cpu_pct={}",
        messages as f64 / wall.as_secs_f64(),
        args.sockets,
        args.burst,
        args.size,
        wall.as_secs_f64(),
        cpu_percent(cpu_from, cpu_to, wall),
    );
    Ok(())
}

/// One socket of `throughput`: a burst out, all its replies in, again, until `stop`.
async fn closed_loop(
    mut socket: impl AsyncRead + AsyncWrite + Unpin,
    burst: Arc<[u8]>,
    lines: usize,
    replies: Arc<AtomicU64>,
    stop: Instant,
) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while Instant::now() < stop {
        socket.write_all(&burst).await.context("write")?;
        socket.flush().await.context("flush")?; // TLS may hold the last record back until then
        let mut got = 0;
        while got < lines {
            let n = tokio::time::timeout(REPLY_TIMEOUT, socket.read(&mut buf))
                .await
                .with_context(|| format!("no reply within {REPLY_TIMEOUT:?}"))?
                .context("read")?;
            if n == 0 {
                bail!("the server closed the socket");
            }
            got += count_lines(&buf[..n]);
        }
        replies.fetch_add(got as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits for every socket task; the first failure fails the run.
async fn join_all<T: 'static>(mut tasks: JoinSet<Result<T>>) -> Result<Vec<T>> {
    let mut results = Vec::with_capacity(tasks.len());
    let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(result) = tasks.join_next().await {
            results.push(result.context("socket task panicked")??);
        }
        anyhow::Ok(())
    });
    joined.await.with_context(|| format!("socket tasks still running after {JOIN_TIMEOUT:?}"))??;
    Ok(results)
}

/// When each message of `latency` is due, relative to the start: message `n` (over all sockets)
/// is due at `n / rate` seconds and goes to socket `n % sockets`.
#[derive(Clone, Copy)]
struct Schedule {
    /// Sockets the rate is spread over.
    sockets: u64,
    /// Messages per second, over all sockets.
    rate: u64,
    /// Messages due before this are warm-up: sent, not recorded.
    warmup: Duration,
    /// No message is due at or after this.
    end: Duration,
}

impl Schedule {
    /// When message `n` is due, or `None` past the end.
    fn due(&self, n: u64) -> Option<Duration> {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        let due = Duration::from_nanos(u64::try_from(nanos).ok()?);
        (due < self.end).then_some(due)
    }

    /// How many messages socket `i` gets in all.
    fn count(&self, i: u64) -> u64 {
        let total = (0..).map_while(|n| self.due(n)).count() as u64;
        total / self.sockets + u64::from(i < total % self.sockets)
    }
}

/// What the pacer saw, for messages due in the measured window.
#[derive(Default)]
struct SendStats {
    /// Actual write time minus due time, in µs, one per message.
    lag_us: Vec<u32>,
}

async fn latency(args: LatencyArgs) -> Result<()> {
    ensure!(args.size >= LATENCY_HEADER, "--size must be at least {LATENCY_HEADER} (the header)");
    ensure!(args.sockets > 0 && args.rate > 0 && !args.duration.is_zero(), "sockets, rate and duration must be > 0");
    let sockets = connect_all(args.target, args.sockets).await?;
    let schedule = Schedule {
        sockets: args.sockets as u64,
        rate: args.rate,
        warmup: args.warmup,
        end: args.warmup + args.duration,
    };
    let start = Instant::now();
    let cpu_from = cpu_time();
    let give_up = start + schedule.end + args.drain;
    let mut readers = JoinSet::new();
    let mut writers = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let (read, write) = socket.into_split();
        readers.spawn(read_replies(read, schedule.count(i as u64), schedule.warmup, start, give_up));
        writers.push(write);
    }
    let sent = pace(&mut writers, schedule, start, args.size).await?;
    let per_socket = join_all(readers).await?;
    let cpu_to = cpu_time();
    let mut latencies: Vec<u32> = per_socket.into_iter().flatten().collect();
    let mut lags = sent.lag_us;
    latencies.sort_unstable();
    lags.sort_unstable();
    let (sent, received) = (lags.len() as u64, latencies.len() as u64);
    println!(
        "latency rate={} achieved_rate={:.0} sockets={} size={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} sent={sent} received={received} lost={} send_lag_p50_us={} send_lag_p99_us={} send_lag_max_us={} loadgen_cpu_pct={}",
        args.rate,
        received as f64 / args.duration.as_secs_f64(),
        args.sockets,
        args.size,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(0),
        sent.saturating_sub(received),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        cpu_percent(cpu_from, cpu_to, start.elapsed()),
    );
    Ok(())
}

/// The value at quantile `q` of sorted `values` (nearest rank), 0 when empty.
fn percentile(values: &[u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Writes every message of `schedule` when it is due, whatever the replies do (open loop).
///
/// tokio's timer only has millisecond granularity, which would add up to a millisecond of the
/// generator's own lateness to every latency. So the last stretch before a message is due is
/// waited with a plain thread sleep (microsecond precision) of at most [`FINE_WAIT`], with a
/// yield to the runtime between sleeps so replies are still read as they come: a reply is
/// timestamped at most about [`FINE_WAIT`] late. A message found late (the generator was not
/// scheduled in time, or a write blocked) is sent at once, and its latency still counts from
/// its due time.
async fn pace(writers: &mut [OwnedWriteHalf], schedule: Schedule, start: Instant, size: usize) -> Result<SendStats> {
    let mut stats = SendStats::default();
    let mut out = Vec::with_capacity(size + 1);
    let sockets = writers.len() as u64;
    let mut n = 0u64;
    while let Some(due) = schedule.due(n) {
        let now = Instant::now();
        let wait = (start + due).saturating_duration_since(now);
        if wait > COARSE_MARGIN {
            tokio::time::sleep(wait - COARSE_MARGIN).await;
            continue;
        }
        if !wait.is_zero() {
            std::thread::sleep(wait.min(FINE_WAIT));
            tokio::task::yield_now().await;
            continue;
        }
        out.clear();
        encode(&mut out, due, n / sockets, size);
        writers[(n % sockets) as usize].write_all(&out).await.context("write")?;
        if due >= schedule.warmup {
            stats.lag_us.push(micros(Instant::now() - (start + due)));
        }
        n += 1;
        if n.is_multiple_of(64) {
            // Let readers run even when the generator is catching up.
            tokio::task::yield_now().await;
        }
    }
    Ok(stats)
}

/// One socket's replies in `latency`: the latency of each, from its due time, until `expected`
/// replies are in or `give_up`. Only messages due after `warmup` are recorded.
async fn read_replies(
    mut read: OwnedReadHalf,
    expected: u64,
    warmup: Duration,
    start: Instant,
    give_up: Instant,
) -> Result<Vec<u32>> {
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut inbound = BytesMut::with_capacity(16 << 10);
    let mut received = 0u64;
    while received < expected {
        inbound.reserve(4096);
        let read = tokio::time::timeout_at(give_up, read.read_buf(&mut inbound)).await;
        let Ok(read) = read else { break };
        if read.context("read")? == 0 {
            bail!("the server closed the socket");
        }
        let now = Instant::now();
        while let Some(end) = inbound.iter().position(|&b| b == b'\n') {
            let due = parse_due(&inbound[..end])?;
            inbound.advance(end + 1);
            received += 1;
            if due >= warmup {
                latencies.push(micros((now - start).saturating_sub(due)));
            }
        }
    }
    Ok(latencies)
}

/// A `latency` message: due time (ns since start) and sequence in hex, padded to `size`, `\n`.
fn encode(out: &mut Vec<u8>, due: Duration, seq: u64, size: usize) {
    let header = format!("{:016x} {:08x} ", due.as_nanos() as u64, seq as u32);
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(b'x', size - LATENCY_HEADER));
    out.push(b'\n');
}

/// The due time a reply carries.
fn parse_due(line: &[u8]) -> Result<Duration> {
    let hex = line.get(..16).context("reply shorter than its header")?;
    let nanos = u64::from_str_radix(std::str::from_utf8(hex)?, 16).context("reply header is not hex")?;
    Ok(Duration::from_nanos(nanos))
}

/// `d` in whole microseconds, saturated to `u32` (71 minutes).
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn idle(args: IdleArgs) -> Result<()> {
    let start = Instant::now();
    let sockets = connect_all(args.target, args.sockets).await?;
    // Closed with a reset when the run ends (however it ends: SIGTERM too): thousands of ports
    // in TIME_WAIT would make the next run's connects slow (the kernel looks for free ports),
    // and the next run would measure that.
    for socket in &sockets {
        socket.set_zero_linger()?;
    }
    let messages = args.messages;
    let Some(tls) = args.tls.client()? else {
        let sockets: Vec<_> = stream::iter(sockets)
            .map(|s| exchange(s, messages))
            .buffer_unordered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        println!("idle connected={} messages={messages} connect_ms={}", sockets.len(), start.elapsed().as_millis());
        tokio::time::sleep(args.duration).await;
        drop(sockets);
        return Ok(());
    };
    let tls_sockets: Vec<_> = stream::iter(sockets)
        .map(|socket| async { exchange(tls.handshake(socket).await?, messages).await })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    println!(
        "idle connected={} tls=1 messages={messages} connect_ms={}",
        tls_sockets.len(),
        start.elapsed().as_millis()
    );
    tokio::time::sleep(args.duration).await;
    drop(tls_sockets);
    Ok(())
}

/// Sends `messages` lines on `stream`, one at a time, reading each echo back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, messages: usize) -> Result<S> {
    let mut buf = [0u8; 64];
    for i in 0..messages {
        stream.write_all(format!("idle {i}\n").as_bytes()).await?;
        stream.flush().await?;
        let mut echoed = 0;
        while echoed == 0 || buf[echoed - 1] != b'\n' {
            let n = tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf[echoed..])).await??;
            ensure!(n > 0 && echoed + n < buf.len(), "no echo of message {i}");
            echoed += n;
        }
    }
    Ok(stream)
}

async fn handshakes(args: HandshakeArgs) -> Result<()> {
    let tls = args.tls.client()?.context("handshakes needs --tls-ca")?;
    ensure!(args.concurrency > 0 && !args.duration.is_zero(), "concurrency and duration must be > 0");
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let stop = measure_from + args.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let (tls, done) = (tls.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                let socket = TcpStream::connect(args.target).await.context("connect")?;
                // Closed with a reset: a port in TIME_WAIT per handshake would run out of ports.
                socket.set_zero_linger()?;
                let tls_stream = tls.handshake(socket).await?;
                drop(tls_stream);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep_until(measure_from).await;
    let (from, count_from, cpu_from) = (Instant::now(), done.load(Ordering::Relaxed), cpu_time());
    tokio::time::sleep_until(stop).await;
    let (to, count_to, cpu_to) = (Instant::now(), done.load(Ordering::Relaxed), cpu_time());
    join_all(tasks).await?;
    let wall = to - from;
    println!(
        "handshakes per_sec={:.0} concurrency={} handshakes={} seconds={:.2} loadgen_cpu_pct={}",
        (count_to - count_from) as f64 / wall.as_secs_f64(),
        args.concurrency,
        count_to - count_from,
        wall.as_secs_f64(),
        cpu_percent(cpu_from, cpu_to, wall),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_messages_evenly_and_stops_at_the_end() {
        let s = Schedule { sockets: 4, rate: 1000, warmup: Duration::from_millis(2), end: Duration::from_millis(10) };
        assert_eq!(s.due(0), Some(Duration::ZERO));
        assert_eq!(s.due(5), Some(Duration::from_millis(5)));
        assert_eq!(s.due(10), None);
        // Ten messages over four sockets: 3, 3, 2, 2.
        assert_eq!((0..4).map(|i| s.count(i)).collect::<Vec<_>>(), [3, 3, 2, 2]);
    }

    #[test]
    fn message_round_trips_its_due_time() {
        let mut out = Vec::new();
        encode(&mut out, Duration::from_nanos(123_456_789), 7, 64);
        assert_eq!(out.len(), 65);
        assert_eq!(parse_due(&out[..64]).unwrap(), Duration::from_nanos(123_456_789));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
