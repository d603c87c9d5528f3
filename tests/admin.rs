//! The admin HTTP API of a standalone node, over real HTTP: every route, every error status,
//! access control, and the OpenAPI document against the routes served.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;
use serde_json::json;

/// Every route of DESIGN §5, as `METHOD path`.
const ROUTES: [&str; 17] = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/nodes",
    "GET /v1/sockets",
    "GET /v1/sockets/{id}",
    "DELETE /v1/sockets/{id}",
    "POST /v1/sockets/{id}/messages",
    "PATCH /v1/sockets/{id}/labels",
    "POST /v1/broadcast",
    "GET /v1/upstreams",
    "POST /v1/upstreams",
    "DELETE /v1/upstreams/{id}",
    "POST /v1/drain",
    "GET /v1/runtime",
    "PATCH /v1/runtime",
    "GET /v1/openapi.json",
];

fn design_routes() -> BTreeSet<String> {
    ROUTES.iter().map(|r| r.to_string()).collect()
}

/// The routes the OpenAPI document lists, as `METHOD path`.
fn documented(doc: &serde_json::Value) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes
}

async fn standalone(echo: bool) -> (TestUpstream, AdminNode) {
    let up = TestUpstream::start(echo).await;
    let admin = AdminNode::start(test_config(&[&up])).await;
    (up, admin)
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let (_up, admin) = standalone(true).await;
    let doc = admin.get("/v1/openapi.json").await;
    let doc = doc.expect(200);
    assert_eq!(documented(doc), design_routes());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Operation ids are unique, and every link names one of them.
    let ops: Vec<&serde_json::Value> =
        doc["paths"].as_object().unwrap().values().flat_map(|item| item.as_object().unwrap().values()).collect();
    let ids: BTreeSet<&str> = ops.iter().map(|op| op["operationId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), ROUTES.len(), "unique operation ids: {ids:?}");
    let links: Vec<&str> = ops
        .iter()
        .flat_map(|op| op["responses"].as_object().unwrap().values())
        .flat_map(|r| r["links"].as_object().into_iter().flat_map(|l| l.values()))
        .map(|l| l["operationId"].as_str().unwrap())
        .collect();
    assert!(links.len() >= 8 && links.iter().all(|l| ids.contains(l)), "links: {links:?}");
    // Every protected route documents the token check's 401, every route the timeout's 408.
    for op in &ops {
        assert!(op["responses"]["408"].is_object(), "{}", op["operationId"]);
        let protected = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(op["responses"]["401"].is_object(), protected, "{}", op["operationId"]);
    }
    // Every documented route is served (no 404 "no route", no 405), and nothing else is.
    for route in design_routes().iter().filter(|r| !r.contains("drain")) {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "00000000-0000-7000-8000-000000000000");
        let answer = admin.send(admin.req(method.parse().unwrap(), &path)).await;
        assert!(answer.status != 405 && !answer.text.contains("no route"), "{route}: {}", answer.text);
    }
    admin.get("/v1/nope").await.expect(404);
    admin.send(admin.req(Method::PUT, "/v1/runtime")).await.expect(405);
    admin.send(admin.req(Method::GET, "/v1/broadcast")).await.expect(405);
}

#[tokio::test]
async fn health_readiness_nodes_and_metrics() {
    let (up, admin) = standalone(true).await;
    assert_eq!(admin.get("/healthz").await.expect(200)["status"], "ok");
    assert_eq!(admin.get("/readyz").await.expect(200)["status"], "ok");
    let mut c = Client::connect(&admin.node).await;
    c.write(b"hi\n").await;
    assert_eq!(c.line().await, "hi");

    let nodes = admin.get("/v1/nodes").await;
    let nodes = nodes.expect(200)["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["id"], "test-node");
    assert_eq!(nodes[0]["sockets"], 1);
    assert_eq!(nodes[0]["listen"], admin.node.local_addr().to_string());
    assert_eq!(nodes[0]["admin"], admin.base.trim_start_matches("http://"));

    let metrics = admin.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text;
    for needle in [
        "ppp_sockets_open{state=\"active\"} 1".to_owned(),
        "ppp_sockets_open{state=\"inactive\"} 0".to_owned(),
        format!("ppp_upstream_ready{{upstream=\"{}\"}} 1", up.id()),
        format!("ppp_upstream_messages_total{{upstream=\"{}\"}}", up.id()),
        format!("ppp_upstream_queue_depth{{upstream=\"{}\"}}", up.id()),
        format!("ppp_upstream_latency_seconds_bucket{{upstream=\"{}\"", up.id()),
        "ppp_messages_in_total".to_owned(),
        "ppp_bytes_out_total".to_owned(),
        "ppp_sockets_opened_total".to_owned(),
        "ppp_commands_total{command=\"send\",status=\"ok\"}".to_owned(),
        "ppp_backend_queue_depth 0".to_owned(),
    ] {
        assert!(text.contains(&needle), "/metrics lacks {needle}:\n{text}");
    }
}

#[tokio::test]
async fn sockets_are_listed_in_pages_with_filters() {
    let (up, admin) = standalone(true).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(&admin.node).await;
        c.write(format!("m{i}\n").as_bytes()).await;
        assert_eq!(c.line().await, format!("m{i}"));
        clients.push(c);
    }
    let mut opened = up.wait_opened(5).await;
    opened.sort();

    // Pages of 2 in id (= connect) order, each socket once.
    let first = admin.get("/v1/sockets?limit=2").await;
    let first = first.expect(200);
    assert_eq!(first["sockets"].as_array().unwrap().len(), 2);
    let s = &first["sockets"][0];
    assert_eq!(s["node"], "test-node");
    assert_eq!(s["state"], "active");
    assert_eq!(s["messages_in"], 1);
    assert_eq!(s["messages_out"], 1);
    assert_eq!(s["local_addr"], admin.node.local_addr().to_string());
    assert!(s["connected_at"].as_i64().unwrap() > 0 && s["last_seen"].as_i64() >= s["connected_at"].as_i64());
    assert_eq!(admin.all_socket_ids("?limit=2").await, opened);
    assert_eq!(admin.all_socket_ids("").await, opened);

    // Filters: label, node, state.
    let who = &opened[3];
    admin.json(Method::PATCH, &format!("/v1/sockets/{who}/labels"), json!({"user": "ada"})).await.expect(202);
    assert_eq!(admin.all_socket_ids("?label=user=ada").await, vec![who.clone()]);
    assert_eq!(admin.all_socket_ids("?label=user=ada&label=room=1").await, Vec::<String>::new());
    assert_eq!(admin.all_socket_ids("?node=test-node&limit=1").await, opened);
    assert!(admin.all_socket_ids("?node=elsewhere").await.is_empty());
    assert_eq!(admin.all_socket_ids("?state=active").await, opened);
    admin.json(Method::PATCH, "/v1/runtime", json!({"idle_after": "1ms"})).await.expect(200);
    eventually_async("all inactive", || async { admin.all_socket_ids("?state=inactive").await.len() == 5 }).await;
    assert!(admin.all_socket_ids("?state=active").await.is_empty());

    // Bad queries are 400s that say why.
    for bad in ["limit=0", "limit=1001", "limit=x", "state=idle", "cursor=nope", "label=nokv", "label==v", "foo=1"] {
        let answer = admin.get(&format!("/v1/sockets?{bad}")).await;
        answer.expect(400);
    }
    drop(clients);
}

#[tokio::test]
async fn one_socket_read_written_labelled_and_closed() {
    let up = TestUpstream::start(false).await;
    let config = ppp::config::Config { max_frame: 1024, ..test_config(&[&up]) };
    let admin = AdminNode::start(config).await;
    let mut c = Client::connect(&admin.node).await;
    let id = up.wait_opened(1).await[0].clone();
    let path = format!("/v1/sockets/{id}");
    let unknown = "/v1/sockets/0190b3a1-0000-7000-8000-000000000000";

    let s = admin.get(&path).await;
    let s = s.expect(200);
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["remote_addr"], c.writer.local_addr().unwrap().to_string());
    admin.get(unknown).await.expect(404);
    admin.get("/v1/sockets/not-a-uuid").await.expect(400);

    // Messages: the body is the payload.
    let sent = admin.send(admin.req(Method::POST, &format!("{path}/messages")).body("hello")).await;
    sent.expect(202);
    assert_eq!(c.line().await, "hello");
    admin.send(admin.req(Method::POST, &format!("{unknown}/messages")).body("x")).await.expect(404);
    admin.send(admin.req(Method::POST, &format!("{path}/messages")).body(vec![b'x'; 1025])).await.expect(413);
    admin.send(admin.req(Method::POST, "/v1/sockets/nope/messages").body("x")).await.expect(400);

    // Labels: merge, replace, limits.
    admin.json(Method::PATCH, &format!("{path}/labels"), json!({"user": "ada", "room": "1"})).await.expect(202);
    admin.json(Method::PATCH, &format!("{path}/labels"), json!({"room": ""})).await.expect(202);
    assert_eq!(admin.get(&path).await.json["labels"], json!({"user": "ada"}));
    admin.json(Method::PATCH, &format!("{path}/labels?replace=true"), json!({"kind": "x"})).await.expect(202);
    assert_eq!(admin.get(&path).await.json["labels"], json!({"kind": "x"}));
    let long = "v".repeat(2000);
    admin.json(Method::PATCH, &format!("{path}/labels"), json!({"k": long})).await.expect(400);
    admin.json(Method::PATCH, &format!("{path}/labels"), json!({"": "v"})).await.expect(400);
    admin.json(Method::PATCH, &format!("{path}/labels"), json!(["not", "a", "map"])).await.expect(422);
    admin.send(admin.req(Method::PATCH, &format!("{path}/labels")).body("{")).await.expect(415);
    let too_many: serde_json::Map<_, _> = (0..40).map(|i| (format!("a{i}"), json!("v"))).collect();
    admin.json(Method::PATCH, &format!("{path}/labels"), json!(too_many)).await.expect(202);
    let more: serde_json::Map<_, _> = (0..40).map(|i| (format!("b{i}"), json!("v"))).collect();
    // Each batch is valid alone; merged they are over the limit: the socket refuses (409).
    admin.json(Method::PATCH, &format!("{path}/labels"), json!(more)).await.expect(409);
    admin.json(Method::PATCH, &format!("{unknown}/labels"), json!({"a": "b"})).await.expect(404);

    // Close: the client sees EOF, the upstream the reason `admin`. From the 202 on, the socket is
    // gone for the API, although it may still be writing what was queued.
    admin.delete(&path).await.expect(202);
    admin.json(Method::PATCH, &format!("{path}/labels"), json!({"a": "b"})).await.expect(404);
    admin.send(admin.req(Method::POST, &format!("{path}/messages")).body("x")).await.expect(404);
    admin.get(&path).await.expect(404);
    c.closed().await;
    up.wait_for("closed admin", |_| up.closed().contains(&(id.clone(), "admin".to_owned()))).await;
    eventually_async("gone", || async { admin.get(&path).await.status == 404 }).await;
    admin.delete(&path).await.expect(404);
    admin.delete("/v1/sockets/nope").await.expect(400);
}

