//! Bearer-token access control: with `--admin-token` set, every route but `/healthz` and
//! `/readyz` needs `Authorization: Bearer <token>`. The token is compared in constant time (only
//! its length can be learnt from timing).

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::{AppState, error::ApiError};

/// Lets the request through when it carries the token (or none is configured).
pub(super) async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match presented {
        Some(p) if bool::from(p.trim().as_bytes().ct_eq(token.as_bytes())) => next.run(request).await,
        found => {
            let message = if found.is_some() { "the bearer token is not valid" } else { "a bearer token is required" };
            let mut response =
                ApiError { status: StatusCode::UNAUTHORIZED, message: message.to_owned() }.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}
