//! In-memory window counters with reservations.
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
//!
//! Memory (issue 12: at most 64 bytes per tracked client): a hash table
//! grows in powers of two, so right after it doubled it has ~2.3 buckets per
//! key (1M keys in DashMap: 2.1 buckets of 33 bytes = 69 B per key, per map).
//! So everything a client has (login-IP and registration windows, the login
//! and registration rate-limit cells) is one entry of one [`Clients`] table,
//! under a compact 64-bit key ([`compact_client`]), and the tables are
//! *indexed*: the hash table holds only a 4-byte position, the entries sit
//! densely in fixed-size chunks. Per client: 40 bytes of entry plus
//! (4 + 1 control byte) × ≤ 2.3 buckets ≈ 52 bytes at worst.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use hashbrown::HashTable;

use super::{Reservation, Slot};
use crate::policy::WindowLimit;

/// A counter key: a client (IP or IPv6 prefix, as u128) or an account (hashed).
pub type Key = u128;

/// One key's window: 8 bytes.
///
/// Counts are 16 bits: a limit above 65,535 applies as 65,535 (stricter,
/// never looser), and a key with 65,535 reservations in flight is refused
/// even a forced one, so neither number ever wraps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Clock second + 1 at which the current window opened; 0: the key is
    /// not tracked in this counter.
    pub window_start: u32,
    /// Events counted in the current window.
    pub count: u16,
    /// Reservations not yet committed or released.
    pub inflight: u16,
}

/// A snapshot of one key, for the admin endpoint.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Shown {
    /// Events in the current window.
    pub count: u32,
    /// Reservations in flight; `None` where the count includes them
    /// (Redis counts attempts up front).
    pub inflight: Option<u32>,
    /// Seconds left in the window.
    pub window_remaining_secs: u64,
}

// ---------------------------------------------------------------------------
// The indexed table
// ---------------------------------------------------------------------------

/// A value kept in a [`Table`]: a vacant one (all default) is not stored.
pub(crate) trait Vacant: Copy + Default {
    /// Whether nothing is tracked in it (the entry can go).
    fn vacant(&self) -> bool;
}

impl Vacant for Entry {
    #[inline]
    fn vacant(&self) -> bool {
        self.window_start == 0
    }
}

/// A [`Table`] key: how it is hashed.
pub(crate) trait TableKey: Copy + Default + Eq {
    /// The key's hash under the table's [`KeyHasher`].
    fn hash_with(&self, s: &KeyHasher) -> u64;
}

impl TableKey for u64 {
    #[inline]
    fn hash_with(&self, s: &KeyHasher) -> u64 {
        s.hash_u64(*self)
    }
}

impl TableKey for u128 {
    #[inline]
    fn hash_with(&self, s: &KeyHasher) -> u64 {
        s.hash_u128(*self)
    }
}

/// A key that already is a keyed hash (see [`Backing::Hashed`]): it is its
/// own hash, so an account costs one SipHash, not two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Prehashed(u64);

impl TableKey for Prehashed {
    #[inline]
    fn hash_with(&self, _: &KeyHasher) -> u64 {
        self.0
    }
}

/// SipHash-1-3 under a random per-process key: what std's `RandomState`
/// runs, so as hard for clients to aim keys at one entry, but written for
/// one or two whole 64-bit words. `RandomState::hash_one` of a `u128`
/// streams its bytes through `Hasher::write`'s buffer, ~150 instructions
/// per key, and a login hashes three keys. The rounds are held to std's
/// (deprecated but stable) SipHash-2-4 by a unit test.
#[derive(Clone, Copy)]
pub(crate) struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl KeyHasher {
    /// A hasher with a fresh random key (drawn from a `RandomState`).
    pub(crate) fn new() -> Self {
        let s = RandomState::new();
        KeyHasher {
            k0: s.hash_one(0x5eed_u64),
            k1: s.hash_one(0xc0de_u64),
        }
    }

    /// The hash of a 128-bit key (its little-endian bytes).
    #[inline]
    pub(crate) fn hash_u128(&self, x: u128) -> u64 {
        sip::<1, 3>(self.k0, self.k1, &[x as u64, (x >> 64) as u64])
    }

    /// The hash of a 64-bit key (its little-endian bytes).
    #[inline]
    pub(crate) fn hash_u64(&self, x: u64) -> u64 {
        sip::<1, 3>(self.k0, self.k1, &[x])
    }
}