#[tokio::test]
async fn broadcast_reaches_the_matching_sockets() {
    let (up, admin) = standalone(false).await;
    let mut a = Client::connect(&admin.node).await;
    let mut b = Client::connect(&admin.node).await;
    let ids = up.wait_opened(2).await;
    admin.json(Method::PATCH, &format!("/v1/sockets/{}/labels", ids[1]), json!({"room": "7"})).await.expect(202);
    admin.json(Method::POST, "/v1/broadcast", json!({"payload": "all"})).await.expect(202);
    assert_eq!(a.line().await, "all");
    assert_eq!(b.line().await, "all");
    let body = json!({"scope": "all", "selector": {"room": "7"}, "payload_base64": "cm9vbQ=="});
    admin.json(Method::POST, "/v1/broadcast", body).await.expect(202);
    let mine = if ids[1] == up.opened()[1] { &mut b } else { &mut a };
    assert_eq!(mine.line().await, "room");
    admin.json(Method::POST, "/v1/broadcast", json!({"scope": "inactive", "payload": "none"})).await.expect(202);
    admin.json(Method::POST, "/v1/broadcast", json!({"scope": "active", "payload": "act"})).await.expect(202);
    assert_eq!(a.line().await, "act");
    assert_eq!(b.line().await, "act");

    for bad in [
        json!({"payload": "x", "payload_base64": "eA=="}),
        json!({}),
        json!({"scope": "some", "payload": "x"}),
        json!({"payload_base64": "%%%"}),
    ] {
        admin.json(Method::POST, "/v1/broadcast", bad).await.expect(400);
    }
    admin.json(Method::POST, "/v1/broadcast", json!({"payload": "x", "extra": 1})).await.expect(422);
}

