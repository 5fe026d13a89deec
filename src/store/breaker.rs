//! The circuit breaker of the shared store: after `threshold` consecutive
//! failures it opens, and calls are not attempted, so a Redis outage costs
//! the request path nothing but the fallback. Requests never close it: once
//! the `cooldown` has passed, a background probe ([`super::Fallback`]) tries
//! Redis on fresh connections every [`PROBE_EVERY`] and closes the breaker
//! when Redis answers, so no request is spent on a stale connection and
//! shared counting resumes within a probe period of Redis coming back.
//!
//! Lock-free: three atomics; the request path reads one.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the probe tries Redis once the cool-down has passed: well
/// under the one second in which shared counting must resume.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);

/// The breaker's state and settings.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open: AtomicBool,
    /// Milliseconds since `epoch` at which it last opened.
    opened_at: AtomicU64,
    epoch: Instant,
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed (under the threshold).
    No,
    /// This failure opened it (start the probe).
    Opened,
    /// It was open already (a call that started before it opened).
    AlreadyOpen,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            opened_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may be attempted now (the breaker is closed).
    #[inline]
    pub fn allows(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// A call succeeded: the failure count starts again.
    #[inline]
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed.
    pub fn failure(&self) -> Tripped {
        self.failure_at(self.now_ms())
    }

    /// [`Self::failure`] at a given clock (milliseconds since creation).
    pub fn failure_at(&self, now_ms: u64) -> Tripped {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n < self.threshold {
            return Tripped::No;
        }
        if self.open.swap(true, Ordering::AcqRel) {
            return Tripped::AlreadyOpen;
        }
        self.opened_at.store(now_ms, Ordering::Release);
        Tripped::Opened
    }

    /// How long until the probe may start: what is left of the cool-down.
    pub fn cooldown_left(&self) -> Duration {
        self.cooldown_left_at(self.now_ms())
    }

    /// [`Self::cooldown_left`] at a given clock.
    pub fn cooldown_left_at(&self, now_ms: u64) -> Duration {
        let end = self
            .opened_at
            .load(Ordering::Acquire)
            .saturating_add(self.cooldown_ms);
        Duration::from_millis(end.saturating_sub(now_ms))
    }

    /// The probe reached Redis: close. Returns whether it was open.
    pub fn close(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_only_the_probe_closes_it() {
        let b = Breaker::new(3, Duration::from_millis(1000));
        assert!(b.allows());
        assert_eq!(b.failure_at(0), Tripped::No);
        assert_eq!(b.failure_at(0), Tripped::No);
        assert!(b.allows());
        assert_eq!(b.failure_at(10), Tripped::Opened);
        assert!(!b.allows());
        assert_eq!(b.cooldown_left_at(500), Duration::from_millis(510));
        assert_eq!(b.cooldown_left_at(2000), Duration::ZERO);
        assert!(
            !b.allows(),
            "the cool-down's end does not let requests through"
        );
        assert_eq!(b.failure_at(20), Tripped::AlreadyOpen);
        assert!(b.close(), "the probe closes it and says it was open");
        assert!(b.allows());
        assert!(!b.close());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.failure_at(0);
        b.success();
        assert_eq!(b.failure_at(0), Tripped::No);
    }
}
