//! The shared counter store: window counters, in-flight reservations,
//! captcha answers and (optionally) rate-limit state in Redis, so several
//! replicas enforce one limit. A single server (`redis://`, `rediss://` with
//! TLS, `unix://`) or a Redis Cluster (`cluster = true`).
//!
//! Every check-and-reserve is a Lua script (atomic on the server); time is
//! Redis's own (`TIME`), so replicas with skewed clocks agree. Layout, under
//! `key_prefix` `<p>` (the braces are the cluster hash tag: counters and
//! subjects spread over the slots):
//!
//! - `<p>:v2:{<counter>:<subject>}`: one hash per counter and subject: the
//!   count (`c`), the window's end on Redis's clock (`e`: the window opens
//!   when the key is first seen, as the in-memory counter opens its window),
//!   and one field per reservation in flight, holding when it lapses if never
//!   settled (a replica that dies mid-request cannot leak a slot for longer
//!   than `hold`); `m` is no later than the earliest such lapse. The key's
//!   TTL covers the window's end and every lapse. `v2` is [`KEY_VERSION`]:
//!   the layout before it (a count key and an in-flight sorted set) is never
//!   read;
//! - `<p>:{rl:<class>:<client>}`: a client's GCRA state (`rate_limit.shared`);
//! - `<p>:cap:<token>`: a captcha's client key and answer, with the captcha TTL.
//!
//! On a single server, all the counters a request needs are reserved in one
//! script call (one round trip), and so are those of every request a thread
//! (a proxy worker) makes while its previous call is in flight or in the
//! same turn of its event loop (group commit): the first request queues its
//! reservations in the thread's [`Batch`] and spawns a task that, running
//! after the other tasks ready in that turn, sends the whole batch in one
//! call (the per-call cost, which dominates a login's, is paid once per
//! batch), answers each request through a channel, and sends whatever
//! queued meanwhile in the next call, until the queue is empty. The call is one
//! script, atomic as a whole; its requests are judged in order, each counter
//! exactly as on its own. A request dropped meanwhile (its client hung up)
//! gets no answer: the slots granted to it are released, never leaked. A
//! failed call fails each request in it with an error of the same kind. In
//! a cluster the keys are in different slots, so each counter is reserved
//! in its own call (sent together): each is atomic, the set is not (see
//! docs/redis.md, "What is atomic, and what is bounded").
//!
//! Subjects are the client key in hex, or the SHA-256 of the normalised
//! account (no e-mail address or phone number is written to Redis).
//!
//! One round trip per guarded request (or batch): a slot's settle (release,
//! or count the event) is queued, and the next reservation's script call
//! carries it (settles first, then reserves); a settle no reservation picks up within
//! [`FLUSH_AFTER`] is sent by a background flusher, batched with the others.
//! Scripts are called by `EVALSHA` only; they are loaded when connections
//! are (re)opened, and a `NOSCRIPT` answer (a restarted or flushed server) is
//! met with one `EVAL`, which loads the script again.
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
use super::{Ask, Counter, Issued, Reservation, Slot, Subject};
use crate::config::{RateLimitConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::routes::RouteKind;

/// How long a queued settle waits for a reservation to carry it before the
/// flusher sends it on its own: short, since the slot counts against the
/// limit on every replica until then (never too lenient, but a freed slot
/// should be free again soon).
pub const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Most settles one call carries.
const SETTLE_BATCH: usize = 256;

/// Most requests (groups) one RESERVE call carries; a larger batch is sent
/// as several calls, together.
const MAX_GROUPS: usize = 64;

/// The version of the counters' key layout, in their names
/// (`<prefix>:v2:{<counter>:<subject>}`): a replica never reads a key another
/// layout wrote (during a rolling upgrade the two versions count apart, each
/// for itself, until the old keys' TTLs end).
pub const KEY_VERSION: &str = "v2";

/// `now`: Redis's clock in ms (`TIME`), so replicas with skewed clocks
/// agree; one text for every counter script.
macro_rules! now_ms_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// The settle of one slot, in both [`RESERVE`] and [`SETTLE`] (one text, so
/// the two cannot drift). In scope: `k` (the counter's hash), `sid`
/// (reservation id), `commit` ('1' to count the event), `window` (ms), `now`.
/// Frees the slot; on commit counts the event: in the open window, or, if it
/// lapsed meanwhile, in a new one (whose end the key's TTL then covers).
macro_rules! settle_lua {
    () => {
        r"
  redis.call('HDEL', k, sid)
  if commit == '1' then
    local e = tonumber(redis.call('HGET', k, 'e'))
    if e and e > now then
      redis.call('HINCRBY', k, 'c', 1)
    else
      -- Numbers go to redis.call as text made with '%d' (see RESERVE).
      redis.call('HSET', k, 'c', '1', 'e', string.format('%d', now + tonumber(window)))
      if redis.call('PTTL', k) < tonumber(window) then
        redis.call('PEXPIRE', k, window)
      end
    end
  end
"
    };
}

/// Settles the queued slots, then checks and reserves a slot in each counter
/// named by the remaining KEYS, for one request (a group) or several (the
/// reservations one worker's requests made in one turn of its event loop:
/// see [`Batch`]), atomically: the whole call is one script.
///
/// A counter is one hash (see [`KEY_VERSION`]): `c` the count (absent until
/// an event is counted in the window: most logins never fail), `e` the
/// window's end (ms, Redis's clock), `m` no later than the earliest lapse of
/// the reservations in it, and one field per reservation in flight (its id:
/// when it lapses if never settled). The script's cost is the server's cost
/// per login (measured with callgrind in docs/redis.md), so it is written
/// for few `redis.call`s, each touching the one key: one `HGETALL` reads the
/// counter (the reservations in flight are bounded by the limit, and forced
/// ones by the captchas solved), one `HSET` writes the reservation, and the
/// key's expiry is set (`PEXPIREAT`) only when a window opens or the
/// reservation outlives it. No number is handed to `redis.call`: Redis 7.0
/// formats one with `%.17g` (libc's float printing, thousands of
/// instructions); the timestamps go as the text they came in, or made once
/// with `%d`. Lapsed reservations are looked for only once `m` has passed.
/// The key's TTL always covers the window's end and every reservation's
/// lapse, so Redis forgets a counter nobody uses. One `TIME` serves the
/// whole call (its groups are judged at one instant, in their order: a
/// later group sees the earlier ones' reservations).
const RESERVE: &str = concat!(
    r"
-- KEYS: counter hashes: first the settled ones, then the reserved ones of
-- every group, in the groups' order.
-- ARGV[1]: how long (ms) an unsettled reservation holds its slot, ARGV[2]:
-- how many keys are settled; then per settled key: its reservation id, '1'
-- to count, window (ms); then per group (one request): its reservation id,
-- '1' to reserve over the limit (a solved captcha), how many keys it
-- reserves, then per reserved key: limit, window (ms).
-- Returns per reserved counter, in order: 1 (granted) or 0 (denied), then
-- (denied) the window's ms left.",
    now_ms_lua!(),
    r"local hold, ns = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Every group sends the same few limits, windows and key counts: each text
-- is made a number once per call (`tonumber` is libc's `strtod`, about a
-- thousand instructions even for '3').
local nums = {}
local function num(s)
  local v = nums[s]
  if v == nil then
    v = tonumber(s)
    nums[s] = v
  end
  return v
end
local lapse = now + hold
local lapse_s = string.format('%d', lapse)
for i = 1, ns do
  local k = KEYS[i]
  local sid, commit, window = ARGV[3 * i], ARGV[1 + 3 * i], ARGV[2 + 3 * i]
",
    settle_lua!(),
    r"end
local a = 2 + 3 * ns
local last = ns
local out = {}
while a < #ARGV do
  local id, force, nk = ARGV[a + 1], ARGV[a + 2] == '1', num(ARGV[a + 3])
  a = a + 3
  local first = last + 1
  last = last + nk
  for i = first, last do
    local k = KEYS[i]
    local limit, window = num(ARGV[a + 1]), ARGV[a + 2]
    a = a + 2
    -- c, e, m, and the reservations in flight: every other field.
    local all = redis.call('HGETALL', k)
    local c, e_s, m_s
    local n = 0
    for j = 1, #all, 2 do
      local f = all[j]
      if f == 'c' then
        c = all[j + 1]
      elseif f == 'e' then
        e_s = all[j + 1]
      elseif f == 'm' then
        m_s = all[j + 1]
      else
        n = n + 1
      end
    end
    local e, m = tonumber(e_s), tonumber(m_s)
    local count = 0
    local fresh = not e or e <= now
    if fresh then
      -- No window open: it opens now. A lapsed window's count still here
      -- starts again at 0; otherwise none is written until an event is
      -- counted (an absent `c` is 0: most counters never count one).
      e = now + num(window)
      e_s = string.format('%d', e)
      if c then
        redis.call('HSET', k, 'c', '0')
      end
    else
      count = tonumber(c) or 0
    end
    if m and m <= now then
      -- A reservation may have lapsed unsettled (its replica died): drop
      -- those, and find the earliest lapse of the others.
      m, m_s = nil, nil
      for j = 1, #all, 2 do
        local f = all[j]
        if f ~= 'c' and f ~= 'e' and f ~= 'm' then
          local l = tonumber(all[j + 1]) or 0
          if l <= now then
            redis.call('HDEL', k, f)
            n = n - 1
          elseif not m or l < m then
            m, m_s = l, all[j + 1]
          end
        end
      end
      if m then
        redis.call('HSET', k, 'm', m_s)
      else
        redis.call('HDEL', k, 'm')
      end
    end
    if force or count + n < limit then
      if fresh then
        redis.call('HSET', k, id, lapse_s, 'e', e_s, 'm', (m and m < lapse) and m_s or lapse_s)
      elseif not m or lapse < m then
        redis.call('HSET', k, id, lapse_s, 'm', lapse_s)
      else
        redis.call('HSET', k, id, lapse_s)
      end
      if fresh or e < lapse then
        -- Until the later of the window's end and the lapse, on Redis's clock.
        redis.call('PEXPIREAT', k, e < lapse and lapse_s or e_s)
      end
      out[#out + 1] = 1
      out[#out + 1] = 0
    else
      if fresh then
        redis.call('HSET', k, 'e', e_s)
        if redis.call('PTTL', k) < num(window) then
          redis.call('PEXPIRE', k, window)
        end
      end
      out[#out + 1] = 0
      out[#out + 1] = e - now
    end
  end
end
return out
"
);

/// Settles reservations: frees each slot and, on commit, counts the event.
const SETTLE: &str = concat!(
    r"
-- KEYS: counter hashes. ARGV: per key: reservation id, '1' to count,
-- window (ms).",
    now_ms_lua!(),
    r"for i = 1, #KEYS do
  local k = KEYS[i]
  local sid, commit, window = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
",
    settle_lua!(),
    r"end
return #KEYS
"
);

/// Reads a counter for the admin API without changing it: the count and
/// the window's ms left (-1 and -2 when no window is open), and the
/// reservations in flight.
const SHOW: &str = concat!(
    now_ms_lua!(),
    r"local all = redis.call('HGETALL', KEYS[1])
local count, left, inflight = -1, -2, 0
local c, e = 0, nil
for j = 1, #all, 2 do
  local f, v = all[j], tonumber(all[j + 1]) or 0
  if f == 'c' then
    c = v
  elseif f == 'e' then
    e = v
  elseif f ~= 'm' and v > now then
    inflight = inflight + 1
  end
end
if e and e > now then
  count, left = c, e - now
end
return {count, left, inflight}
"
);

/// Forgets a counter's count and window (unblock); reservations in flight
/// stay. Returns 1 if there was a count.
const CLEAR: &str = r"
return redis.call('HDEL', KEYS[1], 'c', 'e') > 0 and 1 or 0
";

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

/// A reserved slot's identity in Redis, for its settle.
#[derive(Debug)]
pub struct SlotId {
    count_key: String,
    id: Arc<str>,
    window_ms: u64,
}

/// The queue of settled slots, waiting for a reservation (or the flusher)
/// to carry them to Redis.
#[derive(Debug, Default)]
pub struct Settler {
    queue: Mutex<Settles>,
    wake: tokio::sync::Notify,
}

/// The queued settles, and when the oldest of them was queued.
#[derive(Debug, Default)]
struct Settles {
    items: Vec<(SlotId, bool)>,
    since: Option<Instant>,
}

impl Settler {
    /// Queues a settle.
    pub(crate) fn settle(&self, id: SlotId, commit: bool) {
        let first = {
            let Ok(mut q) = self.queue.lock() else {
                return;
            };
            let first = q.items.is_empty();
            if first {
                q.since = Some(Instant::now());
            }
            q.items.push((id, commit));
            first
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<(SlotId, bool)> {
        match self.queue.lock() {
            Ok(mut q) if !q.items.is_empty() => {
                let n = q.items.len().min(SETTLE_BATCH);
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

    /// When the flusher must send the queue (its oldest settle's time plus
    /// [`FLUSH_AFTER`]); `None` when it is empty.
    fn due(&self) -> Option<Instant> {
        let q = self.queue.lock().ok()?;
        q.since.map(|t| t + FLUSH_AFTER)
    }
}

/// One request's reservations in a RESERVE call (a group): its reservation
/// id, whether over the limit, and per counter its key, limit and window
/// (ms), in the order of its asks.
struct Group {
    id: Arc<str>,
    force: bool,
    counters: Vec<(String, u32, u64)>,
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
/// theirs), sends them all in one RESERVE call and, while that call is in
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
    hold_ms: u64,
    replica: u64,
    seq: AtomicU64,
    reserve: Lua,
    settle: Lua,
    show: Lua,
    clear: Lua,
    rate: Lua,
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
    /// `hold` is how long an unsettled reservation holds its slot: longer
    /// than any upstream request may take.
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
            replica: rand::random(),
            seq: AtomicU64::new(0),
            reserve: Lua::new(RESERVE),
            settle: Lua::new(SETTLE),
            show: Lua::new(SHOW),
            clear: Lua::new(CLEAR),
            rate: Lua::new(RATE),
            reserve_duration: metrics.store_duration.with_label_values(&["reserve"]),
            settle_duration: metrics.store_duration.with_label_values(&["settle"]),
            rate_duration: metrics.store_duration.with_label_values(&["rate_limit"]),
            metrics,
            settler: Arc::default(),
            flusher: AtomicBool::new(false),
            rates: RateLimits::new(&RateLimitConfig::default()),
        })
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

    /// Runs one call with the timeout and the metrics.
    async fn call<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut conn = self.conn();
        let r = match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
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
        match self.call(op, &cmd).await {
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
                self.call(op, &eval).await
            }
            r => r,
        }
    }

    /// The key of a counter's hash (count, window end, reservations):
    /// `<prefix>:v2:{<counter>:<subject>}`. The braces are the key's hash
    /// tag, so counters and subjects spread over a cluster's slots.
    fn count_key(&self, counter: Counter, subject: Subject) -> String {
        let mut k = String::with_capacity(self.key_len());
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(KEY_VERSION);
        k.push_str(":{");
        k.push_str(counter.as_str());
        k.push(':');
        push_hex(&mut k, subject.key(), 32);
        k.push('}');
        k
    }

    /// Room for a counter's key: the prefix, `:v2:{`, the longest counter
    /// name (14), `:`, 32 hex digits, `}`.
    fn key_len(&self) -> usize {
        self.prefix.len() + 4 + KEY_VERSION.len() + 48
    }

    /// Reserves a slot in each counter of `asks`. On a single server, in one
    /// script call with the reservations of the other requests this thread
    /// makes in this turn of its event loop (see [`Batch`]), which also
    /// carries the settles queued since the last call; in a cluster, one
    /// script call per counter (their keys live in different slots), sent
    /// together. Each counter's check-and-reserve is atomic either way. If
    /// any call fails, the slots the others granted are released (dropped)
    /// and the whole fails.
    pub async fn reserve(
        self: &Arc<Self>,
        asks: &[Ask],
        force: bool,
    ) -> Result<Vec<Reservation>, StoreError> {
        self.start_flusher();
        let mut id = String::with_capacity(33);
        push_hex(&mut id, u128::from(self.replica), 1);
        id.push('-');
        push_hex(
            &mut id,
            u128::from(self.seq.fetch_add(1, Ordering::Relaxed)),
            1,
        );
        let id: Arc<str> = id.into();
        if !self.cluster {
            let group = self.group(id, asks, force);
            return match self.enqueue(group) {
                Ok(rx) => Self::wait(rx).await,
                // No runtime to batch on: on its own.
                Err(group) => {
                    let settles = self.settler.take();
                    self.reserve_in_one_call(group, settles).await
                }
            };
        }
        if asks.len() < 2 {
            let group = self.group(id, asks, force);
            return self.reserve_in_one_call(group, Vec::new()).await;
        }
        let calls = asks.iter().map(|one| {
            let group = self.group(id.clone(), std::slice::from_ref(one), force);
            self.reserve_in_one_call(group, Vec::new())
        });
        let mut out = Vec::with_capacity(asks.len());
        for r in futures_util::future::join_all(calls).await {
            // On an error, `out` and the other results drop: their slots are released.
            out.extend(r?);
        }
        Ok(out)
    }

    /// The group of one request: its counters' keys, limits and windows.
    fn group(&self, id: Arc<str>, asks: &[Ask], force: bool) -> Group {
        Group {
            id,
            force,
            counters: asks
                .iter()
                .map(|a| {
                    (
                        self.count_key(a.counter, a.subject),
                        a.limit.limit,
                        window_ms(a.limit.window),
                    )
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
    /// timeouts of the call in flight and of the request's own (each up to
    /// two: `EVALSHA`, and `EVAL` on `NOSCRIPT`), or is dropped
    /// (its runtime shut down, or it panicked) and so drops the sender: an
    /// error at once. It runs on the runtime this request runs on, so no
    /// timer of its own is needed here (one per request was ~500
    /// instructions of a login's, under callgrind).
    async fn wait(rx: oneshot::Receiver<Answer>) -> Answer {
        rx.await.unwrap_or(Err(StoreError::Cancelled))
    }

    /// Sends a thread's batch: one RESERVE call per [`MAX_GROUPS`] requests
    /// (together), the first carrying the settles queued since the last call.
    async fn send_batch(self: &Arc<Self>, mut pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let settles = self.settler.take();
        if pending.len() <= MAX_GROUPS {
            return self.send_groups(pending, settles).await;
        }
        let mut calls = Vec::with_capacity(pending.len().div_ceil(MAX_GROUPS));
        let mut settles = Some(settles);
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(MAX_GROUPS));
            let these = std::mem::replace(&mut pending, rest);
            calls.push(self.send_groups(these, settles.take().unwrap_or_default()));
        }
        futures_util::future::join_all(calls).await;
    }

    /// One RESERVE call for the requests of `pending`; each gets its answer
    /// through its channel. A request gone meanwhile (its client hung up)
    /// gets none: its granted slots come back from the channel and, dropped,
    /// are released like any unsettled slot. On an error every request gets
    /// one of the same kind.
    async fn send_groups(self: &Arc<Self>, pending: Vec<Pending>, settles: Vec<(SlotId, bool)>) {
        let reply = match self
            .reserve_call(settles, pending.iter().map(|p| &p.group))
            .await
        {
            Ok(r) => r,
            Err(e) => return fail_all(pending, e),
        };
        let mut at = 0;
        for p in pending {
            let n = 2 * p.group.counters.len();
            let answer = self.answers(p.group, &reply[at..at + n]);
            at += n;
            // Err: the request is gone; its slots drop here, released.
            let _ = p.tx.send(Ok(answer));
        }
    }

    /// One RESERVE script call for one request (whose keys must share a slot
    /// in a cluster), settling `settles` first.
    async fn reserve_in_one_call(
        self: &Arc<Self>,
        group: Group,
        settles: Vec<(SlotId, bool)>,
    ) -> Result<Vec<Reservation>, StoreError> {
        let reply = self.reserve_call(settles, std::iter::once(&group)).await?;
        Ok(self.answers(group, &reply))
    }

    /// Sends the RESERVE call for `groups`, settling `settles` first: its
    /// reply, two numbers per reserved counter (checked), for both the
    /// batched and the one-request path.
    fn reserve_call<'g>(
        &self,
        settles: Vec<(SlotId, bool)>,
        groups: impl Iterator<Item = &'g Group> + Clone,
    ) -> impl std::future::Future<Output = Result<Vec<i64>, StoreError>> + Send + '_ {
        let cmd = self.reserve_cmd(&settles, groups.clone());
        let counters: usize = groups.map(|g| g.counters.len()).sum();
        // A settle this call carried is not sent again if it fails: an
        // unsettled slot lapses after `hold`, and a lost commit under-counts
        // one failure (counted in `poolgate_store_errors_total`).
        drop(settles);
        async move {
            let reply: Vec<i64> = self.eval("reserve", &self.reserve, cmd).await?;
            if reply.len() != 2 * counters {
                return Err(StoreError::Reply);
            }
            Ok(reply)
        }
    }

    /// The RESERVE call for `groups`, settling `settles` first: the one place
    /// its arguments are laid out (see [`RESERVE`]).
    fn reserve_cmd<'g>(
        &self,
        settles: &[(SlotId, bool)],
        groups: impl Iterator<Item = &'g Group> + Clone,
    ) -> Cmd {
        let (mut keys, mut args) = (settles.len(), 2 + 3 * settles.len());
        for g in groups.clone() {
            keys += g.counters.len();
            args += 3 + 2 * g.counters.len();
        }
        let mut cmd = self
            .reserve
            .cmd(keys, args, keys * (self.key_len() + 3 * 20));
        for (s, _) in settles {
            cmd.arg(&s.count_key);
        }
        for g in groups.clone() {
            for (count_key, _, _) in &g.counters {
                cmd.arg(count_key);
            }
        }
        cmd.arg(self.hold_ms).arg(settles.len());
        for (s, commit) in settles {
            cmd.arg(&*s.id).arg(u8::from(*commit)).arg(s.window_ms);
        }
        for g in groups {
            cmd.arg(&*g.id).arg(u8::from(g.force)).arg(g.counters.len());
            for (_, limit, window_ms) in &g.counters {
                cmd.arg(*limit).arg(*window_ms);
            }
        }
        cmd
    }

    /// A group's reservations from its part of the reply (two numbers per
    /// counter).
    fn answers(&self, group: Group, reply: &[i64]) -> Vec<Reservation> {
        let Group { id, counters, .. } = group;
        counters
            .into_iter()
            .zip(reply.chunks_exact(2))
            .map(|((count_key, _, window_ms), r)| {
                if r[0] == 1 {
                    Reservation::Held(Slot::redis(
                        self.settler.clone(),
                        SlotId {
                            count_key,
                            id: id.clone(),
                            window_ms,
                        },
                    ))
                } else {
                    let ms = u64::try_from(r[1]).unwrap_or(1000).max(1000);
                    Reservation::Denied(Duration::from_millis(ms.div_ceil(1000) * 1000))
                }
            })
            .collect()
    }

    /// Starts (once) the task that sends the settles no reservation carried.
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
                // Only settles that waited FLUSH_AFTER are sent alone: one
                // queued since a reservation took the queue waits for the
                // next (under load, most do), not for this timer's first
                // start. Each settle-only call is one more script call for
                // Redis to wake up for and run.
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
                    store.send_settles(batch).await;
                }
            }
        });
    }

    /// Sends settles on their own (the flusher).
    async fn send_settles(&self, settled: Vec<(SlotId, bool)>) {
        if self.cluster && settled.len() > 1 {
            // One call per counter: a cluster refuses a script whose keys
            // are in different slots.
            let calls = settled.chunks(1).map(|one| self.settle_in_one_call(one));
            futures_util::future::join_all(calls).await;
        } else {
            self.settle_in_one_call(&settled).await;
        }
    }

    async fn settle_in_one_call(&self, settled: &[(SlotId, bool)]) {
        let mut cmd = self.settle.cmd(
            settled.len(),
            3 * settled.len(),
            settled.len() * (self.key_len() + 3 * 20),
        );
        for (s, _) in settled {
            cmd.arg(&s.count_key);
        }
        for (s, commit) in settled {
            cmd.arg(&*s.id).arg(u8::from(*commit)).arg(s.window_ms);
        }
        // A lost settle costs little: an unsettled slot lapses after `hold`,
        // and a lost commit under-counts one failure (logged, counted).
        let _ = self.eval::<i64>("settle", &self.settle, cmd).await;
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
        push_hex(&mut key, client, 32);
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
        self.call::<()>("captcha_put", &cmd).await
    }

    /// Takes (reads and deletes: single use) the captcha of `token`.
    pub async fn take_captcha(&self, token: &str) -> Result<Option<Issued>, StoreError> {
        let key = format!("{}:cap:{token}", self.prefix);
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(&key);
        let v: Option<String> = self.call("captcha_take", &cmd).await?;
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

    /// The state of a counter, for the admin API.
    pub async fn show(
        &self,
        counter: Counter,
        subject: Subject,
    ) -> Result<Option<Shown>, StoreError> {
        let ck = self.count_key(counter, subject);
        let mut cmd = self.show.cmd(1, 0, self.key_len());
        cmd.arg(&ck);
        let r: Vec<i64> = self.eval("show", &self.show, cmd).await?;
        let [count, ttl, inflight] = r[..] else {
            return Err(StoreError::Reply);
        };
        if count < 0 && inflight == 0 {
            return Ok(None);
        }
        Ok(Some(Shown {
            count: u32::try_from(count.max(0)).unwrap_or(u32::MAX),
            inflight: u32::try_from(inflight.max(0)).unwrap_or(u32::MAX),
            window_remaining_secs: u64::try_from(ttl.max(0)).unwrap_or(0).div_ceil(1000),
        }))
    }

    /// Forgets a counter's count (unblock); reservations in flight stay.
    pub async fn clear(&self, counter: Counter, subject: Subject) -> Result<bool, StoreError> {
        let mut cmd = self.clear.cmd(1, 0, self.key_len());
        cmd.arg(self.count_key(counter, subject));
        let n: i64 = self.eval("clear", &self.clear, cmd).await?;
        Ok(n > 0)
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
                    for lua in [
                        &self.reserve,
                        &self.settle,
                        &self.show,
                        &self.clear,
                        &self.rate,
                    ] {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(lua.code)
                            .query_async::<String>(&mut c)
                            .await?;
                    }
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
            id: format!("0-{n}").into(),
            window_ms: 60_000,
        }
    }

    /// A settle queued after a reservation took the queue is due
    /// [`FLUSH_AFTER`] after it arrived (the next reservation carries it
    /// first), not when the flusher's timer, started by an earlier settle,
    /// fires; the rest of a queue larger than one call keeps its older time.
    #[test]
    fn a_settle_is_due_a_flush_after_its_own_arrival() {
        let s = Settler::default();
        assert_eq!(s.due(), None, "nothing queued, nothing due");
        let before = Instant::now();
        s.settle(slot(0), false);
        let first = s.due().expect("due once queued");
        assert!(first >= before + FLUSH_AFTER, "{first:?}");
        assert_eq!(s.take().len(), 1);
        assert_eq!(s.due(), None, "taken by a reservation");

        let later = Instant::now();
        s.settle(slot(1), true);
        s.settle(slot(2), false);
        let due = s.due().expect("due once queued");
        assert!(due >= later + FLUSH_AFTER, "its own arrival's: {due:?}");
        assert!(due >= first);

        // SETTLE_BATCH + 10 queued in all.
        for n in 3..(SETTLE_BATCH as u32 + 11) {
            s.settle(slot(n), false);
        }
        assert_eq!(s.due(), Some(due), "the oldest settle's time");
        assert_eq!(s.take().len(), SETTLE_BATCH);
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
