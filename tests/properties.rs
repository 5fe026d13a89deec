//! Property tests: the window counters against a reference model, and the
//! `allowedOrigins` matcher against the rules in docs/enforcement.md ("CORS").
//!
//! Case counts are kept moderate (the whole file runs in about a second) so
//! `cargo test` stays fast; `PROPTEST_CASES=5000 cargo test --test properties`
//! searches harder.

use std::collections::HashMap;
use std::time::Duration;

use poolgate::policy::origins::OriginMatcher;
use poolgate::policy::WindowLimit;
use poolgate::store::counters::WindowCounter;
use poolgate::store::{Reservation, Slot as Held};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Window counters
// ---------------------------------------------------------------------------

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// `try_reserve_at` for key `key` (a small key space, so keys collide).
    Reserve { key: u8, force: bool },
    /// Commit the n-th held permit (the event happened).
    Commit(usize),
    /// Release the n-th held permit (it did not).
    Release(usize),
    /// Drop the n-th held permit without a word (a client that went away).
    Drop(usize),
    /// The clock moves on.
    Advance(u32),
    /// A hot-swapped policy: new limit.
    SetLimit(u32),
    /// A hot-swapped policy: new window, in seconds.
    SetWindow(u64),
    /// The admin unblocks a key.
    Clear(u8),
    /// The sweeper runs with the check switched off (every idle key goes).
    SweepAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, prop::bool::weighted(0.15)).prop_map(|(key, force)| Op::Reserve { key, force }),
        3 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (0u32..40).prop_map(Op::Advance),
        1 => (1u32..6).prop_map(Op::SetLimit),
        1 => (5u64..60).prop_map(Op::SetWindow),
        1 => (0u8..6).prop_map(Op::Clear),
        1 => Just(Op::SweepAll),
    ]
}

/// The reference: one key's window, as docs/enforcement.md's "Counters" section says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    start: u32,
    count: u32,
    inflight: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Granted,
    Denied(u64),
    Full,
}

#[derive(Default)]
struct Model {
    slots: HashMap<u128, Slot>,
    cap: usize,
}

impl Model {
    fn reserve(&mut self, key: u128, limit: u32, window: u32, force: bool, now: u32) -> Expect {
        if self.slots.len() >= self.cap && !self.slots.contains_key(&key) {
            return Expect::Full;
        }
        let s = self.slots.entry(key).or_insert(Slot {
            start: now,
            count: 0,
            inflight: 0,
        });
        // A window opens at the first event and lasts `window`; after it, the
        // next event opens a new one. Reservations in flight are kept.
        if now >= s.start + window {
            s.start = now;
            s.count = 0;
        }
        if !force && s.count + s.inflight >= limit {
            return Expect::Denied(u64::from((s.start + window - now).max(1)));
        }
        s.inflight += 1;
        Expect::Granted
    }

    fn settle(&mut self, key: u128, commit: bool) {
        let s = self
            .slots
            .get_mut(&key)
            .expect("a held permit keeps its key");
        s.inflight -= 1;
        if commit {
            s.count += 1;
        }
    }
}

/// A window long enough that `show` (which reads the real clock, about 0 s
/// into the counter's life here) reports every tracked key's raw state.
const SHOW_ALL: Duration = Duration::from_secs(u32::MAX as u64);

