//! The shared counter store: window counters, captcha answers and
//! (optionally) rate-limit state in Redis, so several replicas enforce one
//! limit. A single server (`redis://`, `rediss://` with TLS, `unix://`) or a
//! Redis Cluster (`cluster = true`).
//!
//! **Counters are counted up front** (layout [`KEY_VERSION`] `v3`): an
//! attempt is counted when it is let through (`INCR`), as if it were going to
//! fail, and refunded (`DECR`) when its outcome says it does not count (a
//! successful login, a refused request). `INCR` is atomic, so replicas
//! holding one limit under a parallel burst let exactly `limit` attempts
//! through; what is in flight is in the count. A reservation is granted
//! when the count after the `INCR` is within the limit (or forced: a solved
//! captcha); a denied one is refunded at once. A replica that dies with an
//! attempt in flight leaves it counted as a failure until its window ends
//! (fail closed). Only Redis's native commands run: no script for a login,
//! whose server cost is under half the Lua layout's (docs/redis.md).
//!
//! Windows are fixed and aligned to the wall clock: a counter's window of
//! `w` ms is `[n·w, (n+1)·w)` in Unix time, read on the replica's clock, and
//! its key names the window's start, so a new window is a new key (nothing
//! to reset) and a refund can only reach the window it was counted in. A
//! replica's clock skew moves the boundaries it sees (docs/redis.md).
//! Layout, under `key_prefix` `<p>` (the braces are the cluster hash tag:
//! counters and subjects spread over the slots, and every window of one
//! counter and subject is in one slot):
//!
//! - `<p>:v3:{<counter>:<subject>}:<window start, Unix ms>`: the count (a
//!   string, `INCR`ed). It is created with its TTL (`SET .. PX .. NX`, then
//!   `INCR`): the window's end plus `hold`, so a refund sent before the
//!   window ends always finds it, and Redis forgets it soon after;
//! - `<p>:{rl:<class>:<client>}`: a client's GCRA state (`rate_limit.shared`);
//! - `<p>:cap:<token>`: a captcha's client key and answer, with the captcha TTL;
//! - `<p>:v3:keyers`: each replica's account keyer fingerprint and when it
//!   was last announced ([`RedisStore::run_keyer_check`]).
//!
//! On a single server, all the counters a request needs are reserved in one
//! pipelined write (one round trip), and so are those of every request a
//! thread (a proxy worker) makes while its previous call is in flight or in
//! the same turn of its event loop (group commit): the first request queues
//! its counters in the thread's [`Batch`] and spawns a task that, running
//! after the other tasks ready in that turn, sends the whole batch in one
//! pipeline, answers each request through a channel, and sends whatever
//! queued meanwhile in the next, until the queue is empty. A request dropped
//! meanwhile (its client hung up) gets no answer: what was counted for it
//! is refunded, never leaked. A failed call fails each request in it with an
//! error of the same kind (what it counted stays counted: fail closed). In a
//! cluster each counter is reserved in a pipeline of its own (its slot's),
//! sent together.
//!
//! Subjects are the account's key, or the client key keyed with the same
//! secret ([`super::AccountKeyer`]), in hex: no e-mail address or phone
//! number is written to Redis, and with a secret no client address either.
//!
//! One round trip per guarded request (or batch): a refund is queued, and
//! the next reservation's pipeline carries it (refunds first); one no
//! reservation picks up within [`FLUSH_AFTER`] is sent by a background
//! flusher, batched with the others. A failed attempt needs no second call
//! at all. The rate limit's script is called by `EVALSHA`; it is loaded when
//! connections are (re)opened, and a `NOSCRIPT` answer (a restarted or
//! flushed server) is met with one `EVAL`, which loads it again.
//!
//! On a single server each calling thread (a proxy worker) has a connection
//! of its own, driven on its own runtime: no call wakes another thread, and
//! the calls of one turn of a worker's event loop are pipelined in one write.
//!
//! Calls are bounded by `timeout`; errors are returned, and the caller
//! ([`super::Fallback`]) keeps the circuit breaker and applies the fallback.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};
use tokio::sync::oneshot;

use super::counters::Shown;
use super::ratelimit::{RateLimits, SharedQuota};
use super::{AccountKeyer, Ask, Counter, Issued, Reservation, Slot, Subject};
use crate::config::{RateLimitConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::routes::RouteKind;

/// How long a queued refund waits for a reservation to carry it before the
/// flusher sends it on its own: short, since the attempt counts against the
/// limit on every replica until then (never too lenient, but a freed slot
/// should be free again soon).
pub const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Most refunds one call carries.
const REFUND_BATCH: usize = 256;

/// How often a replica announces its account keyer ([`RedisStore::run_keyer_check`]).
pub const KEYERS_EVERY: Duration = Duration::from_secs(30);

/// How long an announced keyer counts as a live replica's.
pub const KEYERS_LIVE_FOR: Duration = Duration::from_secs(120);

/// The version of the counters' key layout, in their names
/// (`<prefix>:v3:{<counter>:<subject>}:<window start>`): a replica never
/// reads a key another layout wrote (during a rolling upgrade the two
/// versions count apart, each for itself, until the old keys' TTLs end).
/// `v2` kept a hash per counter with its reservations, changed by a script.
pub const KEY_VERSION: &str = "v3";

/// The shared per-client rate limit: GCRA, as the local limiter (governor)
/// applies it, on Redis's clock.
const RATE: &str = r"
-- KEYS[1]: the client's theoretical arrival time (microseconds).
-- ARGV[1]: interval between requests at the sustained rate (us), ARGV[2]: burst.
-- Returns 0 (allowed, counted) or the microseconds to wait.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new = tat + interval
local over = new - now - interval * burst
if over > 0 then
  return math.ceil(over)
end
-- As text made with '%d': tostring would round a 16-digit number to 14
-- digits, and a number argument is formatted with '%.17g' (slow).
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', string.format('%d', math.ceil((new - now) / 1000)))
return 0
";

/// Why a shared-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Redis answered with an error, or the connection failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the script cannot have returned.
    #[error("unexpected reply")]
    Reply,
    /// The call that carried this request's reservations with others' (see
    /// [`Batch`]) failed: the first request gets the error itself, the
    /// others its kind and message.
    #[error("{message}")]
    Batched {
        /// The error's [`StoreError::kind`].
        kind: &'static str,
        /// What it said.
        message: String,
    },
    /// The task that was to send this request's reservations was dropped
    /// (its runtime shut down) before answering.
    #[error("the call was dropped")]
    Cancelled,
}

