//! Guard `store`: what poolgate answers when it cannot consult its state —
//! the counter store down with `fallback = "closed"` (503), or no policy in
//! force yet (503, counted as `policy_not_ready`, no guard).

use std::time::Duration;

use http::StatusCode;

use super::{Guard, Rejection};

/// Reasons of guard `store`.
pub const REASONS: &[&str] = &["store_unavailable"];

/// The answer when the shared store is down and its fallback is `closed`.
pub fn unavailable() -> Rejection {
    Rejection::http(
        Guard::Store,
        "store_unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        "the counter store is unavailable, try again later",
    )
    .retry_after(Duration::from_secs(5))
}

/// The answer before any policy is in force: fail closed, nothing can be
/// judged. Not a guard's verdict (there is no policy to shadow), so it is a
/// status, a code, a message and the `rejections_total` reason.
pub const NO_POLICY: (StatusCode, i64, &str, &str) = (
    StatusCode::SERVICE_UNAVAILABLE,
    503,
    "poolgate has no policy in force yet",
    "policy_not_ready",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_a_503_to_retry() {
        let r = unavailable();
        assert_eq!((r.guard, r.code), (Guard::Store, 503));
        assert_eq!(r.retry_after, Some(Duration::from_secs(5)));
        assert_eq!(NO_POLICY.1, 503);
    }
}
