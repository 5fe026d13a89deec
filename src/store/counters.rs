//! In-memory window counters with reservations (dashmap).
//!
//! Each key has a fixed window that opens at its first counted event and lasts
//! the policy's `timeInterval`; when it has passed, the next event opens a new
//! window. A request that may add to a count (a login that may fail, a
//! registration that may succeed) first *reserves* a slot: reserved slots count
//! against the limit until the upstream answers, so a parallel burst cannot get
//! more attempts than the limit. The reservation is then committed (the event
//! happened) or released (it did not), also when the request is dropped.
//!
//! Limits and windows are passed in on every call, read from the policy in
//! force, so a hot-swapped limit applies at once and never resets a count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{Reservation, Slot};
use crate::policy::WindowLimit;

/// A counter key: a client (IP or IPv6 prefix, as u128) or an account (hashed).
pub type Key = u128;

/// One key's state: 12 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Second (of the store's clock) at which the current window opened.
    pub window_start: u32,
    /// Events counted in the current window.
    pub count: u32,
    /// Reservations not yet committed or released.
    pub inflight: u32,
}

/// A snapshot of one key, for the admin endpoint.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Shown {
    /// Events in the current window.
    pub count: u32,
    /// Reservations in flight.
    pub inflight: u32,
    /// Seconds left in the window.
    pub window_remaining_secs: u64,
}

/// Counts events per key in windows, with a hard cap on tracked keys.
#[derive(Debug)]
pub struct WindowCounter {
    name: &'static str,
    map: DashMap<Key, Entry>,
    max_keys: usize,
    len: AtomicUsize,
    epoch: Instant,
}

