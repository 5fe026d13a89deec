//! Memory per tracked client and per account, counted by a counting allocator.
//!
//! `cargo bench --bench memory`. Target (issue 12): at most 64 bytes per
//! tracked client across all of its state (login-IP and registration
//! windows, login and registration rate-limit cells), and per account.
//! `KEYS` distinct clients (default 1,000,000; IPv4, or IPv6 /64 networks
//! with `V6=1`) are counted once in each of those, then `KEYS` accounts in
//! the password-failure counter; then everything expires and is swept.
//! Run it at several `KEYS`: a hash table grows in powers of two, so the
//! figure depends on where the count falls on that curve. RSS figures for
//! the whole process come from `benches/loadtest.sh memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poolgate::client_ip::client_key;
use poolgate::config::{GuardsConfig, Rate, RateLimitConfig};
use poolgate::policy::WindowLimit;
use poolgate::routes::RouteKind;
use poolgate::store::counters::{ClientState, Entry, WindowCounter};
use poolgate::store::{AccountKeyer, MemoryStore, Reservation};

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
    let v6 = std::env::var("V6").is_ok_and(|v| v == "1");
    let guards = GuardsConfig {
        max_tracked_keys: keys as usize + 1,
        ..GuardsConfig::default()
    };
    let quick = Rate {
        per_second: 1_000,
        burst: 1_000,
    };
    let rate = RateLimitConfig {
        login: quick,
        register: quick,
        max_tracked_keys: keys as usize + 1,
        ..RateLimitConfig::default()
    };
    let state = MemoryStore::new(&guards, &rate);
    // As the memory store keys accounts: keyed, with a random key.
    let keyer = AccountKeyer::random();
    let limit = WindowLimit {
        limit: 5,
        window: Duration::from_secs(1),
    };
    let client = |i: u32| {
        if v6 {
            let net = 0x2001_0db8_0000_0000_u64 | u64::from(i);
            client_key(std::net::Ipv6Addr::from(u128::from(net) << 64).into(), 64)
        } else {
            client_key(std::net::Ipv4Addr::from(0x0a00_0000 | i).into(), 64)
        }
    };
    let count = |c: &Arc<WindowCounter>, key: u128| {
        if let Reservation::Held(p) = c.try_reserve(key, limit, false) {
            p.settle(true);
        }
    };
    let per = |b: isize| b as f64 / f64::from(keys);

    let before = live();
    let mut step = before;
    let mut part = |what: &str| {
        let now = live();
        println!(
            "  {what:<28} {:>6.1} B/client",
            per(now - std::mem::replace(&mut step, now))
        );
    };
    println!(
        "{keys} clients ({}); entry {} B (key + {} B of state), index bucket 4 B + 1 control byte",
        if v6 { "IPv6 /64" } else { "IPv4" },
        std::mem::size_of::<(u64, ClientState)>(),
        std::mem::size_of::<ClientState>(),
    );
    for i in 0..keys {
        count(&state.login_ip, client(i));
    }
    part("login-IP window");
    for i in 0..keys {
        count(&state.register_ip, client(i));
    }
    part("registration window");
    for i in 0..keys {
        let _ = state.rate.check(RouteKind::Login, client(i));
    }
    part("login rate-limit cell");
    for i in 0..keys {
        let _ = state.rate.check(RouteKind::Register, client(i));
    }
    part("registration rate-limit cell");
    let clients = live() - before;
    let buckets = state.clients.buckets();
    println!(
        "all of a client's state:        {:.1} B/client ({} MiB; {} clients stored, {:.2} index buckets/client)",
        per(clients),
        clients >> 20,
        state.clients.len(),
        buckets as f64 / f64::from(keys),
    );

    let accounts_before = live();
    for i in 0..keys {
        count(
            &state.account,
            keyer.key(&format!("user{i}@example.com")).get(),
        );
    }
    let accounts = live() - accounts_before;
    println!(
        "account window:                 {:.1} B/account ({} MiB; entry {} B, {:.2} index buckets/account)",
        per(accounts),
        accounts >> 20,
        std::mem::size_of::<(u64, Entry)>(),
        state.account.buckets() as f64 / f64::from(keys),
    );

    // Let the windows and the rate limiters' cells pass, then sweep.
    std::thread::sleep(Duration::from_millis(2_100));
    state.login_ip.sweep(Some(limit.window));
    state.register_ip.sweep(Some(limit.window));
    state.account.sweep(Some(limit.window));
    state.rate.sweep();
    let left = live() - before;
    println!(
        "after expiry and sweep: {} clients, {} accounts, {} KiB still held",
        state.clients.len(),
        state.account.len(),
        left >> 10
    );
}
