//! Memory per tracked client key, counted by a counting allocator.
//!
//! `cargo bench --bench memory`. Target (issue 4): at most 150 bytes per key.
//! It counts the heap bytes the counter store and the rate limiter hold after
//! `KEYS` distinct clients (default 1,000,000) were counted once each, and
//! after the keys were swept. RSS figures for the whole process come from
//! `benches/loadtest.sh memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use poolgate::client_ip::client_key;
use poolgate::config::{GuardsConfig, Rate, RateLimitConfig};
use poolgate::policy::WindowLimit;
use poolgate::routes::RouteKind;
use poolgate::store::{MemoryStore, Reservation};

/// Heap bytes live now.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged and only
// keeps a count beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed through.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name us skips.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    let keys: u32 = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let guards = GuardsConfig {
        max_tracked_keys: keys as usize + 1,
        ..GuardsConfig::default()
    };
    let rate = RateLimitConfig {
        login: Rate {
            per_second: 1_000,
            burst: 1_000,
        },
        ..RateLimitConfig::default()
    };
    let state = MemoryStore::new(&guards, &rate);
    let limit = WindowLimit {
        limit: 5,
        window: Duration::from_secs(1),
    };

    let before = live();
    for i in 0..keys {
        let key = client_key(std::net::Ipv4Addr::from(0x0a00_0000 | i).into(), 64);
        if let Reservation::Held(p) = state.login_ip.try_reserve(key, limit, false) {
            p.settle(true);
        }
    }
    let counters = live() - before;
    for i in 0..keys {
        let key = client_key(std::net::Ipv4Addr::from(0x0a00_0000 | i).into(), 64);
        let _ = state.rate.check(RouteKind::Login, key);
    }
    let limiter = live() - before - counters;
    let per = |b: isize| b as f64 / f64::from(keys);
    println!("keys counted:           {keys}");
    println!(
        "window counter:         {:.1} bytes/key ({} MiB)",
        per(counters),
        counters >> 20
    );
    println!(
        "rate limiter (governor): {:.1} bytes/key ({} MiB)",
        per(limiter),
        limiter >> 20
    );
    println!(
        "both:                   {:.1} bytes/key",
        per(counters + limiter)
    );

    // Let the windows and the rate limiter's memory pass, then sweep.
    std::thread::sleep(Duration::from_millis(2_100));
    state.login_ip.sweep(Some(limit.window));
    state.rate.sweep();
    let left = live() - before;
    println!(
        "after expiry and sweep: {} keys, {:.1} bytes/key still held ({} KiB)",
        state.login_ip.len(),
        per(left),
        left >> 10
    );
}