impl WindowCounter {
    /// A counter named `name` (for metrics) holding at most `max_keys` keys.
    pub fn new(name: &'static str, max_keys: usize) -> Arc<Self> {
        Arc::new(WindowCounter {
            name,
            map: DashMap::new(),
            max_keys,
            len: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// The counter's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seconds since the counter was created (its clock).
    #[inline]
    pub fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Reserves a slot for `key` if `count + inflight < limit`; with `force`,
    /// reserves even over the limit (a login that solved a captcha).
    pub fn try_reserve(self: &Arc<Self>, key: Key, limit: WindowLimit, force: bool) -> Reservation {
        self.try_reserve_at(key, limit, force, self.now())
    }

    /// [`Self::try_reserve`] at a given clock second (for tests and benches).
    pub fn try_reserve_at(
        self: &Arc<Self>,
        key: Key,
        limit: WindowLimit,
        force: bool,
        now: u32,
    ) -> Reservation {
        let window = window_secs(limit.window);
        // The cap is checked first so the common case costs one map lookup.
        if self.len() >= self.max_keys && !self.map.contains_key(&key) {
            return Reservation::Full;
        }
        let mut inserted = false;
        let mut e = self.map.entry(key).or_insert_with(|| {
            inserted = true;
            Entry {
                window_start: now,
                ..Entry::default()
            }
        });
        if inserted {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        roll(&mut e, now, window);
        if !force && e.count.saturating_add(e.inflight) >= limit.limit {
            let end = e.window_start.saturating_add(window);
            return Reservation::Denied(Duration::from_secs(u64::from(
                end.saturating_sub(now).max(1),
            )));
        }
        e.inflight = e.inflight.saturating_add(1);
        drop(e);
        Reservation::Held(Slot::memory(self.clone(), key))
    }

    /// Settles a slot of `key`: frees it and, on `commit`, counts the event.
    pub(crate) fn settle(&self, key: Key, commit: bool) {
        if let Some(mut e) = self.map.get_mut(&key) {
            e.inflight = e.inflight.saturating_sub(1);
            if commit {
                e.count = e.count.saturating_add(1);
            }
        }
    }

    /// The state of `key`, if tracked and not expired under `window`.
    pub fn show(&self, key: Key, window: Duration) -> Option<Shown> {
        let now = self.now();
        let w = window_secs(window);
        self.map.get(&key).and_then(|e| {
            let end = e.window_start.saturating_add(w);
            let live = now < end;
            (live || e.inflight > 0).then(|| Shown {
                count: if live { e.count } else { 0 },
                inflight: e.inflight,
                window_remaining_secs: u64::from(end.saturating_sub(now)),
            })
        })
    }

    /// Forgets `key`'s count (unblock). In-flight reservations stay accounted.
    pub fn clear(&self, key: Key) -> bool {
        let mut removed = false;
        self.map.remove_if_mut(&key, |_, e| {
            if e.inflight == 0 {
                removed = true;
                true
            } else {
                e.count = 0;
                false
            }
        });
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes keys whose window has passed and that hold no reservation.
    /// `window` is `None` when the check is off: then every idle key goes.
    pub fn sweep(&self, window: Option<Duration>) -> usize {
        let now = self.now();
        let w = window.map(window_secs);
        let before = self.map.len();
        self.map.retain(|_, e| {
            e.inflight > 0 || w.is_some_and(|w| now < e.window_start.saturating_add(w))
        });
        let after = self.map.len();
        self.len.store(after, Ordering::Relaxed);
        if after < before / 2 {
            // Give memory back after a flood of distinct keys has expired.
            self.map.shrink_to_fit();
        }
        before.saturating_sub(after)
    }
}

fn window_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}

/// Opens a new window when the current one has passed.
#[inline]
fn roll(e: &mut Entry, now: u32, window: u32) {
    if now >= e.window_start.saturating_add(window) {
        e.window_start = now;
        e.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(limit: u32, secs: u64) -> WindowLimit {
        WindowLimit {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn reservations_count_against_the_limit() {
        let c = WindowCounter::new("t", 100);
        let l = lim(2, 60);
        let a = c.try_reserve_at(1, l, false, 0);
        let b = c.try_reserve_at(1, l, false, 0);
        assert!(matches!(a, Reservation::Held(_)));
        assert!(matches!(b, Reservation::Held(_)));
        assert!(matches!(
            c.try_reserve_at(1, l, false, 0),
            Reservation::Denied(_)
        ));
        drop(a); // released: a slot is free again
        let Reservation::Held(p) = c.try_reserve_at(1, l, false, 1) else {
            panic!()
        };
        p.settle(true);
        if let Reservation::Held(p) = b {
            p.settle(true);
        }
        match c.try_reserve_at(1, l, false, 10) {
            Reservation::Denied(retry_after) => assert_eq!(retry_after, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        // The window passes: a new one opens.
        assert!(matches!(
            c.try_reserve_at(1, l, false, 60),
            Reservation::Held(_)
        ));
    }

    #[test]
    fn force_and_limit_change_keep_counts() {
        let c = WindowCounter::new("t", 100);
        for _ in 0..3 {
            if let Reservation::Held(p) = c.try_reserve_at(7, lim(3, 60), false, 0) {
                p.settle(true);
            }
        }
        assert!(matches!(
            c.try_reserve_at(7, lim(3, 60), false, 0),
            Reservation::Denied(_)
        ));
        // A raised limit applies at once, the count stays 3.
        assert!(matches!(
            c.try_reserve_at(7, lim(5, 60), false, 0),
            Reservation::Held(_)
        ));
        assert!(matches!(
            c.try_reserve_at(7, lim(1, 60), true, 0),
            Reservation::Held(_)
        ));
    }

    #[test]
    fn cap_and_sweep() {
        let c = WindowCounter::new("t", 2);
        let l = lim(5, 1);
        c.try_reserve_at(1, l, false, 0);
        c.try_reserve_at(2, l, false, 0);
        assert!(matches!(
            c.try_reserve_at(3, l, false, 0),
            Reservation::Full
        ));
        assert_eq!(c.len(), 2);
        // Slots were dropped (released); the windows have passed by now+2s.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.sweep(Some(Duration::from_secs(1))), 2);
        assert!(c.is_empty());
    }
}
