//! Reading a guarded request's body into the facts the guards judge:
//! identifier, password, captcha answer and token.
//!
//! JSON and form-encoded bodies are read; GraphQL bodies are scanned for the
//! guarded mutations (`loginByEmail`, ...) and their `input` variable. Anything
//! the guards must read but cannot — another content type, a compressed body,
//! malformed JSON, a GraphQL document with two guarded mutations or inline
//! arguments — is an [`ExtractError`], and the request is refused.

pub mod graphql;
pub mod json;

use std::borrow::Cow;

use serde_json::Value;

use crate::classify::{Fields, GraphqlOp, IdKind, RouteKind};
use crate::policy::compiled::normalize;

/// A request identifier, normalised for counting and whitelist matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    /// Its kind (never `Auto` here).
    pub kind: IdKind,
    /// Normalised value.
    pub value: String,
}

/// A password as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// In clear: it can be judged.
    Clear(String),
    /// Encrypted by the client (RSA, SM2): it cannot.
    Encrypted,
}

/// What the guards need from a guarded request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The account identifier, if any.
    pub identifier: Option<Identifier>,
    /// The password, if the request carries one.
    pub password: Option<Password>,
    /// The captcha answer.
    pub captcha_code: Option<String>,
    /// The captcha token (v3), if sent in the body.
    pub captcha_token: Option<String>,
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
        // A repeated field is ambiguous: which one will the upstream read?
        if map.insert(key.clone(), Value::String(dec(v)?)).is_some() {
            return Err(ExtractError::Malformed(format!(
                "field {key:?} appears twice"
            )));
        }
    }
    Ok(Value::Object(map))
}

/// Reads the facts of a REST route from its parsed body.
pub fn facts(body: &Value, fields: &Fields) -> Result<Facts, ExtractError> {
    let at = |p: &str| -> Result<Option<Cow<'_, str>>, ExtractError> {
        Ok(match body.pointer(p) {
            Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Some(Value::Number(n)) => {
                Some(Cow::Owned(json::integer_text(&n.to_string())?.to_string()))
            }
            _ => None,
        })
    };
    facts_with(at, fields)
}

/// Reads the facts of a REST route straight from its body bytes: JSON through
/// the lazy view (no tree is built), other kinds through [`parse_body`].
pub fn body_facts(kind: BodyKind, body: &[u8], fields: &Fields) -> Result<Facts, ExtractError> {
    match kind {
        BodyKind::Json => {
            let doc = json::LazyJson::parse(body)?;
            facts_with(|p| doc.text_at(p), fields)
        }
        other => parse_body(other, body).and_then(|v| facts(&v, fields)),
    }
}

/// The facts, reading each field through `at` (text at a JSON pointer).
fn facts_with<'a>(
    at: impl Fn(&str) -> Result<Option<Cow<'a, str>>, ExtractError>,
    fields: &Fields,
) -> Result<Facts, ExtractError> {
    let text = |p: &Option<String>| match p {
        Some(p) => at(p),
        None => Ok(None),
    };
    let mut identifier = None;
    for f in &fields.identifier {
        if let Some(v) = at(&f.pointer)?.filter(|v| !v.trim().is_empty()) {
            identifier = Some(identify(&v, f.kind));
            break;
        }
    }
    let encrypted_by_type = text(&fields.encrypt_type)?
        .is_some_and(|t| !t.trim().is_empty() && !t.trim().eq_ignore_ascii_case("none"));
    let password = text(&fields.password)?.map(|p| {
        if encrypted_by_type || looks_encrypted(&p) {
            Password::Encrypted
        } else {
            Password::Clear(p.into_owned())
        }
    });
    let nonblank =
        |s: Option<Cow<'a, str>>| s.filter(|s| !s.trim().is_empty()).map(Cow::into_owned);
    Ok(Facts {
        identifier,
        password,
        captcha_code: nonblank(text(&fields.captcha_code)?),
        captcha_token: nonblank(text(&fields.captcha_token)?),
    })
}

