//! Bad input from the cluster side, against real nodes: garbage published on the Redis bus
//! channels, and a runtime settings change with a huge duration typed into `K:runtime`. The node counts or ignores what it cannot
//! use and the cluster goes on. (Clients' bad bytes: `bad_input_downstream.rs`; upstreams'
//! commands: `bad_input_upstream.rs`.)

#[allow(dead_code)]
mod common;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use common::*;
use ppp::{
    cluster::redis::bus::{BusMessage, WireCommand},
    proto::{self, Status, upstream_command::Command},
    settings::RuntimePatch,
};
use redis::AsyncCommands;

// ---------------------------------------------------------------------------------------------
// The Redis bus.

/// `ppp_messages_refused_total{reason}` in this process's recorder (every node of this test
/// binary counts into it).
fn refused(reason: &str) -> u64 {
    let text = ppp::metrics::install().expect("the nodes' recorder").render();
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .find(|l| l.starts_with("ppp_messages_refused_total{") && l.contains(&label))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
}

/// `ppp_messages_refused_total{reason="bad_bus_message"}`.
fn bad_bus_messages() -> u64 {
    refused("bad_bus_message")
}

/// Waits until `channel` has `n` subscribers (`PUBSUB NUMSUB`).
async fn wait_subscribers(redis: &RedisServer, channel: &str, n: usize) {
    eventually_async(&format!("{n} subscribers on {channel}"), || async { redis.subscribers(channel).await == n })
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
        redis.wait_exists("registered", &format!("ppp:{{default}}:socket:{id}")).await;
    }
    let (node, broadcast, control) =
        ("ppp:{default}:ch:node:n1", "ppp:{default}:ch:broadcast", "ppp:{default}:ch:control");
    wait_subscribers(&redis, node, 1).await;
    wait_subscribers(&redis, broadcast, 2).await;
    wait_subscribers(&redis, control, 2).await;
    let settings = n1.settings().view();
    let before = bad_bus_messages();

    let garbage = undecodable();
    for payload in &garbage {
        assert_eq!(redis.publish(node, payload).await, 1);
        assert_eq!(redis.publish(broadcast, payload).await, 2);
        assert_eq!(redis.publish(control, payload).await, 2);
    }
    for (channel, payload) in decodable_but_wrong() {
        let channel = format!("ppp:{{default}}:ch:{channel}");
        let channel = if channel.ends_with(":node") { node.to_owned() } else { channel };
        assert!(redis.publish(&channel, &payload).await >= 1);
    }
    // Once per message on n1's channel, twice (n1 and n2) per message on the broadcast channel.
    let expected = before + 3 * garbage.len() as u64;
    eventually("every undecodable message counted", || bad_bus_messages() >= expected).await;

    // Both nodes still carry everything: commands across nodes, broadcasts, messages in.
    up.command(with_id("to-second", send_command(&second, "to second"))).await;
    up.command(with_id("to-first", send_command(&first, "to first"))).await;
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
        async move { redis.conn().await.zscore::<_, _, Option<i64>>("ppp:{default}:nodes", node).await.unwrap().unwrap() }
    };
    let (beat1, beat2) = (beat("n1").await, beat("n2").await);
    eventually_async("both heartbeats go on", || async { beat("n1").await > beat1 && beat("n2").await > beat2 }).await;
    assert!(up.closed().is_empty(), "no socket closed: {:?}", up.closed());
}

/// A runtime settings change read from `K:runtime` is validated again by every node: one typed
/// into the hash by hand with a duration too large for the settings is refused and counted,
/// never wrapped into a short one, and the next change applies.
#[tokio::test]
async fn a_runtime_change_with_a_huge_duration_in_redis_is_refused_never_a_short_one() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start(false).await;
    let n1 = start_node(cluster_config(&redis, "n1", &[&up])).await;
    // Ready once subscribed and its first read of K:runtime is done (that read applies nothing).
    eventually("n1 ready", || n1.is_ready()).await;
    let settings = n1.settings().view();
    let (key, control) = ("ppp:{default}:runtime", "ppp:{default}:ch:control");
    let notice = BusMessage::Runtime { origin: "redis-cli".into(), patch: RuntimePatch::default() }.encode();
    let refused_before = refused("bad_runtime_settings");
    let huge = [("epoch", "typed"), ("version", "1"), ("idle_timeout", "18446744073709552s 616ms")];
    let _: () = redis.conn().await.hset_multiple(key, &huge).await.unwrap();
    let _: () = redis.conn().await.hset(key, "idle_timeout:version", 1).await.unwrap();
    redis.publish(control, &notice).await;
    eventually("the change refused and counted", || refused("bad_runtime_settings") > refused_before).await;
    assert_eq!(n1.settings().view(), settings, "a refused change changes nothing");

    let marker = [("version", "2"), ("max_connections", "777"), ("max_connections:version", "2")];
    let _: () = redis.conn().await.hset_multiple(key, &marker).await.unwrap();
    redis.publish(control, &notice).await;
    eventually("the next change applied", || n1.settings().max_connections() == 777).await;
    let t = n1.settings().idle_timeout();
    assert!(t.is_none_or(|t| t > Duration::from_secs(365 * 86_400)), "idle_timeout became {t:?}");
}
