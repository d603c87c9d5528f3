//! What the OpenAPI document says every input looks like, and the checks that hold the server to
//! it (DESIGN §5: a schema-driven fuzzer finds no difference between the two).
//!
//! Each pattern below is written into the document (the request bodies' schemas are built here,
//! by hand, from these constants) and checked by the handler before anything else reads the
//! value. Every pattern is also narrow enough that whatever it
//! accepts the deeper parser (humantime, the URI parser, `EnvFilter`) accepts too, so a value the
//! document calls valid is never refused. They use only what ECMA-262, Python's `re` and Rust's
//! `regex` read alike: ASCII classes, groups, alternation, bounded repetition, `^` and `$`.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type},
    },
};

use super::error::ApiError;
use crate::socket::{MAX_LABEL_LEN, MAX_LABELS};

/// An upstream id: letters, digits, `.`, `_`, `-`, `:`, 1 to 128 of them.
pub(super) const UPSTREAM_ID: &str = r"^[A-Za-z0-9._:-]{1,128}$";
/// An upstream URI: `http(s)://host:port`, the host a DNS name or an IPv4 address, or
/// `dns:///name:port` (a DNS name, `_` allowed, a final `.` too); the port 0 to 65535. (An IPv6 upstream is given with `--upstream`: a pattern that took exactly the IPv6
/// addresses the URI parser takes would be unreadable, and a loose one lets through text that
/// clients of this API cannot parse as a URL.)
pub(super) const UPSTREAM_URI: &str = r"^(https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|dns:///[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?):(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
/// A duration above zero and under 10 000 hours: a number and one unit, `500ms`, `10s`, `2m`, `1h`.
pub(super) const DURATION: &str = r"^[1-9][0-9]{0,3}(ms|s|m|h)$";
/// A [`DURATION`], or `off`.
pub(super) const DURATION_OR_OFF: &str = r"^(off|[1-9][0-9]{0,3}(ms|s|m|h))$";
/// A log filter: comma-separated directives, each a level, or a target (a Rust module path)
/// `=` a level (the part of `RUST_LOG`'s syntax the API takes).
pub(super) const LOG_FILTER: &str = r"^([A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*=)?(trace|debug|info|warn|error|off)(,([A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*=)?(trace|debug|info|warn|error|off))*$";
/// Standard base64 with padding, in canonical form (the unused bits of the last symbol are zero),
/// which is what the decoder takes.
pub(super) const BASE64: &str = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";
/// A label filter of `GET /v1/sockets`: `name=value`, the name not empty (the value may hold `=`).
pub(super) const LABEL_FILTER: &str = r"^[^=]+=";

/// Every pattern, compiled once.
static COMPILED: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [UPSTREAM_ID, UPSTREAM_URI, DURATION, DURATION_OR_OFF, LOG_FILTER, BASE64, LABEL_FILTER]
        .into_iter()
        // The patterns are constants, checked by the tests below: this cannot fail at run time.
        .filter_map(|p| Regex::new(p).ok().map(|r| (p, r)))
        .collect()
});

/// Whether `value` matches `pattern` (one of the constants above).
pub(super) fn matches(pattern: &str, value: &str) -> bool {
    COMPILED.iter().find(|(p, _)| *p == pattern).is_some_and(|(_, r)| r.is_match(value))
}

/// 400 unless `value` of field `field` matches `pattern` (one of the constants above).
///
/// # Errors
/// An [`ApiError`] (400) naming the field and what it must look like.
pub(super) fn check(field: &str, pattern: &str, value: &str, what: &str) -> Result<(), ApiError> {
    if matches(pattern, value) {
        Ok(())
    } else {
        let shown: String = value.chars().take(64).collect();
        Err(ApiError::bad_request(format!("{field} `{shown}` is not {what}")))
    }
}

/// A JSON body that must be an object, as the document says: serde would build a struct from an
/// array too (its fields in order), so the body is taken as a map first and only then as `T`.
///
/// # Errors
/// 422 with serde's reason when the object does not fit `T`.
pub(super) fn object<T: serde::de::DeserializeOwned>(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::Object(body)).map_err(|e| ApiError {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("Failed to deserialize the JSON body into the target type: {e}"),
    })
}

/// Deserializes a field that may be absent but not `null`: with `#[serde(default,
/// deserialize_with = "present")]`, a `null` is refused (422) as the document says (the field's
/// type is not nullable), instead of being read as absent.
///
/// # Errors
/// The value's own deserialization error (`null` included).
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A string schema.
pub(super) fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description))
}

/// A string that matches `pattern`.
pub(super) fn matching(pattern: &str, description: &str) -> ObjectBuilder {
    string(description).pattern(Some(pattern))
}

