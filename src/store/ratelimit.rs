//! Per-client rate limits by route class (keyed GCRA, as governor's).
//!
//! The login and registration classes keep each client's cell in the
//! client's entry of the shared [`Clients`] table, beside its login and
//! registration windows (one entry, one key per client: issue 12's memory
//! target); the other classes use governor with a [`CappedStore`]: a DashMap
//! like governor's own. Every class has a hard cap on keys. Without one, a
//! client rotating through millions of source addresses (or a trusted proxy
//! forwarding them) would grow the map without bound between two sweeps.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::counters::{ClientState, Clients, LOGIN_LANE, REGISTER_LANE};
use crate::config::{Rate, RateLimitConfig};
use crate::routes::RouteKind;

/// The class names, in the order of [`RateLimits`]'s limiters (metric labels).
const CLASSES: [&str; 6] = [
    "login",
    "register",
    "password",
    "captcha",
    "other",
    "send_code",
];

/// A keyed GCRA state store with a hard cap on keys.
///
/// When the map is full, a key not already in it is measured against one
/// shared overflow cell instead: the newcomers are limited together, as one
/// client, rather than not at all (which a cap that skipped limiting would
/// do) or by evicting the busiest clients (which would reset their limits).
/// Keys already tracked keep their own cell. The sweeper's `retain_recent`
/// frees room as keys go idle.
pub struct CappedStore {
    // SipHash with a random key, as governor's own store: the keys are
    // chosen by clients.
    map: DashMap<u128, InMemoryState, std::hash::RandomState>,
    cap: usize,
    overflow: InMemoryState,
    stats: Arc<CapStats>,
}

/// A store's figures, shared with the metrics collector.
#[derive(Default)]
struct CapStats {
    /// Keys in the map, kept exactly in step with inserts and removals so the
    /// hot path never sums the shards.
    len: AtomicUsize,
    /// Checks that went to the overflow cell.
    overflowed: AtomicU64,
}

impl CappedStore {
    fn new(cap: usize) -> Self {
        CappedStore {
            map: DashMap::default(),
            cap,
            overflow: InMemoryState::default(),
            stats: Arc::default(),
        }
    }
}

impl StateStore for CappedStore {
    type Key = u128;

    fn measure_and_replace<T, F, E>(&self, key: &u128, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Fast path: a tracked client, read lock only.
        if let Some(cell) = self.map.get(key) {
            return cell.measure_and_replace(&NotKeyed::NonKey, f);
        }
        match self.map.entry(*key) {
            Entry::Occupied(e) => e.get().measure_and_replace(&NotKeyed::NonKey, f),
            Entry::Vacant(v) => {
                // Reserve the slot first, so racing inserts cannot pass the cap.
                if self.stats.len.fetch_add(1, Ordering::Relaxed) >= self.cap {
                    self.stats.len.fetch_sub(1, Ordering::Relaxed);
                    drop(v);
                    self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
                }
                v.insert(InMemoryState::default())
                    .measure_and_replace(&NotKeyed::NonKey, f)
            }
        }
    }
}