fn check_history(cap: usize, first_limit: u32, first_window: u64, ops: Vec<Op>) {
    let counter = WindowCounter::new("prop", cap);
    let mut model = Model {
        cap,
        ..Model::default()
    };
    let mut held: Vec<(u128, Held)> = Vec::new();
    let mut now = 0u32;
    let mut limit = first_limit;
    let mut window = first_window;
    for op in ops {
        match op {
            Op::Reserve { key, force } => {
                let key = u128::from(key);
                let before = counter.show(key, SHOW_ALL);
                let pre_start = model.slots.get(&key).map(|s| s.start);
                let lim = WindowLimit {
                    limit,
                    window: Duration::from_secs(window),
                };
                let got = counter.try_reserve_at(key, lim, force, now);
                let want = model.reserve(key, limit, window as u32, force, now);
                let got_kind = match got {
                    Reservation::Held(p) => {
                        held.push((key, p));
                        Expect::Granted
                    }
                    Reservation::Denied(retry_after) => {
                        // Never "now", never past the window's end.
                        assert!(retry_after >= Duration::from_secs(1));
                        assert!(retry_after <= Duration::from_secs(window));
                        Expect::Denied(retry_after.as_secs())
                    }
                    Reservation::Full => Expect::Full,
                };
                assert_eq!(got_kind, want, "reserve key {key} at {now}");
                let after = counter.show(key, SHOW_ALL);
                if got_kind == Expect::Granted && !force {
                    // Granted plus counted never exceeds the limit in a window.
                    let s = after.expect("a granted key is tracked");
                    assert!(
                        s.count + s.inflight.unwrap_or(0) <= limit,
                        "{s:?} over limit {limit} without force"
                    );
                }
                // A new limit or window never resets a count: only a window
                // that has passed (under the window now in force) does.
                if let (Some(b), Some(a), Some(start)) = (before, after, pre_start) {
                    if u64::from(now) < u64::from(start) + window {
                        assert_eq!(a.count, b.count, "count changed inside its window");
                    }
                }
            }
            Op::Commit(i) | Op::Release(i) | Op::Drop(i) if !held.is_empty() => {
                let (key, permit) = held.swap_remove(i % held.len());
                match op {
                    Op::Commit(_) => {
                        permit.settle(true);
                        model.settle(key, true);
                    }
                    Op::Release(_) => {
                        permit.settle(false);
                        model.settle(key, false);
                    }
                    _ => {
                        drop(permit);
                        model.settle(key, false);
                    }
                }
            }
            Op::Commit(_) | Op::Release(_) | Op::Drop(_) => {}
            Op::Advance(s) => now += s,
            Op::SetLimit(l) => limit = l,
            Op::SetWindow(w) => window = w,
            Op::Clear(key) => {
                let key = u128::from(key);
                let removed = counter.clear(key);
                let idle = model.slots.get(&key).map(|s| s.inflight == 0);
                assert_eq!(removed, idle == Some(true), "clear {key}");
                match idle {
                    Some(true) => {
                        model.slots.remove(&key);
                    }
                    // In-flight reservations stay accounted; the count goes.
                    Some(false) => model.slots.get_mut(&key).expect("tracked").count = 0,
                    None => {}
                }
            }
            Op::SweepAll => {
                let gone = counter.sweep(None);
                let before = model.slots.len();
                model.slots.retain(|_, s| s.inflight > 0);
                assert_eq!(gone, before - model.slots.len());
            }
        }
        // The key cap holds, and every key's count and in-flight number match.
        assert!(counter.len() <= cap);
        assert_eq!(counter.len(), model.slots.len());
        for key in 0u128..6 {
            let shown = counter.show(key, SHOW_ALL).map(|s| (s.count, s.inflight));
            let want = model.slots.get(&key).map(|s| (s.count, Some(s.inflight)));
            assert_eq!(shown, want, "key {key} after {op:?}");
        }
    }
    // Every permit settles, explicitly or by drop: nothing stays in flight.
    drop(held);
    for key in 0u128..6 {
        if let Some(s) = counter.show(key, SHOW_ALL) {
            assert_eq!(s.inflight, Some(0), "key {key} leaked a reservation");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn window_counter_matches_its_model(
        cap in 1usize..6,
        limit in 1u32..5,
        window in 5u64..60,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        check_history(cap, limit, window, ops);
    }
}

// ---------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,5}[a-z0-9]?"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn scheme() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("http"), Just("https")]
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![
        Just(None),
        Just(Some(80)),
        Just(Some(443)),
        Just(Some(3000)),
        Just(Some(8443)),
    ]
}

fn origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

fn effective(scheme: &str, port: Option<u16>) -> u16 {
    port.unwrap_or(if scheme == "https" { 443 } else { 80 })
}

fn allows(list: &str, o: &str) -> bool {
    OriginMatcher::compile(list).0.allows(o)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// An exact entry allows an origin exactly when scheme, host and
    /// (effective) port all agree; host and scheme case do not matter.
    #[test]
    fn exact_entries_need_scheme_host_and_port(
        (es, eh, ep) in (scheme(), domain(), port()),
        (os, oh, op) in (scheme(), domain(), port()),
        same_host in any::<bool>(),
        trailing_slash in any::<bool>(),
    ) {
        let oh = if same_host { eh.clone() } else { oh };
        let mut entry = origin(es, &eh, ep);
        if trailing_slash {
            entry.push('/');
        }
        let o = origin(os, &oh, op);
        let want = es == os && eh == oh && effective(es, ep) == effective(os, op);
        assert_eq!(allows(&entry, &o), want, "{} vs {}", entry, o);
        assert_eq!(allows(&entry, &o.to_ascii_uppercase()), want);
        assert_eq!(allows(&entry.to_ascii_uppercase(), &o), want);
    }

    /// `*.` is exactly one leftmost label: never the bare domain, never two
    /// labels, never a look-alike that merely ends or starts with the domain.
    #[test]
    fn wildcard_is_exactly_one_label(
        s in scheme(),
        parent in domain(),
        p in port(),
        l in label(),
        l2 in label(),
        evil in domain(),
    ) {
        let list = origin(s, &format!("*.{parent}"), p);
        let at = |host: String| allows(&list, &origin(s, &host, p));
        assert!(at(format!("{l}.{parent}")));
        assert!(at(format!("{}.{parent}", l.to_ascii_uppercase())));
        assert!(!at(parent.clone()), "the bare domain");
        assert!(!at(format!("{l}.{l2}.{parent}")), "two labels");
        assert!(!at(format!("{l}{parent}")), "a look-alike without the dot");
        assert!(!at(format!("{l}-{parent}")), "a look-alike with a dash");
        assert!(!at(format!("{l}.{parent}.{evil}")), "the domain as a prefix");
        assert!(!at(format!(".{parent}")), "an empty label");
        // Scheme and port still count.
        let other = if s == "https" { "http" } else { "https" };
        assert!(!allows(&list, &origin(other, &format!("{l}.{parent}"), p)));
        assert!(!allows(&list, &origin(s, &format!("{l}.{parent}"), Some(effective(s, p) ^ 1))));
    }

    /// An entry with a query or fragment is ignored as a whole (a list of
    /// only such entries allows nothing, it is not "empty"), and an `Origin`
    /// value carrying a path, query or fragment is not an origin and is refused.
    #[test]
    fn query_and_fragment(
        s in scheme(),
        host in domain(),
        other in domain(),
        suffix in prop_oneof![Just("?a=1"), Just("#top"), Just("/?x"), Just("/#")],
    ) {
        let o = origin(s, &host, None);
        let bad_line = format!("{o}{suffix}");
        let (m, skipped) = OriginMatcher::compile(&bad_line);
        assert_eq!(skipped.len(), 1);
        assert!(!m.allows_all());
        assert!(!m.allows(&o));
        // Beside a usable line, the ignored one still grants nothing.
        let list = format!("{bad_line}\n{}", origin(s, &other, None));
        assert_eq!(allows(&list, &o), host == other);
        // A listed origin, asked with a path or query, is not allowed.
        assert!(allows(&o, &o));
        assert!(!allows(&o, &format!("{o}{suffix}")));
        assert!(!allows(&o, &format!("{o}/")));
    }
}

/// The examples docs/enforcement.md names, as fixed cases.
#[test]
fn readme_examples() {
    let list = "https://*.sample.com\nhttp://localhost:3000";
    assert!(allows(list, "https://a.sample.com"));
    assert!(!allows(list, "https://sample.com"));
    assert!(!allows(list, "https://a.b.sample.com"));
    assert!(!allows(list, "https://evilsample.com"));
    assert!(!allows(list, "https://sample.com.evil.net"));
    assert!(!allows(list, "https://a.sample.com.evil.net"));
    assert!(allows(list, "http://localhost:3000"));
    assert!(!allows(list, "http://localhost"));
    // Empty is Authing's "every origin".
    assert!(allows("", "https://evil.example"));
}