/// SipHash-c-d of `words` (a message of whole little-endian 64-bit words).
#[inline(always)]
fn sip<const C: usize, const D: usize>(k0: u64, k1: u64, words: &[u64]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        for _ in 0..C {
            round(v);
        }
        v[0] ^= m;
    };
    for &m in words {
        compress(&mut v, m);
    }
    // The last block: no bytes left over, the length in its top byte.
    compress(&mut v, ((words.len() as u64 * 8) & 0xff) << 56);
    v[2] ^= 0xff;
    for _ in 0..D {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Entries per storage chunk: the storage grows by one chunk at a time,
/// never by doubling, so at most one partly used chunk (and one spare) per
/// shard is slack.
const CHUNK: usize = 256;

/// One shard: a hash table of positions into dense, chunked entries.
struct Shard<K, V> {
    index: HashTable<u32>,
    chunks: Vec<Box<[(K, V)]>>,
    len: usize,
}

/// The entry at position `i` of chunked storage (a free function, so the
/// index's closures can read the chunks while the index is borrowed).
#[inline]
fn slot<K, V>(chunks: &[Box<[(K, V)]>], i: u32) -> &(K, V) {
    let i = i as usize;
    &chunks[i / CHUNK][i % CHUNK]
}

impl<K: TableKey, V: Vacant> Shard<K, V> {
    #[inline]
    fn at(&self, i: u32) -> &(K, V) {
        slot(&self.chunks, i)
    }

    #[inline]
    fn at_mut(&mut self, i: u32) -> &mut (K, V) {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn find(&self, h: u64, key: K) -> Option<u32> {
        let Shard { index, chunks, .. } = self;
        index.find(h, |&i| slot(chunks, i).0 == key).copied()
    }

    fn push(&mut self, h: u64, key: K, value: V, hasher: &impl Fn(&K) -> u64) {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks
                .push(vec![(K::default(), V::default()); CHUNK].into_boxed_slice());
        }
        // Positions fit 32 bits: a shard never holds 2^32 entries (the key
        // caps are far below).
        let i = self.len as u32;
        *self.at_mut(i) = (key, value);
        self.len += 1;
        let Shard { index, chunks, .. } = self;
        index.insert_unique(h, i, |&j| hasher(&slot(chunks, j).0));
    }

    /// Removes the entry at `i` (hash `h`), moving the last one into its place.
    fn remove(&mut self, h: u64, i: u32, hasher: &impl Fn(&K) -> u64) {
        if let Ok(e) = self.index.find_entry(h, |&j| j == i) {
            e.remove();
        }
        let last = (self.len - 1) as u32;
        if i != last {
            let moved = *self.at(last);
            *self.at_mut(i) = moved;
            if let Some(p) = self.index.find_mut(hasher(&moved.0), |&j| j == last) {
                *p = i;
            }
        }
        *self.at_mut(last) = (K::default(), V::default());
        self.len -= 1;
    }

    /// Gives memory back after many removals: the index to its size, the
    /// storage to the chunks in use and one spare.
    fn shrink(&mut self, hasher: &impl Fn(&K) -> u64) {
        let Shard { index, chunks, len } = self;
        index.shrink_to_fit(|&j| hasher(&slot(chunks, j).0));
        let keep = match *len {
            0 => 0,
            n => n.div_ceil(CHUNK) + 1,
        };
        if chunks.len() > keep {
            chunks.truncate(keep);
            chunks.shrink_to_fit();
        }
    }
}

/// A sharded, locked hash table of small values, sized by what it holds
/// rather than by the next power of two (see the module doc).
pub(crate) struct Table<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    // SipHash with a random key: the keys are chosen by clients.
    hasher: KeyHasher,
}