#[tokio::test]
async fn upstreams_are_listed_added_and_removed() {
    let (up, admin) = standalone(true).await;
    let list = admin.get("/v1/upstreams").await;
    let first = &list.expect(200)["upstreams"][0];
    assert_eq!(
        (first["id"].as_str(), first["ready"].as_bool(), first["open"].as_bool()),
        (Some(&*up.id()), Some(true), Some(true))
    );

    let second = TestUpstream::start(true).await;
    let added = admin.json(Method::POST, "/v1/upstreams", json!({"id": "second", "uri": second.uri()})).await;
    assert_eq!(added.expect(201)["id"], "second");
    eventually_async("second ready", || async {
        let list = admin.get("/v1/upstreams").await.json;
        list["upstreams"].as_array().unwrap().iter().any(|u| u["id"] == "second" && u["ready"] == true)
    })
    .await;
    admin.delete("/v1/upstreams/second").await.expect(204);
    admin.delete("/v1/upstreams/second").await.expect(404);
    assert_eq!(admin.get("/v1/upstreams").await.json["upstreams"].as_array().unwrap().len(), 1);

    admin.json(Method::POST, "/v1/upstreams", json!({"uri": "ftp://x"})).await.expect(400);
    admin.json(Method::POST, "/v1/upstreams", json!({"id": "a b", "uri": second.uri()})).await.expect(400);
    admin.json(Method::POST, "/v1/upstreams", json!({"id": ""})).await.expect(422);
}

