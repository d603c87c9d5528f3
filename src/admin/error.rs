//! The admin API's errors: always JSON `{ "error": "…" }` with the right status. Bad input is a
//! 4xx; 503 means the cluster (Redis, or the node holding a socket) could not be reached.

use axum::{
    Json,
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{cluster::BackendError, command::Receipt, node::NodeError, proto};

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message (never secrets or internals beyond what the operator needs).
    pub message: String,
}

impl ApiError {
    /// 400: the request is not valid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(_) => Self { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string() },
            BackendError::Invalid(m) => Self::bad_request(m),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Backend(b) => b.into(),
            NodeError::InvalidUpstream(e) => Self::bad_request(e.to_string()),
            NodeError::InvalidSettings(e) => Self::bad_request(e.to_string()),
            other => Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: other.to_string() },
        }
    }
}

/// The answer to a command: 202 when carried out, 404 for an unknown socket, 409 when the socket
/// refused it, 503 when the node holding it could not be reached.
pub fn receipt_response(receipt: Receipt) -> Response {
    match receipt.status {
        proto::Status::Ok => (StatusCode::ACCEPTED, Json(Accepted { status: "ok" })).into_response(),
        proto::Status::UnknownSocket => ApiError::not_found(receipt.detail).into_response(),
        _ if receipt.refused => ApiError { status: StatusCode::CONFLICT, message: receipt.detail }.into_response(),
        _ => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: receipt.detail }.into_response(),
    }
}

/// The body of a 202.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Always `ok`.
    pub status: &'static str,
}

/// Longest error body of axum's own rejections that is kept when it is turned into JSON.
const MAX_REJECTION: usize = 4096;

/// Makes every error answer JSON: axum's own rejections (bad JSON, body too large, unknown
/// method, timeouts) come as plain text; their text becomes the `error`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_REJECTION).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let error = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let json = serde_json::to_vec(&ErrorBody { error }).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}