/// A string that is one of `values`.
pub(super) fn one_of(values: &[&str], description: &str) -> ObjectBuilder {
    string(description).enum_values(Some(values.iter().copied()))
}

/// An object whose fields are exactly the ones given to it (`additionalProperties: false`).
pub(super) fn closed_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

/// A map of label names to values, `limits`: as `PATCH /v1/sockets/{id}/labels` checks them.
pub(super) fn labels(description: &str, limits: bool) -> ObjectBuilder {
    let value = ObjectBuilder::new().schema_type(Type::String);
    let map = ObjectBuilder::new().schema_type(Type::Object).description(Some(description));
    if !limits {
        return map.additional_properties(Some(value));
    }
    let name = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(MAX_LABEL_LEN));
    map.max_properties(Some(MAX_LABELS))
        .property_names(Some(name))
        .additional_properties(Some(value.max_length(Some(MAX_LABEL_LEN))))
}

/// `POST /v1/sockets/{id}/messages`' body: the payload, any bytes.
pub(super) struct Payload;

impl PartialSchema for Payload {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The payload bytes, framed per `--framing`"))
            .into()
    }
}

impl ToSchema for Payload {}

/// `PATCH /v1/sockets/{id}/labels`' body: label name → value.
pub(super) struct LabelPatch;

impl PartialSchema for LabelPatch {
    fn schema() -> RefOr<Schema> {
        let description = "Label name → value: at most 64 labels, names not empty, names and values at most 1024 \
                           characters (and 1024 bytes of UTF-8: a longer one is refused with 409, as is a merge \
                           that would leave more than 64). In a merge an empty value removes the label.";
        labels(description, true).into()
    }
}

impl ToSchema for LabelPatch {}

/// Deserializes a whole number that may be absent but not `null`, as JSON Schema's `integer`
/// means it: `3` and `3.0` alike (the schema types it as an integer, and a schema-driven client
/// may well send the second).
///
/// # Errors
/// When the value is not a number, or not a whole one from 0 to `u64::MAX`.
pub(super) fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    /// 2^64, the first whole number past `u64::MAX`, exactly as an `f64`.
    const PAST_U64: f64 = 18_446_744_073_709_551_616.0;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // Exact: a whole `f64` in range converts to `u64` without rounding.
        (f.fract() == 0.0 && (0.0..PAST_U64).contains(&f)).then_some(f as u64)
    });
    whole
        .and_then(|w| usize::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("`{n}` is not a whole number from 0 to {}", usize::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(COMPILED.len(), 7);
    }

    #[test]
    fn what_the_patterns_accept_the_parsers_accept() {
        for uri in ["http://a:0", "https://-.0:65535", "http://127.0.0.1:50051", "dns:///_a.b-c.:0", "dns:///x:50051"] {
            assert!(matches(UPSTREAM_URI, uri), "{uri}");
            assert!(crate::upstream::validate_uri(uri).is_ok(), "{uri}");
        }
        for bad in [
            "http://a:65536",
            "http://a",
            "ftp://a:1",
            "http://a:1/",
            "http://a:01",
            "http://a:1\n",
            "http://[::1]:1",
            "dns://ns/a:1",
            "dns:///a..b:1",
            "dns:a:1",
            "http://a.:1",
        ] {
            assert!(!matches(UPSTREAM_URI, bad), "{bad}");
        }
        for d in ["1ms", "9999h", "10s"] {
            assert!(crate::config::parse_duration(d).is_ok_and(|d| !d.is_zero()), "{d}");
        }
        assert!(!matches(DURATION, "0s") && !matches(DURATION, "10000h") && matches(DURATION_OR_OFF, "off"));
        for f in ["info", "a=off,b::c_d=trace,warn", "_=debug"] {
            assert!(matches(LOG_FILTER, f), "{f}");
            assert!(crate::logging::LogFilter::detached("info").set(f).is_ok(), "{f}");
        }
        assert!(!matches(LOG_FILTER, "") && !matches(LOG_FILTER, "INFO") && !matches(LOG_FILTER, "a="));
        use base64::Engine;
        for b in ["", "AA==", "AAE=", "AAECAw==", "+/+/"] {
            assert!(matches(BASE64, b), "{b}");
            assert!(base64::engine::general_purpose::STANDARD.decode(b).is_ok(), "{b}");
        }
        for b in ["AB==", "AAF=", "A===", "AAAA\n", " AAAA"] {
            assert!(!matches(BASE64, b), "{b}");
        }
        assert!(matches(LABEL_FILTER, "a=") && matches(LABEL_FILTER, "a==b") && !matches(LABEL_FILTER, "=a"));
    }
}