#[tokio::test]
async fn runtime_settings_apply_live_and_refuse_bad_values_whole() {
    let (up, admin) = standalone(true).await;
    let before = admin.get("/v1/runtime").await.expect(200).clone();
    assert_eq!(before["balance"], "round-robin");
    assert_eq!(before["idle_timeout"], "off");

    // One bad field: nothing changes.
    let bad = json!({"max_connections": 5, "idle_after": "soon"});
    admin.json(Method::PATCH, "/v1/runtime", bad).await.expect(400);
    admin.json(Method::PATCH, "/v1/runtime", json!({"log_filter": "=[nope"})).await.expect(400);
    admin.json(Method::PATCH, "/v1/runtime", json!({"max_connections": 0})).await.expect(400);
    admin.json(Method::PATCH, "/v1/runtime", json!({"balance": "random"})).await.expect(400);
    admin.json(Method::PATCH, "/v1/runtime", json!({"idle_timeout": "0s"})).await.expect(400);
    assert_eq!(admin.get("/v1/runtime").await.json, before);

    let patch =
        json!({"balance": "sticky", "log_filter": "info,ppp=debug", "idle_timeout": "10m", "max_connections": 1});
    let after = admin.json(Method::PATCH, "/v1/runtime", patch).await;
    let after = after.expect(200);
    assert_eq!(after["balance"], "sticky");
    assert_eq!(after["log_filter"], "info,ppp=debug");
    assert_eq!(after["idle_timeout"], "10m");
    assert_eq!(admin.node.settings().balance(), ppp::config::Balance::Sticky);

    // max_connections applies at once: a second socket is refused, the first keeps working.
    let mut first = Client::connect(&admin.node).await;
    up.wait_opened(1).await;
    let mut second = Client::connect(&admin.node).await;
    second.closed().await;
    first.write(b"still\n").await;
    assert_eq!(first.line().await, "still");
    admin.json(Method::PATCH, "/v1/runtime", json!({"max_connections": 10})).await.expect(200);
    let mut third = Client::connect(&admin.node).await;
    third.write(b"in\n").await;
    assert_eq!(third.line().await, "in");

    // idle_timeout applies live too.
    admin.json(Method::PATCH, "/v1/runtime", json!({"idle_timeout": "200ms"})).await.expect(200);
    first.closed().await;
    up.wait_for("idle close", |_| up.closed().iter().any(|(_, reason)| reason == "idle")).await;
}

