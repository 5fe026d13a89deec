//! The raw user pool document as Authing sends it (`GET /api/v2/userpools/detail`).
//!
//! Authing's JSON has nulls where objects or numbers are expected, fields the
//! docs never mention, and its own spellings (`cahceConfig`). These types read
//! only what the gateway enforces, take `null` as "not set", ignore unknown
//! fields, and deliberately have no field for `secret` or `jwtSecret`, so those
//! can never be logged, served or written to a snapshot.

use serde::{Deserialize, Deserializer, Serialize};

/// The part of Authing's user pool detail that poolgate enforces.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolDetail {
    /// Pool id.
    #[serde(deserialize_with = "lenient_string")]
    pub id: Option<String>,
    /// Pool display name.
    #[serde(deserialize_with = "lenient_string")]
    pub name: Option<String>,
    /// Last change, as Authing reports it.
    #[serde(deserialize_with = "lenient_string")]
    pub updated_at: Option<String>,
    /// Login failures per client IP.
    #[serde(deserialize_with = "null_default")]
    pub login_fail_check: WindowCheck,
    /// Wrong passwords per account.
    #[serde(deserialize_with = "null_default")]
    pub login_password_fail_check: WindowCheck,
    /// What happens when `loginPasswordFailCheck` trips: `captcha` or `block-account`.
    #[serde(deserialize_with = "lenient_string")]
    pub login_fail_strategy: Option<String>,
    /// Registrations per client IP.
    #[serde(deserialize_with = "null_default")]
    pub frequent_register_check: WindowCheck,
    /// Newline-separated origins allowed to call from browsers; empty allows all.
    #[serde(deserialize_with = "lenient_string")]
    pub allowed_origins: Option<String>,
    /// No registration at all.
    #[serde(deserialize_with = "lenient_bool")]
    pub register_disabled: Option<bool>,
    /// Which identifier kinds must be on the whitelist to register.
    #[serde(deserialize_with = "null_default")]
    pub whitelist: WhitelistToggles,
    /// 0 none, 1-3 built-in levels, 4 custom regex, 5 server-side.
    #[serde(deserialize_with = "lenient_i64")]
    pub password_strength: Option<i64>,
    /// The regex and message of level 4.
    #[serde(deserialize_with = "null_default")]
    pub custom_password_strength: CustomPasswordStrength,
}

/// `{enabled, limit, timeInterval}`: at most `limit` events per `timeInterval` seconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WindowCheck {
    /// Whether the check applies.
    #[serde(deserialize_with = "lenient_bool")]
    pub enabled: Option<bool>,
    /// Events allowed per window.
    #[serde(deserialize_with = "lenient_i64")]
    pub limit: Option<i64>,
    /// Window length in seconds.
    #[serde(deserialize_with = "lenient_i64")]
    pub time_interval: Option<i64>,
}

/// `whitelist` toggles of the pool.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WhitelistToggles {
    /// Phone numbers must be whitelisted to register.
    #[serde(deserialize_with = "lenient_bool")]
    pub phone_enabled: Option<bool>,
    /// Emails must be whitelisted to register.
    #[serde(deserialize_with = "lenient_bool")]
    pub email_enabled: Option<bool>,
    /// Usernames must be whitelisted to register.
    #[serde(deserialize_with = "lenient_bool")]
    pub username_enabled: Option<bool>,
}

/// `customPasswordStrength`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomPasswordStrength {
    /// Whether the custom rule is on.
    #[serde(deserialize_with = "lenient_bool")]
    pub enabled: Option<bool>,
    /// The regex a password must match.
    #[serde(deserialize_with = "lenient_string")]
    pub regex: Option<String>,
    /// The message shown when it does not.
    #[serde(deserialize_with = "lenient_string")]
    pub message: Option<String>,
}

/// The pool's whitelist entries, by identifier kind.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhitelistEntries {
    /// Whitelisted usernames.
    #[serde(deserialize_with = "entry_list")]
    pub username: Vec<String>,
    /// Whitelisted emails.
    #[serde(deserialize_with = "entry_list")]
    pub email: Vec<String>,
    /// Whitelisted phone numbers.
    #[serde(deserialize_with = "entry_list")]
    pub phone: Vec<String>,
}

/// Why a document is not a pool detail.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or the wrong JSON shape.
    #[error("not a pool-detail document: {0}")]
    Json(#[from] serde_json::Error),
    /// The `{code, message, data}` envelope reports a failure.
    #[error("Authing answered code {code}: {message}")]
    Api {
        /// Authing's code.
        code: i64,
        /// Authing's message.
        message: String,
    },
    /// The envelope's `data` is null or missing.
    #[error("the response envelope carries no data")]
    NoData,
}

