//! Bad input from every side a node has, against real nodes: clients that send garbage, NULs,
//! endless lines, invalid UTF-8, a 4 GiB length prefix, or one byte per second; upstreams that send
//! invalid, unknown or oversized commands; and garbage published on the Redis bus channels. In
//! every case the node closes (or refuses) only what was bad, with the documented reason, never
//! panics or hangs, keeps serving everybody else, and spends no memory on what a peer merely
//! claims.
//!
//! Where memory is the question the node runs in its own process (`ppp`), so that its own
//! `/proc/{pid}/status` can be read; elsewhere it runs in the test's process, as in the other
//! suites.

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use ppp::{
    Node,
    cluster::redis::bus::{BusMessage, WireCommand},
    config::{Config, Framing, IdleTimeout},
    proto::{self, Status, node_event::Event, upstream_command::Command},
    settings::RuntimePatch,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use redis::AsyncCommands;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// `len` bytes of noise, the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

/// Writes without failing the test: the node may close the socket (and reset it) mid-write.
async fn write_lossy(c: &mut Client, bytes: &[u8]) {
    let _ = c.writer.write_all(bytes).await;
}

/// Connects a client and returns it with the id the node gave its socket (the `opened` events
/// seen so far must number `opened_before`).
async fn connect(node: &Node, up: &TestUpstream, opened_before: usize) -> (Client, String) {
    let c = Client::connect(node).await;
    let id = up.wait_opened(opened_before + 1).await[opened_before].clone();
    (c, id)
}

/// Waits for the `closed` event of `id` and returns its reason.
async fn close_reason(up: &TestUpstream, id: &str) -> String {
    up.wait_for(&format!("{id} closed"), |_| up.closed().iter().any(|(s, _)| s == id)).await;
    up.closed().into_iter().find(|(s, _)| s == id).unwrap().1
}

/// A line sent on `c` comes back (the upstream echoes), within `within`.
async fn echoes(c: &mut Client, text: &str, within: Duration) {
    let started = Instant::now();
    c.write(format!("{text}\n").as_bytes()).await;
    assert_eq!(c.line().await, text);
    let took = started.elapsed();
    assert!(took < within, "an echo took {took:?}");
}

/// The receipts so far, by command id.
fn receipts(up: &TestUpstream) -> HashMap<String, proto::CommandResult> {
    up.results().into_iter().map(|r| (r.command_id.clone(), r)).collect()
}

/// How many `hello`s the upstream received: one per stream the node opened.
fn hellos(up: &TestUpstream) -> usize {
    up.events().iter().filter(|e| matches!(e.event, Some(Event::Hello(_)))).count()
}

fn send(socket: &str, payload: impl Into<Bytes>) -> Command {
    Command::Send(proto::Send { socket_id: socket.to_owned(), payload: payload.into() })
}

/// A node in its own process, so that its memory is its own: `ppp` with `args`, on free ports,
/// logging JSON to a pipe that a thread drains.
struct NodeProcess {
    child: std::process::Child,
    /// Its downstream listener.
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(up: &TestUpstream, args: &[&str]) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ppp"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--upstream", &up.uri(), "--health-interval", "50ms", "--node-id", "proc"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("accepting sockets")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(DEADLINE).expect("the node logged its listener");
        let addr = line.split("\"listen\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().parse().unwrap();
        Self { child, addr }
    }

    /// A field of `/proc/{pid}/status`, in KiB (`VmRSS`, `VmSize`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Waits until the node has read every byte its clients sent: the receive queue of each of its
    /// established sockets (`/proc/net/tcp`, the node's side) is empty.
    async fn wait_read_all(&self) {
        let port = format!(":{:04X}", self.addr.port());
        eventually("the node read everything sent to it", || {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            table.lines().skip(1).all(|row| {
                let cols: Vec<&str> = row.split_whitespace().collect();
                let (local, state, queues) = (cols[1], cols[3], cols[4]);
                let rx_queue = queues.split(':').nth(1).unwrap();
                !(local.ends_with(&port) && state == "01") || u64::from_str_radix(rx_queue, 16).unwrap() == 0
            })
        })
        .await;
    }

    async fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        Client { reader: tokio::io::BufReader::new(r), writer: w }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Length prefixes and memory.

/// `count` sockets that each send `sent` and then nothing; returns them once the node has read it
/// all, with the growth of the node's memory (VmRSS, VmSize, in KiB) they caused.
async fn claimers(node: &NodeProcess, up: &TestUpstream, prefix: &[u8], count: usize) -> (Vec<Client>, u64, u64) {
    let opened_before = up.opened().len();
    let (rss, size) = (node.status_kib("VmRSS"), node.status_kib("VmSize"));
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut c = node.connect().await;
        write_lossy(&mut c, prefix).await;
        clients.push(c);
    }
    up.wait_opened(opened_before + count).await;
    node.wait_read_all().await;
    let rss = node.status_kib("VmRSS").saturating_sub(rss);
    let size = node.status_kib("VmSize").saturating_sub(size);
    (clients, rss, size)
}

/// A warmed-up node in its own process with `framing`, and its upstream.
async fn process_node(framing: &str) -> (TestUpstream, NodeProcess) {
    let up = TestUpstream::start(true).await;
    let node = NodeProcess::start(&up, &["--framing", framing]);
    up.wait_for("the node's hello", |_| hellos(&up) > 0).await;
    // One round trip first, so the memory read before the test is that of a node at work.
    let mut c = node.connect().await;
    c.write(b"\x00\x00\x00\x04warm").await;
    assert_eq!(c.exact(8).await, b"\x00\x00\x00\x04warm");
    (up, node)
}

#[tokio::test]
async fn a_4_gib_length_prefix_is_refused_on_its_four_bytes_and_costs_no_memory() {
    let (up, node) = process_node("length-prefixed").await;
    let mut bystander = node.connect().await;
    let (liars, rss, size) = {
        // Each sends the prefix alone: no body byte ever arrives, so only the prefix can be refused.
        let opened_before = up.opened().len();
        let (rss, size) = (node.status_kib("VmRSS"), node.status_kib("VmSize"));
        let mut liars = Vec::new();
        for _ in 0..100 {
            let mut c = node.connect().await;
            let sent = Instant::now();
            write_lossy(&mut c, &[0xff, 0xff, 0xff, 0xff]).await;
            c.closed().await;
            let took = sent.elapsed();
            assert!(took < Duration::from_secs(2), "refusing the prefix took {took:?}");
            liars.push(c);
        }
        up.wait_opened(opened_before + 100).await;
        (liars, node.status_kib("VmRSS").saturating_sub(rss), node.status_kib("VmSize").saturating_sub(size))
    };
    drop(liars);
    up.wait_for("100 frame_too_large closes", |_| {
        up.closed().iter().filter(|(_, r)| r == "frame_too_large").count() == 100
    })
    .await;
    assert!(rss < 16 << 10, "100 claims of 4 GiB grew the node's RSS by {rss} KiB");
    assert!(size < 256 << 10, "100 claims of 4 GiB grew the node's address space by {size} KiB");
    bystander.write(b"\x00\x00\x00\x02ok").await;
    assert_eq!(bystander.exact(6).await, b"\x00\x00\x00\x02ok");
}

/// The memory a node holds per socket while a frame is incomplete, in KiB: a read buffer (16 KiB)
/// and the socket's bookkeeping, with room to spare.
const PER_SOCKET_KIB: u64 = 64;

/// A prefix under `--max-frame` alone costs nothing until the body comes: 200 sockets that each
/// claim 1 MiB (the default max) and send nothing more cost no more than 200 that claim 16 bytes.
#[tokio::test]
async fn a_length_prefix_alone_reserves_nothing_for_the_length_it_claims() {
    let (up, node) = process_node("length-prefixed").await;
    let bound = 200 * PER_SOCKET_KIB;
    for claim in [16u32, 1 << 20] {
        let (held, rss, size) = claimers(&node, &up, &claim.to_be_bytes(), 200).await;
        assert!(rss < bound, "200 claims of {claim} bytes grew the node's RSS by {rss} KiB");
        assert!(size < bound, "200 claims of {claim} bytes grew the node's address space by {size} KiB");
        drop(held);
    }
}

/// The same with the first byte of the body: 5 bytes from a peer should not make the node reserve
/// the 1 MiB the prefix claims. (Measured: 1000 such sockets grow VmSize by ~900 MiB and VmRSS by
/// ~17 MiB: the reservation is address space, touched only as the body arrives.)
#[tokio::test]
async fn a_length_prefix_and_one_body_byte_reserve_nothing_for_the_length_claimed() {
    let (up, node) = process_node("length-prefixed").await;
    let bound = 200 * PER_SOCKET_KIB;
    for claim in [16u32, 1 << 20] {
        let mut sent = claim.to_be_bytes().to_vec();
        sent.push(b'x');
        let (held, rss, size) = claimers(&node, &up, &sent, 200).await;
        assert!(rss < bound, "200 claims of {claim} bytes and 1 body byte grew the node's RSS by {rss} KiB");
        assert!(
            size < bound,
            "200 claims of {claim} bytes and 1 body byte grew the node's address space by {size} KiB"
        );
        drop(held);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// Random bytes, a flood of NULs, and a line that never ends: each closes its own socket with
/// `frame_too_large` (lines, and length-prefixed, whose random prefix is a lie), and a bystander
/// on the same node is served throughout.
#[tokio::test]
async fn garbage_closes_only_its_own_socket_with_frame_too_large() {
    for framing in [Framing::Lines, Framing::LengthPrefixed] {
        let up = TestUpstream::start(true).await;
        let node = start_node(Config { framing, max_frame: 64, ..test_config(&[&up]) }).await;
        let (mut bystander, bystander_id) = connect(&node, &up, 0).await;
        let (ping, nuls) = match framing {
            Framing::Lines => (b"hi\n".to_vec(), 64 << 10),
            // NULs are empty frames here, each echoed: few enough that the echoes fit the
            // socket's write queue of a client that does not read.
            _ => (b"\x00\x00\x00\x02hi".to_vec(), 1 << 10),
        };
        // Length-prefixed: the random prefix is far above 64, "aaaa" claims 1.6 GB, and after
        // the NULs (256 empty frames, all valid) comes a prefix of 4 GiB.
        let sent = [ping.clone(), noise(1, 64 << 10), vec![0; nuls], vec![b'a'; 1 << 20]];
        for (i, garbage) in sent[1..].iter().enumerate() {
            let (mut c, id) = connect(&node, &up, i + 1).await;
            write_lossy(&mut c, garbage).await;
            if framing == Framing::LengthPrefixed && garbage[0] == 0 {
                write_lossy(&mut c, &[0xff; 4]).await;
            }
            c.closed().await;
            assert_eq!(close_reason(&up, &id).await, "frame_too_large", "{framing:?}, garbage #{i}");
            write_lossy(&mut bystander, &ping).await;
            assert_eq!(bystander.exact(ping.len()).await, ping, "{framing:?}: the bystander is served");
        }
        assert!(up.closed().iter().all(|(id, _)| *id != bystander_id));
        eventually("only the bystander left", || node.sockets().len() == 1).await;
    }
}

/// Raw framing has no structure to violate: garbage is forwarded as it came, in messages of at
/// most `--max-frame` bytes.
#[tokio::test]
async fn raw_garbage_is_forwarded_whole_in_messages_of_at_most_max_frame() {
    let up = TestUpstream::start(false).await;
    let node = start_node(Config { framing: Framing::Raw, max_frame: 64, ..test_config(&[&up]) }).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    let garbage = noise(3, 16 << 10);
    c.write(&garbage).await;
    let received = || up.data().iter().map(|d| d.payload.len()).sum::<usize>();
    up.wait_for("every byte", |_| received() == garbage.len()).await;
    let data = up.data();
    assert!(data.iter().all(|d| d.payload.len() <= 64 && d.socket_id == id));
    assert_eq!(data.iter().flat_map(|d| d.payload.iter().copied()).collect::<Vec<u8>>(), garbage);
}

/// NULs, a lone `\r` and bytes that are not UTF-8 are payload like any other: lines framing cuts
/// on `\n` only and forwards the bytes between, untouched (`SocketData.payload` is `bytes`).
#[tokio::test]
async fn invalid_utf8_and_nuls_in_lines_are_forwarded_as_bytes_untouched() {
    let up = TestUpstream::start(true).await;
    let node = start_node(test_config(&[&up])).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    let lines: [&[u8]; 6] =
        [b"\xff\xfe\xfd", b"\xc3\x28 bad \xe2\x82", b"\x00\x00nul\x00", b"mid\rdle", b"\xed\xa0\x80", b""];
    let mut wire = Vec::new();
    for line in lines {
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    c.write(&wire).await;
    up.wait_for("six messages", |_| up.data().len() == lines.len()).await;
    let got: Vec<Vec<u8>> = up.data().iter().map(|d| d.payload.to_vec()).collect();
    assert_eq!(got, lines.map(<[u8]>::to_vec));
    assert!(up.data().iter().all(|d| d.socket_id == id));
    // And back: the echo writes the same bytes, a `\n` appended.
    let mut expected = Vec::new();
    for line in lines {
        expected.extend_from_slice(line);
        expected.push(b'\n');
    }
    assert_eq!(c.exact(expected.len()).await, expected);
}

/// A client that trickles a frame one byte per second is not active (activity is messages, not
/// bytes): `--idle-timeout` closes it as `idle`, on time, while a chatty client on the same node is
/// answered at once throughout.
#[tokio::test]
async fn a_one_byte_per_second_trickle_is_closed_as_idle_and_slows_nobody() {
    let up = TestUpstream::start(true).await;
    let timeout = Duration::from_secs(2);
    let node = start_node(Config { idle_timeout: IdleTimeout(Some(timeout)), ..test_config(&[&up]) }).await;
    let (mut chatty, _) = connect(&node, &up, 0).await;
    let connected = Instant::now();
    let (mut trickler, id) = connect(&node, &up, 1).await;
    let trickle = async {
        // The pace of the attack, not a wait for a condition.
        for &b in b"never ends" {
            if trickler.writer.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let closed = async {
        trickler.reader.read_to_end(&mut Vec::new()).await.ok();
        connected.elapsed()
    };
    let chat = async {
        let mut i = 0;
        while up.closed().is_empty() {
            echoes(&mut chatty, &format!("chat {i}"), Duration::from_secs(1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            i += 1;
        }
        i
    };
    // The trickle stops writing once the node has closed its socket.
    let (lived, (), chats) =
        tokio::time::timeout(DEADLINE, async { tokio::join!(closed, trickle, chat) }).await.expect("no hang");
    assert!(lived >= timeout - Duration::from_millis(100), "closed after {lived:?}, before --idle-timeout");
    assert!(lived < timeout + Duration::from_secs(2), "closed after {lived:?}: --idle-timeout is {timeout:?}");
    assert_eq!(close_reason(&up, &id).await, "idle");
    assert!(chats >= 10, "the chatty client was answered {chats} times in {lived:?}");
    assert!(up.data().iter().all(|d| d.socket_id != id), "a partial frame is no message");
}

/// Without `--idle-timeout`, a frame trickled one byte per second arrives whole, once; meanwhile
/// the socket counts as inactive for broadcast scopes (`--idle-after` 1 s), and as active again
/// as soon as the frame is complete.
#[tokio::test]
async fn a_frame_trickled_one_byte_per_second_arrives_whole_and_the_socket_counts_as_inactive_meanwhile() {
    let up = TestUpstream::start(false).await;
    let node = start_node(Config { idle_after: Duration::from_secs(1), ..test_config(&[&up]) }).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    let broadcast = |scope: proto::Scope, text: &str| {
        Command::Broadcast(proto::Broadcast {
            scope: scope as i32,
            payload: text.to_owned().into(),
            ..Default::default()
        })
    };
    for (i, &b) in b"slow\n".iter().enumerate() {
        c.write(&[b]).await;
        if i == 2 {
            // 2 s in: bytes flow, but no message for longer than --idle-after.
            up.command(with_id("b1", broadcast(proto::Scope::Active, "to active"))).await;
            up.command(with_id("b2", broadcast(proto::Scope::Inactive, "to inactive"))).await;
            assert_eq!(c.line().await, "to inactive");
        }
        if b != b'\n' {
            tokio::time::sleep(Duration::from_secs(1)).await; // The pace of the trickle.
        }
    }
    up.wait_for("the trickled frame", |_| !up.data().is_empty()).await;
    up.command(with_id("b3", broadcast(proto::Scope::Active, "welcome back"))).await;
    assert_eq!(c.line().await, "welcome back");
    let data = up.data();
    assert_eq!(data.len(), 1);
    assert_eq!((data[0].socket_id.as_str(), data[0].seq, &data[0].payload[..]), (id.as_str(), 1, &b"slow"[..]));
}

/// A node with the default `--max-frame` (1 MiB): an endless line is cut off, a line of exactly
/// 1 MiB passes, both in 1-byte-to-64-KiB writes.
#[tokio::test]
async fn at_the_default_max_an_endless_line_is_cut_off_and_a_max_line_passes() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let max = node.config().max_frame;
    let (mut endless, endless_id) = connect(&node, &up, 0).await;
    let chunk = vec![b'z'; 64 << 10];
    let mut written = 0;
    while written < 8 * max && endless.writer.write_all(&chunk).await.is_ok() {
        written += chunk.len();
        if up.closed().iter().any(|(s, _)| *s == endless_id) {
            break;
        }
    }
    assert_eq!(close_reason(&up, &endless_id).await, "frame_too_large");
    let (mut full, full_id) = connect(&node, &up, 1).await;
    let line = noise(7, max).into_iter().map(|b| if b == b'\n' || b == b'\r' { b'.' } else { b }).collect::<Vec<_>>();
    full.write(&line[..1]).await;
    full.write(&line[1..]).await;
    full.write(b"\n").await;
    up.wait_for("the 1 MiB line", |_| up.data().iter().any(|d| d.socket_id == full_id)).await;
    assert_eq!(up.data().iter().find(|d| d.socket_id == full_id).unwrap().payload, line);
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

/// Commands for sockets that do not exist, or that no socket could be: each gets its receipt
/// (unknown socket, or FAILED saying why), the stream stays the same one, and a valid command
/// after them works. Returns nothing; panics on the first wrong receipt.
async fn invalid_commands_get_receipts_and_the_stream_goes_on(up: &TestUpstream, target: &mut Client, target_id: &str) {
    let hellos_before = hellos(up);
    let unknown = [
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::nil().to_string(),
        uuid::Uuid::max().to_string(),
        uuid::Uuid::now_v7().braced().to_string().to_uppercase(),
    ];
    let long = "x".repeat(10_000);
    let malformed =
        ["", "not-a-uuid", "\0", "🦀🦀🦀", &long, "01a2caa-2136-703b-afe7-c9fbecc2881b", &format!("{target_id}x")];
    let mut expected: Vec<(String, Status, &str)> = Vec::new();
    let mut commands = Vec::new();
    let kinds = |socket: &str| {
        [
            send(socket, "x"),
            Command::Close(proto::Close { socket_id: socket.to_owned(), reason: "r".into() }),
            Command::SetLabels(proto::SetLabels {
                socket_id: socket.to_owned(),
                labels: [("k".to_owned(), "v".to_owned())].into(),
                replace: false,
            }),
        ]
    };
    for (i, socket) in unknown.iter().enumerate() {
        for (k, command) in kinds(socket).into_iter().enumerate() {
            let id = format!("unknown-{i}-{k}");
            expected.push((id.clone(), Status::UnknownSocket, ""));
            commands.push(with_id(&id, command));
        }
    }
    for (i, socket) in malformed.iter().enumerate() {
        for (k, command) in kinds(socket).into_iter().enumerate() {
            let id = format!("malformed-{i}-{k}");
            expected.push((id.clone(), Status::Failed, "is not a socket id"));
            commands.push(with_id(&id, command));
        }
    }
    for scope in [3, -1, i32::MAX, i32::MIN] {
        let id = format!("scope-{scope}");
        expected.push((id.clone(), Status::Failed, "scope"));
        let b = proto::Broadcast { scope, payload: "never".into(), ..Default::default() };
        commands.push(with_id(&id, Command::Broadcast(b)));
    }
    expected.push(("empty".to_owned(), Status::Failed, "empty"));
    commands.push(proto::UpstreamCommand { command_id: "empty".to_owned(), command: None });
    // Labels the socket must refuse: an empty name, a value over 1024 bytes, more than 64.
    let bad_labels: [HashMap<String, String>; 3] = [
        [(String::new(), "v".to_owned())].into(),
        [("k".to_owned(), "v".repeat(1025))].into(),
        (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
    ];
    for (i, labels) in bad_labels.into_iter().enumerate() {
        let id = format!("labels-{i}");
        expected.push((id.clone(), Status::Failed, ""));
        let set = proto::SetLabels { socket_id: target_id.to_owned(), labels, replace: false };
        commands.push(with_id(&id, Command::SetLabels(set)));
    }
    // The same invalid command without a command_id: no receipt, no harm.
    commands.push(with_id("", send("not-a-uuid", "x")));
    commands.push(proto::UpstreamCommand::default());
    let results_before = up.results().len();
    for command in commands {
        up.command(command).await;
    }
    up.wait_for("every receipt", |_| up.results().len() >= results_before + expected.len()).await;
    let results = receipts(up);
    for (id, status, detail) in &expected {
        let r = &results[id];
        assert_eq!(r.status, *status as i32, "{id}: {r:?}");
        assert!(r.detail.contains(detail), "{id}: {r:?}");
        assert!(r.detail.len() < 1024, "{id}: a detail of {} bytes", r.detail.len());
    }
    // The stream survived: a valid command on it works, and it is still the first stream.
    up.command(with_id("after", send(target_id, "still here"))).await;
    assert_eq!(target.line().await, "still here");
    up.wait_for("the receipt after", |_| receipts(up).contains_key("after")).await;
    assert_eq!(receipts(up)["after"].status, Status::Ok as i32);
    assert_eq!(hellos(up), hellos_before, "the stream was never reopened");
}

#[tokio::test]
async fn invalid_commands_from_an_upstream_get_receipts_and_break_nothing() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    invalid_commands_get_receipts_and_the_stream_goes_on(&up, &mut c, &id).await;
    // A 1 MiB close reason and a 64 KiB command id: carried out, the text cut to 256 bytes.
    let (mut other, other_id) = connect(&node, &up, 1).await;
    let close = proto::Close { socket_id: other_id.clone(), reason: "é".repeat(512 << 10) };
    let long_id = "i".repeat(64 << 10);
    up.command(with_id(&long_id, Command::Close(close))).await;
    other.closed().await;
    assert_eq!(close_reason(&up, &other_id).await, "upstream");
    up.wait_for("the long id's receipt", |_| receipts(&up).contains_key(&long_id)).await;
    assert_eq!(receipts(&up)[&long_id].status, Status::Ok as i32);
    assert!(up.closed().iter().all(|(s, _)| *s != id), "only the closed socket closed");
}

/// In a cluster a command for a socket of no node is looked up in Redis first: unknown socket
/// all the same, and every invalid command is answered as on a standalone node.
#[tokio::test]
async fn invalid_commands_in_a_cluster_get_the_same_receipts() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(false).await;
    let n1 = start_node(cluster_config(&redis, "n1", &[&up])).await;
    let n2 = start_node(cluster_config(&redis, "n2", &[&up])).await;
    let (mut c, id) = connect(&n2, &up, 0).await;
    redis.wait_exists("the socket is registered", &format!("ppp:default:socket:{id}")).await;
    // Commands go out on whichever of the two streams was opened last; the socket is on n2.
    invalid_commands_get_receipts_and_the_stream_goes_on(&up, &mut c, &id).await;
    drop(n1);
}

/// A payload just under the node's 16 MiB command limit (with its envelope: ids, tags, lengths)
/// is written whole, with its receipt, on the same stream.
#[tokio::test]
async fn a_command_just_under_16_mib_is_written_whole() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    let payload = noise(5, (16 << 20) - 1024);
    up.command(with_id("just-under", send(&id, payload.clone()))).await;
    let mut expected = payload;
    expected.push(b'\n');
    assert_eq!(c.exact(expected.len()).await, expected);
    up.wait_for("its receipt", |_| receipts(&up).contains_key("just-under")).await;
    assert_eq!(receipts(&up)["just-under"].status, Status::Ok as i32);
    assert_eq!(hellos(&up), 1, "the stream held");
}

/// A command over the node's 16 MiB limit breaks its stream (gRPC refuses the message); the
/// node reopens it, nothing else is disturbed and nothing of it reaches the socket.
#[tokio::test]
async fn a_command_over_16_mib_breaks_only_its_stream_which_the_node_reopens() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let (mut c, id) = connect(&node, &up, 0).await;
    let (mut bystander, bystander_id) = connect(&node, &up, 1).await;
    up.command(with_id("huge", send(&id, vec![b'h'; 17 << 20]))).await;
    up.wait_for("a second stream", |_| hellos(&up) == 2).await;
    eventually("one open stream", || up.open_streams() == 1).await;
    up.command(with_id("after", send(&id, "after"))).await;
    assert_eq!(c.line().await, "after", "nothing of the huge command reached the socket");
    bystander.write(b"still here\n").await;
    up.wait_for("the bystander's message", |_| up.data().iter().any(|d| d.socket_id == bystander_id)).await;
    assert!(!receipts(&up).contains_key("huge"), "the node never read the huge command");
    assert!(up.closed().is_empty(), "no socket closed: {:?}", up.closed());
}

// ---------------------------------------------------------------------------------------------
// The Redis bus.

/// `ppp_messages_refused_total{reason="bad_bus_message"}` in this process's recorder (every node
/// of this test binary counts into it).
fn bad_bus_messages() -> u64 {
    let text = ppp::metrics::install().expect("the nodes' recorder").render();
    text.lines()
        .find(|l| l.starts_with("ppp_messages_refused_total{") && l.contains("reason=\"bad_bus_message\""))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
}

/// Publishes `payload` on `channel` as `redis-cli PUBLISH` does; returns how many received it.
async fn publish(redis: &RedisServer, channel: &str, payload: &[u8]) -> usize {
    redis.conn().await.publish(channel, payload).await.unwrap()
}

/// Waits until `channel` has `n` subscribers (`PUBSUB NUMSUB`).
async fn wait_subscribers(redis: &RedisServer, channel: &str, n: usize) {
    eventually_async(&format!("{n} subscribers on {channel}"), || async {
        let counts: Vec<(String, usize)> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut redis.conn().await).await.unwrap();
        counts[0].1 == n
    })
    .await;
}

/// Payloads that are no bus message at all.
fn undecodable() -> Vec<Vec<u8>> {
    let mut nested = vec![0x81, 0xa7];
    nested.extend_from_slice(b"Command");
    nested.extend(std::iter::repeat_n(0x91, 100_000));
    vec![
        Vec::new(),
        b"hello from redis-cli".to_vec(),
        vec![0xc1],
        noise(11, 1 << 10),
        noise(12, 1 << 20),
        nested,
        // Headers that claim 4 GiB of array, string and map.
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0x81, 0xa7, b'C', b'o', b'n', b't', b'r', b'o', b'l', 0x91, 0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![
            0x81, 0xa9, b'B', b'r', b'o', b'a', b'd', b'c', b'a', b's', b't', 0x94, 0xa1, b'x', 0x00, 0xdf, 0xff, 0xff,
            0xff, 0xff,
        ],
        // A real message cut short.
        {
            let m = BusMessage::Control { what: "upstreams".into() }.encode();
            m[..m.len() - 3].to_vec()
        },
    ]
}

/// Bus messages that decode but must not do anything (or only answer FAILED).
fn decodable_but_wrong() -> Vec<(&'static str, Vec<u8>)> {
    let command = |socket: &str, reply_to: String| BusMessage::Command {
        request: 424_242,
        reply_to,
        command: WireCommand::Send { socket: socket.to_owned(), payload: Bytes::from_static(b"forged") },
    };
    let no_such = uuid::Uuid::now_v7().to_string();
    vec![
        ("node", command("not-a-uuid", "n2".into()).encode()),
        ("node", command(&no_such, "n2".into()).encode()),
        ("node", command(&no_such, "r".repeat(100 << 10)).encode()),
        ("node", BusMessage::Receipt { request: 99_999, status: 42, detail: "forged".into(), refused: true }.encode()),
        (
            "broadcast",
            BusMessage::Broadcast {
                origin: "forger".into(),
                scope: 7,
                selector: HashMap::new(),
                payload: Bytes::from_static(b"never"),
            }
            .encode(),
        ),
        ("control", BusMessage::Control { what: "garbage".into() }.encode()),
        (
            "control",
            BusMessage::Runtime {
                origin: "forger".into(),
                patch: RuntimePatch {
                    balance: Some("random".into()),
                    idle_after: Some("1ms".into()),
                    ..RuntimePatch::default()
                },
            }
            .encode(),
        ),
    ]
}

/// Garbage published with plain Redis commands on every bus channel: each undecodable message
/// is counted once per node that received it (`bad_bus_message`; on the control channel any
/// message only means "re-read the registry"), messages that decode but make no sense change
/// nothing, and both nodes go on carrying commands, broadcasts and heartbeats.
#[tokio::test]
async fn garbage_on_the_bus_is_counted_or_ignored_and_the_cluster_goes_on() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(false).await;
    let n1 = start_node(cluster_config(&redis, "n1", &[&up])).await;
    let n2 = start_node(cluster_config(&redis, "n2", &[&up])).await;
    let (mut on_n1, first) = connect(&n1, &up, 0).await;
    let (mut on_n2, second) = connect(&n2, &up, 1).await;
    for id in [&first, &second] {
        redis.wait_exists("registered", &format!("ppp:default:socket:{id}")).await;
    }
    let (node, broadcast, control) = ("ppp:default:ch:node:n1", "ppp:default:ch:broadcast", "ppp:default:ch:control");
    wait_subscribers(&redis, node, 1).await;
    wait_subscribers(&redis, broadcast, 2).await;
    wait_subscribers(&redis, control, 2).await;
    let settings = n1.settings().view();
    let before = bad_bus_messages();

    let garbage = undecodable();
    for payload in &garbage {
        assert_eq!(publish(&redis, node, payload).await, 1);
        assert_eq!(publish(&redis, broadcast, payload).await, 2);
        assert_eq!(publish(&redis, control, payload).await, 2);
    }
    for (channel, payload) in decodable_but_wrong() {
        let channel = format!("ppp:default:ch:{channel}");
        let channel = if channel.ends_with(":node") { node.to_owned() } else { channel };
        assert!(publish(&redis, &channel, &payload).await >= 1);
    }
    // Once per message on n1's channel, twice (n1 and n2) per message on the broadcast channel.
    let expected = before + 3 * garbage.len() as u64;
    eventually("every undecodable message counted", || bad_bus_messages() >= expected).await;

    // Both nodes still carry everything: commands across nodes, broadcasts, messages in.
    up.command(with_id("to-second", send(&second, "to second"))).await;
    up.command(with_id("to-first", send(&first, "to first"))).await;
    let all = proto::Broadcast { scope: 0, payload: "everyone".into(), ..Default::default() };
    up.command(with_id("all", Command::Broadcast(all))).await;
    // The forged messages wrote nothing: the next lines are these (in either order: a command and
    // a broadcast travel on different channels).
    for (c, text) in [(&mut on_n1, "to first"), (&mut on_n2, "to second")] {
        let mut lines = [c.line().await, c.line().await];
        lines.sort();
        assert_eq!(lines, ["everyone", text]);
    }
    up.wait_for("receipts", |_| ["to-second", "to-first", "all"].iter().all(|id| receipts(&up).contains_key(*id)))
        .await;
    assert!(["to-second", "to-first", "all"].iter().all(|id| receipts(&up)[*id].status == Status::Ok as i32));
    on_n1.write(b"from n1\n").await;
    up.wait_for("n1's message", |_| up.data().iter().any(|d| d.socket_id == first)).await;
    assert_eq!(n1.settings().view(), settings, "an invalid runtime patch changed nothing");
    assert_eq!(bad_bus_messages(), expected, "counted once per node that received it");
    let beat = |node: &'static str| {
        let redis = &redis;
        async move { redis.conn().await.zscore::<_, _, Option<i64>>("ppp:default:nodes", node).await.unwrap().unwrap() }
    };
    let (beat1, beat2) = (beat("n1").await, beat("n2").await);
    eventually_async("both heartbeats go on", || async { beat("n1").await > beat1 && beat("n2").await > beat2 }).await;
    assert!(up.closed().is_empty(), "no socket closed: {:?}", up.closed());
}

/// A runtime patch from the bus is validated again by every node; a duration too large for the
/// settings must be refused or kept as very long, never wrapped into a short one.
#[tokio::test]
async fn a_runtime_patch_with_a_huge_duration_on_the_bus_never_becomes_a_short_one() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(false).await;
    let n1 = start_node(cluster_config(&redis, "n1", &[&up])).await;
    wait_subscribers(&redis, "ppp:default:ch:control", 1).await;
    let runtime = |patch: RuntimePatch| BusMessage::Runtime { origin: "other".into(), patch }.encode();
    let huge = RuntimePatch { idle_timeout: Some("18446744073709552s 616ms".into()), ..RuntimePatch::default() };
    publish(&redis, "ppp:default:ch:control", &runtime(huge)).await;
    // A second, plain patch: once it is applied, so was (or was refused) the first.
    let marker = RuntimePatch { max_connections: Some(777), ..RuntimePatch::default() };
    publish(&redis, "ppp:default:ch:control", &runtime(marker)).await;
    eventually("the marker applied", || n1.settings().max_connections() == 777).await;
    let t = n1.settings().idle_timeout();
    assert!(t.is_none_or(|t| t > Duration::from_secs(365 * 86_400)), "idle_timeout became {t:?}");
}
