//! Guard `send_code`: one-time codes sent too often, per client or per
//! recipient (`guards.send_code`), answered with 429 and `Retry-After`.

use std::time::Duration;

use http::StatusCode;

use super::{Guard, Rejection};

/// Reasons of guard `send_code`.
pub const REASONS: &[&str] = &["client_limit", "recipient_limit"];

/// How long a send refused because its counter is full should wait.
pub const FULL_RETRY: Duration = Duration::from_secs(10);

/// The answer when one-time codes were sent too often (per client or per
/// recipient): HTTP 429 with `Retry-After`.
pub fn send_code_limited(reason: &'static str, wait: Duration) -> Rejection {
    Rejection::http(
        Guard::SendCode,
        reason,
        StatusCode::TOO_MANY_REQUESTS,
        "too many one-time codes sent, try again later",
    )
    .retry_after(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_codes_is_a_429_with_its_wait() {
        let r = send_code_limited("client_limit", Duration::from_secs(7));
        assert_eq!((r.guard, r.code), (Guard::SendCode, 429));
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
    }
}