/// The `{code, message, data}` envelope Authing wraps API answers in.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default, deserialize_with = "lenient_i64")]
    code: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64", rename = "statusCode")]
    status_code: Option<i64>,
    #[serde(default, deserialize_with = "lenient_string")]
    message: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

impl PoolDetail {
    /// Parses either the API envelope or the bare pool object.
    pub fn from_json(bytes: &[u8]) -> Result<PoolDetail, ParseError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        let obj = value
            .as_object()
            .ok_or_else(|| serde::de::Error::custom("expected a JSON object"))
            .map_err(ParseError::Json)?;
        // The envelope has `data` and a `code`/`statusCode`; a bare pool has neither.
        let is_envelope = obj.contains_key("data")
            && (obj.contains_key("code") || obj.contains_key("statusCode"));
        let pool = if is_envelope {
            let env: Envelope = serde_json::from_value(value)?;
            let code = env.code.or(env.status_code).unwrap_or(200);
            if code != 200 {
                return Err(ParseError::Api {
                    code,
                    message: env.message.unwrap_or_default(),
                });
            }
            match env.data {
                Some(serde_json::Value::Null) | None => return Err(ParseError::NoData),
                Some(data) => serde_json::from_value(data)?,
            }
        } else {
            serde_json::from_value(value)?
        };
        Ok(pool)
    }
}

impl WhitelistEntries {
    /// Parses the whitelist file: `{"username": [...], "email": [...], "phone": [...]}`,
    /// each entry a string or an Authing whitelist object `{"value": ...}`.
    pub fn from_json(bytes: &[u8]) -> Result<WhitelistEntries, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A bool, `null`, or the strings `"true"`/`"false"`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) if s == "true" => Ok(Some(true)),
        Value::String(s) if s == "false" => Ok(Some(false)),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(Some(false)),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(Some(true)),
        other => Err(serde::de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

/// An integer, `null`, or an integer in a string (`"300"`).
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {n}"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {s:?}"))),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

/// A string or `null`; numbers become their decimal text.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, got {other}"
        ))),
    }
}

impl WhitelistEntries {
    /// Parses one list of entries (strings or `{value}` objects), as Authing's
    /// `whitelist(type)` query returns it.
    pub fn parse_list(v: serde_json::Value) -> Result<Vec<String>, serde_json::Error> {
        entry_list(v)
    }
}

/// A list of strings or of `{value: ...}` objects (Authing's whitelist query shape).
fn entry_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Plain(String),
        Object { value: String },
    }
    let list = Option::<Vec<Entry>>::deserialize(d)?.unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|e| match e {
            Entry::Plain(s) | Entry::Object { value: s } => s,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_object_with_nulls() {
        let json = br#"{"loginFailCheck": null, "passwordStrength": null,
            "whitelist": {"phoneEnabled": null}, "customDb": {"cahceConfig": null},
            "somethingNew": [1,2,3], "secret": "x", "jwtSecret": "y"}"#;
        let p = PoolDetail::from_json(json).unwrap();
        assert_eq!(p.login_fail_check, WindowCheck::default());
        assert_eq!(p.password_strength, None);
        let back = serde_json::to_string(&p).unwrap();
        assert!(!back.contains("secret") && !back.contains("jwtSecret"));
    }

    #[test]
    fn envelope_error_code_is_an_error() {
        let json = br#"{"code": 2020, "message": "no auth", "data": null}"#;
        match PoolDetail::from_json(json) {
            Err(ParseError::Api { code, message }) => {
                assert_eq!(code, 2020);
                assert_eq!(message, "no auth");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            PoolDetail::from_json(br#"{"code": 200, "data": null}"#),
            Err(ParseError::NoData)
        ));
    }

    #[test]
    fn numbers_as_strings() {
        let json =
            br#"{"loginFailCheck": {"enabled": "true", "limit": "5", "timeInterval": 60.0}}"#;
        let p = PoolDetail::from_json(json).unwrap();
        assert_eq!(p.login_fail_check.enabled, Some(true));
        assert_eq!(p.login_fail_check.limit, Some(5));
        assert_eq!(p.login_fail_check.time_interval, Some(60));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"<html>"[..],
            b"[]",
            b"\"x\"",
            b"{\"loginFailCheck\": 5}",
            b"",
        ] {
            assert!(PoolDetail::from_json(bad).is_err());
        }
    }

    #[test]
    fn whitelist_entries_both_shapes() {
        let w = WhitelistEntries::from_json(
            br#"{"email": ["A@x.com", {"value": "b@x.com", "createdAt": "t"}], "phone": null}"#,
        )
        .unwrap();
        assert_eq!(w.email, vec!["A@x.com", "b@x.com"]);
        assert!(w.phone.is_empty());
    }
}
