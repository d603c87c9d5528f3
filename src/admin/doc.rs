//! What the handlers' own annotations cannot say, added to the OpenAPI document once it is built:
//!
//! - the answers that the layers around the handlers give, written into every operation they
//!   apply to, so the document lists every status a route can answer (DESIGN §5): 401 from the
//!   token check, 408 from the request timeout, 413 from the body limit, 400/415/422 from the JSON
//!   and query extractors; each where its layer or extractor runs, never over a status the handler
//!   documents itself;
//! - the links between operations (OpenAPI `links`): where a socket or upstream id in one answer
//!   can be used next, and that after `DELETE /v1/sockets/{id}` the same id names a socket that is
//!   gone, so a stateful client (schemathesis) walks from a listing to one socket and on.

use utoipa::openapi::{
    Content, OpenApi, Ref, RefOr, ResponseBuilder,
    header::HeaderBuilder,
    path::{Operation, ParameterIn},
    schema::{ObjectBuilder, Type},
};

use super::REQUEST_TIMEOUT;

/// Adds the layers' answers to every operation of `api`.
pub(super) fn add_layer_answers(api: &mut OpenApi) {
    for item in api.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for op in ops.into_iter().flatten() {
            add_to(op);
        }
    }
}

/// The links: (from path, method, status) → (name, to operation, its `id` parameter).
const LINKS: [(&str, &str, &str, &str, &str, &str); 10] = [
    ("/v1/sockets", "get", "200", "GetSocket", "get_socket", "$response.body#/sockets/0/id"),
    ("/v1/sockets", "get", "200", "SendMessage", "send_message", "$response.body#/sockets/0/id"),
    ("/v1/sockets", "get", "200", "SetLabels", "set_labels", "$response.body#/sockets/0/id"),
    ("/v1/sockets", "get", "200", "CloseSocket", "close_socket", "$response.body#/sockets/0/id"),
    ("/v1/sockets/{id}", "get", "200", "CloseSocket", "close_socket", "$response.body#/id"),
    ("/v1/sockets/{id}", "delete", "202", "GetSocket", "get_socket", "$request.path.id"),
    ("/v1/sockets/{id}", "delete", "202", "SetLabels", "set_labels", "$request.path.id"),
    ("/v1/sockets/{id}", "delete", "202", "SendMessage", "send_message", "$request.path.id"),
    ("/v1/upstreams", "post", "201", "RemoveUpstream", "remove_upstream", "$response.body#/id"),
    ("/v1/upstreams", "get", "200", "RemoveUpstream", "remove_upstream", "$response.body#/upstreams/0/id"),
];

/// The document as JSON, with [`LINKS`] added to the answers they start from. (Links are added to
/// the JSON rather than through utoipa's `Link`, which serializes its fields in snake case.)
pub(super) fn render(api: &OpenApi) -> String {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    for (path, method, status, name, to, id) in LINKS {
        if let Some(response) = doc.pointer_mut(&format!("/paths/{}/{method}/responses/{status}", pointer(path)))
            && let Some(response) = response.as_object_mut()
        {
            let links = response.entry("links").or_insert_with(|| serde_json::json!({}));
            links[name] = serde_json::json!({ "operationId": to, "parameters": { "id": id } });
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `path` escaped as one JSON pointer token.
fn pointer(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}

/// The layers' answers that apply to `op`.
fn add_to(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let body = op.request_body.as_ref().map(|b| b.content.keys().cloned().collect::<Vec<_>>());
    let json_body = body.as_ref().is_some_and(|types| types.iter().any(|t| t == "application/json"));
    let query_or_path = op
        .parameters
        .as_ref()
        .is_some_and(|ps| ps.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path)));
    let timeout = format!("The request, body included, took longer than {} s", REQUEST_TIMEOUT.as_secs());
    add(op, "408", &timeout);
    if secured {
        add(op, "401", "No bearer token, or not the node's `--admin-token`");
    }
    if body.is_some() {
        add(op, "413", "The body is longer than twice `--max-frame` plus 64 KiB");
    }
    if json_body {
        add(op, "400", "The body is not JSON");
        add(op, "415", "The `Content-Type` is not `application/json`");
        add(op, "422", "JSON of the wrong shape: a missing, unknown or mistyped field");
    }
    if query_or_path {
        add(op, "400", "A parameter is not valid");
    }
}

/// Adds status `status` with the JSON error body, unless `op` documents it already.
fn add(op: &mut Operation, status: &str, description: &str) {
    if op.responses.responses.contains_key(status) {
        return;
    }
    let body = Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))));
    let mut response = ResponseBuilder::new().description(description).content("application/json", body);
    if status == "401" {
        let string = ObjectBuilder::new().schema_type(Type::String).build();
        let challenge = HeaderBuilder::new().schema(string).description(Some("`Bearer`")).build();
        response = response.header("WWW-Authenticate", challenge);
    }
    op.responses.responses.insert(status.to_owned(), RefOr::T(response.build()));
}
