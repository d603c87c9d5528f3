//! Bad input from upstreams, against real nodes: invalid, unknown or oversized commands. Each
//! gets its receipt or breaks only its own stream, which the node reopens; nothing else breaks.
//! (Clients' bad bytes: `bad_input_downstream.rs`; the Redis bus: `bad_input_cluster.rs`.)

#[allow(dead_code)]
mod common;

use std::collections::HashMap;

use common::*;
use ppp::proto::{self, Status, upstream_command::Command};

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
            send_command(socket, "x"),
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
    commands.push(with_id("", send_command("not-a-uuid", "x")));
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
    up.command(with_id("after", send_command(target_id, "still here"))).await;
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
    redis.wait_exists("the socket is registered", &format!("ppp:{{default}}:socket:{id}")).await;
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
    up.command(with_id("just-under", send_command(&id, payload.clone()))).await;
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
    up.command(with_id("huge", send_command(&id, vec![b'h'; 17 << 20]))).await;
    up.wait_for("a second stream", |_| hellos(&up) == 2).await;
    eventually("one open stream", || up.open_streams() == 1).await;
    up.command(with_id("after", send_command(&id, "after"))).await;
    assert_eq!(c.line().await, "after", "nothing of the huge command reached the socket");
    bystander.write(b"still here\n").await;
    up.wait_for("the bystander's message", |_| up.data().iter().any(|d| d.socket_id == bystander_id)).await;
    assert!(!receipts(&up).contains_key("huge"), "the node never read the huge command");
    assert!(up.closed().is_empty(), "no socket closed: {:?}", up.closed());
}
