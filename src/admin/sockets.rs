//! Sockets: the cluster-wide listing, one socket, and the commands (close, send, labels,
//! broadcast), carried out by the same dispatcher as upstreams' commands.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::StatusCode,
    response::Response,
};
use base64::Engine;
use serde::Deserialize;
use utoipa::openapi::{
    Required,
    path::{Parameter, ParameterBuilder, ParameterIn},
    schema::{
        AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
    },
};

use super::{
    AppState,
    error::{Accepted, ApiError, ErrorBody, receipt_response},
    schema::{self, LabelPatch, Payload},
};
use crate::{
    cluster::view::{self, SocketPage, SocketQuery, SocketRecord},
    command::{Broadcast, Command, InvalidCommand, Scope},
    socket::{CloseReason, Labels, MAX_LABEL_LEN, MAX_LABELS, SocketId},
};

/// Length of a socket id written the one way the document's `format: uuid` allows: hyphenated.
const UUID_TEXT: usize = 36;

/// Parses a socket id, written hyphenated (`format: uuid`; the other forms the UUID parser
/// knows, such as 32 bare hex digits or `urn:uuid:…`, are refused as the document says).
fn socket_id(id: &str) -> Result<SocketId, ApiError> {
    let parsed = if id.len() == UUID_TEXT { id.parse().ok() } else { None };
    parsed.ok_or_else(|| ApiError::bad_request(format!("`{}` is not a socket id (a UUID)", clip(id))))
}

/// At most 64 characters of a peer's text, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `GET /v1/sockets`' query parameters, as the document states them; [`parse_query`] reads them
/// (by hand: `label` may repeat) and checks exactly this.
pub(super) struct ListParams;

impl utoipa::IntoParams for ListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let param = |name: &str, description: &str, schema: ObjectBuilder| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
        };
        let label = ArrayBuilder::new().items(string().pattern(Some(schema::LABEL_FILTER)));
        let limit = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(view::MAX_PAGE));
        let uuid = string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)));
        let state = string().enum_values(Some(["active", "inactive"]));
        vec![
            param("node", "Only this node's sockets", string()).build(),
            param("state", "`active` or `inactive` (by `--idle-after` of the node answering)", state).build(),
            ParameterBuilder::new()
                .name("label")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("`name=value`; repeat for more, all must match"))
                .schema(Some(label))
                .explode(Some(true))
                .build(),
            param("limit", "Sockets per page, 1 to 1000 (default 100)", limit).build(),
            param("cursor", "`next_cursor` of the previous page", uuid).build(),
        ]
    }
}

/// Lists the cluster's sockets, in connect order, a page at a time.
#[utoipa::path(get, path = "/v1/sockets", operation_id = "list_sockets", tag = "sockets", security(("bearer" = [])), params(ListParams), responses(
    (status = 200, body = SocketPage, description = "With filters a page may hold fewer than `limit` sockets: go on while `next_cursor` is not null"),
    (status = 400, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Json<SocketPage>, ApiError> {
    let mut query = parse_query(raw.as_deref().unwrap_or(""))?;
    query.idle_after = state.node.settings().idle_after();
    Ok(Json(state.node.backend().sockets(&query).await?))
}

/// Parses `/v1/sockets`' query (by hand: `label` may repeat).
fn parse_query(raw: &str) -> Result<SocketQuery, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw).map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let mut q = SocketQuery { limit: view::DEFAULT_PAGE, ..SocketQuery::default() };
    for (k, v) in pairs {
        match k.as_str() {
            "node" => q.node = Some(v),
            "state" => {
                q.state = Some(match v.as_str() {
                    "active" => view::State::Active,
                    "inactive" => view::State::Inactive,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "state `{}` is not `active` or `inactive`",
                            clip(&v)
                        )));
                    }
                });
            }
            "label" => {
                let Some((name, value)) = v.split_once('=').filter(|(n, _)| !n.is_empty()) else {
                    return Err(ApiError::bad_request(format!("label `{}` is not `name=value`", clip(&v))));
                };
                q.labels.insert(name.to_owned(), value.to_owned());
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=view::MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {}", view::MAX_PAGE)))?;
            }
            "cursor" => {
                let id =
                    socket_id(&v).map_err(|_| ApiError::bad_request(format!("cursor `{}` is not valid", clip(&v))))?;
                q.after = Some(id);
            }
            other => return Err(ApiError::bad_request(format!("unknown query parameter `{}`", clip(other)))),
        }
    }
    Ok(q)
}

