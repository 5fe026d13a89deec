//! The shared counter store: window counters, in-flight reservations,
//! captcha answers and (optionally) rate-limit state in Redis, so several
//! replicas enforce one limit. A single server (`redis://`, `rediss://` with
//! TLS, `unix://`) or a Redis Cluster (`cluster = true`).
//!
//! Every check-and-reserve is a Lua script (atomic on the server); time is
//! Redis's own (`TIME`), so replicas with skewed clocks agree. Layout, under
//! `key_prefix` `<p>` (the braces are the cluster hash tag: a counter's two
//! keys share a slot, different counters and subjects spread over the slots):
//!
//! - `<p>:{<counter>:<subject>}`: events counted in the window; its TTL *is*
//!   the window (it is created with the window's length when a key is first
//!   seen, as the in-memory counter opens its window);
//! - `<p>:{<counter>:<subject>}:f`: a sorted set of reservations in flight,
//!   each scored by the time it lapses if never settled (a replica that dies
//!   mid-request cannot leak a slot for longer than `hold`);
//! - `<p>:{rl:<class>:<client>}`: a client's GCRA state (`rate_limit.shared`);
//! - `<p>:cap:<token>`: a captcha's client key and answer, with the captcha TTL.
//!
//! On a single server, all the counters a request needs are reserved in one
//! script call (one round trip). In a cluster their keys are in different
//! slots, so each counter is reserved in its own call (sent together): each
//! is atomic, the set is not (see docs/redis.md, "What is atomic, and what is
//! bounded").
//!
//! Subjects are the client key in hex, or the SHA-256 of the normalised
//! account (no e-mail address or phone number is written to Redis).
//!
//! Calls are bounded by `timeout` and go through a [`Breaker`]; the caller
//! ([`super::Store`]) applies the configured fallback when one fails.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use sha2::{Digest, Sha256};

use super::breaker::{Breaker, Tripped};
use super::counters::Shown;
use super::{Counter, Subject};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::policy::WindowLimit;

/// Checks and reserves a slot in each counter named by KEYS, atomically.
const RESERVE: &str = r"
-- KEYS: pairs (count key, in-flight set). ARGV[1]: reservation id,
-- ARGV[2]: how long (ms) an unsettled reservation holds its slot,
-- ARGV[3]: '1' to reserve over the limit (a solved captcha),
-- then per counter: limit, window (ms).
-- Returns per counter: 1 (granted) or 0 (denied), then the window's ms left.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, hold, force = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local out = {}
for i = 1, #KEYS / 2 do
  local ck, fk = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('SET', ck, 0, 'PX', window, 'NX')
  local count = tonumber(redis.call('GET', ck)) or 0
  local ttl = redis.call('PTTL', ck)
  if ttl < 0 then
    redis.call('PEXPIRE', ck, window)
    ttl = window
  end
  redis.call('ZREMRANGEBYSCORE', fk, '-inf', now)
  local inflight = redis.call('ZCARD', fk)
  if force or count + inflight < limit then
    redis.call('ZADD', fk, now + hold, id)
    redis.call('PEXPIRE', fk, hold)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = ttl
end
return out
";

/// Settles reservations: frees each slot and, on commit, counts the event.
const SETTLE: &str = r"
-- KEYS: pairs (count key, in-flight set). ARGV: per pair: reservation id,
-- '1' to count, window (ms).
for i = 1, #KEYS / 2 do
  local ck, fk = KEYS[2 * i - 1], KEYS[2 * i]
  local id, commit, window = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  redis.call('ZREM', fk, id)
  if commit == '1' then
    if redis.call('EXISTS', ck) == 1 then
      redis.call('INCR', ck)
    else
      redis.call('SET', ck, 1, 'PX', window)
    end
  end
end
return #KEYS / 2
";

/// Reads a counter for the admin API without changing it.
const SHOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = tonumber(redis.call('GET', KEYS[1]) or '-1') or 0
return {count, redis.call('PTTL', KEYS[1]), redis.call('ZCOUNT', KEYS[2], now, '+inf')}
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
-- %.0f: tostring would round a 16-digit number to 14 digits.
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
return 0
";

