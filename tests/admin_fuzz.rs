//! A property run against the admin API's own OpenAPI document: random requests to every
//! documented operation (random path arguments, query strings, bodies, content types and
//! tokens) and to routes that do not exist. No answer may be a 5xx, every error must be JSON
//! `{ "error": "…" }`, and the node must serve on afterwards.

#[allow(dead_code)]
mod common;

use common::*;
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestRunner},
};
use reqwest::Method;
use serde_json::Value;

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    /// With `{id}` where a path argument goes.
    path: String,
    /// Its query parameters' names.
    query: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let query = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter().filter(|p| p["in"] == "query").map(|p| p["name"].as_str().unwrap().to_owned()).collect()
                })
                .unwrap_or_default();
            ops.push(Operation { method: method.to_uppercase().parse().unwrap(), path: path.clone(), query });
        }
    }
    // Draining is tested on its own: here it would end the run.
    ops.retain(|o| o.path != "/v1/drain");
    ops
}

/// Percent-encodes everything but letters and digits, so an argument stays one path segment.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,24}".prop_map(Value::String),
        prop::sample::select(vec!["all", "active", "sticky", "1ms", "off", "debug", "http://127.0.0.1:1", "-1"])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        let keys = prop::sample::select(vec![
            "payload",
            "payload_base64",
            "scope",
            "selector",
            "uri",
            "id",
            "log_filter",
            "idle_after",
            "idle_timeout",
            "balance",
            "max_connections",
            "user",
            "x",
            "",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Bytes(Vec<u8>),
    Json(Value),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::None),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Body::Bytes),
        json_value().prop_map(Body::Json),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    /// An index into the operations; past the end means a random route.
    op: usize,
    arg: String,
    query: Vec<(String, String)>,
    raw_query: Option<String>,
    body: Body,
    /// 0: the right token (two times in three); 1: none; 2: a wrong one.
    auth: u8,
    content_type: Option<&'static str>,
    random_method: Method,
    random_path: String,
}

fn request(ops: usize, socket: String, names: Vec<String>) -> impl Strategy<Value = Request> {
    let arg = prop_oneof![
        Just(socket),
        Just("00000000-0000-7000-8000-000000000000".to_owned()),
        "[0-9a-f-]{0,40}",
        "\\PC{0,30}",
    ];
    let names = prop::sample::select(names);
    let values = prop_oneof![
        "\\PC{0,20}",
        Just("true".to_owned()),
        Just("active".to_owned()),
        Just("a=b".to_owned()),
        "[0-9]{1,4}"
    ];
    let query = prop::collection::vec((names, values), 0..4);
    let raw_query = prop::option::weighted(0.1, "[%&=?a-z0-9]{0,20}");
    let content_type = prop::sample::select(vec![
        None,
        Some("application/json"),
        Some("application/octet-stream"),
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
    ]);
    let method = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]);
    (0..ops + ops / 8 + 1, arg, query, raw_query, body(), 0u8..6, content_type, method, "(/[a-z0-9{}.%]{0,8}){0,4}")
        .prop_map(|(op, arg, query, raw_query, body, auth, content_type, random_method, random_path)| Request {
            op,
            arg,
            query,
            raw_query,
            body,
            auth: if auth == 1 || auth == 2 { auth } else { 0 },
            content_type,
            random_method,
            random_path,
        })
}

#[test]
fn random_requests_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, admin, mut client, socket) = rt.block_on(async {
        let up = TestUpstream::start(true).await;
        let config = ppp::config::Config { admin_token: Some("fuzz-token".into()), ..test_config(&[&up]) };
        let admin = AdminNode::start(config).await;
        let client = Client::connect(&admin.node).await;
        let socket = up.wait_opened(1).await[0].clone();
        (up, admin, client, socket)
    });
    let doc = rt.block_on(admin.get("/v1/openapi.json")).json;
    let ops = operations(&doc);
    assert!(ops.len() >= 15, "the document lists the routes");
    let cases = std::env::var("PPP_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(600);
    let mut runner = TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() });
    // Query parameter names: every one the document lists, and one it does not.
    let mut names: Vec<String> = ops.iter().flat_map(|o| o.query.clone()).collect();
    names.sort();
    names.dedup();
    assert!(names.contains(&"cursor".to_owned()), "the document lists the query parameters: {names:?}");
    names.push("zz".to_owned());
    let result = runner.run(&request(ops.len(), socket.clone(), names), |r| {
        let (method, path) = match ops.get(r.op) {
            Some(op) => (op.method.clone(), op.path.replace("{id}", &encode(&r.arg))),
            None => (r.random_method.clone(), r.random_path.clone()),
        };
        let mut url = format!("{}{}", admin.base, if path.is_empty() { "/" } else { &path });
        let query_string = match &r.raw_query {
            Some(raw) => raw.clone(),
            None => serde_urlencoded::to_string(&r.query).unwrap(),
        };
        if !query_string.is_empty() {
            url = format!("{url}?{query_string}");
        }
        let mut req = admin.http.request(method.clone(), &url).timeout(DEADLINE);
        req = match r.auth {
            0 => req.bearer_auth("fuzz-token"),
            1 => req,
            _ => req.bearer_auth("wrong"),
        };
        if let Some(ct) = r.content_type {
            req = req.header("content-type", ct);
        }
        req = match &r.body {
            Body::None => req,
            Body::Bytes(b) => req.body(b.clone()),
            Body::Json(v) => req.body(serde_json::to_vec(v).unwrap()),
        };
        let (status, text) = rt.block_on(async {
            let response = req.send().await.expect("an HTTP answer (the node did not drop the connection)");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        });
        prop_assert!(status < 500, "{method} {url} {:?} -> {status}: {text}", r.body);
        if status >= 400 && method != Method::HEAD {
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            prop_assert!(json["error"].is_string(), "{method} {url} -> {status}, not a JSON error: {text}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The node serves on: settings back to sane values, and a socket echoes.
    rt.block_on(async {
        let sane = serde_json::json!({"max_connections": 100, "idle_timeout": "off", "balance": "round-robin"});
        admin.json(Method::PATCH, "/v1/runtime", sane).await.expect(200);
        admin.get("/healthz").await.expect(200);
        admin.get("/readyz").await.expect(200);
        let mut fresh = Client::connect(&admin.node).await;
        fresh.write(b"still here\n").await;
        assert_eq!(fresh.line().await, "still here");
        let _ = &mut client;
        drop(up);
    });
}