/// One socket, wherever it lives (exact when this node holds it; else from Redis).
#[utoipa::path(get, path = "/v1/sockets/{id}", operation_id = "get_socket", tag = "sockets", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Socket id")), responses(
    (status = 200, body = SocketRecord),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "Redis is not reachable"),
))]
pub(super) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<SocketRecord>, ApiError> {
    let id = socket_id(&id)?;
    let node = &state.node;
    let idle_after = node.settings().idle_after();
    if let Some(s) = node.sockets().get(id) {
        // A socket whose close has begun is gone for the API, as for commands.
        if s.close_reason().is_some() {
            return Err(ApiError::not_found(format!("no socket {id}")));
        }
        return Ok(Json(SocketRecord::local(node.node_id(), &s, idle_after)));
    }
    let found = node.backend().socket(id, idle_after).await?;
    found.map(Json).ok_or_else(|| ApiError::not_found(format!("no socket {id}")))
}

/// Closes a socket (reason `admin`), wherever it lives; its queued messages are written first.
#[utoipa::path(delete, path = "/v1/sockets/{id}", operation_id = "close_socket", tag = "sockets", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Socket id")), responses(
    (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "The node holding the socket could not be reached"),
))]
pub(super) async fn close(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let socket = socket_id(&id)?;
    tracing::info!(socket.id = %socket, "admin: close");
    let command = Command::Close { socket, reason: CloseReason::Admin, detail: "closed by an admin".to_owned() };
    Ok(receipt_response(state.node.execute(&command).await))
}

/// Writes the request body (the payload bytes) to a socket, wherever it lives.
#[utoipa::path(post, path = "/v1/sockets/{id}/messages", operation_id = "send_message", tag = "sockets", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Socket id")),
    request_body(content = Option<Payload>, content_type = "application/octet-stream", description = "The payload bytes (none: an empty message)"),
    responses(
    (status = 409, body = ErrorBody, description = "Its write queue is full (it is being closed as a slow consumer), or its close began meanwhile"),
    (status = 413, body = ErrorBody, description = "Longer than `--max-frame`"),
    (status = 503, body = ErrorBody, description = "The node holding the socket could not be reached"),
    (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub(super) async fn send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    payload: Bytes,
) -> Result<Response, ApiError> {
    let socket = socket_id(&id)?;
    check_size(&state, payload.len())?;
    Ok(receipt_response(state.node.execute(&Command::Send { socket, payload }).await))
}

fn check_size(state: &AppState, len: usize) -> Result<(), ApiError> {
    let max = state.node.config().max_frame;
    if len > max {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the payload is {len} bytes; --max-frame is {max}"),
        });
    }
    Ok(())
}

/// `PATCH /v1/sockets/{id}/labels`' query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceParam {
    /// Replace all labels instead of merging (in a merge, an empty value removes a label).
    #[serde(default)]
    pub replace: bool,
}

/// Merges (or replaces) a socket's labels, wherever it lives.
#[utoipa::path(patch, path = "/v1/sockets/{id}/labels", operation_id = "set_labels", tag = "sockets", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Socket id"), ReplaceParam),
    request_body(content = LabelPatch, description = "Label name → value"),
    responses(
    (status = 202, body = Accepted), (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody, description = "No such socket, or its close has begun"),
    (status = 409, body = ErrorBody, description = "The result would exceed the label limits (64 labels, 1024 bytes of UTF-8 per name and value)"),
    (status = 503, body = ErrorBody, description = "The node holding the socket could not be reached"),
))]
pub(super) async fn labels(
    Path(id): Path<String>,
    State(state): State<AppState>,
    Query(q): Query<ReplaceParam>,
    Json(labels): Json<Labels>,
) -> Result<Response, ApiError> {
    let socket = socket_id(&id)?;
    check_labels(&labels)?;
    Ok(receipt_response(state.node.execute(&Command::SetLabels { socket, labels, replace: q.replace }).await))
}

