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
        /// Its key in `data` (alias or field name). Errors without a `path`
        /// are about the whole request: they apply to each of its fields.
        key: String,
    },
}

/// One verdict per call of a request: inline for the usual one or two
/// calls (a login is one), so judging allocates nothing.
pub type Verdicts = smallvec::SmallVec<[Outcome; 2]>;

/// Judges one answer for each call, from its status and (uncompressed) body.
pub fn judge_calls(status: StatusCode, body: Option<&[u8]>, places: &[Place]) -> Verdicts {
    let Some(body) = body.filter(|_| !status.is_server_error()) else {
        return smallvec::smallvec![Outcome::Unknown; places.len()];
    };
    // Only a GraphQL place reads the tree; a REST answer is judged by `judge`.
    let graphql = places.iter().any(|p| matches!(p, Place::Graphql { .. }));
    let parsed: Option<Value> = graphql.then(|| serde_json::from_slice(body).ok()).flatten();
    places
        .iter()
        .map(|place| match place {
            Place::Whole => judge(status, Some(body)),
            Place::Graphql { batch, key } => {
                let Some(v) = parsed.as_ref() else {
                    return not_json(status);
                };
                let element = match batch {
                    None if v.is_object() => Some(v),
                    Some(i) => v.as_array().and_then(|a| a.get(*i)),
                    None => None,
                };
                element.map_or(Outcome::Unreadable, |e| graphql_field(e, key))
            }
        })
        .collect()
}

/// The verdict of the field `key` in one GraphQL answer object.
fn graphql_field(answer: &Value, key: &str) -> Outcome {
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
    judge_fast(status, body).unwrap_or_else(|| judge_reference(status, body))
}

/// An answer read from its top-level members as the request side's JSON
/// scanner meets them (one pass, no tree, no list; building a
/// `serde_json::Value` here was ~12% of a login's instructions). `None` for
/// an answer with `errors`, which [`judge_reference`] reads. The property test holds the two to the same
/// verdicts; they differ only on numbers outside f64's range, which the
/// reference refuses as JSON and this reads as no code.
fn judge_fast(status: StatusCode, body: &[u8]) -> Option<Outcome> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(not_json(status));
    }
    // The usual answer: read member by member as scanned, nothing collected.
    let mut seen = Codes::default();
    let scanned = std::str::from_utf8(body)
        .ok()
        .and_then(|s| crate::extract::json::visit_object(s, |k, raw| seen.see(k, raw)));
    if scanned.is_some() {
        return seen.verdict(status);
    }
    // What the scanner leaves to serde_json (escaped keys, arrays, errors in
    // the syntax): its lazy document, from scratch (the scanner, which
    // `LazyJson::parse` would try first, has just refused it).
    let Ok(doc) = crate::extract::json::LazyJson::parse_reference(body) else {
        return Some(not_json(status));
    };
    // An array (a batch's answer) or a scalar says nothing about one call.
    let Some(members) = doc.members() else {
        return Some(Outcome::Unreadable);
    };
    let mut seen = Codes::default();
    for (key, raw) in members {
        seen.see(key, raw);
    }
    seen.verdict(status)
}

/// The top-level members [`judge_fast`] reads, as it meets them.
#[derive(Default)]
struct Codes {
    code: Option<Option<i64>>,
    status_code: Option<Option<i64>>,
    api_code: Option<Option<i64>>,
    errors: bool,
}

impl Codes {
    fn see(&mut self, key: &str, raw: &str) {
        // serde_json's map keeps the last of duplicate keys: so does this.
        match key {
            "errors" => self.errors = true,
            "code" => self.code = Some(as_i64(raw)),
            "statusCode" => self.status_code = Some(as_i64(raw)),
            "apiCode" => self.api_code = Some(as_i64(raw)),
            _ => {}
        }
    }

