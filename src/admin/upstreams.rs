//! The shared upstream registry: list (with this node's view of each), add, remove.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    schema,
};
use crate::{Node, cluster::UpstreamEntry, upstream::pool::Upstream};

/// What this node sees of an upstream: of one of its pool, or of a registry entry as a whole.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(super) struct UpstreamState {
    /// Health says SERVING (as this node sees it); for a `dns:///` entry, for at least one of its
    /// addresses.
    pub ready: bool,
    /// This node's stream to it is open (a `dns:///` entry: to at least one address).
    pub open: bool,
    /// The last error this node saw on its stream or health check (a `dns:///` entry: the last
    /// resolution's, when it failed).
    pub last_error: Option<String>,
    /// Events this node handed to it (a `dns:///` entry: to all its addresses).
    pub messages_sent: u64,
}

impl UpstreamState {
    fn of(u: &Upstream) -> Self {
        Self {
            ready: u.is_ready(),
            open: u.is_open(),
            last_error: u.last_error(),
            messages_sent: u.messages_sent.load(Ordering::Relaxed),
        }
    }
}

/// An upstream of the registry as this node sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct UpstreamView {
    /// Its id in the registry.
    pub id: String,
    /// Its URI, as the registry holds it.
    pub uri: String,
    /// Its state here.
    #[serde(flatten)]
    pub state: UpstreamState,
    /// For a `dns:///` entry, the upstreams of the addresses its name resolves to now, as this
    /// node sees them; empty for any other entry.
    pub resolved: Vec<ResolvedView>,
}

/// One address of a `dns:///` entry: an upstream of this node's pool.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ResolvedView {
    /// Its id in this node's pool: `{entry id}@{address}:{port}`.
    pub id: String,
    /// The URI it is dialled at, `http://{address}:{port}`.
    pub uri: String,
    /// Its state here.
    #[serde(flatten)]
    pub state: UpstreamState,
}

/// `GET /v1/upstreams`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Upstreams {
    /// The registry, by id.
    pub upstreams: Vec<UpstreamView>,
}

/// The cluster's upstream registry, with each upstream's state as this node sees it.
#[utoipa::path(get, path = "/v1/upstreams", operation_id = "list_upstreams", tag = "upstreams", security(("bearer" = [])), responses(
    (status = 200, body = Upstreams),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Upstreams>, ApiError> {
    let registry = state.node.backend().upstreams().await?;
    let upstreams = registry.into_iter().map(|e| view(&state.node, e)).collect();
    Ok(Json(Upstreams { upstreams }))
}

/// A registry entry as this node sees it.
fn view(node: &Node, e: UpstreamEntry) -> UpstreamView {
    if let Some(resolved) = node.resolved(&e.id, &e.uri) {
        let members: Vec<ResolvedView> = resolved
            .upstreams
            .iter()
            .map(|u| ResolvedView { id: u.id.clone(), uri: u.uri.clone(), state: UpstreamState::of(u) })
            .collect();
        let state = UpstreamState {
            ready: members.iter().any(|m| m.state.ready),
            open: members.iter().any(|m| m.state.open),
            last_error: resolved.last_error,
            messages_sent: members.iter().map(|m| m.state.messages_sent).sum(),
        };
        return UpstreamView { id: e.id, uri: e.uri, state, resolved: members };
    }
    let seen = node.upstreams().get(&e.id).filter(|u| u.uri == e.uri);
    let state = seen.map(|u| UpstreamState::of(&u)).unwrap_or_default();
    UpstreamView { id: e.id, uri: e.uri, state, resolved: Vec::new() }
}

/// `POST /v1/upstreams`' body (its schema is in `schema.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUpstream {
    /// Its id (letters, digits, `.`, `_`, `-`, `:`); default: the URI's `host:port`. An
    /// existing id is re-pointed.
    #[serde(default, deserialize_with = "schema::present")]
    pub id: Option<String>,
    /// Its gRPC URI: `http://host:port`, `https://host:port` or `dns:///name:port`.
    pub uri: String,
}

/// `POST /v1/upstreams`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct UpstreamEntryView {
    /// Its id.
    pub id: String,
    /// Its URI.
    pub uri: String,
}

/// Adds an upstream to the cluster's registry; every node starts streaming to it.
#[utoipa::path(post, path = "/v1/upstreams", operation_id = "add_upstream", tag = "upstreams", security(("bearer" = [])), request_body = NewUpstream,
    responses(
    (status = 201, body = UpstreamEntryView), (status = 400, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn add(
    State(state): State<AppState>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<(StatusCode, Json<UpstreamEntryView>), ApiError> {
    let body: NewUpstream = schema::object(body)?;
    if let Some(id) = &body.id {
        schema::check("id", schema::UPSTREAM_ID, id, "1 to 128 letters, digits, '.', '_', '-' or ':'")?;
    }
    schema::check("uri", schema::UPSTREAM_URI, &body.uri, "http(s)://host:port or dns:///name:port")?;
    tracing::info!(uri = %body.uri, "admin: add upstream");
    let entry = state.node.add_upstream(body.id, body.uri).await?;
    Ok((StatusCode::CREATED, Json(UpstreamEntryView { id: entry.id, uri: entry.uri })))
}

/// Removes an upstream from the cluster's registry; every node stops streaming to it (its queued
/// events go to the others).
#[utoipa::path(delete, path = "/v1/upstreams/{id}", operation_id = "remove_upstream", tag = "upstreams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upstream id")), responses(
    (status = 204, description = "Removed"), (status = 404, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    tracing::info!(upstream = %id, "admin: remove upstream");
    if state.node.remove_upstream(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no upstream `{}`", id.chars().take(64).collect::<String>())))
    }
}

impl utoipa::PartialSchema for NewUpstream {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        let id = "Its id (default: the URI's `host:port`); an existing id is re-pointed";
        schema::closed_object("An upstream for the registry")
            .property("id", schema::matching(schema::UPSTREAM_ID, id))
            .property(
                "uri",
                schema::matching(
                    schema::UPSTREAM_URI,
                    "Its gRPC URI: `http://host:port`, `https://host:port` (TLS), or `dns:///name:port` \
                     (every address of the name is one upstream)",
                ),
            )
            .required("uri")
            .into()
    }
}

impl utoipa::ToSchema for NewUpstream {}
