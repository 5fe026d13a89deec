//! Guard `rate_limit`: the per-client rate limit of each route class
//! (`[rate_limit]`), answered with 429 and `Retry-After`, and which requests
//! are limited before their body is read. (The limiters' state is in
//! [`super::ratelimit`], on its way to the state layer.)

use std::time::Duration;

use http::StatusCode;

use super::{Guard, Rejection};
use crate::routes::RouteKind;

/// Reasons of guard `rate_limit`: the route classes (`RouteKind::as_str`).
pub const REASONS: &[&str] = &[
    "login",
    "register",
    "password",
    "send_code",
    "verify",
    "captcha",
    "other",
];

/// Whether requests of `kind` are guarded: their body is read and judged.
pub fn guarded(kind: RouteKind) -> bool {
    matches!(
        kind,
        RouteKind::Login
            | RouteKind::Register
            | RouteKind::Password
            | RouteKind::SendCode
            | RouteKind::Verify
            | RouteKind::Graphql
    )
}

/// Whether a request of `kind` is rate-limited before its body is read.
/// GraphQL is limited by the calls it turns out to make, and a trusted
/// backend's guarded request by the end users it names: one token per call
/// once the body is read ([`per_call`]).
pub fn up_front(kind: RouteKind, via_backend: bool) -> bool {
    kind != RouteKind::Graphql && !(guarded(kind) && via_backend)
}

/// Whether a guarded request of `kind` is rate-limited per call, once its
/// calls are known (what [`up_front`] left out).
pub fn per_call(kind: RouteKind, via_backend: bool) -> bool {
    kind == RouteKind::Graphql || via_backend
}

/// The answer over the rate limit of `kind`, to retry after `wait` (rounded
/// up to whole seconds, at least one).
pub fn limited(kind: RouteKind, wait: Duration) -> Rejection {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Rejection::http(
        Guard::RateLimit,
        kind.as_str(),
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests",
    )
    .retry_after(Duration::from_secs(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_limited_when() {
        assert!(up_front(RouteKind::Login, false));
        assert!(!up_front(RouteKind::Login, true));
        assert!(up_front(RouteKind::Other, true));
        assert!(up_front(RouteKind::CaptchaV2, true));
        assert!(!up_front(RouteKind::Graphql, false));
        assert!(per_call(RouteKind::Graphql, false));
        assert!(per_call(RouteKind::Register, true));
        assert!(!per_call(RouteKind::Register, false));
    }

    #[test]
    fn the_wait_is_rounded_up_to_a_second() {
        let r = limited(RouteKind::Login, Duration::from_millis(1500));
        assert_eq!((r.reason, r.code), ("login", 429));
        assert_eq!(r.retry_after, Some(Duration::from_secs(2)));
        let r = limited(RouteKind::Other, Duration::ZERO);
        assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
        assert!(REASONS.contains(&RouteKind::CaptchaV3.as_str()));
    }
}