/// Why a shared-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open: the call was not attempted.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Redis answered with an error, or the connection failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the script cannot have returned.
    #[error("unexpected reply")]
    Reply,
}

impl StoreError {
    fn kind(&self) -> &'static str {
        match self {
            StoreError::BreakerOpen => "breaker_open",
            StoreError::Timeout => "timeout",
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "io",
            StoreError::Redis(e) if e.is_connection_refusal() => "io",
            StoreError::Redis(_) => "server",
            StoreError::Reply => "reply",
        }
    }
}

/// The answer for one counter of a reservation.
#[derive(Debug)]
pub enum Answer {
    /// A slot is held.
    Granted(Held),
    /// The limit is reached; the window ends in `retry_after`.
    Denied {
        /// Time left in the window.
        retry_after: Duration,
    },
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

/// The connections the configuration asks for (opened lazily).
fn connections(cfg: &RedisConfig) -> anyhow::Result<Vec<Conn>> {
    let url = cfg.url.expose();
    let named =
        |e: redis::RedisError| anyhow::anyhow!("store.redis.url {}: {e}", redacted_url(url));
    let certs = tls_certificates(cfg)?;
    let n = cfg.pool_size.max(1);
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
        return Ok((0..n)
            .map(|_| Conn::Cluster(client.get_pending_async_connection_with_config(ccfg.clone())))
            .collect());
    }
    let client = match certs {
        Some(c) => redis::Client::build_with_tls(url, c),
        None => redis::Client::open(url),
    }
    .map_err(named)?;
    let mcfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.timeout))
        // Reconnection is retried on the next call, not in a long loop
        // that would hold calls up past their timeout.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    (0..n)
        .map(|_| {
            ConnectionManager::new_lazy_with_config(client.clone(), mcfg.clone())
                .map(Conn::Single)
                .map_err(named)
        })
        .collect()
}