/// The theoretical arrival time a cell holds (governor keeps it private).
fn tat(cell: &InMemoryState) -> Option<Nanos> {
    cell.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

impl ShrinkableKeyedStateStore<u128> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        self.map.retain(|_, cell| {
            // Same test as governor's own stores: a cell whose arrival time
            // is past is indistinguishable from a fresh one.
            let keep = tat(cell).is_some_and(|t| t.as_u64() > below);
            if !keep {
                self.stats.len.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.stats.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Limiter = RateLimiter<u128, CappedStore, DefaultClock, NoOpMiddleware>;

/// One limiter per route class; `None` where the class is not limited.
///
/// The classes sit behind an `ArcSwap` so a configuration reload
/// ([`RateLimits::reconfigure`]) can change them in place: a class whose
/// rate is unchanged keeps its limiter and its clients' state, a changed
/// class starts fresh.
pub struct RateLimits {
    classes: Arc<ArcSwap<Classes>>,
    clock: DefaultClock,
    /// The origin of the folded classes' cells (nanoseconds since it).
    start: <DefaultClock as Clock>::Instant,
    clients: Arc<Clients>,
}

/// A class whose cells are in the client table ([`ClientState::tat`]).
struct Folded {
    /// Position of the cell in [`ClientState::tat`].
    lane: usize,
    /// Nanoseconds between two requests at the sustained rate (governor's `t`).
    t: u64,
    /// Nanoseconds of burst beyond the first request (governor's `tau`).
    tau: u64,
    /// The cell of the newcomers once the class is full (see [`CappedStore`]).
    overflow: AtomicU64,
}

impl Folded {
    /// One GCRA step on `tat` (0: a fresh cell) at `now`: governor's
    /// `test_and_update`, so both kinds of class limit alike.
    #[inline]
    fn step(&self, tat: &mut u64, now: u64) -> Result<(), u64> {
        let cur = if *tat == 0 { now } else { *tat };
        let earliest = cur.saturating_sub(self.tau);
        if now < earliest {
            return Err(earliest - now);
        }
        // Never 0 (that means "not tracked").
        *tat = cur.max(now).saturating_add(self.t).max(1);
        Ok(())
    }
}

/// How a class keeps its clients' cells.
enum Cells {
    Governor(Limiter),
    Folded(Folded),
}

/// The classes' limiters and shared quotas, swapped whole on a reload.
struct Classes {
    limiters: [Option<Arc<Class>>; 6],
    /// The quotas, for the shared limiter (`rate_limit.shared`); `None`
    /// where the class is not limited or the limits are kept locally.
    shared: [Option<SharedQuota>; 6],
}

/// One class's limiter and the settings it was built from.
struct Class {
    rate: Rate,
    cap: usize,
    cells: Cells,
    stats: Arc<CapStats>,
}

/// A class's quota as the shared (Redis) limiter applies it: the same GCRA
/// as the local limiter, one state per client for all replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedQuota {
    /// The class name (`login`, `register`, …): part of the Redis key.
    pub class: &'static str,
    /// Time between two requests at the sustained rate (1 s / `per_second`).
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

fn shared_quota(class: &'static str, r: Rate) -> Option<SharedQuota> {
    let per_second = NonZeroU32::new(r.per_second)?;
    Some(SharedQuota {
        class,
        interval: Duration::from_secs(1) / per_second.get(),
        // As the local limiter: an unset burst is one second's worth.
        burst: NonZeroU32::new(r.burst).unwrap_or(per_second).get(),
    })
}

/// The class whose cells are folded into the client table at `lane`.
fn folded_lane(class: usize) -> Option<usize> {
    match class {
        0 => Some(LOGIN_LANE),
        1 => Some(REGISTER_LANE),
        _ => None,
    }
}

/// Class `i`'s limiter; `overflowed` carries the overflow count of the limiter
/// it replaces, so the exported counter never goes down.
fn limiter(i: usize, r: Rate, cap: usize, overflowed: u64) -> Option<Arc<Class>> {
    let per_second = NonZeroU32::new(r.per_second)?;
    // An unset burst means one second's worth, not a burst of one.
    let burst = NonZeroU32::new(r.burst).unwrap_or(per_second);
    let quota = Quota::per_second(per_second).allow_burst(burst);
    if let Some(lane) = folded_lane(i) {
        let stats = Arc::new(CapStats::default());
        stats.overflowed.store(overflowed, Ordering::Relaxed);
        // As governor's Gcra::new.
        let t = u64::try_from(quota.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        return Some(Arc::new(Class {
            rate: r,
            cap,
            cells: Cells::Folded(Folded {
                lane,
                t,
                tau: t.saturating_mul(u64::from(burst.get() - 1)),
                overflow: AtomicU64::new(0),
            }),
            stats,
        }));
    }
    let store = CappedStore::new(cap);
    store.stats.overflowed.store(overflowed, Ordering::Relaxed);
    let stats = store.stats.clone();
    let limiter = RateLimiter::new(quota, store, DefaultClock::default());
    Some(Arc::new(Class {
        rate: r,
        cap,
        cells: Cells::Governor(limiter),
        stats,
    }))
}

fn rates(cfg: &RateLimitConfig) -> [Rate; 6] {
    [
        cfg.login,
        cfg.register,
        cfg.password,
        cfg.captcha,
        cfg.other,
        cfg.send_code,
    ]
}

fn shared_quotas(cfg: &RateLimitConfig) -> [Option<SharedQuota>; 6] {
    if cfg.shared {
        let rates = rates(cfg);
        std::array::from_fn(|i| shared_quota(CLASSES[i], rates[i]))
    } else {
        [None; 6]
    }
}

impl RateLimits {
    /// Limiters for the configured rates, with a client table of their own.
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self::with_clients(cfg, Clients::new())
    }

    /// Limiters for the configured rates keeping the login and registration
    /// cells in `clients` (the memory store's, shared with its windows).
    pub fn with_clients(cfg: &RateLimitConfig, clients: Arc<Clients>) -> Self {
        let cap = cfg.max_tracked_keys.max(1);
        let rates = rates(cfg);
        let clock = DefaultClock::default();
        RateLimits {
            classes: Arc::new(ArcSwap::from_pointee(Classes {
                limiters: std::array::from_fn(|i| limiter(i, rates[i], cap, 0)),
                shared: shared_quotas(cfg),
            })),
            start: clock.now(),
            clock,
            clients,
        }
    }

    /// Nanoseconds on the folded classes' clock.
    #[inline]
    fn nanos(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Takes one request from `key`'s cell of a folded class.
    fn check_folded(&self, c: &Class, f: &Folded, key: u128) -> Result<(), Duration> {
        let now = self.nanos();
        let lane = f.lane;
        let own = self.clients.update(key, |s: &mut ClientState| {
            let tat = &mut s.tat[lane];
            if *tat == 0 {
                // Count the key first, so racing inserts cannot pass the cap.
                if c.stats.len.fetch_add(1, Ordering::Relaxed) >= c.cap {
                    c.stats.len.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
            }
            // A fresh cell always conforms, so it is tracked from here on.
            Some(f.step(tat, now))
        });
        let r = match own {
            Some(r) => r,
            None => {
                c.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                let mut out = Ok(());
                let _ = f
                    .overflow
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |mut tat| {
                        out = f.step(&mut tat, now);
                        out.is_ok().then_some(tat)
                    });
                out
            }
        };
        r.map_err(Duration::from_nanos)
    }

    /// Forgets the cells of a folded class (its rate changed: it starts
    /// fresh, as a rebuilt governor class does).
    fn forget_lane(&self, lane: usize) {
        self.clients.retain(|s| s.tat[lane] = 0);
    }

    /// Applies reloaded rates in place; returns the classes rebuilt. A class
    /// whose rate and key cap are unchanged keeps its limiter and every
    /// client's state; a changed class starts fresh (its clients get a full
    /// burst). The shared quotas (`rate_limit.shared`) follow the new rates.
    pub fn reconfigure(&self, cfg: &RateLimitConfig) -> Vec<&'static str> {
        let cap = cfg.max_tracked_keys.max(1);
        let rates = rates(cfg);
        let old = self.classes.load_full();
        let mut rebuilt = Vec::new();
        let limiters = std::array::from_fn(|i| match &old.limiters[i] {
            Some(c) if c.rate == rates[i] && c.cap == cap => Some(c.clone()),
            prev => {
                if prev.is_some() || rates[i].per_second > 0 {
                    rebuilt.push(CLASSES[i]);
                }
                let overflowed = prev
                    .as_ref()
                    .map_or(0, |c| c.stats.overflowed.load(Ordering::Relaxed));
                limiter(i, rates[i], cap, overflowed)
            }
        });
        let gone: Vec<usize> = (0..CLASSES.len())
            .filter(|&i| old.limiters[i].is_some() && rebuilt.contains(&CLASSES[i]))
            .filter_map(folded_lane)
            .collect();
        self.classes.store(Arc::new(Classes {
            limiters,
            shared: shared_quotas(cfg),
        }));
        for lane in gone {
            self.forget_lane(lane);
        }
        rebuilt
    }

    fn index(kind: RouteKind) -> usize {
        match kind {
            RouteKind::Login | RouteKind::Verify => 0,
            RouteKind::Register => 1,
            RouteKind::Password => 2,
            RouteKind::CaptchaV2 | RouteKind::CaptchaV3 => 3,
            RouteKind::Graphql | RouteKind::Other => 4,
            RouteKind::SendCode => 5,
        }
    }

    /// The quota of `kind` when `rate_limit.shared` keeps it in the shared
    /// store ([`crate::store::Store::check_rate`]); `None`: local only.
    pub fn shared_quota(&self, kind: RouteKind) -> Option<SharedQuota> {
        self.classes.load().shared[Self::index(kind)]
    }

    /// `Err(wait)` when `key` is over its class's rate.
    #[inline]
    pub fn check(&self, kind: RouteKind, key: u128) -> Result<(), Duration> {
        match &self.classes.load().limiters[Self::index(kind)] {
            None => Ok(()),
            Some(c) => match &c.cells {
                Cells::Folded(f) => self.check_folded(c, f, key),
                Cells::Governor(l) => l
                    .check_key(&key)
                    .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            },
        }
    }

    /// Forgets idle keys; returns the keys still tracked.
    pub fn sweep(&self) -> usize {
        let mut n = 0;
        let classes = self.classes.load();
        let mut folded: Vec<(usize, &Class)> = Vec::new();
        for c in classes.limiters.iter().flatten() {
            match &c.cells {
                Cells::Governor(l) => {
                    l.retain_recent();
                    l.shrink_to_fit();
                    n += l.len();
                }
                Cells::Folded(f) => folded.push((f.lane, c)),
            }
        }
        // Folded classes: one pass over the client table. A cell whose
        // arrival time is past is indistinguishable from a fresh one.
        let now = self.nanos();
        let mut live = [0usize; 2];
        if !folded.is_empty() {
            self.clients.retain(|s| {
                for (lane, _) in &folded {
                    let tat = &mut s.tat[*lane];
                    if *tat != 0 && *tat <= now {
                        *tat = 0;
                    }
                    live[*lane] += usize::from(*tat != 0);
                }
            });
        }
        for (lane, c) in folded {
            // Recounted, not decremented: a reload's race cannot skew it.
            c.stats.len.store(live[lane], Ordering::Relaxed);
            n += live[lane];
        }
        n
    }

    /// A Prometheus collector reading the limiters live:
    /// `poolgate_rate_limit_tracked_keys{class}` and
    /// `poolgate_rate_limit_overflow_total{class}`.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(RateLimitCollector::new(self.classes.clone()))
    }
}

/// Exports the limiters' key counts and overflow checks at scrape time, so
/// the figures are exact and cost nothing on the request path. It reads the
/// classes in force, so a reload's new limiters are what it reports.
struct RateLimitCollector {
    classes: Arc<ArcSwap<Classes>>,
    tracked: prometheus::IntGaugeVec,
    overflow: prometheus::IntCounterVec,
    descs: Vec<Desc>,
}

impl RateLimitCollector {
    // Static construction: the names and labels are constants.
    #[allow(clippy::expect_used)]
    fn new(classes: Arc<ArcSwap<Classes>>) -> Self {
        // Names and labels are static: these constructors cannot fail.
        let tracked = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "poolgate_rate_limit_tracked_keys",
                "Client keys each rate-limit class tracks now (at most rate_limit.max_tracked_keys).",
            ),
            &["class"],
        )
        .expect("valid metric");
        let overflow = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "poolgate_rate_limit_overflow_total",
                "Rate-limit checks of new clients that found the class's key table full and used the shared overflow bucket.",
            ),
            &["class"],
        )
        .expect("valid metric");
        let descs = tracked
            .desc()
            .into_iter()
            .chain(overflow.desc())
            .cloned()
            .collect();
        RateLimitCollector {
            classes,
            tracked,
            overflow,
            descs,
        }
    }
}

