//! Reading the upstream's answer to a login or registration: did it succeed?
//!
//! v2 REST: `code` 200 is success (2006/2333 wrong password); v3:
//! `statusCode` 200 (`apiCode` for the reason); GraphQL: `errors[0].message.code`.
//! Newer servers send `statusCode`/`apiCode` on v2 too.
//!
//! A GraphQL request may hold several guarded fields, and a batch is an
//! array of requests answered by an array: each call's verdict is read from
//! its own place ([`Place`]): its batch element, its `data` key, the errors
//! whose `path` names it. An answer that cannot be read for a call is never
//! a success for it ([`Outcome::Unreadable`]).

use http::StatusCode;
use serde_json::Value;

/// What the upstream said about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// Wrong password for an existing account (2006, 2333).
    WrongPassword,
    /// It failed for another reason (unknown user 2004, wrong code, ...).
    Failed,
    /// No verdict because the upstream failed (5xx, an answer that broke
    /// off, compressed or too large to read): counted as neither.
    Unknown,
    /// The answer arrived but says nothing readable about this call (not
    /// JSON, no element or key for it): never a success, so it counts
    /// against the client's failure limit and against registration and
    /// send limits, but not against an account.
    Unreadable,
}

impl Outcome {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::WrongPassword => "wrong_password",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
            Outcome::Unreadable => "unreadable",
        }
    }
}

fn from_code(code: i64) -> Outcome {
    match code {
        200 => Outcome::Success,
        2006 | 2333 => Outcome::WrongPassword,
        _ => Outcome::Failed,
    }
}

/// Where a call's verdict is in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The whole answer (REST).
    Whole,
    /// A GraphQL field.
    Graphql {
        /// Its request's index in a batch (the answer is then an array).
        batch: Option<usize>,
        /// Its key in `data` (alias or field name).
        key: String,
        /// Whether it is the only guarded field of its request: then errors
        /// without a `path` are its own.
        alone: bool,
    },
}

/// Judges one answer for each call, from its status and (uncompressed) body.
pub fn judge_calls(status: StatusCode, body: Option<&[u8]>, places: &[Place]) -> Vec<Outcome> {
    let Some(body) = body.filter(|_| !status.is_server_error()) else {
        return vec![Outcome::Unknown; places.len()];
    };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    places
        .iter()
        .map(|place| match place {
            Place::Whole => judge(status, Some(body)),
            Place::Graphql { batch, key, alone } => {
                let Some(v) = parsed.as_ref() else {
                    return if status.is_client_error() {
                        Outcome::Failed
                    } else {
                        Outcome::Unreadable
                    };
                };
                let element = match batch {
                    None if v.is_object() => Some(v),
                    Some(i) => v.as_array().and_then(|a| a.get(*i)),
                    None => None,
                };
                element.map_or(Outcome::Unreadable, |e| graphql_field(e, key, *alone))
            }
        })
        .collect()
}

/// The verdict of the field `key` in one GraphQL answer object.
fn graphql_field(answer: &Value, key: &str, alone: bool) -> Outcome {
    // A field that is not alone cannot claim errors that name no path as a
    // verdict on itself alone, but they still apply to it: never a success.
    let _ = alone;
    let errors = answer
        .get("errors")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    // Errors that name this field, or that name no field at all (they are
    // about the whole request, and so about this field too).
    let mine = errors.iter().find(|e| {
        match e
            .get("path")
            .and_then(Value::as_array)
            .and_then(|p| p.first())
        {
            Some(first) => first.as_str() == Some(key),
            None => true,
        }
    });
    if let Some(e) = mine {
        let code = e
            .pointer("/message/code")
            .and_then(Value::as_i64)
            .or_else(|| e.pointer("/extensions/code").and_then(Value::as_i64));
        return code.map_or(Outcome::Failed, from_code).min_failed();
    }
    match answer.get("data").and_then(|d| d.get(key)) {
        Some(Value::Null) => Outcome::Failed,
        Some(_) => Outcome::Success,
        // No value for this field: whatever happened, not a success.
        None => Outcome::Unreadable,
    }
}

