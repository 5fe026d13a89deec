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

pub mod graphql;
pub mod json;
pub mod phone;

use std::borrow::Cow;

use serde_json::Value;

use crate::classify::{Fields, IdKind};
use crate::policy::compiled::normalize;

/// A request identifier, normalised for counting and whitelist matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    /// Its kind (never `Auto` here).
    pub kind: IdKind,
    /// Normalised value.
    pub value: String,
}

impl Identifier {
    /// Its counter key (made here, once per request, not in the store).
    pub fn account_key(&self) -> crate::store::AccountKey {
        crate::store::AccountKey::of(&self.value)
    }
}

/// A password as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// In clear: it can be judged.
    Clear(String),
    /// Encrypted by the client (RSA, SM2): it cannot.
    Encrypted,
}

/// What the guards need from one guarded call (a REST request, or one
/// guarded field of a GraphQL request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The account identifier, if any.
    pub identifier: Option<Identifier>,
    /// The password the call logs in with or sets, if it carries one.
    pub password: Option<Password>,
    /// Whether the call proves itself with a one-time code, a reset token or
    /// an old password (a guessing surface).
    pub proof: bool,
    /// The captcha answer.
    pub captcha_code: Option<String>,
    /// The captcha token (v3), if sent in the body.
    pub captcha_token: Option<String>,
    /// The end user's address as the body gives it (`clientIp`): believed
    /// only from `server.trusted_backends`.
    pub client_ip: Option<String>,
}

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
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "text/json" | "" => Ok(BodyKind::Json),
        m if m.starts_with("application/") && m.ends_with("+json") => Ok(BodyKind::Json),
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "application/graphql" => Ok(BodyKind::GraphqlText),
        _ => Err(ExtractError::ContentType(mime)),
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
        BodyKind::Form => parse_form(body),
        BodyKind::GraphqlText => {
            let q = std::str::from_utf8(body)
                .map_err(|_| ExtractError::Malformed("GraphQL document is not UTF-8".into()))?;
            Ok(serde_json::json!({ "query": q }))
        }
    }
}

fn parse_form(body: &[u8]) -> Result<Value, ExtractError> {
    let mut map = serde_json::Map::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let dec = |s: &[u8]| -> Result<String, ExtractError> {
            let plus: Vec<u8> = s
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let text = std::str::from_utf8(&plus)
                .map_err(|_| ExtractError::Malformed("form body is not UTF-8".into()))?;
            let bytes = crate::classify::percent_decode(text)
                .map_err(|e| ExtractError::Malformed(e.into()))?;
            String::from_utf8(bytes)
                .map_err(|_| ExtractError::Malformed("form value is not UTF-8".into()))
        };
        let key = dec(k)?;
        // `qs`-style parsers (Express's default) nest `a[b]=` into objects;
        // read flat, such a key hides the field poolgate reads: refused.
        if key.contains(['[', ']']) {
            return Err(ExtractError::Malformed(format!(
                "form field {key:?}: bracket syntax is not accepted on guarded routes"
            )));
        }
        // A repeated field is ambiguous: which one will the upstream read?
        if map.insert(key.clone(), Value::String(dec(v)?)).is_some() {
            return Err(ExtractError::Malformed(format!(
                "field {key:?} appears twice"
            )));
        }
    }
    Ok(Value::Object(map))
}

/// Reads the facts of a call from its parsed body (or a GraphQL field's
/// arguments).
pub fn facts(body: &Value, fields: &Fields, norm: Normalize) -> Result<Facts, ExtractError> {
    let at = |p: &str| -> Result<Option<Cow<'_, str>>, ExtractError> {
        Ok(match body.pointer(p) {
            Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Some(Value::Number(n)) => {
                Some(Cow::Owned(json::integer_text(&n.to_string())?.to_string()))
            }
            _ => None,
        })
    };
    facts_with(at, fields, norm)
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
        BodyKind::Json => {
            let doc = json::LazyJson::parse(body)?;
            facts_with(|p| doc.text_at(p), fields, norm)
        }
        other => parse_body(other, body).and_then(|v| facts(&v, fields, norm)),
    }
}