impl StoreError {
    /// Label of `poolgate_store_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "io",
            StoreError::Redis(e) if e.is_connection_refusal() => "io",
            StoreError::Redis(_) => "server",
            StoreError::Reply => "reply",
            StoreError::Batched { kind, .. } => kind,
            StoreError::Cancelled => "cancelled",
        }
    }
}

/// What [`RedisStore::call`] sends: one command, or a pipeline (one write,
/// its replies in order).
#[derive(Clone, Copy)]
enum Query<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
}

/// One connection to the shared store: a single server (reconnecting
/// multiplexed connection) or a cluster (one connection per node, commands
/// routed by their keys' slot, the slot map refreshed on `MOVED`).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The TLS material of the configuration, read from its files.
fn tls_certificates(cfg: &RedisConfig) -> anyhow::Result<Option<redis::TlsCertificates>> {
    if !cfg.tls() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("store.redis.{key} {}: {e}", path.display()))
    };
    let root_cert = match &cfg.ca_file {
        Some(p) => {
            let pem = read("ca_file", p)?;
            // An empty trust store would refuse every server, with an error
            // that says nothing of this file.
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                anyhow::bail!(
                    "store.redis.ca_file {}: no PEM certificate in it",
                    p.display()
                );
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read("client_cert_file", c)?,
            client_key: read("client_key_file", k)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// How fresh connections are opened: at start (lazily), and by
/// [`RedisStore::reconnect`] when the breaker's probe finds Redis back.
enum Opener {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient, ClusterConfig),
}

impl Opener {
    fn new(cfg: &RedisConfig) -> anyhow::Result<Opener> {
        let url = cfg.url.expose();
        let named =
            |e: redis::RedisError| anyhow::anyhow!("store.redis.url {}: {e}", redacted_url(url));
        let certs = tls_certificates(cfg)?;
        if cfg.cluster {
            let seeds: Vec<&str> = std::iter::once(url)
                .chain(cfg.nodes.iter().map(String::as_str))
                .collect();
            let mut b = ClusterClientBuilder::new(seeds)
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.timeout)
                // A node that is down fails the call quickly (the fallback
                // answers) rather than after a long series of retries.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(c) = certs {
                b = b.certs(c);
            }
            let client = b.build().map_err(named)?;
            let ccfg = ClusterConfig::new()
                .set_connection_timeout(cfg.connect_timeout)
                .set_response_timeout(cfg.timeout);
            return Ok(Opener::Cluster(client, ccfg));
        }
        let client = match certs {
            Some(c) => redis::Client::build_with_tls(url, c),
            None => redis::Client::open(url),
        }
        .map_err(named)?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            // Each call is bounded by `timeout` in `RedisStore::call` (the
            // connect included): one timer per call, not two.
            .set_response_timeout(None)
            // Reconnection is retried on the next call, not in a long loop
            // that would hold calls up past their timeout.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Opener::Single(client, mcfg))
    }

    /// A connection, opened on its first use.
    fn lazy(&self) -> redis::RedisResult<Conn> {
        Ok(match self {
            Opener::Single(c, m) => Conn::Single(ConnectionManager::new_lazy_with_config(
                c.clone(),
                m.clone(),
            )?),
            Opener::Cluster(c, cc) => {
                Conn::Cluster(c.get_pending_async_connection_with_config(cc.clone()))
            }
        })
    }

    /// A connection, opened now.
    async fn open(&self) -> redis::RedisResult<Conn> {
        Ok(match self {
            Opener::Single(c, m) => {
                Conn::Single(ConnectionManager::new_with_config(c.clone(), m.clone()).await?)
            }
            Opener::Cluster(c, cc) => {
                Conn::Cluster(c.get_async_connection_with_config(cc.clone()).await?)
            }
        })
    }
}

/// A Lua script, called by its SHA1.
struct Lua {
    script: Script,
    code: &'static str,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            script: Script::new(code),
            code,
        }
    }

    /// `EVALSHA` of this script with `nkeys` keys, sized for `nargs` more
    /// arguments of `bytes` in all (one allocation each for the command's
    /// arguments and their bytes, not a series of regrowths).
    fn cmd(&self, nkeys: usize, nargs: usize, bytes: usize) -> Cmd {
        let mut c = Cmd::with_capacity(3 + nkeys + nargs, 64 + bytes);
        c.arg("EVALSHA").arg(self.script.get_hash()).arg(nkeys);
        c
    }
}

/// A counted attempt's identity in Redis, for its refund: its window's
/// key, and when the window ends on this replica's clock (a refund after
/// that is not sent: the window it was counted in is over).
#[derive(Debug)]
pub struct SlotId {
    count_key: String,
    window_end: Instant,
}

/// The queue of refunds, waiting for a reservation (or the flusher) to
/// carry them to Redis.
#[derive(Debug, Default)]
pub struct Settler {
    queue: Mutex<Refunds>,
    wake: tokio::sync::Notify,
}

/// The queued refunds, and when the oldest of them was queued.
#[derive(Debug, Default)]
struct Refunds {
    items: Vec<SlotId>,
    since: Option<Instant>,
}