impl<K: TableKey, V: Vacant> Table<K, V> {
    pub(crate) fn new() -> Self {
        // As DashMap: 4 shards per core, a power of two.
        let n = (std::thread::available_parallelism().map_or(1, |n| n.get()) * 4)
            .next_power_of_two()
            .clamp(8, 256);
        Table {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        index: HashTable::new(),
                        chunks: Vec::new(),
                        len: 0,
                    })
                })
                .collect(),
            hasher: KeyHasher::new(),
        }
    }

    #[inline]
    pub(crate) fn hash(&self, key: &K) -> u64 {
        key.hash_with(&self.hasher)
    }

    #[inline]
    fn shard(&self, h: u64) -> MutexGuard<'_, Shard<K, V>> {
        // The bits hashbrown uses least (it indexes with the low bits and
        // tags with the top seven).
        let i = (h >> 40) as usize & (self.shards.len() - 1);
        // A panic while holding a shard leaves plain numbers, still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on `key`'s value (a default one when absent), then stores
    /// it, or drops it when it is left vacant.
    #[inline]
    pub(crate) fn update<R>(&self, key: K, f: impl FnOnce(&mut V) -> R) -> R {
        self.update_hashed(key, self.hash(&key), f)
    }

    /// [`Self::update`] with `key`'s hash ([`Self::hash`]) already known:
    /// a reservation's settle reuses the one its reserve made.
    #[inline]
    pub(crate) fn update_hashed<R>(&self, key: K, h: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let hasher = |k: &K| self.hash(k);
        let mut s = self.shard(h);
        match s.find(h, key) {
            Some(i) => {
                let r = f(&mut s.at_mut(i).1);
                if s.at(i).1.vacant() {
                    s.remove(h, i, &hasher);
                }
                r
            }
            None => {
                let mut v = V::default();
                let r = f(&mut v);
                if !v.vacant() {
                    s.push(h, key, v, &hasher);
                }
                r
            }
        }
    }

    /// A copy of `key`'s value, if stored.
    pub(crate) fn get(&self, key: K) -> Option<V> {
        let h = self.hash(&key);
        let s = self.shard(h);
        s.find(h, key).map(|i| s.at(i).1)
    }

    /// Runs `f` on every value; the ones it leaves vacant go. A shard that
    /// lost more than half of its entries gives the memory back.
    pub(crate) fn retain(&self, mut f: impl FnMut(&mut V)) {
        let hasher = |k: &K| self.hash(k);
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.len;
            let mut i = 0u32;
            while (i as usize) < s.len {
                f(&mut s.at_mut(i).1);
                let (k, v) = *s.at(i);
                if v.vacant() {
                    // The last entry moves here: look at position i again.
                    s.remove(self.hash(&k), i, &hasher);
                } else {
                    i += 1;
                }
            }
            if s.len < before / 2 {
                s.shrink(&hasher);
            }
        }
    }

    /// Entries stored.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len)
            .sum()
    }

    /// Buckets in the shards' indexes (for the memory bench's diagnosis).
    pub(crate) fn buckets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                // hashbrown keeps 7/8 of its buckets usable.
                (s.index.capacity() * 8).div_ceil(7)
            })
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// The windows of one client, by [`ClientState::windows`] position.
pub(crate) const LOGIN_LANE: usize = 0;
/// The registration window's position.
pub(crate) const REGISTER_LANE: usize = 1;

/// Everything this replica tracks about one client: 32 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientState {
    /// `loginFailCheck` and `frequentRegisterCheck` windows.
    pub(crate) windows: [Entry; 2],
    /// The login and registration rate-limit cells: the GCRA's theoretical
    /// arrival time in nanoseconds of the limiter's clock; 0: not tracked.
    pub(crate) tat: [u64; 2],
}

impl Vacant for ClientState {
    #[inline]
    fn vacant(&self) -> bool {
        self.windows.iter().all(Vacant::vacant) && self.tat == [0, 0]
    }
}

