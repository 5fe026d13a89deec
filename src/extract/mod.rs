//! Reading a guarded request's body into the facts the guards judge:
//! identifier, password or other secret, captcha answer and token, and the
//! end user a trusted backend names.
//!
//! JSON and form-encoded bodies are read by the route's JSON pointers
//! ([`json`] for JSON without building a tree); GraphQL requests by the
//! guarded fields they would execute ([`graphql`]); phone numbers are
//! normalised to E.164 ([`phone`]). Anything the guards must read but cannot
//! — another content type, a compressed body, malformed JSON, a body naming
//! two accounts or a payload kind poolgate does not know — is an
//! [`ExtractError`], and the request is refused.
//!
//! One concern per module: this one decides how a body is read
//! ([`body_kind`], [`parse_body`], [`body_facts`]); [`json`] and [`form`]
//! read the two body encodings, [`graphql`] the calls of a GraphQL request;
//! `facts` reads a call's fields by the route's JSON pointers (whatever the
//! encoding) and `identify` normalises the account they name.

mod facts;
pub mod form;
pub mod graphql;
mod identify;
pub mod json;
pub mod phone;

use serde_json::Value;

pub use facts::{facts, Facts, Password};
pub use identify::{identify, identify_in, token_identifier, Identifier};

use crate::routes::Fields;

/// How identifiers are normalised (from the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Normalize {
    /// Region of phone numbers written without a country code.
    pub phone_region: phone::PhoneRegion,
}

/// Why a guarded body cannot be judged (the request is refused with 400/415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The content type is not one the guards read.
    #[error("unsupported content type for a guarded route: {0}")]
    ContentType(String),
    /// The body is compressed.
    #[error("compressed request bodies are not accepted on guarded routes")]
    Compressed,
    /// The body is not valid JSON / form data.
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// The GraphQL document cannot be judged unambiguously.
    #[error("GraphQL request cannot be judged: {0}")]
    Graphql(&'static str),
    /// The body is well-formed but names two things where the login service
    /// reads one (two different accounts, a payload kind poolgate does not
    /// know): which one would the upstream use?
    #[error("request cannot be judged: {0}")]
    Ambiguous(String),
}

impl ExtractError {
    /// The HTTP status and metric reason of the refusal.
    pub fn status_reason(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode;
        match self {
            ExtractError::ContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
            ),
            ExtractError::Compressed => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "compressed_body"),
            ExtractError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            ExtractError::Graphql(_) => (StatusCode::BAD_REQUEST, "ambiguous_graphql"),
            ExtractError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "ambiguous_body"),
        }
    }
}

/// The body's encoding, from `Content-Type` and `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` (or no content type).
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/graphql`.
    GraphqlText,
}

/// Decides how to read a body from its headers.
pub fn body_kind(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<BodyKind, ExtractError> {
    if let Some(enc) = content_encoding {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(ExtractError::Compressed);
        }
    }
    let Some(ct) = content_type else {
        return Ok(BodyKind::Json);
    };
    // Compared without lowercasing a copy: this runs on every guarded request.
    let mime = ct.split(';').next().unwrap_or("").trim();
    let is = |m: &str| mime.eq_ignore_ascii_case(m);
    // `application/<subtype>+json`, looked at only when nothing else matched.
    let json_suffix = || {
        mime.split_once('/').is_some_and(|(kind, sub)| {
            kind.eq_ignore_ascii_case("application")
                && sub
                    .len()
                    .checked_sub("+json".len())
                    .and_then(|i| sub.get(i..))
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
        })
    };
    if mime.is_empty() || is("application/json") || is("text/json") || json_suffix() {
        Ok(BodyKind::Json)
    } else if is("application/x-www-form-urlencoded") {
        Ok(BodyKind::Form)
    } else if is("application/graphql") {
        Ok(BodyKind::GraphqlText)
    } else {
        Err(ExtractError::ContentType(mime.to_ascii_lowercase()))
    }
}

/// Parses a body into a JSON value (form bodies become a flat object).
pub fn parse_body(kind: BodyKind, body: &[u8]) -> Result<Value, ExtractError> {
    match kind {
        BodyKind::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Object(Default::default()));
            }
            serde_json::from_slice(body).map_err(|e| ExtractError::Malformed(e.to_string()))
        }
        BodyKind::Form => form::parse(body),
        BodyKind::GraphqlText => {
            let q = std::str::from_utf8(body)
                .map_err(|_| ExtractError::Malformed("GraphQL document is not UTF-8".into()))?;
            Ok(serde_json::json!({ "query": q }))
        }
    }
}

/// Reads the facts of a REST route straight from its body bytes: JSON through
/// the lazy view (no tree is built), other kinds through [`parse_body`].
pub fn body_facts(
    kind: BodyKind,
    body: &[u8],
    fields: &Fields,
    norm: Normalize,
) -> Result<Facts, ExtractError> {
    match kind {
        // The common body in a fixed array on this stack frame; any other
        // through the lazy view (which also words the errors).
        BodyKind::Json => {
            let mut flat = json::Flat::new();
            if flat.read(body) {
                facts::facts_with(|p| flat.text_at(p), fields, norm)
            } else {
                let doc = json::LazyJson::parse(body)?;
                facts::facts_with(|p| doc.text_at(p), fields, norm)
            }
        }
        other => parse_body(other, body).and_then(|v| facts(&v, fields, norm)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_kinds() {
        assert_eq!(body_kind(None, None), Ok(BodyKind::Json));
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8"), None),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            body_kind(Some("application/x-www-form-urlencoded"), None),
            Ok(BodyKind::Form)
        );
        assert_eq!(
            body_kind(Some("application/json"), Some("gzip")),
            Err(ExtractError::Compressed)
        );
        assert!(matches!(
            body_kind(Some("multipart/form-data; boundary=x"), None),
            Err(ExtractError::ContentType(_))
        ));
    }

    /// Media types are case-insensitive (RFC 9110 §8.3.1), and the refusal
    /// names the type in lower case whatever its spelling.
    #[test]
    fn body_kinds_whatever_the_case() {
        for (ct, kind) in [
            (" Application/JSON ; charset=UTF-8", BodyKind::Json),
            ("TEXT/json", BodyKind::Json),
            ("application/vnd.api+JSON", BodyKind::Json),
            ("APPLICATION/+json", BodyKind::Json),
            ("", BodyKind::Json),
            ("; charset=utf-8", BodyKind::Json),
            ("Application/X-WWW-Form-Urlencoded", BodyKind::Form),
            ("application/GraphQL", BodyKind::GraphqlText),
        ] {
            assert_eq!(body_kind(Some(ct), None), Ok(kind), "{ct:?}");
        }
        for ct in [
            "application/jsonx",
            "application+json",
            "text/plain",
            "applicatio/+json",
            "é/+json",
        ] {
            assert!(
                matches!(body_kind(Some(ct), None), Err(ExtractError::ContentType(_))),
                "{ct:?}"
            );
        }
        assert_eq!(
            body_kind(Some("Text/Plain; charset=x"), None),
            Err(ExtractError::ContentType("text/plain".into()))
        );
    }
}