/// The Redis-backed store.
pub struct RedisStore {
    conns: Vec<Conn>,
    cluster: bool,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    hold_ms: u64,
    replica: u64,
    seq: AtomicU64,
    breaker: Breaker,
    reserve: Script,
    settle: Script,
    show: Script,
    rate: Script,
    metrics: Metrics,
    fallback: &'static str,
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
        let conns = connections(cfg)?;
        Ok(RedisStore {
            conns,
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
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            show: Script::new(SHOW),
            rate: Script::new(RATE),
            metrics,
            fallback: cfg.fallback.as_str(),
        })
    }

    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Runs one call with the timeout, the breaker and the metrics.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if !self.breaker.allows() {
            // Not attempted; the breaker's clock is left alone, so it closes on time.
            self.metrics
                .store_errors
                .with_label_values(&[op, StoreError::BreakerOpen.kind()])
                .inc();
            return Err(StoreError::BreakerOpen);
        }
        let started = Instant::now();
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        self.metrics
            .store_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Ok(_) => {
                if self.breaker.success() {
                    self.metrics.store_breaker_open.set(0);
                    tracing::info!("shared store (redis) answers again; breaker closed");
                }
            }
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&[op, e.kind()])
                    .inc();
                match self.breaker.failure() {
                    Tripped::Opened => {
                        self.metrics.store_breaker_open.set(1);
                        tracing::error!(op, error = %e, fallback = self.fallback,
                            "shared store (redis) failing; breaker open, using the fallback");
                    }
                    Tripped::Reopened => {
                        tracing::warn!(op, error = %e, "shared store (redis) still failing")
                    }
                    Tripped::No => tracing::warn!(op, error = %e, "shared store call failed"),
                }
            }
        }
        r
    }

    /// The count key and in-flight set of a counter. The braces are the
    /// key's hash tag: a counter's two keys share one cluster slot (a script
    /// may touch both), while counters and subjects spread over the slots.
    fn keys(&self, counter: Counter, subject: &Subject<'_>) -> (String, String) {
        let mut k = String::with_capacity(self.prefix.len() + 44);
        let _ = write!(k, "{}:{{{}:", self.prefix, counter.as_str());
        match subject {
            Subject::Client(c) => {
                let _ = write!(k, "{c:032x}");
            }
            Subject::Account(a) => {
                let digest = Sha256::digest(a.to_lowercase().as_bytes());
                for b in &digest[..16] {
                    let _ = write!(k, "{b:02x}");
                }
            }
        }
        k.push('}');
        let f = format!("{k}:f");
        (k, f)
    }

    /// Reserves a slot in each counter of `asks`: in one round trip to a
    /// single server; in a cluster, one script call per counter (their keys
    /// live in different slots), sent together. Each counter's
    /// check-and-reserve is atomic either way. If any call fails, the slots
    /// the others granted are released (dropped) and the whole fails.
    pub async fn reserve(
        self: &Arc<Self>,
        asks: &[(Counter, Subject<'_>, WindowLimit)],
        force: bool,
    ) -> Result<Vec<Answer>, StoreError> {
        let id = format!(
            "{:x}-{:x}",
            self.replica,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        if !self.cluster || asks.len() < 2 {
            return self.reserve_in_one_call(&id, asks, force).await;
        }
        let calls = asks
            .chunks(1)
            .map(|one| self.reserve_in_one_call(&id, one, force));
        let mut out = Vec::with_capacity(asks.len());
        for r in futures_util::future::join_all(calls).await {
            // On an error, `out` and the other results drop: their slots are released.
            out.extend(r?);
        }
        Ok(out)
    }

    /// One RESERVE script call for `asks` (whose keys must share a slot in a cluster).
    async fn reserve_in_one_call(
        self: &Arc<Self>,
        id: &str,
        asks: &[(Counter, Subject<'_>, WindowLimit)],
        force: bool,
    ) -> Result<Vec<Answer>, StoreError> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(id).arg(self.hold_ms).arg(u8::from(force));
        let mut keys = Vec::with_capacity(asks.len());
        for (counter, subject, limit) in asks {
            let (ck, fk) = self.keys(*counter, subject);
            inv.key(&ck).key(&fk);
            inv.arg(limit.limit).arg(window_ms(limit.window));
            keys.push(ck);
        }
        let mut conn = self.conn();
        let reply: Vec<i64> = self.call("reserve", inv.invoke_async(&mut conn)).await?;
        if reply.len() != asks.len() * 2 {
            return Err(StoreError::Reply);
        }
        Ok(keys
            .into_iter()
            .zip(asks)
            .zip(reply.chunks_exact(2))
            .map(|((count_key, (_, _, limit)), r)| {
                if r[0] == 1 {
                    Answer::Granted(Held {
                        store: Some(self.clone()),
                        count_key,
                        id: id.to_string(),
                        window_ms: window_ms(limit.window),
                    })
                } else {
                    let ms = u64::try_from(r[1]).unwrap_or(1000).max(1000);
                    Answer::Denied {
                        retry_after: Duration::from_millis(ms.div_ceil(1000) * 1000),
                    }
                }
            })
            .collect())
    }

    async fn settle_now(&self, settled: Vec<(Held, bool)>) {
        if self.cluster && settled.len() > 1 {
            // One call per counter: a cluster refuses a script whose keys
            // are in different slots.
            let calls = settled.chunks(1).map(|one| self.settle_in_one_call(one));
            futures_util::future::join_all(calls).await;
        } else {
            self.settle_in_one_call(&settled).await;
        }
    }

    async fn settle_in_one_call(&self, settled: &[(Held, bool)]) {
        let mut conn = self.conn();
        let mut inv = self.settle.prepare_invoke();
        for (h, commit) in settled {
            inv.key(&h.count_key)
                .key(format!("{}:f", h.count_key))
                .arg(&h.id)
                .arg(u8::from(*commit))
                .arg(h.window_ms);
        }
        // A lost settle costs little: an unsettled slot lapses after `hold`,
        // and a lost commit under-counts one failure (logged, counted).
        let _ = self
            .call::<i64>("settle", inv.invoke_async(&mut conn))
            .await;
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
        let key = format!("{}:{{rl:{class}:{client:032x}}}", self.prefix);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut inv = self.rate.prepare_invoke();
        inv.key(&key).arg(interval_us).arg(burst.max(1));
        let mut conn = self.conn();
        let wait_us: i64 = self.call("rate_limit", inv.invoke_async(&mut conn)).await?;
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
        let mut conn = self.conn();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(&value).arg("PX").arg(ms);
        self.call::<()>("captcha_put", cmd.query_async(&mut conn))
            .await
    }

    /// Takes (reads and deletes: single use) the captcha of `token`:
    /// the client key it was issued to and its answer.
    pub async fn take_captcha(&self, token: &str) -> Result<Option<(u128, String)>, StoreError> {
        let key = format!("{}:cap:{token}", self.prefix);
        let mut conn = self.conn();
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(&key);
        let v: Option<String> = self
            .call("captcha_take", cmd.query_async(&mut conn))
            .await?;
        Ok(v.and_then(|v| {
            let (client, answer) = v.split_once(':')?;
            Some((u128::from_str_radix(client, 16).ok()?, answer.to_string()))
        }))
    }

    /// The state of a counter, for the admin API.
    pub async fn show(
        &self,
        counter: Counter,
        subject: &Subject<'_>,
    ) -> Result<Option<Shown>, StoreError> {
        let (ck, fk) = self.keys(counter, subject);
        let mut conn = self.conn();
        let mut inv = self.show.prepare_invoke();
        inv.key(&ck).key(&fk);
        let r: Vec<i64> = self.call("show", inv.invoke_async(&mut conn)).await?;
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
    pub async fn clear(&self, counter: Counter, subject: &Subject<'_>) -> Result<bool, StoreError> {
        let (ck, _) = self.keys(counter, subject);
        let mut conn = self.conn();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&ck);
        let n: i64 = self.call("clear", cmd.query_async(&mut conn)).await?;
        Ok(n > 0)
    }

    /// Connects every pooled connection and sends `PING` on it (for
    /// `poolgate check` and start-up), allowing the connect timeout as well.
    pub async fn ping(&self) -> Result<(), StoreError> {
        for c in &self.conns {
            let mut conn = c.clone();
            let cmd = redis::cmd("PING");
            let r = tokio::time::timeout(
                self.connect_timeout + self.timeout,
                cmd.query_async::<String>(&mut conn),
            )
            .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(StoreError::Redis(e)),
                Err(_) => return Err(StoreError::Timeout),
            }
        }
        Ok(())
    }
}

fn window_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1000)
}