/// Classifies and normalises an identifier.
pub fn identify(raw: &str, kind: IdKind) -> Identifier {
    let kind = match kind {
        IdKind::Auto => {
            let t = raw.trim();
            if t.contains('@') {
                IdKind::Email
            } else if t.len() >= 5
                && t.trim_start_matches('+')
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-'))
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
        IdKind::Phone => normalize::phone(raw),
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

/// The guarded mutation a GraphQL request performs, with its input.
pub struct GraphqlCall<'a> {
    /// The operation found.
    pub op: &'a GraphqlOp,
    /// Facts read from its `input` variable.
    pub facts: Facts,
}

/// Finds the guarded mutation in a GraphQL request body (object or batch).
/// `Ok(None)`: no guarded operation (forwarded as "other").
pub fn graphql<'a>(
    body: &Value,
    ops: &'a [GraphqlOp],
) -> Result<Option<GraphqlCall<'a>>, ExtractError> {
    let requests: Vec<&Value> = match body {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let mut found: Option<GraphqlCall<'a>> = None;
    for req in requests {
        let Some(query) = req.get("query") else {
            continue;
        };
        let Some(query) = query.as_str() else {
            return Err(ExtractError::Graphql("query is not a string"));
        };
        let tokens = tokenize(query).map_err(ExtractError::Graphql)?;
        for (i, tok) in tokens.iter().enumerate() {
            let Tok::Name(name) = *tok else { continue };
            let Some(op) = ops.iter().find(|o| o.name == name) else {
                continue;
            };
            // An operation or fragment name, or a fragment spread, is not a field.
            let named = i.checked_sub(1).map(|j| tokens[j]);
            if matches!(
                named,
                Some(Tok::Name(
                    "mutation" | "query" | "subscription" | "fragment"
                )) | Some(Tok::Punct(b'.'))
            ) {
                continue;
            }
            if found.is_some() {
                return Err(ExtractError::Graphql(
                    "more than one guarded operation in one request",
                ));
            }
            let var = input_variable(&tokens[i + 1..])?;
            let input = req
                .get("variables")
                .and_then(|v| v.get(var))
                .ok_or(ExtractError::Graphql("the input variable is not provided"))?;
            found = Some(GraphqlCall {
                op,
                facts: facts(input, &op.fields)?,
            });
        }
    }
    Ok(found)
}

/// The kind of the operation a GraphQL call performs, for labels.
pub fn graphql_kind(call: &Option<GraphqlCall<'_>>) -> RouteKind {
    call.as_ref().map_or(RouteKind::Other, |c| c.op.kind)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Name(&'a str),
    Var(&'a str),
    Punct(u8),
    Value,
}

/// A GraphQL lexer good enough to find names outside strings and comments.
fn tokenize(q: &str) -> Result<Vec<Tok<'_>>, &'static str> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            0xEF if b[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => i += 3,
            b'#' => {
                while i < b.len() && !matches!(b[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            b'"' => {
                if b[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    loop {
                        if i + 3 > b.len() {
                            return Err("unterminated block string");
                        }
                        if b[i] == b'\\' && b[i..].starts_with(b"\\\"\"\"") {
                            i += 4;
                        } else if b[i..].starts_with(b"\"\"\"") {
                            i += 3;
                            break;
                        } else {
                            i += 1;
                        }
                    }
                } else {
                    i += 1;
                    loop {
                        match b.get(i) {
                            None | Some(b'\n') => return Err("unterminated string"),
                            Some(b'\\') => i += 2,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
                out.push(Tok::Value);
            }
            b'$' => {
                let start = i + 1;
                i = start;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Var(&q[start..i]));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Name(&q[start..i]));
            }
            c if c.is_ascii_digit() || c == b'-' => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'.' | b'-' | b'+'))
                {
                    i += 1;
                }
                out.push(Tok::Value);
            }
            b'.' if b[i..].starts_with(b"...") => {
                out.push(Tok::Punct(b'.'));
                i += 3;
            }
            b'{' | b'}' | b'(' | b')' | b'[' | b']' | b':' | b'=' | b'@' | b'!' | b'|' | b'&' => {
                out.push(Tok::Punct(c));
                i += 1;
            }
            _ => return Err("unexpected character in GraphQL document"),
        }
    }
    Ok(out)
}

/// After a guarded field name: `(input: $var)` gives `var`. Inline literal
/// arguments are refused: reading them would need a full GraphQL parser, and a
/// guess could be wrong.
fn input_variable<'a>(after: &[Tok<'a>]) -> Result<&'a str, ExtractError> {
    let mut t = after;
    // `alias: field`: the name we matched was an alias; the field follows.
    if let [Tok::Punct(b':'), Tok::Name(_), rest @ ..] = t {
        t = rest;
    }
    let [Tok::Punct(b'('), rest @ ..] = t else {
        return Err(ExtractError::Graphql(
            "a guarded operation without arguments",
        ));
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            Tok::Punct(b'(') | Tok::Punct(b'{') | Tok::Punct(b'[') => depth += 1,
            Tok::Punct(b')') if depth == 0 => break,
            Tok::Punct(b')') | Tok::Punct(b'}') | Tok::Punct(b']') => {
                depth = depth.saturating_sub(1)
            }
            Tok::Name("input") if depth == 0 => {
                return match rest.get(i + 1..i + 3) {
                    Some([Tok::Punct(b':'), Tok::Var(v)]) => Ok(v),
                    _ => Err(ExtractError::Graphql(
                        "inline input arguments are not supported; pass input as a variable",
                    )),
                };
            }
            _ => {}
        }
        i += 1;
    }
    Err(ExtractError::Graphql(
        "a guarded operation without an input argument",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::default_graphql_ops;

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
        assert_eq!(facts(&v, &f).unwrap().password, Some(Password::Encrypted));
        let v = serde_json::json!({"account": "bob", "password": "hunter2", "captchaCode": "ab12"});
        let fa = facts(&v, &f).unwrap();
        assert_eq!(fa.password, Some(Password::Clear("hunter2".into())));
        assert_eq!(fa.captcha_code.as_deref(), Some("ab12"));
    }

    #[test]
    fn graphql_finds_the_guarded_mutation() {
        let ops = default_graphql_ops();
        let body = serde_json::json!({
            "query": "# loginByUsername in a comment\nmutation loginByEmail($input: LoginByEmailInput!) { loginByEmail(input: $input) { id token } }",
            "variables": {"input": {"email": "A@x.com", "password": "pw", "captchaCode": "x1y2"}}
        });
        let call = graphql(&body, &ops).unwrap().unwrap();
        assert_eq!(call.op.name, "loginByEmail");
        assert_eq!(call.facts.identifier.unwrap().value, "a@x.com");
        assert_eq!(call.facts.captcha_code.as_deref(), Some("x1y2"));
    }

    #[test]
    fn graphql_refuses_what_it_cannot_judge() {
        let ops = default_graphql_ops();
        let two = serde_json::json!({"query": "mutation { a: loginByEmail(input: $i) { id } b: loginByEmail(input: $i) { id } }", "variables": {"i": {}}});
        assert!(graphql(&two, &ops).is_err());
        let inline = serde_json::json!({"query": "mutation { loginByEmail(input: {email: \"x\", password: \"y\"}) { id } }"});
        assert!(graphql(&inline, &ops).is_err());
        let batch = serde_json::json!([{"query": "query { user { id } }"}, {"query": "mutation { registerByEmail(input: $i) { id } }", "variables": {"i": {"email": "e@x.com"}}}]);
        assert_eq!(
            graphql(&batch, &ops).unwrap().unwrap().op.name,
            "registerByEmail"
        );
        let plain = serde_json::json!({"query": "query { user(id: \"loginByEmail\") { id } }"});
        assert!(graphql(&plain, &ops).unwrap().is_none());
    }
}
