//! The admin HTTP API (axum), on every node (DESIGN §5). Cluster-wide answers are read from the
//! backend (Redis in cluster mode), never by asking every node; commands go through the same
//! dispatcher as upstreams' commands.
//!
//! - `GET /healthz`, `GET /readyz` (no token needed), `GET /metrics` (Prometheus text)
//! - `GET /v1/nodes`
//! - `GET /v1/sockets`, `GET|DELETE /v1/sockets/{id}`, `POST /v1/sockets/{id}/messages`,
//!   `PATCH /v1/sockets/{id}/labels`, `POST /v1/broadcast`
//! - `GET|POST /v1/upstreams`, `DELETE /v1/upstreams/{id}`
//! - `GET|PATCH /v1/runtime`, `POST /v1/drain`
//! - `GET /v1/openapi.json`: generated from the handlers below (utoipa), so it lists exactly the
//!   routes served; `doc` adds the layers' answers and the links, `schema` holds the request
//!   schemas and the checks that hold the handlers to them.
//!
//! Every error is JSON `{ "error": "…" }`; bodies are limited to twice `--max-frame` (plus room
//! for JSON), headers to [`HEADER_TIMEOUT`], requests to [`REQUEST_TIMEOUT`], connections to
//! [`MAX_CONNECTIONS`], and at most [`MAX_CONCURRENT`] requests run at once.

mod auth;
mod doc;
pub mod error;
mod ops;
pub mod probe;
mod schema;
mod sockets;
mod upstreams;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, http::StatusCode, middleware};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Node;

/// Longest a request may take, body included; a slower one is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests served at once; more wait (and time out).
pub const MAX_CONCURRENT: usize = 256;
/// Most admin connections open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Room for JSON around a payload in a request body.
const BODY_SLACK: usize = 64 << 10;

/// What every handler gets. A cheap `Clone` handle.
#[derive(Clone)]
pub struct AppState {
    /// The node serving the API.
    node: Node,
    /// `--admin-token`.
    token: Option<Arc<str>>,
    /// The OpenAPI document, rendered once.
    openapi: Arc<str>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PersistentParadoxPlex admin API", description = "The operator's interface of a PersistentParadoxPlex node: cluster-wide sockets, commands, upstreams, runtime settings."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the protected routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes and its OpenAPI document, built from one list of handlers, so the document
/// lists exactly the routes served.
struct Routes {
    /// Routes behind the bearer token.
    protected: Router<AppState>,
    /// `/healthz` and `/readyz`.
    public: Router<AppState>,
    /// The document of both.
    api: utoipa::openapi::OpenApi,
}

impl Routes {
    fn new() -> Self {
        let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .routes(routes!(ops::metrics))
            .routes(routes!(ops::nodes))
            .routes(routes!(sockets::list))
            .routes(routes!(sockets::get, sockets::close))
            .routes(routes!(sockets::send))
            .routes(routes!(sockets::labels))
            .routes(routes!(sockets::broadcast))
            .routes(routes!(upstreams::list, upstreams::add))
            .routes(routes!(upstreams::remove))
            .routes(routes!(ops::runtime, ops::patch_runtime))
            .routes(routes!(ops::drain))
            .routes(routes!(ops::openapi));
        let public = OpenApiRouter::new().routes(routes!(ops::healthz)).routes(routes!(ops::readyz));
        let (protected, mut api) = protected.split_for_parts();
        let (public, public_api) = public.split_for_parts();
        api.merge(public_api);
        doc::add_layer_answers(&mut api);
        Self { protected, public, api }
    }
}

/// The admin API of `node`, ready to serve.
pub fn app(node: Node) -> Router {
    let Routes { protected, public, api } = Routes::new();
    let openapi: Arc<str> = doc::render(&api).into();
    let token = node.config().admin_token.as_deref().map(Arc::from);
    let body_limit = node.config().max_frame.saturating_mul(2).saturating_add(BODY_SLACK);
    let state = AppState { node, token, openapi };
    let protected = protected.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    protected
        .merge(public)
        .fallback(ops::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        // Outermost, so that the timeout's answer is JSON too.
        .layer(middleware::map_response(error::json_errors))
}

/// Serves the admin API of `node` on `listener` until `stop` is cancelled, then lets requests
/// in flight finish (up to [`REQUEST_TIMEOUT`]).
///
/// HTTP/1.1 through hyper directly rather than `axum::serve`, for what a server facing operators'
/// networks needs and `axum::serve` lacks: a header read timeout (a client that trickles its
/// headers is cut off after [`HEADER_TIMEOUT`]) and a cap on open connections.
pub async fn serve(node: Node, listener: TcpListener, stop: CancellationToken) {
    if node.config().admin_insecure && node.config().admin_token.is_none() {
        warn!("--admin-insecure: the admin API is served without a token");
    }
    info!(admin = ?listener.local_addr().ok(), "admin API listening");
    let app = app(node);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!("admin API: {MAX_CONNECTIONS} connections open; connection refused");
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    if tokio::time::timeout(REQUEST_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!("admin API: requests still running at shutdown were cut off");
    }
}
