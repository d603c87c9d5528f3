//! Health, readiness, metrics, nodes, runtime settings, drain and the OpenAPI document.

use axum::{
    Json,
    extract::{OriginalUri, Query, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Type};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    schema,
};
use crate::{
    cluster::view::NodeRecord,
    settings::{RuntimePatch, RuntimeView},
};

/// `GET /healthz`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready for traffic: accepting sockets and, in cluster mode, in touch with Redis and subscribed
/// to the bus.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health", responses(
    (status = 200, body = Health, description = "Ready"),
    (status = 503, body = ErrorBody, description = "Draining, cut off from Redis, or not subscribed to the bus (yet)"),
))]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.node.is_ready() {
        return Ok(Json(Health { status: "ok" }));
    }
    let why = if state.node.is_draining() {
        "the node is draining"
    } else if !state.node.backend().is_reachable() {
        "Redis is not reachable"
    } else {
        "the node is not subscribed to the bus (yet): it would miss commands and broadcasts from other nodes"
    };
    Err(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: format!("not ready: {why}") })
}

/// Prometheus metrics of this node (text exposition format).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.node.refresh_gauges();
    let text = crate::metrics::install().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The cluster's nodes, with heartbeat age and socket counts.
#[utoipa::path(get, path = "/v1/nodes", operation_id = "list_nodes", tag = "cluster", security(("bearer" = [])), responses(
    (status = 200, body = Nodes),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn nodes(State(state): State<AppState>) -> Result<Json<Nodes>, ApiError> {
    Ok(Json(Nodes { nodes: state.node.backend().nodes().await? }))
}

/// `GET /v1/nodes`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Nodes {
    /// The nodes, by id.
    pub nodes: Vec<NodeRecord>,
}

/// This node's runtime settings.
#[utoipa::path(get, path = "/v1/runtime", operation_id = "get_runtime", tag = "runtime", security(("bearer" = [])),
    responses((status = 200, body = RuntimeView)))]
pub(super) async fn runtime(State(state): State<AppState>) -> Json<RuntimeView> {
    Json(state.node.settings().view())
}

/// `PATCH /v1/runtime`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterParam {
    /// Also apply the change on every other node (through `K:ch:control`).
    #[serde(default)]
    pub cluster: bool,
}

/// `PATCH /v1/runtime`'s body (its schema is in `schema.rs`): the fields of [`RuntimePatch`],
/// each held to the document's pattern or enum before the settings see it. A field may be absent
/// but not `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuntimeBody {
    /// A new log filter ([`schema::LOG_FILTER`]).
    #[serde(default, deserialize_with = "schema::present")]
    pub log_filter: Option<String>,
    /// A new `--idle-after` ([`schema::DURATION`]).
    #[serde(default, deserialize_with = "schema::present")]
    pub idle_after: Option<String>,
    /// A new `--idle-timeout` ([`schema::DURATION_OR_OFF`]).
    #[serde(default, deserialize_with = "schema::present")]
    pub idle_timeout: Option<String>,
    /// A new `--balance`: `round-robin` or `sticky`.
    #[serde(default, deserialize_with = "schema::present")]
    pub balance: Option<String>,
    /// A new `--max-connections` (at least 1).
    #[serde(default, deserialize_with = "schema::whole_number")]
    pub max_connections: Option<usize>,
}

impl RuntimeBody {
    /// The patch, once every field holds to the document.
    fn into_patch(self) -> Result<RuntimePatch, ApiError> {
        let checks = [
            (&self.log_filter, "log_filter", schema::LOG_FILTER, "a log filter like `info,ppp=debug`"),
            (&self.idle_after, "idle_after", schema::DURATION, "a duration like 500ms, 10s, 2m, 1h"),
            (&self.idle_timeout, "idle_timeout", schema::DURATION_OR_OFF, "a duration like 10m, or `off`"),
        ];
        for (value, field, pattern, what) in checks {
            if let Some(v) = value {
                schema::check(field, pattern, v, what)?;
            }
        }
        if let Some(b) = self.balance.as_deref().filter(|b| !matches!(*b, "round-robin" | "sticky")) {
            let shown: String = b.chars().take(64).collect();
            return Err(ApiError::bad_request(format!("balance `{shown}` is not `round-robin` or `sticky`")));
        }
        Ok(RuntimePatch {
            log_filter: self.log_filter,
            idle_after: self.idle_after,
            idle_timeout: self.idle_timeout,
            balance: self.balance,
            max_connections: self.max_connections,
        })
    }
}

/// Changes runtime settings on this node, or with `?cluster=true` on every node. Absent fields
/// stay; an invalid field changes nothing.
#[utoipa::path(patch, path = "/v1/runtime", operation_id = "patch_runtime", tag = "runtime", security(("bearer" = [])), params(ClusterParam),
    request_body = RuntimeBody, responses(
    (status = 200, body = RuntimeView, description = "This node's settings after the change"),
    (status = 400, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Applied here, but could not be handed to the cluster"),
))]
pub(super) async fn patch_runtime(
    State(state): State<AppState>,
    Query(q): Query<ClusterParam>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<RuntimeView>, ApiError> {
    let patch = schema::object::<RuntimeBody>(body)?.into_patch()?;
    Ok(Json(state.node.apply_runtime(&patch, q.cluster).await?))
}

/// `POST /v1/drain`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Draining {
    /// Always true.
    pub draining: bool,
}

/// Starts this node's graceful drain: it stops accepting, closes its sockets over
/// `--drain-timeout` with reason `shutdown`, leaves the cluster and exits.
#[utoipa::path(post, path = "/v1/drain", operation_id = "drain", tag = "runtime", security(("bearer" = [])),
    responses((status = 202, body = Draining)))]
pub(super) async fn drain(State(state): State<AppState>) -> (StatusCode, Json<Draining>) {
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
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "health", security(("bearer" = [])),
    responses((status = 200, content_type = "application/json", body = Object)))]
pub(super) async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.to_string()).into_response()
}

/// Any other path.
pub(super) async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

impl utoipa::PartialSchema for RuntimeBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        let max = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(usize::MAX))
            .description(Some("A new `--max-connections`; lowering it closes nothing"));
        schema::closed_object("Settings to change; absent fields stay")
            .property("log_filter", schema::matching(schema::LOG_FILTER, "A new log filter, e.g. `info,ppp=debug`"))
            .property("idle_after", schema::matching(schema::DURATION, "A new `--idle-after`"))
            .property("idle_timeout", schema::matching(schema::DURATION_OR_OFF, "A new `--idle-timeout`, or `off`"))
            .property("balance", schema::one_of(&["round-robin", "sticky"], "A new `--balance`"))
            .property("max_connections", max)
            .into()
    }
}

impl utoipa::ToSchema for RuntimeBody {}
