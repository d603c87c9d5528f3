//! Health, readiness, metrics, nodes, runtime settings, drain and the OpenAPI document.

use axum::{
    Json,
    extract::{OriginalUri, Query, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
};
use crate::{
    cluster::view::NodeRecord,
    settings::{RuntimePatch, RuntimeView},
};

/// `GET /healthz`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready for traffic: accepting sockets and, in cluster mode, in touch with Redis.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Health, description = "Ready"),
    (status = 503, body = ErrorBody, description = "Draining, or cut off from Redis"),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.node.is_ready() {
        return Ok(Json(Health { status: "ok" }));
    }
    let why = if state.node.is_draining() { "the node is draining" } else { "Redis is not reachable" };
    Err(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: format!("not ready: {why}") })
}

/// Prometheus metrics of this node (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.node.refresh_gauges();
    let text = crate::metrics::install().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /v1/nodes`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Nodes {
    /// The nodes, by id.
    pub nodes: Vec<NodeRecord>,
}

/// The cluster's nodes, with heartbeat age and socket counts.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", security(("bearer" = [])), responses(
    (status = 200, body = Nodes),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub async fn nodes(State(state): State<AppState>) -> Result<Json<Nodes>, ApiError> {
    Ok(Json(Nodes { nodes: state.node.backend().nodes().await? }))
}

/// This node's runtime settings.
#[utoipa::path(get, path = "/v1/runtime", tag = "runtime", security(("bearer" = [])),
    responses((status = 200, body = RuntimeView)))]
pub async fn runtime(State(state): State<AppState>) -> Json<RuntimeView> {
    Json(state.node.settings().view())
}

/// `PATCH /v1/runtime`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ClusterParam {
    /// Also apply the change on every other node (through `K:ch:control`).
    #[serde(default)]
    pub cluster: bool,
}

/// Changes runtime settings on this node, or with `?cluster=true` on every node. Absent fields
/// stay; an invalid field changes nothing.
#[utoipa::path(patch, path = "/v1/runtime", tag = "runtime", security(("bearer" = [])), params(ClusterParam),
    request_body = RuntimePatch, responses(
    (status = 200, body = RuntimeView, description = "This node's settings after the change"),
    (status = 400, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Applied here, but could not be handed to the cluster"),
))]
pub async fn patch_runtime(
    State(state): State<AppState>,
    Query(q): Query<ClusterParam>,
    Json(patch): Json<RuntimePatch>,
) -> Result<Json<RuntimeView>, ApiError> {
    Ok(Json(state.node.apply_runtime(&patch, q.cluster).await?))
}

/// `POST /v1/drain`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Draining {
    /// Always true.
    pub draining: bool,
}

/// Starts this node's graceful drain: it stops accepting, closes its sockets over
/// `--drain-timeout` with reason `shutdown`, leaves the cluster and exits.
#[utoipa::path(post, path = "/v1/drain", tag = "runtime", security(("bearer" = [])),
    responses((status = 202, body = Draining)))]
pub async fn drain(State(state): State<AppState>) -> (StatusCode, Json<Draining>) {
    if !state.node.is_draining() {
        tracing::info!("drain requested through the admin API");
        let node = state.node.clone();
        tokio::spawn(async move { node.shutdown().await });
        // Returns once the drain has begun, so /readyz answers 503 from now on.
        state.node.drain_started().await;
    }
    (StatusCode::ACCEPTED, Json(Draining { draining: true }))
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", security(("bearer" = [])),
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.to_string()).into_response()
}

/// Any other path.
pub async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}
