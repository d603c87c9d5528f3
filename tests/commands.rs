//! Upstream commands over a real gRPC stream: send, broadcast, close, set_labels, receipts.

#[allow(dead_code)]
mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use ppp::proto::{self, Status, node_event::Event, upstream_command::Command};

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn broadcast(scope: proto::Scope, selector: &[(&str, &str)], payload: &str) -> Command {
    Command::Broadcast(proto::Broadcast {
        scope: scope as i32,
        payload: payload.to_owned().into(),
        selector: labels(selector),
    })
}

fn set_labels(socket: &str, pairs: &[(&str, &str)], replace: bool) -> Command {
    Command::SetLabels(proto::SetLabels { socket_id: socket.to_owned(), labels: labels(pairs), replace })
}

#[tokio::test]
async fn events_arrive_in_order_hello_opened_data_closed() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    c.write(b"a\nb\nc\n").await;
    up.wait_for("three messages", |_| up.data().len() == 3).await;
    drop(c);
    up.wait_for("closed", |_| !up.closed().is_empty()).await;
    let events = up.events();
    let Some(Event::Hello(hello)) = &events[0].event else { panic!("hello first, got {:?}", events[0]) };
    assert_eq!(hello.node_id, "test-node");
    assert_eq!(hello.cluster, "default");
    assert_eq!(hello.version, ppp::VERSION);
    let Some(Event::Opened(opened)) = &events[1].event else { panic!("opened second") };
    let info = opened.socket.as_ref().unwrap();
    assert_eq!(info.node_id, "test-node");
    assert_eq!(info.local_addr, node.local_addr().to_string());
    assert!(info.connected_at_unix_ms > 0);
    let id: uuid::Uuid = info.id.parse().unwrap();
    assert_eq!(id.get_version_num(), 7, "socket ids are UUID v7");
    for (i, e) in events[2..5].iter().enumerate() {
        let Some(Event::Data(d)) = &e.event else { panic!("data, got {e:?}") };
        assert_eq!((d.socket_id.as_str(), d.seq), (info.id.as_str(), i as u64 + 1));
    }
    let Some(Event::Closed(closed)) = &events[5].event else { panic!("closed last") };
    assert_eq!((closed.socket_id.as_str(), closed.reason.as_str()), (info.id.as_str(), "client_closed"));
    assert_eq!(events.len(), 6);
}

#[tokio::test]
async fn send_writes_to_the_socket_and_receipts_say_what_happened() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    let id = up.wait_opened(1).await[0].clone();
    up.command(send_cmd(&id, "no receipt")).await;
    assert_eq!(c.line().await, "no receipt");
    let send = |socket: &str| Command::Send(proto::Send { socket_id: socket.to_owned(), payload: "hi\n".into() });
    up.command(with_id("ok", send(&id))).await;
    assert_eq!(c.line().await, "hi");
    up.command(with_id("unknown", send(&uuid::Uuid::now_v7().to_string()))).await;
    up.command(with_id("bad-uuid", send("not-a-uuid"))).await;
    up.command(with_id("bad-scope", Command::Broadcast(proto::Broadcast { scope: 99, ..Default::default() }))).await;
    up.command(proto::UpstreamCommand { command_id: "empty".into(), command: None }).await;
    up.wait_for("four receipts", |_| up.results().len() == 5).await;
    let results: HashMap<_, _> = up.results().into_iter().map(|r| (r.command_id.clone(), r)).collect();
    assert_eq!(results["ok"].status, Status::Ok as i32);
    assert_eq!(results["unknown"].status, Status::UnknownSocket as i32);
    assert_eq!(results["bad-uuid"].status, Status::Failed as i32);
    assert!(results["bad-uuid"].detail.contains("not-a-uuid"), "{:?}", results["bad-uuid"]);
    assert_eq!(results["bad-scope"].status, Status::Failed as i32);
    assert!(results["bad-scope"].detail.contains("scope"));
    assert_eq!(results["empty"].status, Status::Failed as i32);
    // The stream survived the invalid commands, and the first send had no receipt.
    up.command(with_id("after", send(&id))).await;
    assert_eq!(c.line().await, "hi");
    up.wait_for("receipt after", |_| up.results().iter().any(|r| r.command_id == "after")).await;
    assert_eq!(up.open_streams(), 1);
}