/// Checks labels as the document states them ([`LabelPatch`]): at most [`MAX_LABELS`], names not
/// empty, names and values at most [`MAX_LABEL_LEN`] characters. The socket checks the same
/// limits in bytes, and on the merged result, and refuses (409) what breaks them.
fn check_labels(labels: &Labels) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::bad_request(format!("a socket carries at most {MAX_LABELS} labels")));
    }
    if labels.keys().any(String::is_empty) {
        return Err(ApiError::bad_request("label names must not be empty"));
    }
    match labels.iter().find(|(k, v)| k.chars().count() > MAX_LABEL_LEN || v.chars().count() > MAX_LABEL_LEN) {
        Some((k, _)) => Err(ApiError::bad_request(format!(
            "label `{}` (name or value) is longer than {MAX_LABEL_LEN} characters",
            clip(k)
        ))),
        None => Ok(()),
    }
}

/// `POST /v1/broadcast`'s body; its schema, with exactly one of `payload` and `payload_base64`,
/// is in `schema.rs`. A field may be absent but not `null`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct BroadcastBody {
    /// `all` (default), `active` or `inactive`.
    #[serde(deserialize_with = "schema::present")]
    pub scope: Option<String>,
    /// Labels that must all match.
    #[serde(deserialize_with = "schema::present")]
    pub selector: Option<Labels>,
    /// The payload as UTF-8 text.
    #[serde(deserialize_with = "schema::present")]
    pub payload: Option<String>,
    /// The payload as base64 (arbitrary bytes), instead of `payload`.
    #[serde(deserialize_with = "schema::present")]
    pub payload_base64: Option<String>,
}

/// Writes a payload to every matching socket of the cluster.
#[utoipa::path(post, path = "/v1/broadcast", operation_id = "broadcast", tag = "sockets", security(("bearer" = [])), request_body = BroadcastBody,
    responses(
    (status = 202, body = Accepted, description = "Handed to every live node"), (status = 400, body = ErrorBody),
    (status = 413, body = ErrorBody, description = "Longer than `--max-frame`"),
    (status = 503, body = ErrorBody, description = "It did not reach every live node (the error says how many it reached)"),
))]
pub(super) async fn broadcast(
    State(state): State<AppState>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let body: BroadcastBody = schema::object(body)?;
    let scope: Scope = body
        .scope
        .as_deref()
        .unwrap_or("all")
        .parse()
        .map_err(|e: InvalidCommand| ApiError::bad_request(e.to_string()))?;
    let payload = match (body.payload, body.payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => {
            schema::check("payload_base64", schema::BASE64, &b64, "padded standard base64")?;
            base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("payload_base64 is not base64: {e}")))?
        }
        _ => return Err(ApiError::bad_request("give exactly one of `payload` and `payload_base64`")),
    };
    check_size(&state, payload.len())?;
    tracing::info!(?scope, bytes = payload.len(), "admin: broadcast");
    let command = Command::Broadcast(Broadcast { scope, selector: body.selector.unwrap_or_default(), payload });
    Ok(receipt_response(state.node.execute(&command).await))
}

impl utoipa::PartialSchema for BroadcastBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        let with = |field: &str, payload: ObjectBuilder| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
                .property(
                    "scope",
                    schema::one_of(&["all", "active", "inactive"], "Which sockets by activity (default `all`)"),
                )
                .property("selector", schema::labels("Labels that must all match (default: none, every socket)", false))
                .property(field, payload)
                .required(field)
        };
        let text = with("payload", schema::string("The payload as UTF-8 text"));
        let bytes = with(
            "payload_base64",
            schema::matching(schema::BASE64, "The payload as standard base64, padded (arbitrary bytes)"),
        );
        OneOfBuilder::new()
            .description(Some("Exactly one of `payload` and `payload_base64`"))
            .item(text)
            .item(bytes)
            .into()
    }
}

impl utoipa::ToSchema for BroadcastBody {}