    /// `None` for an answer with `errors`, which [`judge_reference`] reads.
    fn verdict(self, status: StatusCode) -> Option<Outcome> {
        if self.errors {
            return None;
        }
        let (code, status_code, api_code) = (
            self.code.flatten(),
            self.status_code.flatten(),
            self.api_code.flatten(),
        );
        if let Some(api) = api_code {
            if status_code.or(code) != Some(200) {
                return Some(from_code(api).min_failed());
            }
        }
        if let Some(c) = code.or(status_code) {
            return Some(from_code(c));
        }
        Some(if status.is_success() {
            Outcome::Success
        } else {
            Outcome::Failed
        })
    }
}

/// An answer that is not JSON: a client error is a failure; anything else
/// cannot be read.
fn not_json(status: StatusCode) -> Outcome {
    if status.is_client_error() {
        Outcome::Failed
    } else {
        Outcome::Unreadable
    }
}

/// `Value::as_i64` of a raw JSON value the scanner checked: an integer
/// without fraction or exponent that fits an i64 (serde_json reads `-0` as
/// the float -0.0, so not that).
fn as_i64(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || raw == "-0" {
        return None;
    }
    raw.parse().ok()
}

/// [`judge`] through a whole `serde_json::Value`: every answer shape, and the
/// reference [`judge_fast`] is tested against.
#[doc(hidden)]
pub fn judge_reference(status: StatusCode, body: &[u8]) -> Outcome {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some(v) = parsed else {
        return not_json(status);
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

    fn gql(batch: Option<usize>, key: &str) -> Place {
        Place::Graphql {
            batch,
            key: key.into(),
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
                &[gql(Some(0), "loginByEmail"), gql(Some(1), "loginByEmail")]
            )
            .as_slice(),
            &[Outcome::WrongPassword, Outcome::Success]
        );
        // A batch answered by one object: nothing can be read per element.
        let one = br#"{"data":{"loginByEmail":{"id":"1"}}}"#;
        assert_eq!(
            judge_calls(ok, Some(one), &[gql(Some(0), "loginByEmail")]).as_slice(),
            &[Outcome::Unreadable]
        );
        // A missing element is no success either.
        assert_eq!(
            judge_calls(ok, Some(b), &[gql(Some(5), "loginByEmail")]).as_slice(),
            &[Outcome::Unreadable]
        );
        // Aliases: errors with a path name their field; errors without one
        // are every field's.
        let a = br#"{"data":{"a":{"id":"1"},"b":null},"errors":[{"path":["b"],"message":{"code":2333}}]}"#;
        assert_eq!(
            judge_calls(ok, Some(a), &[gql(None, "a"), gql(None, "b")]).as_slice(),
            &[Outcome::Success, Outcome::WrongPassword]
        );
        let all = br#"{"data":null,"errors":[{"message":{"code":2333}}]}"#;
        assert_eq!(
            judge_calls(ok, Some(all), &[gql(None, "a"), gql(None, "b")]).as_slice(),
            &[Outcome::WrongPassword, Outcome::WrongPassword]
        );
        assert_eq!(
            judge_calls(ok, Some(b"not json"), &[gql(None, "a")]).as_slice(),
            &[Outcome::Unreadable]
        );
        assert_eq!(
            judge_calls(StatusCode::BAD_GATEWAY, Some(one), &[gql(None, "a")]).as_slice(),
            &[Outcome::Unknown]
        );
    }

    #[test]
    fn the_fast_judge_reads_authing_answers_like_the_reference() {
        let cases: [(&[u8], Outcome); 11] = [
            (
                br#"{"code":200,"message":"ok","data":{"token":"t"}}"#,
                Outcome::Success,
            ),
            (
                br#"{"code":2333,"message":"wrong","data":null}"#,
                Outcome::WrongPassword,
            ),
            (
                br#"{"statusCode":400,"apiCode":2006,"message":"x"}"#,
                Outcome::WrongPassword,
            ),
            // apiCode is the reason only when the status is not 200.
            (br#"{"statusCode":200,"apiCode":2006}"#, Outcome::Success),
            (br#"{"code":2004}"#, Outcome::Failed),
            // The last of duplicates counts, as in serde_json's map.
            (br#"{"code":200,"code":2333}"#, Outcome::WrongPassword),
            // Not integers: no code read.
            (br#"{"code":"200","statusCode":2.0e2}"#, Outcome::Success),
            (br#"{"code":-0}"#, Outcome::Success),
            (br#"{"code":9223372036854775808}"#, Outcome::Success),
            // The scanner meets a code, then gives up (a leading zero, an
            // escaped key): serde_json decides.
            (br#"{"code":2333,"x":01}"#, Outcome::Unreadable),
            (br#"{"code":2333,"co\u0064e":200}"#, Outcome::Success),
        ];
        for (body, want) in cases {
            let text = String::from_utf8_lossy(body);
            assert!(judge_fast(StatusCode::OK, body).is_some(), "{text}");
            assert_eq!(judge(StatusCode::OK, Some(body)), want, "{text}");
            assert_eq!(judge_reference(StatusCode::OK, body), want, "{text}");
        }
        // Left to the reference: errors.
        assert!(judge_fast(StatusCode::OK, br#"{"errors":[]}"#).is_none());
        // Escaped keys, arrays, not JSON, nothing, out-of-range numbers.
        let ok = StatusCode::OK;
        let fast = |status, body: &[u8]| judge_fast(status, body);
        assert_eq!(
            fast(ok, br#"{"co\u0064e":2333}"#),
            Some(Outcome::WrongPassword)
        );
        assert_eq!(fast(ok, b"[1]"), Some(Outcome::Unreadable));
        assert_eq!(fast(ok, b"{"), Some(Outcome::Unreadable));
        assert_eq!(fast(StatusCode::BAD_REQUEST, b" "), Some(Outcome::Failed));
        let far = br#"{"code":2333,"n":1e999}"#;
        assert_eq!(fast(ok, far), Some(Outcome::WrongPassword));
        assert_eq!(judge_reference(ok, far), Outcome::Unreadable);
    }

    /// The fast judge against the reference on generated answers: whenever it
    /// answers, it answers the same, for any status.
    mod fast_judge_agrees_with_reference {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "200",
                "2333",
                "2006",
                "2004",
                "-1",
                "-0",
                "0",
                "200.0",
                "2e2",
                "1E3",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775809",
                "\"200\"",
                "null",
                "true",
                "[]",
                "[200]",
                "{}",
                r#"{"code":2333}"#,
                r#"[{"message":{"code":2333}}]"#,
                "\"a\\\"b\"",
            ])
            .prop_map(str::to_string)
        }

        fn answer() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "code",
                "statusCode",
                "apiCode",
                "errors",
                "data",
                "message",
                "Code",
                "x",
            ]);
            prop::collection::vec(
                (key, value(), prop::sample::select(vec!["", " ", "\n"])),
                0..6,
            )
            .prop_map(|members| {
                let m: Vec<String> = members
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", m.join(","))
            })
        }

        fn check(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
            let status =
                StatusCode::from_u16(status).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // The one documented difference: a number outside f64's range.
            let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            if json && serde_json::from_slice::<Value>(body).is_err() {
                return Ok(());
            }
            if let Some(fast) = judge_fast(status, body) {
                prop_assert_eq!(
                    fast,
                    judge_reference(status, body),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn on_generated_answers(body in answer(), status in prop::sample::select(vec![200u16, 201, 302, 400, 401, 403, 429])) {
                check(status, body.as_bytes())?;
            }

            #[test]
            fn on_mutated_answers(body in answer(), edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                    b"{}[]\":,\\ 0123456789-.eE".to_vec())), 1..4)) {
                let b = crate::extract::json::tests::scanner_agrees_with_serde::mutate(body.into_bytes(), edits);
                check(200, &b)?;
            }
        }
    }
}