/// The 64-bit form of a client key ([`crate::client_ip::client_key`]) when
/// it has one without loss.
///
/// - An IPv6 network of at most 64 bits has a zero low half: its high half.
/// - An IPv4 client (`::ffff:a.b.c.d`) becomes `ff00:0:a.b.c.d`-style
///   `0xff00_0000_xxxx_xxxx`: inside ff00::/8, multicast, which is never a
///   source address. A network whose high half is in that range anyway (an
///   address a trusted proxy or backend could still name) is not compacted,
///   so the two forms never meet.
/// - Anything else (`guards.ipv6_prefix` above 64, keys that are not client
///   keys) has none: it is kept whole in a table of its own.
#[inline]
pub fn compact_client(key: Key) -> Option<u64> {
    const V4: u64 = 0xff00_0000_0000_0000;
    let hi = (key >> 64) as u64;
    let lo = key as u64;
    if hi == 0 && lo >> 32 == 0xffff {
        Some(V4 | (lo & 0xffff_ffff))
    } else if lo == 0 && hi >> 32 != V4 >> 32 {
        Some(hi)
    } else {
        None
    }
}

/// The table of every client's state, shared by the login-IP and
/// registration counters and the login and registration rate limiters.
pub struct Clients {
    compact: Table<u64, ClientState>,
    whole: Table<u128, ClientState>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            compact: Table::new(),
            whole: Table::new(),
        }
    }
}

impl Clients {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    #[inline]
    pub(crate) fn update<R>(&self, key: Key, f: impl FnOnce(&mut ClientState) -> R) -> R {
        match compact_client(key) {
            Some(k) => self.compact.update(k, f),
            None => self.whole.update(key, f),
        }
    }

    /// `key`'s hash in the table that holds it.
    #[inline]
    pub(crate) fn hash(&self, key: Key) -> u64 {
        match compact_client(key) {
            Some(k) => self.compact.hash(&k),
            None => self.whole.hash(&key),
        }
    }

    /// [`Self::update`] with `key`'s hash ([`Self::hash`]) already known.
    #[inline]
    pub(crate) fn update_hashed<R>(
        &self,
        key: Key,
        h: u64,
        f: impl FnOnce(&mut ClientState) -> R,
    ) -> R {
        match compact_client(key) {
            Some(k) => self.compact.update_hashed(k, h, f),
            None => self.whole.update_hashed(key, h, f),
        }
    }

    pub(crate) fn get(&self, key: Key) -> Option<ClientState> {
        match compact_client(key) {
            Some(k) => self.compact.get(k),
            None => self.whole.get(key),
        }
    }

    pub(crate) fn retain(&self, mut f: impl FnMut(&mut ClientState)) {
        self.compact.retain(&mut f);
        self.whole.retain(&mut f);
    }

    /// Clients stored (any of their state).
    pub fn len(&self) -> usize {
        self.compact.len() + self.whole.len()
    }

    /// Whether no client is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets in the tables' indexes (for the memory bench).
    pub fn buckets(&self) -> usize {
        self.compact.buckets() + self.whole.buckets()
    }
}

// ---------------------------------------------------------------------------
// Window counters
// ---------------------------------------------------------------------------

/// Where a counter keeps its windows.
enum Backing {
    /// One window of each client's entry in the shared client table.
    Client(Arc<Clients>, usize),
    /// A table of its own, under a keyed 64-bit hash of the key (accounts,
    /// recipients): SipHash with a random per-process key, so nobody can
    /// aim two keys at one entry; a chance collision (about n²/2⁶⁵ for n
    /// keys: 3·10⁻⁸ at a million) merges two counts, which only ever makes
    /// counting stricter.
    Hashed(Table<Prehashed, Entry>, KeyHasher),
}

/// Counts events per key in windows, with a hard cap on tracked keys.
pub struct WindowCounter {
    name: &'static str,
    backing: Backing,
    max_keys: usize,
    len: AtomicUsize,
    clock: DefaultClock,
    epoch: Instant,
}

