//! Bad input from clients, against real nodes: garbage, NULs, endless lines, invalid UTF-8, a
//! 4 GiB length prefix, or one byte per second. In every case the node closes (or refuses) only
//! the socket that was bad, with the documented reason, never panics or hangs, keeps serving
//! everybody else, and spends no memory on what a client merely claims.
//!
//! Where memory is the question the node runs in its own process (`ppp`), so that its own
//! `/proc/{pid}/status` can be read; elsewhere it runs in the test's process, as in the other
//! suites. (Upstreams' bad commands: `bad_input_upstream.rs`; the Redis bus:
//! `bad_input_cluster.rs`.)

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ppp::{
    config::{Config, Framing, IdleTimeout},
    proto::{self, upstream_command::Command},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A line sent on `c` comes back (the upstream echoes), within `within`.
async fn echoes(c: &mut Client, text: &str, within: Duration) {
    let started = Instant::now();
    c.write(format!("{text}\n").as_bytes()).await;
    assert_eq!(c.line().await, text);
    let took = started.elapsed();
    assert!(took < within, "an echo took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Length prefixes and memory.

/// `count` sockets that each send `sent` and then nothing; returns them once the node has read it
/// all, with the growth of the node's memory (VmRSS, VmSize, in KiB) they caused.
async fn claimers(node: &NodeProc, up: &TestUpstream, prefix: &[u8], count: usize) -> (Vec<Client>, u64, u64) {
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
async fn process_node(framing: &str) -> (TestUpstream, NodeProc) {
    let up = TestUpstream::start(true).await;
    let uri = up.uri();
    let args = ["--upstream", &uri, "--health-interval", "50ms", "--framing", framing];
    let node = NodeProc::start("proc", &args, 1).await;
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
