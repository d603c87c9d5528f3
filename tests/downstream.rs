//! The TCP side: framing over real sockets, limits, slow consumers, idle sockets.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::*;
use ppp::config::{Framing, IdleTimeout};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn lines_split_coalesced_and_crlf_arrive_as_messages() {
    let up = TestUpstream::start(true).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    // Coalesced: three frames in one write; split: one frame over three writes; CRLF stripped.
    c.write(b"one\ntwo\r\nthr").await;
    up.wait_for("two frames", |_| up.data().len() >= 2).await;
    c.write(b"ee\r").await;
    c.write(b"\n").await;
    for expected in ["one", "two", "three"] {
        assert_eq!(c.line().await, expected);
    }
    let data = up.data();
    let payloads: Vec<_> = data.iter().map(|d| String::from_utf8_lossy(&d.payload).into_owned()).collect();
    assert_eq!(payloads, ["one", "two", "three"]);
    assert_eq!(data.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn a_frame_of_exactly_max_passes_and_a_longer_one_closes_only_its_socket() {
    let up = TestUpstream::start(true).await;
    let node = start_node(ppp::config::Config { max_frame: 8, ..test_config(&[&up]) }).await;
    let mut bystander = Client::connect(&node).await;
    let mut c = Client::connect(&node).await;
    c.write(b"12345678\r\n").await;
    assert_eq!(c.line().await, "12345678");
    c.write(b"123456789\n").await;
    c.closed().await;
    up.wait_for("closed frame_too_large", |_| up.closed().iter().any(|(_, r)| r == "frame_too_large")).await;
    bystander.write(b"alive\n").await;
    assert_eq!(bystander.line().await, "alive");
}

#[tokio::test]
async fn length_prefixed_frames_round_trip_and_a_huge_prefix_is_refused_without_allocating() {
    let up = TestUpstream::start(true).await;
    let node = start_node(ppp::config::Config { framing: Framing::LengthPrefixed, ..test_config(&[&up]) }).await;
    let mut c = Client::connect(&node).await;
    let mut wire = Vec::new();
    for payload in [&b"hello"[..], b"", b"\n\x00binary"] {
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(payload);
    }
    c.write(&wire[..3]).await;
    c.write(&wire[3..]).await;
    assert_eq!(c.exact(wire.len()).await, wire);
    // A 4 GiB prefix: refused at once, the socket closed with frame_too_large.
    let mut liar = Client::connect(&node).await;
    liar.write(&[0xff, 0xff, 0xff, 0xff, b'x']).await;
    liar.closed().await;
    up.wait_for("closed frame_too_large", |_| up.closed().iter().any(|(_, r)| r == "frame_too_large")).await;
}

#[tokio::test]
async fn raw_framing_forwards_each_read_and_writes_payloads_as_they_are() {
    let up = TestUpstream::start(true).await;
    let node = start_node(ppp::config::Config { framing: Framing::Raw, ..test_config(&[&up]) }).await;
    let mut c = Client::connect(&node).await;
    c.write(b"no newline here").await;
    assert_eq!(c.exact(15).await, b"no newline here");
}

#[tokio::test]
async fn beyond_max_connections_a_socket_is_closed_at_once_and_the_others_carry_on() {
    let up = TestUpstream::start(true).await;
    let node = start_node(ppp::config::Config { max_connections: 2, ..test_config(&[&up]) }).await;
    let mut a = Client::connect(&node).await;
    let mut b = Client::connect(&node).await;
    up.wait_opened(2).await;
    let mut refused = Client::connect(&node).await;
    assert!(refused.closed().await.is_empty());
    a.write(b"a\n").await;
    b.write(b"b\n").await;
    assert_eq!(a.line().await, "a");
    assert_eq!(b.line().await, "b");
    assert_eq!(up.opened().len(), 2, "the refused socket never opened");
    // When one leaves, there is room again.
    drop(a);
    up.wait_for("a closed", |_| !up.closed().is_empty()).await;
    let mut c = Client::connect(&node).await;
    c.write(b"c\n").await;
    assert_eq!(c.line().await, "c");
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_nobody_else_slows_down() {
    let up = TestUpstream::start(true).await;
    let node = start_node(ppp::config::Config { write_queue: 16, ..test_config(&[&up]) }).await;
    // The slow one never reads; a fast one keeps talking.
    let mut slow = Client::connect(&node).await;
    let slow_id = up.wait_opened(1).await[0].clone();
    let mut fast = Client::connect(&node).await;
    up.wait_opened(2).await;
    let big = bytes::Bytes::from(vec![b'x'; 64 << 10]);
    for _ in 0..2000 {
        up.command(send_cmd(&slow_id, big.clone())).await;
        if node.sockets().len() < 2 {
            break;
        }
    }
    up.wait_for("slow consumer closed", |_| up.closed().iter().any(|(id, r)| *id == slow_id && r == "slow_consumer"))
        .await;
    fast.write(b"ping\n").await;
    assert_eq!(fast.line().await, "ping");
    // The slow socket's connection is gone: reading drains what the kernel held, then EOF/reset.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, slow.reader.read_to_end(&mut sink)).await.expect("slow socket closed");
}

#[tokio::test]
async fn a_slow_consumer_is_closed_by_the_byte_bound_long_before_the_message_bound() {
    let up = TestUpstream::start(true).await;
    let config = ppp::config::Config { write_queue: 1 << 20, write_queue_bytes: 256 << 10, ..test_config(&[&up]) };
    let node = start_node(config).await;
    let _slow = Client::connect(&node).await;
    let slow_id = up.wait_opened(1).await[0].clone();
    let big = bytes::Bytes::from(vec![b'x'; 64 << 10]);
    // Without the byte bound, a million 64 KiB messages (64 GiB) would have to wait first; with
    // it, what the kernel buffers plus 256 KiB.
    // One at a time, each receipt awaited: the count of those queued is exact.
    let mut queued = 0;
    for i in 0..2000 {
        up.command(with_id(&format!("big-{i}"), send_command(&slow_id, big.clone()))).await;
        up.wait_for("receipt", |_| up.results().len() == i + 1).await;
        if up.results()[i].status != ppp::proto::Status::Ok as i32 {
            break;
        }
        queued += 1;
    }
    up.wait_for("slow consumer closed", |_| up.closed().iter().any(|(id, r)| *id == slow_id && r == "slow_consumer"))
        .await;
    assert!(queued < 1000, "closed after {queued} payloads of 64 KiB were queued");
}

#[tokio::test]
async fn an_idle_socket_is_closed_after_idle_timeout_and_an_active_one_is_not() {
    let up = TestUpstream::start(true).await;
    let config = ppp::config::Config { idle_timeout: IdleTimeout(Some(Duration::from_secs(1))), ..test_config(&[&up]) };
    let node = start_node(config).await;
    let started = tokio::time::Instant::now();
    let mut idle = Client::connect(&node).await;
    let ids = up.wait_opened(1).await;
    let mut chatty = Client::connect(&node).await;
    up.wait_opened(2).await;
    // The chatty one talks every 200 ms for 2.4 s; the idle one must be gone meanwhile.
    for i in 0..12 {
        chatty.write(format!("{i}\n").as_bytes()).await;
        assert_eq!(chatty.line().await, i.to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    idle.closed().await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    let closed = up.closed();
    assert_eq!(closed, vec![(ids[0].clone(), "idle".to_owned())]);
}

/// A read that finds less than it has room for takes it that the socket is empty and waits for
/// readiness again: bytes that arrive meanwhile must still wake it. Many small writes as fast as
/// the client can make them land in that window again and again; every message arrives.
#[tokio::test]
async fn many_small_writes_in_quick_succession_all_arrive() {
    let up = TestUpstream::start(true).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    const N: usize = 2000;
    for i in 0..N {
        c.write(format!("m{i}\n").as_bytes()).await;
    }
    up.wait_for("every message", |_| up.data().len() >= N).await;
    let seqs: Vec<u64> = up.data().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    for i in 0..N {
        assert_eq!(c.line().await, format!("m{i}"));
    }
}