/// A reading of the counters' clock ([`WindowCounter::clock`]): governor's
/// (quanta: the TSC where the CPU keeps an invariant one, as the rate
/// limiters read; else the OS's monotonic clock). Read once per request
/// and handed to every counter it asks, not once per counter: a read of the
/// OS clock costs ~25 ns, and windows count whole seconds anyway.
pub type Instant = <DefaultClock as Clock>::Instant;

impl std::fmt::Debug for WindowCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCounter")
            .field("name", &self.name)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What a reservation found, before its slot is made.
enum Found {
    Held,
    Denied(u32),
    Full,
}

impl WindowCounter {
    /// A counter named `name` (for metrics) holding at most `max_keys` keys,
    /// in a table of its own (keys hashed to 64 bits).
    pub fn new(name: &'static str, max_keys: usize) -> Arc<Self> {
        Self::with(
            name,
            max_keys,
            Backing::Hashed(Table::new(), KeyHasher::new()),
        )
    }

    /// A counter of clients keeping its windows in `clients`' entries, at
    /// position `lane` ([`LOGIN_LANE`] or [`REGISTER_LANE`]).
    pub(crate) fn of_clients(
        name: &'static str,
        max_keys: usize,
        clients: Arc<Clients>,
        lane: usize,
    ) -> Arc<Self> {
        Self::with(name, max_keys, Backing::Client(clients, lane))
    }

