//! The guards: pure decisions over the compiled policy and a request's facts.
//!
//! Nothing here does I/O or holds a lock. The gateway gathers the facts (the
//! request's class, its body, what the counters answer) and carries out what
//! these functions decide; every rejection and every code poolgate answers
//! with is built here, one module per concern:
//!
//! | module | guard | decides |
//! |---|---|---|
//! | [`route`] | `route` | ambiguous paths (400), wrong methods (405) |
//! | [`cors`] | `cors` | `allowedOrigins` (403), preflights |
//! | [`body`] | `body` | body size (413), read time (408), unreadable or ambiguous bodies (400/415), a trusted backend's bad end-user IP (400) |
//! | [`rate_limit`] | `rate_limit` | 429 per route class; which requests are limited before their body is read |
//! | [`plan`] | — | which counters a call asks for, what a full or denied counter means, which outcome commits a slot |
//! | [`failures`] | `login_fail`, `password_fail` | captcha required (2000), account locked (2057) |
//! | [`captcha`] | `captcha` | wrong captcha (2001), captcha store full (503) |
//! | [`registration`] | `register_disabled`, `whitelist`, `password_strength`, `register_limit` | 2031, 2040, 2029/2061, 2100 |
//! | [`send_code`] | `send_code` | one-time codes sent too often (429) |
//! | [`store`] | `store` | the counter store unavailable (503), no policy yet (503) |
//! | [`outcome`] | — | how the upstream's answer is read per call |
//!
//! Each rejection names its [`Guard`] and reason (metric labels and log
//! fields) and carries Authing's code and message. A request collects every
//! violation; [`enforced`] picks the one that answers it, so a guard in dry
//! run never hides another's verdict.

pub mod body;
pub mod captcha;
pub mod cors;
pub mod failures;
pub mod outcome;
pub mod plan;
pub mod rate_limit;
pub mod registration;
pub mod route;
pub mod send_code;
pub mod store;

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

pub use captcha::{captcha_failed, CaptchaCheck};
pub use failures::{captcha_can_help, captcha_required, failure_violations, Over};
pub use registration::{
    password_strength, register_too_frequent, registration, registration_violations, WHITELIST_CODE,
};
pub use send_code::send_code_limited;

/// A guard: the name of a decision, as written in `guards.dry_run_guards`,
/// the `guard` label of the metrics and the `guard` field of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// `allowedOrigins`.
    Cors,
    /// The per-client rate limits of `[rate_limit]`.
    RateLimit,
    /// Ambiguous paths and wrong methods on guarded routes.
    Route,
    /// Request bodies: size, read time, shape; a trusted backend's end-user IP.
    Body,
    /// `loginFailCheck` (per client).
    LoginFail,
    /// `loginPasswordFailCheck` and `loginFailStrategy` (per account).
    PasswordFail,
    /// The captcha sent with a call over a failure limit, and captcha issue.
    Captcha,
    /// `registerDisabled`.
    RegisterDisabled,
    /// `frequentRegisterCheck`.
    RegisterLimit,
    /// The registration whitelist.
    Whitelist,
    /// `passwordStrength`.
    PasswordStrength,
    /// `guards.send_code`.
    SendCode,
    /// The counter store (Redis with `fallback = "closed"`).
    Store,
}

impl Guard {
    /// Every guard, in the order of the table in docs/architecture.md.
    pub const ALL: [Guard; 13] = [
        Guard::Cors,
        Guard::RateLimit,
        Guard::Route,
        Guard::Body,
        Guard::LoginFail,
        Guard::PasswordFail,
        Guard::Captcha,
        Guard::RegisterDisabled,
        Guard::RegisterLimit,
        Guard::Whitelist,
        Guard::PasswordStrength,
        Guard::SendCode,
        Guard::Store,
    ];

    /// Its name (the serde name): metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Cors => "cors",
            Guard::RateLimit => "rate_limit",
            Guard::Route => "route",
            Guard::Body => "body",
            Guard::LoginFail => "login_fail",
            Guard::PasswordFail => "password_fail",
            Guard::Captcha => "captcha",
            Guard::RegisterDisabled => "register_disabled",
            Guard::RegisterLimit => "register_limit",
            Guard::Whitelist => "whitelist",
            Guard::PasswordStrength => "password_strength",
            Guard::SendCode => "send_code",
            Guard::Store => "store",
        }
    }

    /// Every reason a rejection of this guard can carry (metric labels made
    /// at zero), as its module lists them.
    pub fn reasons(self) -> &'static [&'static str] {
        match self {
            Guard::Cors => cors::REASONS,
            Guard::RateLimit => rate_limit::REASONS,
            Guard::Route => route::REASONS,
            Guard::Body => body::REASONS,
            Guard::LoginFail => failures::LOGIN_FAIL_REASONS,
            Guard::PasswordFail => failures::PASSWORD_FAIL_REASONS,
            Guard::Captcha => captcha::REASONS,
            Guard::RegisterDisabled => registration::REGISTER_DISABLED_REASONS,
            Guard::RegisterLimit => registration::REGISTER_LIMIT_REASONS,
            Guard::Whitelist => registration::WHITELIST_REASONS,
            Guard::PasswordStrength => registration::PASSWORD_STRENGTH_REASONS,
            Guard::SendCode => send_code::REASONS,
            Guard::Store => store::REASONS,
        }
    }
}

impl std::fmt::Display for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the guards refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The guard.
    pub guard: Guard,
    /// Why, in a word (metric label).
    pub reason: &'static str,
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Authing's code.
    pub code: i64,
    /// Authing's message.
    pub message: Cow<'static, str>,
    /// When a retry can succeed.
    pub retry_after: Option<Duration>,
}

impl Rejection {
    /// A business-rule rejection: like Authing, HTTP 200 with the code in the body.
    pub fn business(
        guard: Guard,
        reason: &'static str,
        code: i64,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            guard,
            reason,
            status: StatusCode::OK,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A transport-level rejection (400, 403, 413, 415, 429...).
    pub fn http(
        guard: Guard,
        reason: &'static str,
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            guard,
            reason,
            status,
            code: i64::from(status.as_u16()),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
}

/// Orders a request's violations by call (a stable sort: within a call, the
/// order its rules were checked) and picks the one that answers it: the
/// first whose guard is not in dry run (`shadowed`), or none. Every other
/// violation whose guard is shadowed is to be logged as a dry-run verdict.
pub fn enforced(
    violations: &mut [(usize, Rejection)],
    shadowed: impl Fn(Guard) -> bool,
) -> Option<usize> {
    violations.sort_by_key(|(call, _)| *call);
    violations.iter().position(|(_, r)| !shadowed(r.guard))
}