/// Judges an answer from its status and (uncompressed) body, if read.
pub fn judge(status: StatusCode, body: Option<&[u8]>) -> Outcome {
    // A 5xx, or an answer we could not read (compressed, too large), has no
    // verdict: it must not lock anyone out.
    let Some(body) = body.filter(|_| !status.is_server_error()) else {
        return Outcome::Unknown;
    };
    let body = Some(body);
    let parsed: Option<Value> = body.and_then(|b| serde_json::from_slice(b).ok());
    let Some(v) = parsed else {
        // Not JSON: a client error is a failure; anything else cannot be read.
        return if status.is_client_error() {
            Outcome::Failed
        } else {
            Outcome::Unreadable
        };
    };
    if !v.is_object() {
        // An array (a batch's answer) or a scalar says nothing about one call.
        return Outcome::Unreadable;
    }
    let int = |k: &str| v.get(k).and_then(Value::as_i64);
    if let Some(errors) = v
        .get("errors")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        let code = errors[0]
            .pointer("/message/code")
            .and_then(Value::as_i64)
            .or_else(|| {
                errors[0]
                    .pointer("/extensions/code")
                    .and_then(Value::as_i64)
            });
        return code.map_or(Outcome::Failed, from_code).min_failed();
    }
    if let Some(api) = int("apiCode") {
        if int("statusCode").or(int("code")) != Some(200) {
            return from_code(api).min_failed();
        }
    }
    if let Some(code) = int("code").or(int("statusCode")) {
        return from_code(code);
    }
    if v.get("data").is_some() && status.is_success() {
        return Outcome::Success;
    }
    if status.is_success() {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

trait MinFailed {
    fn min_failed(self) -> Outcome;
}
impl MinFailed for Outcome {
    /// An error answer is never a success, whatever its inner code says.
    fn min_failed(self) -> Outcome {
        if self == Outcome::Success {
            Outcome::Failed
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Outcome {
        judge(StatusCode::OK, Some(s.as_bytes()))
    }

    #[test]
    fn shapes() {
        assert_eq!(
            j(r#"{"code":200,"message":"ok","data":{}}"#),
            Outcome::Success
        );
        assert_eq!(
            j(r#"{"code":2333,"message":"账号或密码错误","data":null}"#),
            Outcome::WrongPassword
        );
        assert_eq!(j(r#"{"code":2006,"message":"x"}"#), Outcome::WrongPassword);
        assert_eq!(j(r#"{"code":2004,"message":"no user"}"#), Outcome::Failed);
        assert_eq!(j(r#"{"statusCode":200,"data":{}}"#), Outcome::Success);
        assert_eq!(
            j(r#"{"statusCode":400,"apiCode":2333,"message":"x"}"#),
            Outcome::WrongPassword
        );
        assert_eq!(
            j(r#"{"data":null,"errors":[{"message":{"code":2333,"message":"x"}}]}"#),
            Outcome::WrongPassword
        );
        assert_eq!(
            j(r#"{"data":null,"errors":[{"message":"boom"}]}"#),
            Outcome::Failed
        );
        assert_eq!(
            j(r#"{"data":{"loginByEmail":{"id":"1"}}}"#),
            Outcome::Success
        );
        assert_eq!(judge(StatusCode::BAD_GATEWAY, None), Outcome::Unknown);
        assert_eq!(
            judge(StatusCode::UNAUTHORIZED, Some(b"nope")),
            Outcome::Failed
        );
        assert_eq!(judge(StatusCode::OK, None), Outcome::Unknown);
        // Unreadable is never a success.
        assert_eq!(j("<html>welcome</html>"), Outcome::Unreadable);
        assert_eq!(
            j(r#"[{"data":{"loginByEmail":{"id":"1"}}}]"#),
            Outcome::Unreadable
        );
    }

    fn gql(batch: Option<usize>, key: &str, alone: bool) -> Place {
        Place::Graphql {
            batch,
            key: key.into(),
            alone,
        }
    }

    #[test]
    fn each_graphql_call_is_read_from_its_own_place() {
        let ok = StatusCode::OK;
        // A batch: element 0 failed with 2333, element 1 succeeded.
        let b = br#"[{"data":null,"errors":[{"message":{"code":2333,"message":"x"}}]},
                     {"data":{"loginByEmail":{"id":"1"}}}]"#;
        assert_eq!(
            judge_calls(
                ok,
                Some(b),
                &[
                    gql(Some(0), "loginByEmail", true),
                    gql(Some(1), "loginByEmail", true)
                ]
            ),
            vec![Outcome::WrongPassword, Outcome::Success]
        );
        // A batch answered by one object: nothing can be read per element.
        let one = br#"{"data":{"loginByEmail":{"id":"1"}}}"#;
        assert_eq!(
            judge_calls(ok, Some(one), &[gql(Some(0), "loginByEmail", true)]),
            vec![Outcome::Unreadable]
        );
        // A missing element is no success either.
        assert_eq!(
            judge_calls(ok, Some(b), &[gql(Some(5), "loginByEmail", true)]),
            vec![Outcome::Unreadable]
        );
        // Aliases: errors with a path name their field; errors without one
        // are every field's.
        let a = br#"{"data":{"a":{"id":"1"},"b":null},"errors":[{"path":["b"],"message":{"code":2333}}]}"#;
        assert_eq!(
            judge_calls(ok, Some(a), &[gql(None, "a", false), gql(None, "b", false)]),
            vec![Outcome::Success, Outcome::WrongPassword]
        );
        let all = br#"{"data":null,"errors":[{"message":{"code":2333}}]}"#;
        assert_eq!(
            judge_calls(
                ok,
                Some(all),
                &[gql(None, "a", false), gql(None, "b", false)]
            ),
            vec![Outcome::WrongPassword, Outcome::WrongPassword]
        );
        assert_eq!(
            judge_calls(ok, Some(b"not json"), &[gql(None, "a", true)]),
            vec![Outcome::Unreadable]
        );
        assert_eq!(
            judge_calls(StatusCode::BAD_GATEWAY, Some(one), &[gql(None, "a", true)]),
            vec![Outcome::Unknown]
        );
    }
}
