//! A node with its admin API on a free port, and an HTTP client that asks it.

use std::sync::Arc;

use ppp::{Node, config::Config};
use tokio::net::TcpListener;

use super::wait::{DEADLINE, eventually};

/// A node serving its admin API on a free port, and an HTTP client for it.
pub struct AdminNode {
    pub node: Node,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// Sent as the bearer token when set.
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// An admin API answer: status and JSON body (`Null` when the body is not JSON).
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
    pub text: String,
}

impl AdminNode {
    /// Starts a node with its admin API (token from `config.admin_token`) and waits until its
    /// configured upstreams are usable (at least as many as configured: a `dns:///` one may be
    /// several).
    pub async fn start(config: Config) -> Self {
        let downstream = TcpListener::bind(config.listen).await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", admin.local_addr().unwrap());
        let token = config.admin_token.clone();
        let expected = config.upstream.len();
        let log = Arc::new(ppp::logging::LogFilter::detached("info"));
        let node = ppp::server::start(config, ppp::Listeners { downstream, admin: Some(admin) }, log).await.unwrap();
        let pool = node.upstreams().clone();
        eventually("upstreams usable", || pool.snapshot().iter().filter(|u| u.is_usable()).count() >= expected).await;
        Self { node, base, token, http: reqwest::Client::new() }
    }

    /// The same node, asked with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        let token = token.map(str::to_owned);
        Self { node: self.node.clone(), base: self.base.clone(), token, http: self.http.clone() }
    }

    /// A request to `path` (with the token, if any).
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base)).timeout(DEADLINE);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and reads the answer.
    pub async fn send(&self, r: reqwest::RequestBuilder) -> Answer {
        let response = r.send().await.expect("an HTTP answer");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, json, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// POST or PATCH with a JSON body.
    pub async fn json(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> Answer {
        self.send(self.req(method, path).json(&body)).await
    }

    /// The value of one series of `/metrics`, named as rendered (`ppp_x_total{reason="y"}`); 0
    /// when it is not there. The recorder is the process's: other tests of the binary count too.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    }

    /// Every socket id `GET /v1/sockets{query}` lists, following the cursor.
    pub async fn all_socket_ids(&self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if query.is_empty() { "?" } else { "&" };
            let path = match &cursor {
                Some(c) => format!("/v1/sockets{query}{sep}cursor={c}"),
                None => format!("/v1/sockets{query}"),
            };
            let page = self.get(&path).await;
            assert_eq!(page.status, 200, "{}", page.text);
            ids.extend(page.json["sockets"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()));
            match page.json["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return ids,
            }
        }
    }
}

impl Answer {
    /// Asserts the status and that an error answer is JSON `{ "error": "…" }`.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        if status >= 400 {
            assert!(self.json["error"].is_string(), "an error answer is JSON {{\"error\": …}}: {}", self.text);
        }
        &self.json
    }
}