impl Settler {
    /// Settles a counted attempt: an event (`commit`) is already counted,
    /// so nothing is sent; otherwise a refund is queued while its window
    /// lasts.
    pub(crate) fn settle(&self, id: SlotId, commit: bool) {
        if commit {
            return;
        }
        let now = Instant::now();
        if now >= id.window_end {
            return;
        }
        let first = {
            let Ok(mut q) = self.queue.lock() else {
                return;
            };
            let first = q.items.is_empty();
            if first {
                q.since = Some(now);
            }
            q.items.push(id);
            first
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<SlotId> {
        match self.queue.lock() {
            Ok(mut q) if !q.items.is_empty() => {
                let n = q.items.len().min(REFUND_BATCH);
                if n == q.items.len() {
                    q.since = None;
                    std::mem::take(&mut q.items)
                } else {
                    // The rest keep the older time: flushed no later.
                    q.items.drain(..n).collect()
                }
            }
            _ => Vec::new(),
        }
    }

    /// When the flusher must send the queue (its oldest refund's time plus
    /// [`FLUSH_AFTER`]); `None` when it is empty.
    fn due(&self) -> Option<Instant> {
        let q = self.queue.lock().ok()?;
        q.since.map(|t| t + FLUSH_AFTER)
    }
}

/// One counter of a request: its window's key, limit, the key's TTL (ms:
/// the window's end plus `hold`), and the window's end (on this replica's
/// clock, and as ms left).
struct Counted {
    key: String,
    limit: u32,
    ttl_ms: u64,
    left_ms: u64,
    window_end: Instant,
}

/// One request's counters (a group): whether over the limit (a solved
/// captcha, a dry run), and its counters in the order of its asks.
struct Group {
    force: bool,
    counters: Vec<Counted>,
}

/// What a request waits for: its reservations, in the order of its asks.
type Answer = Result<Vec<Reservation>, StoreError>;

/// A request waiting in its thread's [`Batch`].
struct Pending {
    group: Group,
    tx: oneshot::Sender<Answer>,
}

/// The reservations one thread's requests queued for one store (single
/// server), sent one call at a time (group commit): the first request queued
/// while no [`Flush`] task runs spawns one. It runs after the tasks already
/// ready in this turn of the thread's event loop (so they have queued
/// theirs), sends them all in one pipeline and, while that call is in
/// flight, the thread's next requests queue behind it and go in the next
/// call. So under load a call carries what arrived during one round trip,
/// not one request, and Redis pays its per-call cost once for all of them;
/// a request waits at most for the call in flight and then its own. Kept
/// beside the thread's connection in [`THREAD_CONNS`]; shared (`Arc`), so a
/// task that moved to another thread of a multi-thread runtime still finds
/// it.
#[derive(Default)]
struct Batch {
    queue: Mutex<Queue>,
}

/// A [`Batch`]'s queued requests, and whether a [`Flush`] task is running
/// for it (then it sends them; no other is spawned).
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    flushing: bool,
}

impl Batch {
    /// Queues `p`; true if no [`Flush`] task runs, which the caller must
    /// then spawn (marked running here, so exactly one caller does).
    fn push(&self, p: Pending) -> Result<bool, Pending> {
        let Ok(mut q) = self.queue.lock() else {
            return Err(p);
        };
        q.pending.push(p);
        Ok(!std::mem::replace(&mut q.flushing, true))
    }

    /// The queued requests, or `None` (and the task marked stopped) if none
    /// are: the [`Flush`] task's next call, or its end.
    fn next(&self) -> Option<Vec<Pending>> {
        let Ok(mut q) = self.queue.lock() else {
            return None;
        };
        if q.pending.is_empty() {
            q.flushing = false;
            return None;
        }
        Some(std::mem::take(&mut q.pending))
    }

    /// The [`Flush`] task is gone without emptying the queue: its requests
    /// are dropped (their waiters get an error) and the next one queued
    /// spawns a new task.
    fn abandon(&self) {
        let dropped = self.queue.lock().map(|mut q| {
            q.flushing = false;
            std::mem::take(&mut q.pending)
        });
        drop(dropped);
    }
}

/// The task that sends a [`Batch`], one call at a time, until it is empty.
/// Dropped before it ran or between calls (its runtime shutting down, or a
/// panic), it drops the queued requests' senders: each waiter gets an error
/// ([`StoreError::Cancelled`]) rather than waiting for ever, and the next
/// request queued on this thread spawns a new task. Dropped while a call is
/// in flight, the same for that call's requests (their senders are in the
/// call's future).
struct Flush {
    store: Arc<RedisStore>,
    batch: Arc<Batch>,
    /// Set when [`Batch::next`] found the queue empty and marked the task
    /// stopped: a new task may run by the time this one drops.
    done: bool,
}

impl Flush {
    async fn run(mut self) {
        while let Some(pending) = self.batch.next() {
            self.store.send_batch(pending).await;
        }
        self.done = true;
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        if !self.done {
            self.batch.abandon();
        }
    }
}

/// Numbers the stores, for [`THREAD_CONNS`] (a store's address may be reused).
static STORE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connection to each single-server store it calls (see
    /// [`RedisStore::conn`]).
    static THREAD_CONNS: RefCell<Vec<ThreadConn>> = const { RefCell::new(Vec::new()) };
}

/// A connection opened by (and driven on the runtime of) one thread, and
/// the thread's queue of reservations for the store.
struct ThreadConn {
    store: u64,
    /// Gone when the store is: the entry is then pruned.
    alive: Weak<()>,
    /// The store's [`RedisStore::generation`] it was opened in.
    generation: u64,
    conn: Conn,
    batch: Arc<Batch>,
}

/// The Redis-backed store.
pub struct RedisStore {
    opener: Opener,
    conns: ArcSwap<Vec<Conn>>,
    id: u64,
    alive: Arc<()>,
    /// Bumped when [`Self::reconnect`] replaces the pool: the threads'
    /// connections are replaced too, on their next call.
    generation: AtomicU64,
    cluster: bool,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    /// How long a counter's key outlives its window (ms): longer than any
    /// request may be in flight, so its refund finds the key.
    hold_ms: u64,
    rate: Lua,
    /// Keys clients in key names ([`Self::with_keyer`]).
    keyer: AccountKeyer,
    metrics: Metrics,
    /// `poolgate_store_duration_seconds` of the calls made per request,
    /// looked up once (not per call).
    reserve_duration: prometheus::Histogram,
    settle_duration: prometheus::Histogram,
    rate_duration: prometheus::Histogram,
    settler: Arc<Settler>,
    flusher: AtomicBool,
    rates: RateLimits,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A URL for logs: the password, if any, replaced.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<redacted>@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisStore {
    /// Prepares the connections (lazily: Redis need not be up at start).
    /// `hold` is how long a counter's key outlives its window: longer than
    /// any upstream request may take.
    pub fn new(cfg: &RedisConfig, hold: Duration, metrics: Metrics) -> anyhow::Result<Self> {
        let opener = Opener::new(cfg)?;
        let named = |e: redis::RedisError| {
            anyhow::anyhow!("store.redis.url {}: {e}", redacted_url(cfg.url.expose()))
        };
        let conns = (0..cfg.pool_size.max(1))
            .map(|_| opener.lazy().map_err(named))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RedisStore {
            opener,
            conns: ArcSwap::from_pointee(conns),
            id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            generation: AtomicU64::new(0),
            cluster: cfg.cluster,
            next: AtomicUsize::new(0),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            hold_ms: u64::try_from(hold.as_millis())
                .unwrap_or(u64::MAX)
                .max(1000),
            rate: Lua::new(RATE),
            keyer: AccountKeyer::unkeyed(),
            reserve_duration: metrics.store_duration.with_label_values(&["reserve"]),
            settle_duration: metrics.store_duration.with_label_values(&["settle"]),
            rate_duration: metrics.store_duration.with_label_values(&["rate_limit"]),
            metrics,
            settler: Arc::default(),
            flusher: AtomicBool::new(false),
            rates: RateLimits::new(&RateLimitConfig::default()),
        })
    }