#[tokio::test]
async fn drain_from_the_api_closes_sockets_and_turns_readiness_off() {
    let up = TestUpstream::start(false).await;
    // Room for the 16 MiB queued below (the default --write-queue-bytes is 4 MiB).
    let admin = AdminNode::start(ppp::config::Config { write_queue_bytes: 32 << 20, ..test_config(&[&up]) }).await;
    let mut c = Client::connect(&admin.node).await;
    let id = up.wait_opened(1).await[0].clone();
    // A client that does not read yet, with more queued for it than the kernel buffers hold:
    // the drain flushes it before closing, so the drain lasts until the client reads.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        let path = format!("/v1/sockets/{id}/messages");
        admin.send(admin.req(Method::POST, &path).body(chunk.clone())).await.expect(202);
    }
    assert_eq!(admin.json(Method::POST, "/v1/drain", json!({})).await.expect(202)["draining"], true);
    admin.get("/readyz").await.expect(503);
    admin.json(Method::POST, "/v1/drain", json!({})).await.expect(202);
    let rest = c.closed().await;
    assert_eq!(rest.len(), 16 * ((1 << 20) + 1), "everything queued is written before the close");
    up.wait_for("closed shutdown", |_| up.closed().contains(&(id.clone(), "shutdown".to_owned()))).await;
    tokio::time::timeout(DEADLINE, admin.node.shutdown()).await.expect("the drain ends");
}

#[tokio::test]
async fn with_a_token_everything_but_health_needs_it() {
    let up = TestUpstream::start(true).await;
    let config = ppp::config::Config { admin_token: Some("s3cret".into()), ..test_config(&[&up]) };
    let admin = AdminNode::start(config).await;
    let doc = admin.get("/v1/openapi.json").await.expect(200).clone();
    let anonymous = admin.with_token(None);
    let wrong = admin.with_token(Some("s3cres"));
    let short = admin.with_token(Some("s"));
    for route in documented(&doc) {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "00000000-0000-7000-8000-000000000000");
        let method: Method = method.parse().unwrap();
        if path == "/healthz" || path == "/readyz" {
            anonymous.send(anonymous.req(method, &path)).await.expect(200);
            continue;
        }
        for who in [&anonymous, &wrong, &short] {
            let answer = who.send(who.req(method.clone(), &path)).await;
            answer.expect(401);
        }
        let raw = anonymous
            .http
            .request(method.clone(), format!("{}{path}", admin.base))
            .header("authorization", "Basic czNjcmV0");
        anonymous.send(raw).await.expect(401);
        if path != "/v1/drain" {
            let answer = admin.send(admin.req(method, &path)).await;
            assert_ne!(answer.status, 401, "{route} refused the right token");
        }
    }
}

#[tokio::test]
async fn the_node_refuses_a_public_admin_listener_without_a_token() {
    let config = ppp::config::Config { admin_listen: "0.0.0.0:0".parse().unwrap(), ..test_config(&[]) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = ppp::Node::start(config.clone(), listener).await.err().expect("refused").to_string();
    assert!(error.contains("--admin-token"), "{error}");
    let insecure = ppp::config::Config { admin_insecure: true, ..config };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ppp::Node::start(insecure, listener).await.expect("--admin-insecure accepts the risk");
}

#[tokio::test]
async fn slow_clients_and_large_bodies_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, admin) = standalone(true).await;
    let addr = admin.base.trim_start_matches("http://").to_owned();

    // A body that never finishes: 408 after the request timeout, as JSON.
    let slow_body = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head =
            "POST /v1/broadcast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut answer)).await.expect("an answer in time").unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    // Headers that never finish: the connection is closed after the header timeout.
    let slow_headers = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await.expect("closed in time").ok();
    };
    let (answer, ()) = tokio::join!(slow_body, slow_headers);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");

    // Over the body limit (2 × --max-frame + 64 KiB), and over --max-frame.
    let huge = "x".repeat(3 << 20);
    admin.json(Method::POST, "/v1/broadcast", json!({ "payload": huge })).await.expect(413);
    let large = "x".repeat((1 << 20) + 1);
    admin.json(Method::POST, "/v1/broadcast", json!({ "payload": large })).await.expect(413);
    admin.get("/healthz").await.expect(200);
}

#[tokio::test]
async fn a_json_array_is_not_a_body_object() {
    // serde builds a struct from an array of its fields in order; the document says object.
    let (_up, admin) = standalone(false).await;
    admin.json(Method::PATCH, "/v1/runtime", json!([])).await.expect(422);
    admin.json(Method::POST, "/v1/broadcast", json!([])).await.expect(422);
    admin.json(Method::POST, "/v1/upstreams", json!(["a", "http://127.0.0.1:1"])).await.expect(422);
    admin.json(Method::PATCH, "/v1/runtime", json!({})).await.expect(200);
}