impl Collector for RateLimitCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (c, class) in self.classes.load().limiters.iter().zip(CLASSES) {
            let Some(s) = c.as_ref().map(|c| &c.stats) else {
                // A class a reload turned off is no longer reported.
                let _ = self.tracked.remove_label_values(&[class]);
                continue;
            };
            self.tracked
                .with_label_values(&[class])
                .set(s.len.load(Ordering::Relaxed) as i64);
            let c = self.overflow.with_label_values(&[class]);
            let total = s.overflowed.load(Ordering::Relaxed);
            c.inc_by(total.saturating_sub(c.get()));
        }
        let mut out = self.tracked.collect();
        out.extend(self.overflow.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_cells_step_as_governor_does() {
        // t = 100 ns, burst 3 (tau = 200 ns), from a fresh cell at 1,000 ns.
        let f = Folded {
            lane: LOGIN_LANE,
            t: 100,
            tau: 200,
            overflow: AtomicU64::new(0),
        };
        let mut tat = 0;
        for _ in 0..3 {
            assert_eq!(f.step(&mut tat, 1_000), Ok(()));
        }
        assert_eq!(tat, 1_300);
        // Earliest conforming time: tat - tau = 1,100.
        assert_eq!(f.step(&mut tat, 1_000), Err(100));
        assert_eq!(tat, 1_300, "a refusal leaves the cell alone");
        assert_eq!(f.step(&mut tat, 1_100), Ok(()));
        // Long idle: as fresh.
        assert_eq!(f.step(&mut tat, 10_000), Ok(()));
        assert_eq!(tat, 10_100);
    }

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
    fn shared_quotas_only_when_asked_for() {
        let mut cfg = RateLimitConfig::default();
        assert_eq!(RateLimits::new(&cfg).shared_quota(RouteKind::Login), None);
        cfg.shared = true;
        cfg.register = Rate {
            per_second: 4,
            burst: 0,
        };
        let r = RateLimits::new(&cfg);
        assert_eq!(
            r.shared_quota(RouteKind::Verify),
            Some(SharedQuota {
                class: "login",
                interval: Duration::from_millis(100),
                burst: 30
            })
        );
        let reg = r.shared_quota(RouteKind::Register).unwrap();
        assert_eq!((reg.interval, reg.burst), (Duration::from_millis(250), 4));
        assert_eq!(
            r.shared_quota(RouteKind::Other),
            None,
            "off classes stay off"
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

    #[test]
    fn keys_past_the_cap_share_one_overflow_bucket() {
        let cfg = RateLimitConfig {
            login: Rate {
                per_second: 1,
                burst: 2,
            },
            max_tracked_keys: 3,
            ..RateLimitConfig::default()
        };
        let r = RateLimits::new(&cfg);
        for k in 0..3u128 {
            assert!(r.check(RouteKind::Login, k).is_ok());
        }
        // Keys 100.. are over the cap: together they get one burst of 2.
        assert!(r.check(RouteKind::Login, 100).is_ok());
        assert!(r.check(RouteKind::Login, 101).is_ok());
        assert!(r.check(RouteKind::Login, 102).is_err());
        // Tracked keys keep their own bucket.
        assert!(r.check(RouteKind::Login, 0).is_ok());
        let classes = r.classes.load();
        let stats = &classes.limiters[0].as_ref().unwrap().stats;
        assert_eq!(stats.len.load(Ordering::Relaxed), 3);
        assert_eq!(stats.overflowed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn sweeping_frees_room_and_the_count_follows() {
        let cfg = RateLimitConfig {
            login: Rate {
                per_second: 1000,
                burst: 1,
            },
            max_tracked_keys: 10,
            ..RateLimitConfig::default()
        };
        let r = RateLimits::new(&cfg);
        for k in 0..10u128 {
            assert!(r.check(RouteKind::Login, k).is_ok());
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.sweep(), 0, "idle keys are forgotten");
        assert!(r.check(RouteKind::Login, 50).is_ok());
        let classes = r.classes.load();
        let stats = &classes.limiters[0].as_ref().unwrap().stats;
        assert_eq!(stats.len.load(Ordering::Relaxed), 1);
        assert_eq!(stats.overflowed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reconfigure_keeps_unchanged_classes_and_restarts_changed_ones() {
        let mut cfg = RateLimitConfig {
            login: Rate {
                per_second: 1,
                burst: 2,
            },
            register: Rate {
                per_second: 1,
                burst: 1,
            },
            ..RateLimitConfig::default()
        };
        let r = RateLimits::new(&cfg);
        assert!(r.check(RouteKind::Login, 1).is_ok());
        assert!(r.check(RouteKind::Login, 1).is_ok());
        assert!(r.check(RouteKind::Register, 1).is_ok());
        assert!(r.check(RouteKind::Register, 1).is_err());
        // Lower login's burst; register unchanged.
        cfg.login.burst = 1;
        assert_eq!(r.reconfigure(&cfg), vec!["login"]);
        assert!(
            r.check(RouteKind::Register, 1).is_err(),
            "an unchanged class keeps its clients' state"
        );
        assert!(
            r.check(RouteKind::Login, 1).is_ok(),
            "a changed class starts fresh"
        );
        assert!(r.check(RouteKind::Login, 1).is_err(), "at the new burst");
        // Turning a class on and off.
        cfg.other = Rate {
            per_second: 1,
            burst: 1,
        };
        assert_eq!(r.reconfigure(&cfg), vec!["other"]);
        assert!(r.check(RouteKind::Other, 1).is_ok());
        assert!(r.check(RouteKind::Other, 1).is_err());
        cfg.other.per_second = 0;
        assert_eq!(r.reconfigure(&cfg), vec!["other"]);
        assert!(r.check(RouteKind::Other, 1).is_ok());
        assert!(r.reconfigure(&cfg).is_empty(), "nothing changed");
    }
}