    /// Keys clients (IP addresses) in Redis's key names with `keyer`'s
    /// secret, as accounts are (unchanged without a secret).
    pub fn with_keyer(mut self, keyer: AccountKeyer) -> Self {
        self.keyer = keyer;
        self
    }

    /// The number a subject is named by in Redis: an account's key, or a
    /// client's keyed with the secret ([`AccountKeyer::client`]).
    fn subject_key(&self, subject: Subject) -> u128 {
        match subject {
            Subject::Client(k) => self.keyer.client(k),
            Subject::Account(a) => a.get(),
        }
    }

    /// Keeps the rate limits of `rate` in Redis where `rate_limit.shared` asks for it.
    pub fn with_rates(mut self, rate: &RateLimitConfig) -> Self {
        self.rates = RateLimits::new(rate);
        self
    }

    /// Applies reloaded rates to the quotas kept in Redis (a configuration
    /// reload); the clients' GCRA state in Redis is kept.
    pub fn reconfigure_rates(&self, rate: &RateLimitConfig) {
        self.rates.reconfigure(rate);
    }

    /// The quota `kind` keeps in Redis, if any.
    pub fn shared_quota(&self, kind: RouteKind) -> Option<SharedQuota> {
        self.rates.shared_quota(kind)
    }

    /// The connection for a call. On a single server, the calling thread's
    /// own (opened on its first call, so its driver task runs on the
    /// caller's runtime: a proxy worker's calls never wake another thread,
    /// and the calls its requests make in one turn of its event loop go out
    /// in one write, pipelined); elsewhere, one of the pool.
    fn conn(&self) -> Conn {
        if !self.cluster {
            if let Some(c) = self.thread_conn() {
                return c;
            }
        }
        self.pooled()
    }

    fn thread_conn(&self) -> Option<Conn> {
        // Opening one spawns its driver: only on a runtime.
        tokio::runtime::Handle::try_current().ok()?;
        self.thread_entry(|e| e.conn.clone())
    }

    /// This thread's [`Batch`] for this store (the caller checked that it
    /// runs on a runtime).
    fn thread_batch(&self) -> Option<Arc<Batch>> {
        self.thread_entry(|e| e.batch.clone())
    }