    fn with(name: &'static str, max_keys: usize, backing: Backing) -> Arc<Self> {
        let clock = DefaultClock::default();
        Arc::new(WindowCounter {
            name,
            backing,
            max_keys,
            len: AtomicUsize::new(0),
            epoch: clock.now(),
            clock,
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

    /// Index buckets of the table this counter keeps its windows in (shared
    /// with the other client state for a client counter): for the memory
    /// bench.
    pub fn buckets(&self) -> usize {
        match &self.backing {
            Backing::Client(c, _) => c.buckets(),
            Backing::Hashed(t, _) => t.buckets(),
        }
    }

    /// Seconds since the counter was created (its clock).
    #[inline]
    pub fn now(&self) -> u32 {
        self.seconds_at(self.clock.now())
    }

    /// The counters' clock, read now (for [`Self::try_reserve_when`]).
    #[inline]
    pub fn clock(&self) -> Instant {
        self.clock.now()
    }

    /// [`Self::now`] at a reading of [`Self::clock`] (of any counter: they
    /// share one time source).
    #[inline]
    pub fn seconds_at(&self, t: Instant) -> u32 {
        u32::try_from(t.duration_since(self.epoch).as_u64() / 1_000_000_000).unwrap_or(u32::MAX)
    }

    /// `key`'s hash in the table holding its window: the table key of an
    /// account (SipHash, keyed), the table's hash of a client.
    #[inline]
    fn hash(&self, key: Key) -> u64 {
        match &self.backing {
            Backing::Client(c, _) => c.hash(key),
            Backing::Hashed(_, h) => h.hash_u128(key),
        }
    }

    #[inline]
    fn update<R>(&self, key: Key, f: impl FnOnce(&mut Entry) -> R) -> R {
        self.update_hashed(key, self.hash(key), f)
    }

    /// [`Self::update`] with the hash [`Self::hash`] gave for `key`.
    #[inline]
    fn update_hashed<R>(&self, key: Key, h: u64, f: impl FnOnce(&mut Entry) -> R) -> R {
        match &self.backing {
            Backing::Client(c, lane) => c.update_hashed(key, h, |s| f(&mut s.windows[*lane])),
            Backing::Hashed(t, _) => t.update_hashed(Prehashed(h), h, f),
        }
    }

    fn get(&self, key: Key) -> Option<Entry> {
        match &self.backing {
            Backing::Client(c, lane) => c.get(key).map(|s| s.windows[*lane]),
            Backing::Hashed(t, h) => t.get(Prehashed(h.hash_u128(key))),
        }
        .filter(|e| !e.vacant())
    }

    fn retain(&self, mut f: impl FnMut(&mut Entry)) {
        match &self.backing {
            Backing::Client(c, lane) => c.retain(|s| {
                if !s.windows[*lane].vacant() {
                    f(&mut s.windows[*lane]);
                }
            }),
            Backing::Hashed(t, _) => t.retain(f),
        }
    }

    /// Reserves a slot for `key` if `count + inflight < limit`; with `force`,
    /// reserves even over the limit (a login that solved a captcha).
    pub fn try_reserve(self: &Arc<Self>, key: Key, limit: WindowLimit, force: bool) -> Reservation {
        self.try_reserve_at(key, limit, force, self.now())
    }

    /// [`Self::try_reserve`] at a reading of the counters' clock, taken
    /// once for all the counters a request asks ([`Self::clock`]).
    #[inline]
    pub fn try_reserve_when(
        self: &Arc<Self>,
        key: Key,
        limit: WindowLimit,
        force: bool,
        t: Instant,
    ) -> Reservation {
        self.try_reserve_at(key, limit, force, self.seconds_at(t))
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
        let max = limit.limit.min(u32::from(u16::MAX));
        let tick = now.saturating_add(1);
        // Kept in the slot: its settle finds the entry without hashing again.
        let h = self.hash(key);
        let found = self.update_hashed(key, h, |e| {
            if e.vacant() {
                // Count the key first, so racing inserts cannot pass the cap.
                if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    return Found::Full;
                }
                e.window_start = tick;
            }
            roll(e, tick, window);
            let over = u32::from(e.count) + u32::from(e.inflight) >= max;
            if e.inflight == u16::MAX || (over && !force) {
                let end = e.window_start.saturating_add(window);
                return Found::Denied(end.saturating_sub(tick).max(1));
            }
            e.inflight += 1;
            Found::Held
        });
        match found {
            Found::Held => Reservation::Held(Slot::memory(self.clone(), key, h)),
            Found::Denied(secs) => Reservation::Denied(Duration::from_secs(u64::from(secs))),
            Found::Full => Reservation::Full,
        }
    }

    /// Settles a slot of `key` (whose hash, [`Self::hash`], is `h`): frees
    /// it and, on `commit`, counts the event.
    pub(crate) fn settle(&self, key: Key, h: u64, commit: bool) {
        self.update_hashed(key, h, |e| {
            if !e.vacant() {
                e.inflight = e.inflight.saturating_sub(1);
                if commit {
                    e.count = e.count.saturating_add(1);
                }
            }
        });
    }

    /// The state of `key`, if tracked and not expired under `window`.
    pub fn show(&self, key: Key, window: Duration) -> Option<Shown> {
        let tick = self.now().saturating_add(1);
        let w = window_secs(window);
        self.get(key).and_then(|e| {
            let end = e.window_start.saturating_add(w);
            let live = tick < end;
            (live || e.inflight > 0).then(|| Shown {
                count: if live { u32::from(e.count) } else { 0 },
                inflight: Some(u32::from(e.inflight)),
                window_remaining_secs: u64::from(end.saturating_sub(tick)),
            })
        })
    }

    /// Forgets `key`'s count (unblock). In-flight reservations stay accounted.
    pub fn clear(&self, key: Key) -> bool {
        let removed = self.update(key, |e| {
            if e.vacant() {
                false
            } else if e.inflight == 0 {
                *e = Entry::default();
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
        self.sweep_at(window, self.now())
    }

    /// [`Self::sweep`] at `now` on the counters' clock (tests step it
    /// instead of sleeping).
    pub fn sweep_at(&self, window: Option<Duration>, now: u32) -> usize {
        let tick = now.saturating_add(1);
        let w = window.map(window_secs);
        let mut removed = 0;
        self.retain(|e| {
            let keep = e.inflight > 0 || w.is_some_and(|w| tick < e.window_start.saturating_add(w));
            if !keep {
                *e = Entry::default();
                removed += 1;
            }
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

fn window_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}

/// Opens a new window when the current one has passed.
#[inline]
fn roll(e: &mut Entry, tick: u32, window: u32) {
    if tick >= e.window_start.saturating_add(window) {
        e.window_start = tick;
        e.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written rounds are SipHash: at 2-4 rounds they give what
    /// std's SipHasher gives for the same key and bytes (1-3 differs only
    /// in the round counts).
    #[test]
    #[allow(deprecated)]
    fn key_hasher_is_siphash() {
        use std::hash::Hasher;
        let mut x: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for i in 0..200u64 {
            let (k0, k1) = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15), !i << 7);
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(&x.to_le_bytes());
            assert_eq!(
                sip::<2, 4>(k0, k1, &[x as u64, (x >> 64) as u64]),
                h.finish()
            );
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(&(x as u64).to_le_bytes());
            assert_eq!(sip::<2, 4>(k0, k1, &[x as u64]), h.finish());
            x = x.rotate_left(13) ^ u128::from(i);
        }
        // Two hashers draw different keys; one hashes a key the same way.
        let (a, b) = (KeyHasher::new(), KeyHasher::new());
        assert_ne!(a.hash_u128(1), b.hash_u128(1));
        assert_eq!(a.hash_u128(1), a.hash_u128(1));
        assert_ne!(a.hash_u128(1), a.hash_u128(1 << 64));
    }

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
        // Slots were dropped (released); a second later the windows have passed.
        assert_eq!(c.sweep_at(Some(Duration::from_secs(1)), 1), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn compact_client_keys_are_injective() {
        use crate::client_ip::client_key;
        use std::net::IpAddr;
        let k = |s: &str, p| client_key(s.parse::<IpAddr>().unwrap(), p);
        let v4 = compact_client(k("10.0.0.1", 64)).unwrap();
        assert_eq!(v4, 0xff00_0000_0a00_0001);
        assert_eq!(
            compact_client(k("2001:db8:1:2:3:4:5:6", 64)),
            Some(0x2001_0db8_0001_0002)
        );
        // The IPv4 range, claimed by an IPv6 network: kept whole.
        assert_eq!(compact_client(k("ff00:0:a00:1::1", 64)), None);
        // A prefix above 64 bits: kept whole unless its low half is zero
        // (then it is the same u128 key as the /64, and the same compact one).
        assert_eq!(compact_client(k("2001:db8:0:0:1::1", 96)), None);
        assert_eq!(
            compact_client(k("2001:db8::1", 96)),
            Some(0x2001_0db8_0000_0000)
        );
        // Other multicast networks are still compact (and differ from IPv4).
        assert_eq!(
            compact_client(k("ff02::1", 64)),
            Some(0xff02_0000_0000_0000)
        );
    }

    #[test]
    fn client_lanes_share_one_entry_and_go_when_all_are_idle() {
        let clients = Clients::new();
        let login = WindowCounter::of_clients("l", 10, clients.clone(), LOGIN_LANE);
        let reg = WindowCounter::of_clients("r", 10, clients.clone(), REGISTER_LANE);
        let key = crate::client_ip::client_key("10.1.2.3".parse().unwrap(), 64);
        let wide = crate::client_ip::client_key("2001:db8::1:0:0:1".parse().unwrap(), 128);
        for k in [key, wide] {
            if let Reservation::Held(p) = login.try_reserve_at(k, lim(5, 1), false, 0) {
                p.settle(true);
            }
            if let Reservation::Held(p) = reg.try_reserve_at(k, lim(5, 100), false, 0) {
                p.settle(true);
            }
        }
        assert_eq!(clients.len(), 2);
        assert_eq!((login.len(), reg.len()), (2, 2));
        assert_eq!(login.sweep_at(Some(Duration::from_secs(1)), 1), 2);
        // The registration windows still hold the entries.
        assert_eq!(clients.len(), 2);
        assert_eq!(
            reg.show(key, Duration::from_secs(100)).map(|s| s.count),
            Some(1)
        );
        assert!(reg.clear(key) && reg.clear(wide));
        assert!(clients.is_empty());
    }

    #[test]
    fn many_keys_survive_moves_and_shrinks() {
        let c = WindowCounter::new("t", 100_000);
        let l = lim(3, 60);
        for k in 0..5_000u128 {
            if let Reservation::Held(p) = c.try_reserve_at(k, l, false, 0) {
                p.settle(k % 2 == 0);
            }
        }
        assert_eq!(c.len(), 5_000);
        // Clear the odd ones: entries move inside the shards.
        for k in (1..5_000u128).step_by(2) {
            assert!(c.clear(k));
        }
        assert_eq!(c.len(), 2_500);
        for k in 0..5_000u128 {
            let shown = c.show(k, Duration::from_secs(60)).map(|s| s.count);
            assert_eq!(shown, (k % 2 == 0).then_some(1), "key {k}");
        }
        assert_eq!(c.sweep(None), 2_500);
        assert!(c.is_empty());
    }

    #[test]
    fn the_hash_a_slot_keeps_finds_the_same_entry() {
        // Settling reuses the reservation's hash: it must be the hash every
        // other path (show, clear, sweep) uses, in every table a key can be in.
        let clients = Clients::new();
        let login = WindowCounter::of_clients("l", 100, clients.clone(), LOGIN_LANE);
        let accounts = WindowCounter::new("a", 100);
        let v4 = crate::client_ip::client_key("10.1.2.3".parse().unwrap(), 64);
        let wide = crate::client_ip::client_key("2001:db8::1:0:0:1".parse().unwrap(), 128);
        let acct = crate::store::AccountKeyer::unkeyed()
            .key("bob@example.com")
            .get();
        let l = lim(10, 60);
        for (c, k) in [(&login, v4), (&login, wide), (&accounts, acct)] {
            for commit in [true, false, true] {
                match c.try_reserve_at(k, l, false, 0) {
                    Reservation::Held(p) => p.settle(commit),
                    other => panic!("{other:?}"),
                }
            }
            let held = c.try_reserve_at(k, l, false, 0);
            let shown = c.show(k, Duration::from_secs(60)).unwrap();
            assert_eq!((shown.count, shown.inflight), (2, Some(1)), "key {k:x}");
            drop(held);
            let shown = c.show(k, Duration::from_secs(60)).unwrap();
            assert_eq!((shown.count, shown.inflight), (2, Some(0)), "key {k:x}");
            assert!(c.clear(k));
        }
        assert!(clients.is_empty() && accounts.is_empty());
    }

    #[test]
    fn one_clock_reading_serves_every_counter() {
        let a = WindowCounter::new("a", 10);
        let b = WindowCounter::new("b", 10);
        let t = a.clock();
        // Counters made together read the same second from one reading, and
        // a reading taken now is the counter's `now`.
        assert_eq!(a.seconds_at(t), b.seconds_at(t));
        assert!(a.seconds_at(t) <= a.now() && a.now() <= a.seconds_at(t) + 1);
        let l = lim(1, 60);
        assert!(matches!(
            a.try_reserve_when(5, l, false, t),
            Reservation::Held(_)
        ));
        // The window it opened is the one `try_reserve_at` sees at that second.
        if let Reservation::Held(p) = a.try_reserve_at(5, l, false, a.seconds_at(t)) {
            p.settle(true);
        }
        match a.try_reserve_when(5, l, false, t) {
            Reservation::Denied(wait) => assert_eq!(wait, Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counts_saturate_stricter_never_looser() {
        let c = WindowCounter::new("t", 10);
        let mut held = Vec::new();
        for _ in 0..u16::MAX {
            match c.try_reserve_at(1, lim(u32::MAX, 60), false, 0) {
                Reservation::Held(p) => held.push(p),
                other => panic!("{other:?}"),
            }
        }
        // 65,535 in flight: refused, even forced.
        assert!(matches!(
            c.try_reserve_at(1, lim(u32::MAX, 60), true, 0),
            Reservation::Denied(_)
        ));
        drop(held);
        assert_eq!(
            c.show(1, Duration::from_secs(60)).map(|s| s.inflight),
            Some(Some(0))
        );
    }
}
