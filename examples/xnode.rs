//! Cross-node send latency for the cluster benchmark (`bench/cluster.sh`, `docs/benchmarks.md`).
//!
//! Two sockets, A and B, each on a node in front of the echo upstream (`ppp::echo`). A types
//! `/to <B-id> <seq> <due>` at a fixed rate; the upstream turns that into a `send` to B, which the
//! node holding A carries to the node holding B over the Redis bus, and B reads
//! `from <A-id>: <seq> <due>`. With A and B on the same node the same path skips the bus: the
//! baseline that shows what the bus costs.
//!
//! ```text
//! xnode --from 127.0.0.1:7999 --to 127.0.0.1:7998 --rate 1000 --warmup 2s --duration 10s
//! ```
//!
//! Like `loadgen latency` it is an open loop on one thread (a current-thread tokio runtime):
//! message `n` is due at `start + n/rate` whatever the replies do, and its latency runs from that
//! due time to the moment B reads it, so a stall is charged to every message it delays (no
//! coordinated omission). The receipts the upstream sends back to A (`receipt echo-N: STATUS_…`)
//! are read and counted, not timed. Both sockets are read until every message is in or `--drain`
//! after the last one was sent. When the node holds A back (inbound backpressure), sending stops
//! at the end of the schedule plus `--drain`: what was not written by then is `unsent`; what was
//! written and did not reach B by the end is `lost` (late beyond the drain, or lost). One
//! machine-readable line goes to stdout; progress and errors to stderr.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use bytes::BytesMut;
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Longest wait for a reply while setting up (ids, the readiness probe).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes: B's socket is registered in Redis shortly after it connects.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// Waits longer than this before a message is due go to tokio's timer (good to about a
/// millisecond); the rest is waited in [`FINE_WAIT`] steps.
const COARSE_MARGIN: Duration = Duration::from_millis(2);
/// Longest thread sleep while waiting for a message's due time: how late a read may be stamped.
const FINE_WAIT: Duration = Duration::from_micros(50);

/// The command line.
#[derive(Parser)]
#[command(about = "Cross-node send latency through ppp nodes and the echo upstream (one thread)")]
struct Cli {
    /// The node socket A (the sender) connects to (`host:port`).
    #[arg(long)]
    from: SocketAddr,
    /// The node socket B (the receiver) connects to; the same as `--from` for the one-node baseline.
    #[arg(long)]
    to: SocketAddr,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Load before measuring starts (its messages are not recorded).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to wait for the last messages after the last one is sent; also how far past the
    /// end of the schedule sending may run late.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

/// When message `n` is due, relative to the start: `n / rate`, up to `end`.
#[derive(Clone, Copy)]
struct Schedule {
    /// Messages per second.
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

    /// How many messages there are in all.
    fn total(&self) -> u64 {
        (0..).map_while(|n| self.due(n)).count() as u64
    }
}

/// A socket's inbound side, cut into lines.
struct Lines {
    /// The read half.
    read: OwnedReadHalf,
    /// Bytes read and not yet returned as lines.
    buf: BytesMut,
}

impl Lines {
    fn new(read: OwnedReadHalf) -> Self {
        Self { read, buf: BytesMut::with_capacity(16 << 10) }
    }

    /// The next complete line (without `\n`) already buffered, if any.
    fn buffered(&mut self) -> Option<BytesMut> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line = self.buf.split_to(end + 1);
        line.truncate(end);
        Some(line)
    }

    /// Reads once more; `false` when `deadline` passed first.
    async fn fill(&mut self, deadline: Instant) -> Result<bool> {
        self.fill_until(tokio::time::sleep_until(deadline)).await
    }

    /// Reads once more; `false` when `stop` resolved first.
    async fn fill_until(&mut self, stop: impl Future<Output = ()>) -> Result<bool> {
        self.buf.reserve(4096);
        let read = tokio::select! {
            biased;
            read = self.read.read_buf(&mut self.buf) => read,
            () = stop => return Ok(false),
        };
        if read.context("read")? == 0 {
            bail!("the node closed the socket");
        }
        Ok(true)
    }

    /// The next line, waiting until `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<String> {
        loop {
            if let Some(line) = self.buffered() {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            ensure!(self.fill(deadline).await?, "no line within {SETUP_TIMEOUT:?}");
        }
    }
}

/// Connects to `target` and asks who it is (`/whoami` → `you are <id>, seq N, labels [...]`).
async fn connect(target: SocketAddr) -> Result<(String, Lines, OwnedWriteHalf)> {
    let socket = TcpStream::connect(target).await.with_context(|| format!("connect to {target}"))?;
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut lines = Lines::new(read);
    write.write_all(b"/whoami\n").await?;
    let line = lines.next(Instant::now() + SETUP_TIMEOUT).await?;
    let id = line
        .strip_prefix("you are ")
        .and_then(|rest| rest.split_once(','))
        .map(|(id, _)| id.to_owned())
        .with_context(|| format!("unexpected answer to /whoami: {line}"))?;
    Ok((id, lines, write))
}

/// Until a `/to` from A reaches B: B's socket is registered in Redis asynchronously, so the
/// first sends across nodes may find no such socket yet.
async fn wait_ready(a: &mut Lines, a_write: &mut OwnedWriteHalf, b: &mut Lines, b_id: &str) -> Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for probe in 0.. {
        ensure!(Instant::now() < deadline, "no /to reached B within {SETUP_TIMEOUT:?}");
        a_write.write_all(format!("/to {b_id} probe-{probe}\n").as_bytes()).await?;
        let receipt = a.next(deadline).await?;
        if receipt.contains("STATUS_OK") {
            let want = format!(": probe-{probe}");
            while !b.next(deadline).await?.ends_with(&want) {}
            return Ok(());
        }
        eprintln!("xnode: not ready yet ({receipt})");
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    unreachable!("the loop returns or fails")
}

async fn run(cli: Cli) -> Result<()> {
    ensure!(cli.rate > 0 && !cli.duration.is_zero(), "rate and duration must be > 0");
    let (b_id, mut b_lines, _b_write) = connect(cli.to).await.context("socket B")?;
    let (a_id, mut a_lines, mut a_write) = connect(cli.from).await.context("socket A")?;
    wait_ready(&mut a_lines, &mut a_write, &mut b_lines, &b_id).await?;
    eprintln!("xnode: A {a_id} on {}, B {b_id} on {}; sending {}/s", cli.from, cli.to, cli.rate);
    let schedule = Schedule { rate: cli.rate, warmup: cli.warmup, end: cli.warmup + cli.duration };
    let total = schedule.total();
    let start = Instant::now();
    let stop = CancellationToken::new();
    let receiver = tokio::spawn(receive(b_lines, a_id, schedule, start, stop.clone()));
    let receipts = tokio::spawn(count_receipts(a_lines, total, stop.clone()));
    let sent = pace(&mut a_write, &b_id, schedule, start, start + schedule.end + cli.drain).await?;
    // Both readers stop by themselves once everything is in; else `--drain` after the last send.
    let readers = async { (receiver.await, receipts.await) };
    tokio::pin!(readers);
    let (received, receipts) = tokio::select! {
        done = &mut readers => done,
        () = tokio::time::sleep(cli.drain) => {
            stop.cancel();
            readers.await
        }
    };
    let received = received.context("receiver panicked")??;
    let (ok, not_ok) = receipts.context("receipt reader panicked")??;
    report(&cli, &received, sent, ok, not_ok);
    Ok(())
}

/// What B received of the measured messages.
struct Received {
    /// Latency of each, in µs, sorted.
    latencies: Vec<u32>,
    /// Measured messages scheduled.
    scheduled: u64,
    /// Messages read twice (there should be none).
    duplicates: u64,
}

/// What the pacer did.
struct Sent {
    /// How late each measured message was written (actual write time minus due time), in µs.
    lags: Vec<u32>,
    /// Messages written in all, warm-up included.
    total: u64,
}

/// Prints the result line.
fn report(cli: &Cli, r: &Received, sent: Sent, ok: u64, not_ok: u64) {
    let (mut lags, sent_total) = (sent.lags, sent.total);
    lags.sort_unstable();
    let l = &r.latencies;
    let (sent, received) = (lags.len() as u64, l.len() as u64);
    println!(
        "xnode rate={} achieved_rate={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} sent={sent} received={received} lost={} unsent={} duplicates={} receipts_ok={ok} receipts_not_ok={not_ok} sent_total={sent_total} send_lag_p50_us={} send_lag_p99_us={} send_lag_max_us={}",
        cli.rate,
        received as f64 / cli.duration.as_secs_f64(),
        percentile(l, 0.50),
        percentile(l, 0.90),
        percentile(l, 0.99),
        percentile(l, 0.999),
        l.last().copied().unwrap_or(0),
        sent.saturating_sub(received),
        r.scheduled.saturating_sub(sent),
        r.duplicates,
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
    );
}

/// Writes `/to <B> <seq> <due ns>` on A when each message is due, whatever B reads (open loop).
/// The last stretch before a due time is waited with plain thread sleeps of at most
/// [`FINE_WAIT`] (tokio's timer is only good to a millisecond), yielding between them so the
/// readers run. Gives up at `hard_stop` (the node may hold A back for good when it is
/// saturated). Returns how late each measured message that was written was.
async fn pace(
    write: &mut OwnedWriteHalf,
    b_id: &str,
    schedule: Schedule,
    start: Instant,
    hard_stop: Instant,
) -> Result<Sent> {
    let mut lags = Vec::new();
    let mut n = 0u64;
    while let Some(due) = schedule.due(n) {
        if Instant::now() >= hard_stop {
            eprintln!(
                "xnode: still {} messages behind at the end of the drain; not sending them",
                schedule.total() - n
            );
            break;
        }
        let wait = (start + due).saturating_duration_since(Instant::now());
        if wait > COARSE_MARGIN {
            tokio::time::sleep(wait - COARSE_MARGIN).await;
            continue;
        }
        if !wait.is_zero() {
            std::thread::sleep(wait.min(FINE_WAIT));
            tokio::task::yield_now().await;
            continue;
        }
        let line = format!("/to {b_id} {n} {}\n", due.as_nanos());
        match tokio::time::timeout_at(hard_stop, write.write_all(line.as_bytes())).await {
            Ok(written) => written.context("write")?,
            Err(_) => continue, // Reported at the top of the loop.
        }
        if due >= schedule.warmup {
            lags.push(micros(Instant::now() - (start + due)));
        }
        n += 1;
    }
    Ok(Sent { lags, total: n })
}

/// B's side: the latency of every measured message, until all are in or `stop`.
async fn receive(
    mut lines: Lines,
    a_id: String,
    schedule: Schedule,
    start: Instant,
    stop: CancellationToken,
) -> Result<Received> {
    let total = schedule.total();
    let first_measured = (0..total).find(|&n| schedule.due(n).is_some_and(|d| d >= schedule.warmup)).unwrap_or(total);
    let prefix = format!("from {a_id}: ");
    let mut seen = vec![false; total as usize];
    let (mut got, mut duplicates) = (0u64, 0u64);
    let mut latencies = Vec::with_capacity((total - first_measured) as usize);
    while got < total && lines.fill_until(stop.cancelled()).await? {
        let now = Instant::now();
        while let Some(line) = lines.buffered() {
            let text = std::str::from_utf8(&line).context("B read a line that is not UTF-8")?;
            let (seq, due) = parse(text, &prefix).with_context(|| format!("B read an unexpected line: {text}"))?;
            let slot = seen.get_mut(seq as usize).context("B read a sequence number out of range")?;
            if std::mem::replace(slot, true) {
                duplicates += 1;
                continue;
            }
            got += 1;
            if seq >= first_measured {
                latencies.push(micros((now - start).saturating_sub(due)));
            }
        }
    }
    latencies.sort_unstable();
    Ok(Received { latencies, scheduled: total - first_measured, duplicates })
}

/// `from <A>: <seq> <due ns>` → (seq, due).
fn parse(line: &str, prefix: &str) -> Option<(u64, Duration)> {
    let (seq, due) = line.strip_prefix(prefix)?.split_once(' ')?;
    Some((seq.parse().ok()?, Duration::from_nanos(due.parse().ok()?)))
}

/// A's side: reads the receipts and counts them by status (OK or not), until `total` are in
/// or `stop`. Reading them all the time matters: a client that stops reading is closed by the
/// node as a slow consumer.
async fn count_receipts(mut lines: Lines, total: u64, stop: CancellationToken) -> Result<(u64, u64)> {
    let (mut ok, mut not_ok) = (0u64, 0u64);
    while ok + not_ok < total && lines.fill_until(stop.cancelled()).await? {
        while let Some(line) = lines.buffered() {
            if line.ends_with(b"STATUS_OK ") {
                ok += 1;
            } else {
                if not_ok == 0 {
                    eprintln!("xnode: first receipt not OK: {}", String::from_utf8_lossy(&line));
                }
                not_ok += 1;
            }
        }
    }
    Ok((ok, not_ok))
}

/// The value at quantile `q` of sorted `values` (nearest rank), 0 when empty.
fn percentile(values: &[u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// `d` in whole microseconds, saturated to `u32` (71 minutes).
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_messages_up_to_the_end() {
        let s = Schedule { rate: 1000, warmup: Duration::from_millis(2), end: Duration::from_millis(10) };
        assert_eq!(s.due(3), Some(Duration::from_millis(3)));
        assert_eq!(s.due(10), None);
        assert_eq!(s.total(), 10);
    }

    #[test]
    fn parses_what_b_reads() {
        let p = "from 0190-a: ";
        assert_eq!(parse("from 0190-a: 7 1500", p), Some((7, Duration::from_nanos(1500))));
        assert_eq!(parse("from 0190-b: 7 1500", p), None);
        assert_eq!(parse("from 0190-a: probe-3", p), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(percentile(&[], 0.99), 0);
    }
}
