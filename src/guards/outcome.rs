//! Reading the upstream's answer to a login or registration: did it succeed?
//!
//! v2 REST: `code` 200 is success (2006/2333 wrong password); v3:
//! `statusCode` 200 (`apiCode` for the reason); GraphQL: `errors[0].message.code`.
//! Newer servers send `statusCode`/`apiCode` on v2 too.

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
    /// No verdict (upstream error, unreadable answer): counted as neither.
    Unknown,
}

impl Outcome {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::WrongPassword => "wrong_password",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
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
        // Not JSON: only the status can tell.
        return if status.is_success() {
            if body.is_some() {
                Outcome::Success
            } else {
                Outcome::Unknown
            }
        } else if status.is_client_error() {
            Outcome::Failed
        } else {
            Outcome::Unknown
        };
    };
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
    }
}
