//! Guard `captcha`: the captcha a call over its failure limits sends (2001
//! when it is wrong, expired, unknown or another client's), and issuing one
//! (503 when too many are outstanding).

use std::time::Duration;

use http::StatusCode;

use super::{Guard, Rejection};
use crate::captcha::Rejected;

/// Reasons of guard `captcha`.
pub const REASONS: &[&str] = &[
    "captcha_unknown",
    "captcha_other_client",
    "captcha_expired",
    "captcha_wrong",
    "captcha_store_full",
];

/// What the captcha sent with a call said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaCheck {
    /// None sent, or not checked because no counter is over.
    NotSent,
    /// Solved: the call may pass the captcha-strategy limits.
    Solved,
    /// Wrong, expired, unknown or another client's (the reason label).
    Failed(&'static str),
}

impl From<Result<(), Rejected>> for CaptchaCheck {
    fn from(checked: Result<(), Rejected>) -> Self {
        match checked {
            Ok(()) => CaptchaCheck::Solved,
            Err(why) => CaptchaCheck::Failed(why.as_str()),
        }
    }
}

/// Authing's wrong-captcha answer (code 2001).
pub fn captcha_failed(reason: &'static str) -> Rejection {
    Rejection::business(Guard::Captcha, reason, 2001, "验证码验证失败(验证码错误)")
}

/// The answer when no captcha can be issued: too many outstanding.
pub fn store_full() -> Rejection {
    Rejection::http(
        Guard::Captcha,
        "captcha_store_full",
        StatusCode::SERVICE_UNAVAILABLE,
        "too many captchas outstanding, try again later",
    )
    .retry_after(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captcha_answer_is_a_check() {
        assert_eq!(CaptchaCheck::from(Ok(())), CaptchaCheck::Solved);
        assert_eq!(
            CaptchaCheck::from(Err(Rejected::Expired)),
            CaptchaCheck::Failed("captcha_expired")
        );
        let r = captcha_failed("captcha_wrong");
        assert_eq!(
            (r.guard, r.code, r.status.as_u16()),
            (Guard::Captcha, 2001, 200)
        );
        let full = store_full();
        assert_eq!(
            (full.code, full.retry_after),
            (503, Some(Duration::from_secs(5)))
        );
        for why in [
            Rejected::Unknown,
            Rejected::OtherClient,
            Rejected::Expired,
            Rejected::Wrong,
        ] {
            assert!(REASONS.contains(&why.as_str()));
        }
    }
}
