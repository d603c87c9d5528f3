//! Upstreams found through DNS (`dns:///name:port`): every address of the name is one upstream;
//! when the answer changes, an address that left is drained as a removed upstream (its stream
//! ends, nothing is replayed) and one that joined starts receiving. The name is served by a DNS
//! server of the test ([`TestDns`]); the upstreams listen on several loopback addresses
//! (`127.0.0.2`, `127.0.0.3`, …) on one port, as a headless Service's pods do on theirs.

#[allow(dead_code)]
mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::{dns::*, process::free_port, *};
use ppp::{config::Config, proto::NodeEvent};

/// A port free on each of these loopback addresses.
fn port_free_on(ips: &[Ipv4Addr]) -> u16 {
    loop {
        let port = free_port();
        if ips.iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}

/// Echoing upstreams on each address, on one port.
async fn upstreams_on(ips: &[Ipv4Addr], port: u16) -> Vec<TestUpstream> {
    let mut ups = Vec::new();
    for ip in ips {
        let options = UpstreamOptions { echo: true, ..UpstreamOptions::default() };
        ups.push(TestUpstream::start_at((*ip, port).into(), options).await);
    }
    ups
}

/// A node config with quick re-resolution.
fn dns_config(uris: &[String]) -> Config {
    Config { upstream: uris.to_vec(), dns_interval: Duration::from_millis(50), ..test_config(&[]) }
}

/// The usable pool upstreams' ids.
fn usable(admin: &AdminNode) -> Vec<String> {
    admin.node.upstreams().snapshot().iter().filter(|u| u.is_usable()).map(|u| u.id.clone()).collect()
}

/// Sends `n` numbered lines and reads them all back.
async fn round_trip(c: &mut Client, from: usize, n: usize) {
    let text: String = (from..from + n).map(|i| format!("m{i}\n")).collect();
    c.write(text.as_bytes()).await;
    for _ in 0..n {
        c.line().await;
    }
}

fn redelivered(events: &[NodeEvent]) -> usize {
    events.iter().filter(|e| e.redelivered).count()
}

#[tokio::test]
async fn every_address_of_the_name_is_an_upstream_and_follows_the_answer() {
    let dns = TestDns::shared();
    let ips: Vec<Ipv4Addr> = (2..=4).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let port = port_free_on(&ips);
    let ups = upstreams_on(&ips, port).await;
    let name = "pods.follow.ppp.test";
    dns.set(name, DnsAnswer::Addresses(ips[..2].to_vec()));
    let uri = format!("dns:///{name}:{port}");
    let entry = format!("{name}:{port}");
    let member = |i: usize| format!("{entry}@{}:{port}", ips[i]);
    let admin = AdminNode::start(dns_config(std::slice::from_ref(&uri))).await;
    eventually("both addresses usable", || usable(&admin).len() == 2).await;

    // The registry holds the entry as written; this node shows its two addresses.
    let list = admin.get("/v1/upstreams").await;
    let listed = &list.expect(200)["upstreams"];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!((listed[0]["id"].as_str(), listed[0]["uri"].as_str()), (Some(entry.as_str()), Some(uri.as_str())));
    let resolved: Vec<&str> =
        listed[0]["resolved"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(resolved, [member(0), member(1)]);

    let mut c = Client::connect(&admin.node).await;
    round_trip(&mut c, 0, 20).await;
    assert!(!ups[0].data().is_empty() && !ups[1].data().is_empty(), "round-robin reaches both addresses");

    // The first address leaves the answer: its stream ends, every message goes to the other.
    dns.set(name, DnsAnswer::Addresses(vec![ips[1]]));
    eventually("the address that left is removed", || admin.node.upstreams().get(&member(0)).is_none()).await;
    eventually("its stream ended", || ups[0].open_streams() == 0).await;
    let (before_a, before_b) = (ups[0].data().len(), ups[1].data().len());
    round_trip(&mut c, 20, 20).await;
    assert_eq!(ups[0].data().len(), before_a);
    assert_eq!(ups[1].data().len(), before_b + 20);
    assert_eq!(redelivered(&ups[1].events()), 0, "a drained address's events are not replayed");

    // A new address joins and receives.
    dns.set(name, DnsAnswer::Addresses(vec![ips[1], ips[2]]));
    eventually("the new address is usable", || usable(&admin).contains(&member(2))).await;
    round_trip(&mut c, 40, 20).await;
    assert!(!ups[2].data().is_empty(), "the address that joined receives messages");
}

#[tokio::test]
async fn a_failed_resolution_keeps_the_addresses_and_an_empty_answer_removes_them() {
    let dns = TestDns::shared();
    let ip = Ipv4Addr::new(127, 0, 0, 5);
    let port = port_free_on(&[ip]);
    let _ups = upstreams_on(&[ip], port).await;
    let name = "pods.fail.ppp.test";
    dns.set(name, DnsAnswer::Addresses(vec![ip]));
    let admin = AdminNode::start(dns_config(&[])).await;
    let uri = format!("dns:///{name}:{port}");
    let added =
        admin.json(reqwest::Method::POST, "/v1/upstreams", serde_json::json!({ "id": "pods", "uri": uri })).await;
    added.expect(201);
    eventually("the address usable", || usable(&admin) == [format!("pods@{ip}:{port}")]).await;

    dns.set(name, DnsAnswer::Fail);
    eventually_async("the entry shows the resolution error", || async {
        let list = admin.get("/v1/upstreams").await;
        list.expect(200)["upstreams"][0]["last_error"].as_str().is_some_and(|e| e.contains(name))
    })
    .await;
    assert_eq!(usable(&admin).len(), 1, "the last known address is kept");

    dns.set(name, DnsAnswer::Addresses(Vec::new()));
    eventually("an empty answer removes the address", || admin.node.upstreams().snapshot().is_empty()).await;

    // Back, then the entry is removed from the registry: its addresses go with it.
    dns.set(name, DnsAnswer::Addresses(vec![ip]));
    eventually("the address is back", || usable(&admin).len() == 1).await;
    admin.delete("/v1/upstreams/pods").await.expect(204);
    eventually("the removed entry's address is gone", || admin.node.upstreams().snapshot().is_empty()).await;
}
