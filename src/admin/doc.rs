//! The answers that the layers around the handlers give, written into every operation of the
//! OpenAPI document they apply to, so the document lists every status a route can answer
//! (DESIGN §5): 401 from the token check, 408 from the request timeout, 413 from the body limit,
//! 400/415/422 from the JSON and query extractors. Each is added where its layer or extractor
//! runs, never over a status the handler documents itself.

use utoipa::openapi::{
    Content, OpenApi, Ref, RefOr, ResponseBuilder,
    header::HeaderBuilder,
    path::{Operation, ParameterIn},
    schema::{ObjectBuilder, Type},
};

use super::REQUEST_TIMEOUT;

/// Adds the layers' answers to every operation of `api`.
pub fn add_layer_answers(api: &mut OpenApi) {
    for item in api.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for op in ops.into_iter().flatten() {
            add_to(op);
        }
    }
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