/// A slot held in Redis, settled by [`super::Slot::settle_all`]. Dropping it
/// unsettled releases it, off the request path (a task), as the in-memory
/// permit does.
#[derive(Debug)]
pub struct Held {
    store: Option<Arc<RedisStore>>,
    count_key: String,
    id: String,
    window_ms: u64,
}

impl Held {
    /// Takes the store and the slot's identity out, leaving an inert husk
    /// (whose drop does nothing).
    fn detach(&mut self) -> Option<(Arc<RedisStore>, Held)> {
        let store = self.store.take()?;
        let held = Held {
            store: None,
            count_key: std::mem::take(&mut self.count_key),
            id: std::mem::take(&mut self.id),
            window_ms: self.window_ms,
        };
        Some((store, held))
    }

    /// Settles several slots of one store in one round trip.
    pub fn settle_all(slots: Vec<(Held, bool)>) {
        let mut store = None;
        let settled = slots
            .into_iter()
            .map(|(mut h, commit)| {
                if let Some(s) = h.store.take() {
                    store.get_or_insert(s);
                }
                (h, commit)
            })
            .collect();
        if let Some(store) = store {
            send_settle(store, settled);
        }
    }
}

/// Sends settles after the answer, not before it: a slot still counts against
/// the limit until then, so a late settle is never too lenient.
fn send_settle(store: Arc<RedisStore>, settled: Vec<(Held, bool)>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { store.settle_now(settled).await });
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((store, held)) = self.detach() {
            send_settle(store, vec![(held, false)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted_url("redis://:hunter2@db:6379/0"),
            "redis://<redacted>@db:6379/0"
        );
        assert_eq!(redacted_url("redis://db:6379"), "redis://db:6379");
    }
}
