//! A budget on rejection log lines, so an attacker cannot set the log volume.
//!
//! Every rejection is counted in the metrics; its log line is written only
//! while the budget (`log.rejections_per_second`, a GCRA bucket of that rate
//! and burst) allows. Lines over the budget are counted per guard and
//! reported by one summary line per interval ("N rejection log lines
//! suppressed"), so a spray of 400,000 clients costs a few hundred lines,
//! not 300,000, and the operator still sees that it happened and where.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The budget and the tally of what it held back.
pub struct RejectionLog {
    budget: Option<DefaultDirectRateLimiter>,
    suppressed: DashMap<&'static str, AtomicU64>,
}

impl RejectionLog {
    /// At most `per_second` lines a second (as a burst too); 0 means no limit.
    pub fn new(per_second: u32) -> Self {
        RejectionLog {
            budget: NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
            suppressed: DashMap::new(),
        }
    }

    /// Whether a rejection line of `guard` may be written now; if not, it is
    /// tallied for the next summary.
    #[inline]
    pub fn allow(&self, guard: &'static str) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        if b.check().is_ok() {
            return true;
        }
        if let Some(n) = self.suppressed.get(guard) {
            n.fetch_add(1, Ordering::Relaxed);
        } else {
            self.suppressed
                .entry(guard)
                .or_insert_with(|| AtomicU64::new(0))
                .fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Takes the tally: `(guard, lines suppressed)` since the last call, by guard.
    pub fn take(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = self
            .suppressed
            .iter()
            .map(|e| (*e.key(), e.value().swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_unstable();
        out
    }

    /// Writes the summary line of what was suppressed, if anything.
    pub fn report(&self, every: Duration) {
        let taken = self.take();
        if taken.is_empty() {
            return;
        }
        let total: u64 = taken.iter().map(|(_, n)| n).sum();
        let by_guard = taken
            .iter()
            .map(|(g, n)| format!("{g}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            suppressed = total,
            by_guard = %by_guard,
            interval_secs = every.as_secs(),
            "rejection log lines suppressed over log.rejections_per_second (metrics count them all)"
        );
    }

    /// Reports every `every` until shutdown.
    pub async fn run_reporter(
        self: std::sync::Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.report(every),
                _ = shutdown.changed() => {
                    self.report(every);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_lines_are_tallied_per_guard() {
        let l = RejectionLog::new(3);
        let allowed = (0..10).filter(|_| l.allow("login_fail")).count();
        assert_eq!(allowed, 3, "the burst is the rate");
        assert!(!l.allow("cors"));
        assert_eq!(l.take(), vec![("cors", 1), ("login_fail", 7)]);
        assert!(l.take().is_empty(), "taking resets the tally");
        let unlimited = RejectionLog::new(0);
        assert!((0..1000).all(|_| unlimited.allow("cors")));
    }
}