/// The facts, reading each field through `at` (text at a JSON pointer).
///
/// Identity comes from the operation, not from the first field found: with a
/// variant (v3 `connection`), only the named payload is read, and a value
/// poolgate does not know is refused; two identifier fields naming different
/// accounts are refused too.
fn facts_with<'a>(
    at: impl Fn(&str) -> Result<Option<Cow<'a, str>>, ExtractError>,
    fields: &Fields,
    norm: Normalize,
) -> Result<Facts, ExtractError> {
    let case;
    let fields = match &fields.variant {
        None => fields,
        Some(v) => {
            let name = at(&v.pointer)?
                .map(|n| n.trim().to_ascii_uppercase())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ExtractError::Ambiguous(format!("{} is missing", v.pointer)))?;
            let c = v.cases.get(&name).ok_or_else(|| {
                ExtractError::Ambiguous(format!(
                    "{} {name:?} is not one poolgate can judge (known: {})",
                    v.pointer,
                    v.cases.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            case = fields.with_case(c);
            &case
        }
    };
    let text = |p: &Option<String>| match p {
        Some(p) => at(p),
        None => Ok(None),
    };
    let nonblank =
        |s: Option<Cow<'a, str>>| s.filter(|s| !s.trim().is_empty()).map(Cow::into_owned);
    let country_code = nonblank(text(&fields.phone_country_code)?);
    let mut identifier: Option<Identifier> = None;
    for f in &fields.identifier {
        let Some(v) = at(&f.pointer)?.filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let id = identify_in(&v, f.kind, country_code.as_deref(), norm);
        match &identifier {
            None => identifier = Some(id),
            Some(first) if first.value == id.value => {}
            Some(_) => {
                return Err(ExtractError::Ambiguous(
                    "the body names two different accounts".into(),
                ))
            }
        }
    }
    let encrypted_by_type = text(&fields.encrypt_type)?
        .is_some_and(|t| !t.trim().is_empty() && !t.trim().eq_ignore_ascii_case("none"));
    let password = text(&fields.password)?.filter(|p| !p.is_empty()).map(|p| {
        if encrypted_by_type || looks_encrypted(&p) {
            Password::Encrypted
        } else {
            Password::Clear(p.into_owned())
        }
    });
    Ok(Facts {
        identifier,
        password,
        proof: nonblank(text(&fields.proof)?).is_some(),
        captcha_code: nonblank(text(&fields.captcha_code)?),
        captcha_token: nonblank(text(&fields.captcha_token)?),
        client_ip: nonblank(text(&fields.client_ip)?),
    })
}

/// The account a token header names (`Authorization: Bearer <mfaToken>`),
/// for calls whose body names none.
pub fn token_identifier(headers: &http::HeaderMap, name: &str) -> Option<Identifier> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    let token = match v.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => v,
    };
    (!token.is_empty()).then(|| Identifier {
        kind: IdKind::Token,
        value: token.to_string(),
    })
}

/// Classifies and normalises an identifier (phone numbers in the default region).
pub fn identify(raw: &str, kind: IdKind) -> Identifier {
    identify_in(raw, kind, None, Normalize::default())
}

/// Classifies and normalises an identifier; `country_code` is the calling
/// code the request sends beside a phone number.
pub fn identify_in(
    raw: &str,
    kind: IdKind,
    country_code: Option<&str>,
    norm: Normalize,
) -> Identifier {
    let kind = match kind {
        IdKind::Auto => {
            let t = raw.trim();
            if t.contains('@') {
                IdKind::Email
            } else if t.chars().filter(char::is_ascii_digit).count() >= 5
                && t.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
            {
                IdKind::Phone
            } else {
                IdKind::Username
            }
        }
        k => k,
    };
    let value = match kind {
        IdKind::Email => normalize::email(raw),
        IdKind::Phone => phone::normalize(raw, country_code, norm.phone_region),
        IdKind::Token => raw.trim().to_string(),
        _ => normalize::username(raw),
    };
    Identifier { kind, value }
}

/// Authing's v2 SDKs send RSA-encrypted passwords as base64 of the key size
/// (172+ characters for 1024-bit keys) and SM2 ones as long hex: no human
/// password looks like that.
fn looks_encrypted(p: &str) -> bool {
    let b64 = p.len() >= 128
        && p.len() % 4 == 0
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let hex = p.len() >= 128 && p.bytes().all(|b| b.is_ascii_hexdigit());
    b64 || hex || p.starts_with("sm2:")
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

    #[test]
    fn form_bodies() {
        let v = parse_body(BodyKind::Form, b"account=A%40x.com&password=p+w").unwrap();
        assert_eq!(v["account"], "A@x.com");
        assert_eq!(v["password"], "p w");
        assert!(parse_body(BodyKind::Form, b"a=1&a=2").is_err());
        assert!(parse_body(BodyKind::Form, b"passwordPayload[account]=victim").is_err());
        assert!(parse_body(BodyKind::Form, b"passwordPayload%5Baccount%5D=victim").is_err());
        assert!(parse_body(BodyKind::Form, b"a=%zz").is_err());
    }

    #[test]
    fn identifiers_are_normalised() {
        assert_eq!(
            identify(" Bob@Example.COM ", IdKind::Auto),
            Identifier {
                kind: IdKind::Email,
                value: "bob@example.com".into()
            }
        );
        assert_eq!(
            identify("+86 138-0000-0000", IdKind::Auto).kind,
            IdKind::Phone
        );
        assert_eq!(identify("bob", IdKind::Auto).kind, IdKind::Username);
    }

    #[test]
    fn encrypted_passwords_are_recognised() {
        let rsa = "A".repeat(172);
        let f = crate::classify::default_routes()
            .into_iter()
            .find(|r| r.path == "/api/v2/login/account")
            .unwrap()
            .fields;
        let v = serde_json::json!({"account": "bob", "password": rsa});
        assert_eq!(
            facts(&v, &f, Normalize::default()).unwrap().password,
            Some(Password::Encrypted)
        );
        let v = serde_json::json!({"account": "bob", "password": "hunter2", "captchaCode": "ab12"});
        let fa = facts(&v, &f, Normalize::default()).unwrap();
        assert_eq!(fa.password, Some(Password::Clear("hunter2".into())));
        assert_eq!(fa.captcha_code.as_deref(), Some("ab12"));
    }
}
