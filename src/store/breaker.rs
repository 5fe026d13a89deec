//! A circuit breaker for the shared store: after `threshold` consecutive
//! failures, calls are not attempted for `cooldown`, so a Redis outage costs
//! the request path nothing but the fallback. After the cooldown calls go
//! through again; the first success closes the breaker, a failure reopens it.
//!
//! Lock-free: two atomics, read on every call.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The breaker's state and settings.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    epoch: Instant,
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed (under the threshold).
    No,
    /// This failure opened it.
    Opened,
    /// It was already open (a trial call after the cooldown failed).
    Reopened,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may be attempted now.
    #[inline]
    pub fn allows(&self) -> bool {
        self.allows_at(self.now_ms())
    }

    /// [`Self::allows`] at a given clock (milliseconds since creation).
    pub fn allows_at(&self, now_ms: u64) -> bool {
        now_ms >= self.open_until.load(Ordering::Acquire)
    }

    /// Whether the breaker has opened and not yet seen a success since.
    pub fn is_open(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= self.threshold
    }

    /// A call succeeded: close the breaker. Returns whether it was open.
    pub fn success(&self) -> bool {
        let was = self.failures.swap(0, Ordering::AcqRel) >= self.threshold;
        if was {
            self.open_until.store(0, Ordering::Release);
        }
        was
    }

    /// A call failed.
    pub fn failure(&self) -> Tripped {
        self.failure_at(self.now_ms())
    }

    /// [`Self::failure`] at a given clock.
    pub fn failure_at(&self, now_ms: u64) -> Tripped {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n < self.threshold {
            return Tripped::No;
        }
        self.open_until
            .store(now_ms.saturating_add(self.cooldown_ms), Ordering::Release);
        if n == self.threshold {
            Tripped::Opened
        } else {
            Tripped::Reopened
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_retries_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(1000));
        assert!(b.allows_at(0));
        assert_eq!(b.failure_at(0), Tripped::No);
        assert_eq!(b.failure_at(0), Tripped::No);
        assert!(b.allows_at(0) && !b.is_open());
        assert_eq!(b.failure_at(10), Tripped::Opened);
        assert!(b.is_open());
        assert!(!b.allows_at(500), "open: no call for the cooldown");
        assert!(
            b.allows_at(1010),
            "cooldown over: a trial call goes through"
        );
        assert_eq!(b.failure_at(1010), Tripped::Reopened);
        assert!(!b.allows_at(1500));
        assert!(b.allows_at(2010));
        assert!(b.success(), "the success closes it and says it was open");
        assert!(b.allows_at(2010) && !b.is_open());
        assert!(!b.success());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.failure_at(0);
        b.success();
        assert_eq!(b.failure_at(0), Tripped::No);
    }
}
