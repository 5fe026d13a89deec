//! Per-client rate limits by route class (governor, keyed GCRA).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::classify::RouteKind;
use crate::config::{Rate, RateLimitConfig};

/// One limiter per route class; `None` where the class is not limited.
pub struct RateLimits {
    login: Option<DefaultKeyedRateLimiter<u128>>,
    register: Option<DefaultKeyedRateLimiter<u128>>,
    password: Option<DefaultKeyedRateLimiter<u128>>,
    captcha: Option<DefaultKeyedRateLimiter<u128>>,
    other: Option<DefaultKeyedRateLimiter<u128>>,
    clock: DefaultClock,
}

fn limiter(r: Rate) -> Option<DefaultKeyedRateLimiter<u128>> {
    let per_second = NonZeroU32::new(r.per_second)?;
    // An unset burst means one second's worth, not a burst of one.
    let burst = NonZeroU32::new(r.burst).unwrap_or(per_second);
    Some(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

impl RateLimits {
    /// Limiters for the configured rates.
    pub fn new(cfg: &RateLimitConfig) -> Self {
        RateLimits {
            login: limiter(cfg.login),
            register: limiter(cfg.register),
            password: limiter(cfg.password),
            captcha: limiter(cfg.captcha),
            other: limiter(cfg.other),
            clock: DefaultClock::default(),
        }
    }

    fn for_kind(&self, kind: RouteKind) -> Option<&DefaultKeyedRateLimiter<u128>> {
        match kind {
            RouteKind::Login => self.login.as_ref(),
            RouteKind::Register => self.register.as_ref(),
            RouteKind::Password => self.password.as_ref(),
            RouteKind::CaptchaV2 | RouteKind::CaptchaV3 => self.captcha.as_ref(),
            RouteKind::Graphql | RouteKind::Other => self.other.as_ref(),
        }
    }

    /// `Err(wait)` when `key` is over its class's rate.
    #[inline]
    pub fn check(&self, kind: RouteKind, key: u128) -> Result<(), Duration> {
        match self.for_kind(kind) {
            None => Ok(()),
            Some(l) => l
                .check_key(&key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets idle keys; returns the keys still tracked.
    pub fn sweep(&self) -> usize {
        let mut n = 0;
        for l in [
            &self.login,
            &self.register,
            &self.password,
            &self.captcha,
            &self.other,
        ]
        .into_iter()
        .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
            n += l.len();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_wait() {
        let cfg = RateLimitConfig {
            login: Rate {
                per_second: 1,
                burst: 2,
            },
            ..RateLimitConfig::default()
        };
        let r = RateLimits::new(&cfg);
        assert!(r.check(RouteKind::Login, 1).is_ok());
        assert!(r.check(RouteKind::Login, 1).is_ok());
        let wait = r.check(RouteKind::Login, 1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            r.check(RouteKind::Login, 2).is_ok(),
            "other keys are independent"
        );
        assert!(
            r.check(RouteKind::Other, 1).is_ok(),
            "other is off by default"
        );
    }

    #[test]
    fn unset_burst_is_one_seconds_worth() {
        let cfg = RateLimitConfig {
            register: Rate {
                per_second: 3,
                burst: 0,
            },
            ..RateLimitConfig::default()
        };
        let r = RateLimits::new(&cfg);
        for _ in 0..3 {
            assert!(r.check(RouteKind::Register, 1).is_ok());
        }
        assert!(r.check(RouteKind::Register, 1).is_err());
    }
}
