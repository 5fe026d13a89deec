//! The facts of one call, read from its body by the route's [`Fields`]:
//! the same reading for JSON (lazily), form and GraphQL arguments.

use std::borrow::Cow;

use serde_json::Value;

use super::identify::trim as fast_trim;
use super::{identify_in, json, ExtractError, Identifier, Normalize};
use crate::routes::Fields;

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

/// The facts, reading each field through `at` (text at a JSON pointer).
///
/// Identity comes from the operation, not from the first field found: with a
/// variant (v3 `connection`), only the named payload is read, and a value
/// poolgate does not know is refused; two identifier fields naming different
/// accounts are refused too.
pub(super) fn facts_with<'a>(
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
        |s: Option<Cow<'a, str>>| s.filter(|s| !fast_trim(s).is_empty()).map(Cow::into_owned);
    let country_code = nonblank(text(&fields.phone_country_code)?);
    let mut identifier: Option<Identifier> = None;
    for f in &fields.identifier {
        let Some(v) = at(&f.pointer)?.filter(|v| !fast_trim(v).is_empty()) else {
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
    fn encrypted_passwords_are_recognised() {
        let rsa = "A".repeat(172);
        let f = crate::routes::default_routes()
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