    /// `f` of this thread's entry for this store, made if there is none (or
    /// only one from before a reconnect).
    fn thread_entry<T>(&self, f: impl FnOnce(&ThreadConn) -> T) -> Option<T> {
        let generation = self.generation.load(Ordering::Acquire);
        THREAD_CONNS
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                if let Some(e) = t.iter().find(|e| e.store == self.id) {
                    if e.generation == generation {
                        return Some(f(e));
                    }
                }
                // New here, or from before a reconnect; drop the connections
                // of stores that are gone on the way. (A batch queued in the
                // old entry is sent by the task it spawned, which holds it.)
                t.retain(|e| e.store != self.id && e.alive.strong_count() > 0);
                let conn = self.opener.lazy().ok()?;
                let e = ThreadConn {
                    store: self.id,
                    alive: Arc::downgrade(&self.alive),
                    generation,
                    conn,
                    batch: Arc::default(),
                };
                let out = f(&e);
                t.push(e);
                Some(out)
            })
            .ok()
            .flatten()
    }

    /// Forgets this thread's connection after a failed call: the next call
    /// opens a fresh one (on this thread's current runtime).
    fn forget_thread_conn(&self) {
        let _ = THREAD_CONNS.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.retain(|e| e.store != self.id);
            }
        });
    }

    fn pooled(&self) -> Conn {
        let conns = self.conns.load();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len().max(1);
        // `conns` is never empty (pool_size >= 1); a lazy spare is the fallback.
        match conns.get(i) {
            Some(c) => c.clone(),
            None => conns[0].clone(),
        }
    }

    /// Runs one call (a command or a pipeline) with the timeout and the metrics.
    async fn call<T: FromRedisValue>(
        &self,
        op: &'static str,
        query: Query<'_>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut conn = self.conn();
        let sent = async {
            match query {
                Query::Cmd(cmd) => cmd.query_async::<T>(&mut conn).await,
                Query::Pipe(pipe) => pipe.query_async::<T>(&mut conn).await,
            }
        };
        let r = match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        let took = started.elapsed().as_secs_f64();
        match op {
            "reserve" => self.reserve_duration.observe(took),
            "settle" => self.settle_duration.observe(took),
            "rate_limit" => self.rate_duration.observe(took),
            _ => self
                .metrics
                .store_duration
                .with_label_values(&[op])
                .observe(took),
        }
        if let Err(e) = &r {
            self.metrics
                .store_errors
                .with_label_values(&[op, e.kind()])
                .inc();
            // A connection that timed out or broke is not used again; an
            // error Redis answered (NOSCRIPT) says nothing against it.
            if !self.cluster && matches!(e.kind(), "timeout" | "io") {
                self.forget_thread_conn();
            }
        }
        r
    }

    /// Calls a script by `EVALSHA`; on `NOSCRIPT` (a restarted or flushed
    /// server), once by `EVAL`, which loads it again.
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        lua: &Lua,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        match self.call(op, Query::Cmd(&cmd)).await {
            Err(StoreError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut eval = redis::cmd("EVAL");
                eval.arg(lua.code);
                for a in cmd.args_iter().skip(2) {
                    if let redis::Arg::Simple(b) = a {
                        eval.arg(b);
                    }
                }
                self.call(op, Query::Cmd(&eval)).await
            }
            r => r,
        }
    }

    /// The key of a counter's window (its count):
    /// `<prefix>:v3:{<counter>:<subject>}:<start>`, `start` the window's
    /// start in Unix ms. The braces are the key's hash tag, so counters and
    /// subjects spread over a cluster's slots, and a counter's windows share one.
    fn count_key(&self, counter: Counter, subject: Subject, start_ms: u64) -> String {
        let mut k = String::with_capacity(self.key_len());
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(KEY_VERSION);
        k.push_str(":{");
        k.push_str(counter.as_str());
        k.push(':');
        push_hex(&mut k, self.subject_key(subject), 32);
        k.push_str("}:");
        k.push_str(itoa::Buffer::new().format(start_ms));
        k
    }

    /// Room for a counter's key: the prefix, `:v3:{`, the longest counter
    /// name (14), `:`, 32 hex digits, `}:`, 20 digits.
    fn key_len(&self) -> usize {
        self.prefix.len() + 4 + KEY_VERSION.len() + 69
    }

    /// The key of `counter` and `subject` in the window of `window` that
    /// holds `now_ms` (Unix ms), and that window's end (Unix ms).
    fn window_key(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
        now_ms: u64,
    ) -> (String, u64) {
        let (start, end) = aligned_window(now_ms, window_ms(window));
        (self.count_key(counter, subject, start), end)
    }

    /// Reserves a slot in each counter of `asks`: counts the attempt in
    /// each (`INCR`), granted where the count is within the limit (or
    /// `force`). On a single server, in one pipeline with the counters of
    /// the other requests this thread makes in this turn of its event loop
    /// (see [`Batch`]), which also carries the refunds queued since the
    /// last call; in a cluster, one pipeline per counter (their keys live in
    /// different slots), sent together. Each counter's count is atomic
    /// either way. If any call fails, what the others counted is refunded
    /// (their slots dropped) and the whole fails.
    pub async fn reserve(
        self: &Arc<Self>,
        asks: &[Ask],
        force: bool,
    ) -> Result<Vec<Reservation>, StoreError> {
        self.start_flusher();
        let group = self.group(asks, force);
        if !self.cluster {
            return match self.enqueue(group) {
                Ok(rx) => Self::wait(rx).await,
                // No runtime to batch on: on its own.
                Err(group) => {
                    let refunds = self.settler.take();
                    self.reserve_in_one_call(group, refunds).await
                }
            };
        }
        if group.counters.len() < 2 {
            return self.reserve_in_one_call(group, Vec::new()).await;
        }
        let calls = group.counters.into_iter().map(|one| {
            let group = Group {
                force,
                counters: vec![one],
            };
            self.reserve_in_one_call(group, Vec::new())
        });
        let mut out = Vec::with_capacity(asks.len());
        for r in futures_util::future::join_all(calls).await {
            // On an error, `out` and the other results drop: their counts are refunded.
            out.extend(r?);
        }
        Ok(out)
    }

    /// The group of one request: its counters' keys (in their windows as of
    /// now, on this replica's clock), limits and windows' ends.
    fn group(&self, asks: &[Ask], force: bool) -> Group {
        let (now_ms, now) = (unix_ms(), Instant::now());
        Group {
            force,
            counters: asks
                .iter()
                .map(|a| {
                    let (key, end_ms) =
                        self.window_key(a.counter, a.subject, a.limit.window, now_ms);
                    let left_ms = end_ms.saturating_sub(now_ms);
                    Counted {
                        key,
                        limit: a.limit.limit,
                        ttl_ms: left_ms.saturating_add(self.hold_ms),
                        left_ms,
                        // No window is that long (30 days at most), but an
                        // `Instant` must not overflow: then no refund is sent.
                        window_end: now
                            .checked_add(Duration::from_millis(left_ms))
                            .unwrap_or(now),
                    }
                })
                .collect(),
        }
    }

    /// Queues `group` in this thread's batch, spawning the task that sends
    /// it if it is the first; `Err` (the group back) off a runtime.
    fn enqueue(self: &Arc<Self>, group: Group) -> Result<oneshot::Receiver<Answer>, Group> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Err(group);
        };
        let Some(batch) = self.thread_batch() else {
            return Err(group);
        };
        let (tx, rx) = oneshot::channel();
        let first = match batch.push(Pending { group, tx }) {
            Ok(first) => first,
            Err(p) => return Err(p.group),
        };
        if first {
            // Behind the tasks already ready in this turn: they queue theirs first.
            rt.spawn(
                Flush {
                    store: self.clone(),
                    batch,
                    done: false,
                }
                .run(),
            );
        }
        Ok(rx)
    }

    /// A queued request's answer. The task sending it answers within the
    /// timeout of the call in flight and of the request's own, or is
    /// dropped (its runtime shut down, or it panicked) and so drops the
    /// sender: an error at once. It runs on the runtime this request runs
    /// on, so no timer of its own is needed here (one per request was ~500
    /// instructions of a login's, under callgrind).
    async fn wait(rx: oneshot::Receiver<Answer>) -> Answer {
        rx.await.unwrap_or(Err(StoreError::Cancelled))
    }

    /// Sends a thread's batch in one pipeline, with the refunds queued since
    /// the last call; each request gets its answer through its channel. A
    /// request gone meanwhile (its client hung up) gets none: its granted
    /// slots come back from the channel and, dropped, are refunded. On an
    /// error every request gets one of the same kind.
    async fn send_batch(self: &Arc<Self>, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let refunds = self.settler.take();
        let reply = match self
            .reserve_call(refunds, pending.iter().map(|p| &p.group))
            .await
        {
            Ok(r) => r,
            Err(e) => return fail_all(pending, e),
        };
        let mut at = 0;
        for p in pending {
            let n = p.group.counters.len();
            let answer = self.answers(p.group, &reply[at..at + n]);
            at += n;
            // Err: the request is gone; its slots drop here, refunded.
            let _ = p.tx.send(Ok(answer));
        }
    }

    /// One pipeline for one request (whose keys must share a slot in a
    /// cluster), refunding `refunds` first.
    async fn reserve_in_one_call(
        self: &Arc<Self>,
        group: Group,
        refunds: Vec<SlotId>,
    ) -> Result<Vec<Reservation>, StoreError> {
        let reply = self.reserve_call(refunds, std::iter::once(&group)).await?;
        Ok(self.answers(group, &reply))
    }

    /// Sends the pipeline for `groups`, refunding `refunds` first: its
    /// reply, each counter's count after its `INCR` (checked), for both the
    /// batched and the one-request path.
    fn reserve_call<'g>(
        &self,
        refunds: Vec<SlotId>,
        groups: impl Iterator<Item = &'g Group> + Clone,
    ) -> impl std::future::Future<Output = Result<Vec<i64>, StoreError>> + Send + '_ {
        let pipe = self.reserve_pipe(&refunds, groups.clone());
        let counters: usize = groups.map(|g| g.counters.len()).sum();
        let skip = refunds.len();
        // A refund this call carried is not sent again if it fails: the
        // attempt then stays counted until its window ends (strict, never
        // lenient; counted in `poolgate_store_errors_total`).
        drop(refunds);
        async move {
            let reply: Vec<Value> = self.call("reserve", Query::Pipe(&pipe)).await?;
            if reply.len() != skip + 2 * counters {
                return Err(StoreError::Reply);
            }
            // Each counter's `SET` then `INCR`: the `INCR`'s count is kept.
            reply[skip..]
                .chunks_exact(2)
                .map(|r| match r[1] {
                    Value::Int(n) => Ok(n),
                    _ => Err(StoreError::Reply),
                })
                .collect()
        }
    }

    /// The pipeline for `groups`, refunding `refunds` first: the one place
    /// its commands are laid out. Per counter, `SET key 0 PX ttl NX` (the
    /// key exists, with its TTL, before it is counted: never a count without
    /// one) and `INCR key`. Every reply is read, none marked ignored (the
    /// `redis` crate keeps those in a hashed set, ~1,800 instructions a
    /// login); each command is sized once.
    fn reserve_pipe<'g>(
        &self,
        refunds: &[SlotId],
        groups: impl Iterator<Item = &'g Group> + Clone,
    ) -> Pipeline {
        let counters: usize = groups.clone().map(|g| g.counters.len()).sum();
        let mut pipe = Pipeline::with_capacity(refunds.len() + 2 * counters);
        let key_room = self.key_len() + 8;
        for r in refunds {
            pipe.add_command(self.refund_cmd(r));
        }
        for g in groups {
            for c in &g.counters {
                let mut set = Cmd::with_capacity(6, key_room + 32);
                set.arg("SET")
                    .arg(&c.key)
                    .arg("0")
                    .arg("PX")
                    .arg(c.ttl_ms)
                    .arg("NX");
                pipe.add_command(set);
                let mut incr = Cmd::with_capacity(2, key_room);
                incr.arg("INCR").arg(&c.key);
                pipe.add_command(incr);
            }
        }
        pipe
    }

    /// A group's reservations from its counts (one per counter). A denied
    /// attempt was counted too: its refund is queued at once.
    fn answers(&self, group: Group, reply: &[i64]) -> Vec<Reservation> {
        let Group { force, counters } = group;
        counters
            .into_iter()
            .zip(reply)
            .map(|(c, &count)| {
                let id = SlotId {
                    count_key: c.key,
                    window_end: c.window_end,
                };
                // The count includes this attempt: within the limit, it was
                // below it before.
                if force || count <= i64::from(c.limit) {
                    Reservation::Held(Slot::redis(self.settler.clone(), id))
                } else {
                    self.settler.settle(id, false);
                    let ms = c.left_ms.max(1000);
                    Reservation::Denied(Duration::from_millis(ms.div_ceil(1000) * 1000))
                }
            })
            .collect()
    }

    /// Starts (once) the task that sends the refunds no reservation carried.
    fn start_flusher(self: &Arc<Self>) {
        if self.flusher.load(Ordering::Relaxed) || self.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.flusher.store(false, Ordering::Release);
            return;
        };
        let settler = self.settler.clone();
        let store: Weak<RedisStore> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                settler.wake.notified().await;
                // Only refunds that waited FLUSH_AFTER are sent alone: one
                // queued since a reservation took the queue waits for the
                // next (under load, most do), not for this timer's first
                // start. Each refund-only call is one more call for Redis
                // to wake up for.
                while let Some(due) = settler.due() {
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                        continue;
                    }
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    let batch = settler.take();
                    if batch.is_empty() {
                        break;
                    }
                    store.send_refunds(batch).await;
                }
            }
        });
    }

    /// Sends every refund still queued (at shutdown, after the requests
    /// drained: the flusher ran on a proxy worker's runtime, which has
    /// stopped). A refund lost here would leave a successful login counted
    /// as a failure until its window ends.
    pub async fn flush_refunds(&self) {
        loop {
            let batch = self.settler.take();
            if batch.is_empty() {
                return;
            }
            self.send_refunds(batch).await;
        }
    }

    /// The refund of one counted attempt (`DECR`), for the reservations'
    /// pipeline and the flusher's alike.
    fn refund_cmd(&self, s: &SlotId) -> Cmd {
        let mut cmd = Cmd::with_capacity(2, self.key_len() + 8);
        cmd.arg("DECR").arg(&s.count_key);
        cmd
    }

    /// Sends refunds on their own (the flusher): one pipeline on a single
    /// server; one call per counter in a cluster (their slots differ).
    async fn send_refunds(&self, refunds: Vec<SlotId>) {
        let one = |r: &[SlotId]| {
            let mut pipe = Pipeline::with_capacity(r.len());
            for s in r {
                pipe.add_command(self.refund_cmd(s));
            }
            // A lost refund costs little: the attempt stays counted until
            // its window ends (strict); the error is logged and counted.
            async move {
                let _ = self.call::<Vec<i64>>("settle", Query::Pipe(&pipe)).await;
            }
        };
        if self.cluster {
            futures_util::future::join_all(refunds.chunks(1).map(one)).await;
        } else {
            one(&refunds).await;
        }
    }

    /// Takes one request from `client`'s shared rate state of `class`:
    /// `Ok(Err(wait))` when over the rate. One script call; the key lives
    /// as long as the state matters (at most `interval × burst`).
    pub async fn rate_check(
        &self,
        class: &str,
        client: u128,
        interval: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        let mut key = String::with_capacity(self.prefix.len() + class.len() + 40);
        key.push_str(&self.prefix);
        key.push_str(":{rl:");
        key.push_str(class);
        key.push(':');
        push_hex(&mut key, self.keyer.client(client), 32);
        key.push('}');
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = self.rate.cmd(1, 2, key.len() + 40);
        cmd.arg(&key).arg(interval_us).arg(burst.max(1));
        let wait_us: i64 = self.eval("rate_limit", &self.rate, cmd).await?;
        Ok(match u64::try_from(wait_us) {
            Ok(0) => Ok(()),
            Ok(us) => Err(Duration::from_micros(us)),
            Err(_) => return Err(StoreError::Reply),
        })
    }

    /// Stores a captcha answer for `client`, living `ttl`.
    pub async fn put_captcha(
        &self,
        token: &str,
        client: u128,
        answer: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = format!("{}:cap:{token}", self.prefix);
        let value = format!("{client:032x}:{}", String::from_utf8_lossy(answer));
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(&value).arg("PX").arg(ms);
        self.call::<()>("captcha_put", Query::Cmd(&cmd)).await
    }

    /// Takes (reads and deletes: single use) the captcha of `token`.
    pub async fn take_captcha(&self, token: &str) -> Result<Option<Issued>, StoreError> {
        let key = format!("{}:cap:{token}", self.prefix);
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(&key);
        let v: Option<String> = self.call("captcha_take", Query::Cmd(&cmd)).await?;
        Ok(v.and_then(|v| {
            let (client, answer) = v.split_once(':')?;
            Some(Issued {
                client: u128::from_str_radix(client, 16).ok()?,
                answer: answer.as_bytes().to_vec(),
                // Redis forgot it at its TTL.
                expired: false,
            })
        }))
    }

    /// The state of a counter in its current window, for the admin API:
    /// its count includes the attempts in flight (counted up front), which
    /// are not told apart (`inflight` is `None`).
    pub async fn show(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Result<Option<Shown>, StoreError> {
        let now_ms = unix_ms();
        let (key, end_ms) = self.window_key(counter, subject, window, now_ms);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let count: Option<i64> = self.call("show", Query::Cmd(&cmd)).await?;
        // 0 (or below, refunds after an unblock): nothing counted.
        Ok(count.filter(|&c| c > 0).map(|count| Shown {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            inflight: None,
            window_remaining_secs: end_ms.saturating_sub(now_ms).div_ceil(1000),
        }))
    }

    /// Forgets a counter's count (unblock): its current window's, and the
    /// one before (a replica whose clock is behind may still count there),
    /// the attempts in flight with it. Set to 0 with the key's TTL kept,
    /// not deleted: a refund in flight then lowers a key that still expires
    /// (below 0: at most the refunded attempts more, in this window only),
    /// where on a deleted key it would make one without a TTL. True if
    /// there was a count.
    pub async fn clear(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let now_ms = unix_ms();
        let before = now_ms.saturating_sub(window_ms(window));
        let mut pipe = Pipeline::with_capacity(2);
        for at in [now_ms, before] {
            let (key, _) = self.window_key(counter, subject, window, at);
            pipe.cmd("SET").arg(key).arg("0").arg("XX").arg("KEEPTTL");
        }
        let set: Vec<Option<String>> = self.call("clear", Query::Pipe(&pipe)).await?;
        Ok(set.iter().any(Option::is_some))
    }

    /// Announces this replica's account keyer (its fingerprint) in
    /// `<prefix>:v3:keyers` (fingerprint → when last announced, Unix ms) and
    /// returns how many distinct fingerprints were announced within
    /// [`KEYERS_LIVE_FOR`], this one included: more than one means replicas
    /// with different account key secrets, which count accounts apart. The
    /// fingerprints of replicas gone longer than that are dropped.
    pub async fn announce_keyer(&self, fingerprint: &str) -> Result<usize, StoreError> {
        let key = format!("{}:{KEY_VERSION}:keyers", self.prefix);
        let now_ms = unix_ms();
        let live_ms = window_ms(KEYERS_LIVE_FOR);
        let mut pipe = Pipeline::with_capacity(3);
        pipe.cmd("HSET")
            .arg(&key)
            .arg(fingerprint)
            .arg(now_ms)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(2 * live_ms).ignore();
        pipe.cmd("HGETALL").arg(&key);
        let (seen,): (std::collections::HashMap<String, u64>,) =
            self.call("keyers", Query::Pipe(&pipe)).await?;
        let cutoff = now_ms.saturating_sub(live_ms);
        let gone: Vec<&String> = seen
            .iter()
            .filter(|(_, &t)| t < cutoff)
            .map(|(f, _)| f)
            .collect();
        if !gone.is_empty() {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&key).arg(gone);
            self.call::<i64>("keyers", Query::Cmd(&cmd)).await?;
        }
        Ok(seen.values().filter(|&&t| t >= cutoff).count())
    }

    /// Announces `fingerprint` now and every [`KEYERS_EVERY`] until
    /// `shutdown`, keeping `gauge` (`poolgate_account_key_fingerprints`) at
    /// the count of keyers seen; logs a warning when replicas disagree, and
    /// when they agree again. A failed announcement (Redis down) leaves the
    /// gauge as it was.
    pub async fn run_keyer_check(
        self: Arc<Self>,
        fingerprint: String,
        gauge: prometheus::IntGauge,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last = 0;
        loop {
            match self.announce_keyer(&fingerprint).await {
                Ok(n) => {
                    gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
                    if n > 1 && last <= 1 {
                        tracing::warn!(
                            keyers = n,
                            "replicas sharing this redis key account counters with different \
                             secrets (POOLGATE_ACCOUNT_KEY_SECRET), so they count accounts apart \
                             and an attacker spreading over them gets more tries; give every \
                             replica the same secret (see docs/redis.md)"
                        );
                    } else if n == 1 && last > 1 {
                        tracing::info!(
                            "replicas sharing this redis key account counters alike again"
                        );
                    }
                    last = n;
                }
                Err(e) => tracing::debug!(error = %e, "account keyer announcement failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(KEYERS_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Opens fresh connections (the whole pool), sends `PING` on each and
    /// loads the scripts, then puts them in place of the old ones: what the
    /// breaker's probe runs, so no request meets a stale connection after an
    /// outage; also at start and for `poolgate check`. Bounded by the
    /// connect timeout plus the call timeout.
    pub async fn reconnect(&self) -> Result<(), StoreError> {
        let fresh = async {
            let mut conns = Vec::with_capacity(self.conns.load().len());
            for i in 0..self.conns.load().len() {
                let mut c = self.opener.open().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await?;
                if i == 0 && !self.cluster {
                    // Scripts are per server: one load serves every connection.
                    // (A cluster node answers NOSCRIPT once, and EVAL loads it.)
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(self.rate.code)
                        .query_async::<String>(&mut c)
                        .await?;
                }
                conns.push(c);
            }
            Ok::<_, redis::RedisError>(conns)
        };
        match tokio::time::timeout(self.connect_timeout + self.timeout, fresh).await {
            Ok(Ok(conns)) => {
                self.conns.store(Arc::new(conns));
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Connects and sends `PING` (start-up, `poolgate check`): [`Self::reconnect`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.reconnect().await
    }
}

/// Appends `v` in lower-case hex, zero-padded to `width` digits (as
/// `{:0width$x}`): the keys and ids of every guarded call are made with it,
/// and `fmt`'s machinery cost ~1,400 instructions per key.
fn push_hex(out: &mut String, v: u128, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let len = (32 - (v.leading_zeros() as usize) / 4)
        .max(width.min(32))
        .max(1);
    for i in (0..len).rev() {
        out.push(char::from(DIGITS[((v >> (4 * i)) & 0xf) as usize]));
    }
}

/// Answers every request of a failed call with an error of its kind: the
/// first gets `e` itself.
fn fail_all(pending: Vec<Pending>, e: StoreError) {
    let (kind, message) = (e.kind(), e.to_string());
    let mut e = Some(e);
    for p in pending {
        let e = e.take().unwrap_or_else(|| StoreError::Batched {
            kind,
            message: message.clone(),
        });
        let _ = p.tx.send(Err(e));
    }
}

fn window_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1000)
}

/// The window of `window_ms` that holds `now_ms`, aligned to the Unix
/// epoch: its start and end (ms). Every replica finds the same window for
/// the same instant, with no call to agree on it.
fn aligned_window(now_ms: u64, window_ms: u64) -> (u64, u64) {
    let w = window_ms.max(1);
    let start = now_ms - now_ms % w;
    (start, start.saturating_add(w))
}

/// This replica's wall clock, in Unix ms (0 before the epoch: a clock that
/// wrong counts everything in one window, never less strictly).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_what_fmt_would_write() {
        for v in [
            0u128,
            1,
            0xf,
            0x10,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            for width in [1, 32] {
                let mut s = String::new();
                push_hex(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$x}"), "{v:#x} at {width}");
            }
        }
    }

    fn slot(n: u32) -> SlotId {
        SlotId {
            count_key: format!("k{n}"),
            window_end: Instant::now() + Duration::from_secs(60),
        }
    }

    /// A failure is counted already: its settle sends nothing. Nor does a
    /// refund whose window is over (the key it would reach counts no more).
    #[test]
    fn only_refunds_within_their_window_are_queued() {
        let s = Settler::default();
        s.settle(slot(0), true);
        assert_eq!(s.due(), None, "a counted failure queues nothing");
        let over = SlotId {
            count_key: "k".into(),
            window_end: Instant::now(),
        };
        s.settle(over, false);
        assert_eq!(s.due(), None, "a refund after its window queues nothing");
        s.settle(slot(1), false);
        assert_eq!(s.take().len(), 1, "a refund in its window is queued");
    }

    #[test]
    fn windows_are_aligned_to_the_epoch_and_cover_every_instant() {
        assert_eq!(aligned_window(0, 60_000), (0, 60_000));
        assert_eq!(aligned_window(59_999, 60_000), (0, 60_000));
        assert_eq!(aligned_window(60_000, 60_000), (60_000, 120_000));
        assert_eq!(
            aligned_window(1_764_903_123_456, 300_000),
            (1_764_903_000_000, 1_764_903_300_000)
        );
        // A zero window (never configured so: window_ms floors at 1 s) cannot divide by zero.
        assert_eq!(aligned_window(5, 0), (5, 6));
        assert_eq!(aligned_window(u64::MAX, 1000).1, u64::MAX);
    }

    /// A refund queued after a reservation took the queue is due
    /// [`FLUSH_AFTER`] after it arrived (the next reservation carries it
    /// first), not when the flusher's timer, started by an earlier refund,
    /// fires; the rest of a queue larger than one call keeps its older time.
    #[test]
    fn a_refund_is_due_a_flush_after_its_own_arrival() {
        let s = Settler::default();
        assert_eq!(s.due(), None, "nothing queued, nothing due");
        let before = Instant::now();
        s.settle(slot(0), false);
        let first = s.due().expect("due once queued");
        assert!(first >= before + FLUSH_AFTER, "{first:?}");
        assert_eq!(s.take().len(), 1);
        assert_eq!(s.due(), None, "taken by a reservation");

        let later = Instant::now();
        s.settle(slot(1), false);
        s.settle(slot(2), false);
        let due = s.due().expect("due once queued");
        assert!(due >= later + FLUSH_AFTER, "its own arrival's: {due:?}");
        assert!(due >= first);

        // REFUND_BATCH + 10 queued in all.
        for n in 3..(REFUND_BATCH as u32 + 11) {
            s.settle(slot(n), false);
        }
        assert_eq!(s.due(), Some(due), "the oldest refund's time");
        assert_eq!(s.take().len(), REFUND_BATCH);
        assert_eq!(s.due(), Some(due), "the rest: no later than before");
        assert_eq!(s.take().len(), 10);
        assert_eq!(s.due(), None);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted_url("redis://:hunter2@db:6379/0"),
            "redis://<redacted>@db:6379/0"
        );
        assert_eq!(redacted_url("redis://db:6379"), "redis://db:6379");
    }
}