#[tokio::test]
async fn broadcast_reaches_sockets_by_scope_and_selector() {
    let up = TestUpstream::start(false).await;
    let config = ppp::config::Config { idle_after: Duration::from_millis(500), ..test_config(&[&up]) };
    let node = start_node(config).await;
    let mut quiet = Client::connect(&node).await;
    let quiet_id = up.wait_opened(1).await[0].clone();
    let mut ada = Client::connect(&node).await;
    let ada_id = up.wait_opened(2).await[1].clone();
    up.command(with_id("l1", set_labels(&ada_id, &[("user", "ada"), ("room", "1")], false))).await;
    up.command(with_id("l2", set_labels(&quiet_id, &[("room", "1")], false))).await;
    up.wait_for("labels set", |_| up.results().len() == 2).await;
    // Let `quiet` become inactive, then make sure `ada` has just talked (and so is active).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ada.write(b"tick\n").await;
    up.wait_for("ada's tick", |_| !up.data().is_empty()).await;
    up.command(with_id("all", broadcast(proto::Scope::All, &[], "to all"))).await;
    up.command(with_id("active", broadcast(proto::Scope::Active, &[], "to active"))).await;
    up.command(with_id("inactive", broadcast(proto::Scope::Inactive, &[], "to inactive"))).await;
    up.command(with_id("room", broadcast(proto::Scope::All, &[("room", "1")], "to room 1"))).await;
    up.command(with_id("ada", broadcast(proto::Scope::All, &[("room", "1"), ("user", "ada")], "to ada in room 1")))
        .await;
    up.command(with_id("nobody", broadcast(proto::Scope::All, &[("user", "bob")], "to bob"))).await;
    up.wait_for("receipts", |_| up.results().len() == 8).await;
    assert!(up.results().iter().all(|r| r.status == Status::Ok as i32));
    for expected in ["to all", "to active", "to room 1", "to ada in room 1"] {
        assert_eq!(ada.line().await, expected);
    }
    for expected in ["to all", "to inactive", "to room 1"] {
        assert_eq!(quiet.line().await, expected);
    }
    // Nothing else arrives: a marker sent last is the next line on both.
    up.command(send_cmd(&ada_id, "end")).await;
    up.command(send_cmd(&quiet_id, "end")).await;
    assert_eq!(ada.line().await, "end");
    assert_eq!(quiet.line().await, "end");
}

#[tokio::test]
async fn labels_merge_or_replace_and_travel_with_every_message() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    let id = up.wait_opened(1).await[0].clone();
    up.command(with_id("1", set_labels(&id, &[("user", "ada"), ("tier", "gold")], false))).await;
    up.command(with_id("2", set_labels(&id, &[("tier", "")], false))).await;
    up.wait_for("receipts", |_| up.results().len() == 2).await;
    c.write(b"after merge\n").await;
    up.wait_for("data", |_| up.data().len() == 1).await;
    assert_eq!(up.data()[0].labels, labels(&[("user", "ada")]));
    up.command(with_id("3", set_labels(&id, &[("device", "t1")], true))).await;
    up.wait_for("receipt", |_| up.results().len() == 3).await;
    c.write(b"after replace\n").await;
    up.wait_for("data", |_| up.data().len() == 2).await;
    assert_eq!(up.data()[1].labels, labels(&[("device", "t1")]));
    // Too many labels: refused with a reason, nothing changed.
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    up.command(with_id("4", set_labels(&id, &many, false))).await;
    up.wait_for("receipt", |_| up.results().len() == 4).await;
    assert_eq!(up.results()[3].status, Status::Failed as i32);
    c.write(b"unchanged\n").await;
    up.wait_for("data", |_| up.data().len() == 3).await;
    assert_eq!(up.data()[2].labels, labels(&[("device", "t1")]));
}

#[tokio::test]
async fn close_flushes_queued_messages_then_closes_with_reason_upstream() {
    let up = TestUpstream::start(false).await;
    let node = start_node(test_config(&[&up])).await;
    let mut c = Client::connect(&node).await;
    let id = up.wait_opened(1).await[0].clone();
    up.command(send_cmd(&id, "last words")).await;
    let close = Command::Close(proto::Close { socket_id: id.clone(), reason: "kicked".into() });
    up.command(with_id("close", close)).await;
    assert_eq!(c.closed().await, b"last words\n");
    up.wait_for("closed", |_| !up.closed().is_empty()).await;
    assert_eq!(up.closed(), vec![(id.clone(), "upstream".to_owned())]);
    assert_eq!(up.results()[0].status, Status::Ok as i32);
    assert!(node.sockets().is_empty());
}
