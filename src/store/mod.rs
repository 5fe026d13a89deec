//! Counter state: window counters, issued captchas and rate limiters, behind
//! one interface, [`CounterStore`], with three implementations:
//!
//! - [`MemoryStore`]: this replica's memory, with eviction and hard caps;
//! - [`RedisStore`]: Redis, shared by every replica (its errors are returned);
//! - [`Fallback`]: Redis guarded by a circuit breaker, with the configured
//!   fallback (`local`: the memory store; `open`; `closed`) while it is out,
//!   and a background probe that brings it back.
//!
//! [`Store`] is the one the gateway and the admin API hold: the memory store
//! alone, or the fallback wrapper (enum dispatch: no boxing on the hot path).
//!
//! A request asks for slots ([`Ask`]) and gets a [`Reservation`] per ask; a
//! held [`Slot`] counts against its limit until it is settled (the event
//! happened, or not). Keys are made by the caller, once per request: a
//! client's by [`crate::client_ip::client_key`], an account's by the
//! store's [`AccountKeyer`] (beside body extraction).

pub mod account_key;
pub mod breaker;
pub mod counters;
pub mod fallback;
pub mod memory;
pub mod ratelimit;
pub mod redis;

use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;

use crate::captcha::Rejected;
use crate::config::{GuardsConfig, RateLimitConfig, StoreConfig};
use crate::metrics::Metrics;
use crate::policy::WindowLimit;
use crate::routes::RouteKind;
pub use account_key::{AccountKey, AccountKeyer};
pub use counters::Shown;
pub use fallback::Fallback;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// The counters the guards keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `loginFailCheck`: failed logins per client.
    LoginIp,
    /// `loginPasswordFailCheck`: wrong passwords per account.
    Account,
    /// `frequentRegisterCheck`: registrations per client.
    RegisterIp,
    /// One-time codes sent per client.
    SendClient,
    /// One-time codes sent per recipient (phone number, e-mail address).
    SendRecipient,
}

impl Counter {
    /// Short name (Redis key part, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::LoginIp => "login_ip",
            Counter::Account => "account",
            Counter::RegisterIp => "register_ip",
            Counter::SendClient => "send_client",
            Counter::SendRecipient => "send_recipient",
        }
    }
}

/// Whom a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A client key ([`crate::client_ip::client_key`]).
    Client(u128),
    /// An account ([`AccountKey`]).
    Account(AccountKey),
}

impl Subject {
    /// The key as a number (the memory store's map key; Redis names a
    /// client by its keyed form, [`AccountKeyer::client`]).
    #[inline]
    pub fn key(self) -> u128 {
        match self {
            Subject::Client(k) => k,
            Subject::Account(a) => a.get(),
        }
    }
}

/// One counter a request wants a slot in.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// Which counter.
    pub counter: Counter,
    /// Whose count.
    pub subject: Subject,
    /// The policy's limit and window.
    pub limit: WindowLimit,
}

/// The answer for one [`Ask`].
#[derive(Debug)]
pub enum Reservation {
    /// A slot is held until settled.
    Held(Slot),
    /// The limit is reached; retry after the duration (the window's end).
    Denied(Duration),
    /// The memory store is at its key cap and this key is not in it.
    Full,
}

/// The shared store is down and the fallback is `closed`: refuse.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable;

/// A captcha as stored: whom it was issued to, its answer, whether it lapsed.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The client key it was issued to.
    pub client: u128,
    /// The characters to type.
    pub answer: Vec<u8>,
    /// Whether it lapsed (the memory store keeps lapsed ones until its sweep;
    /// Redis forgets them at their TTL).
    pub expired: bool,
}

impl Issued {
    /// The one check of a captcha answer: `issued` (taken, so burned either
    /// way) against the `client` answering and what it typed.
    pub fn check(issued: Option<Issued>, client: u128, given: &str) -> Result<(), Rejected> {
        let Some(i) = issued else {
            return Err(Rejected::Unknown);
        };
        if i.client != client {
            Err(Rejected::OtherClient)
        } else if i.expired {
            Err(Rejected::Expired)
        } else if crate::captcha::answer_matches(&i.answer, given) {
            Ok(())
        } else {
            Err(Rejected::Wrong)
        }
    }
}

/// A held slot, in whichever store granted it. [`Slot::settle`] counts the
/// event or frees the slot; dropping it unsettled frees it, so a client that
/// disconnects mid-request cannot leak a reservation.
#[derive(Debug)]
pub struct Slot(Held);

#[derive(Debug)]
enum Held {
    /// The counter, the key and its hash there (so settling hashes no more).
    Memory(Arc<counters::WindowCounter>, u128, u64),
    Redis(Arc<redis::Settler>, redis::SlotId),
    /// Granted by the `open` fallback, or already settled: nothing to do.
    Nothing,
}

impl Slot {
    pub(crate) fn memory(counter: Arc<counters::WindowCounter>, key: u128, hash: u64) -> Slot {
        Slot(Held::Memory(counter, key, hash))
    }

    pub(crate) fn redis(settler: Arc<redis::Settler>, id: redis::SlotId) -> Slot {
        Slot(Held::Redis(settler, id))
    }

    pub(crate) fn free() -> Slot {
        Slot(Held::Nothing)
    }

    /// Counts the event (`commit`) or frees the slot. A slot in Redis is
    /// settled off the request path, with the next reservation's round trip
    /// when one comes soon (it counts against the limit until then: a late
    /// settle is never too lenient).
    pub fn settle(mut self, commit: bool) {
        self.settle_now(commit);
    }

    fn settle_now(&mut self, commit: bool) {
        match std::mem::replace(&mut self.0, Held::Nothing) {
            Held::Memory(c, key, h) => c.settle(key, h, commit),
            Held::Redis(s, id) => s.settle(id, commit),
            Held::Nothing => {}
        }
    }

    /// Settles several slots.
    pub fn settle_all(slots: impl IntoIterator<Item = (Slot, bool)>) {
        for (slot, commit) in slots {
            slot.settle(commit);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.settle_now(false);
    }
}

/// The interface every counter store offers. Native `async fn`s (as
/// `impl Future`), dispatched statically: nothing is boxed per call.
pub trait CounterStore: Send + Sync {
    /// Why a call failed.
    type Error: std::fmt::Debug + Send;

    /// Reserves a slot in each counter asked for (at most one round trip to
    /// a shared store); with `force`, over the limit too (a solved captcha, a
    /// dry run). The answers are in the order of `asks`.
    fn reserve(
        &self,
        asks: &[Ask],
        force: bool,
    ) -> impl Future<Output = Result<Vec<Reservation>, Self::Error>> + Send;

    /// Settles held slots (each knows its store: this is
    /// [`Slot::settle_all`], here so the interface is complete).
    fn settle(&self, slots: Vec<(Slot, bool)>) {
        Slot::settle_all(slots);
    }

    /// Forgets a counter's count (unblock); `window` is the policy's, for a
    /// store that keeps a count per window. The memory store keeps the
    /// reservations in flight; Redis, which counts them up front, forgets
    /// them with the count.
    fn clear(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// The state of a counter (admin API); `window` is the policy's, for a
    /// store that does not keep it.
    fn inspect(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> impl Future<Output = Result<Option<Shown>, Self::Error>> + Send;

    /// Whether a captcha may be issued now (the memory store has a cap):
    /// asked before one is drawn, which is the expensive part.
    fn captcha_room(&self) -> bool {
        true
    }

    /// Stores an issued captcha; `false` when the store is full.
    fn put_captcha(
        &self,
        token: &str,
        client: u128,
        answer: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Takes (reads and deletes: single use) the captcha of `token`.
    fn take_captcha(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<Issued>, Self::Error>> + Send;

    /// Takes one request from `client`'s rate of `kind`: `Ok(Err(wait))`
    /// when over it.
    fn check_rate(
        &self,
        kind: RouteKind,
        client: u128,
    ) -> impl Future<Output = Result<Result<(), Duration>, Self::Error>> + Send;
}

/// What the store's request-path calls return: the memory store's answer,
/// ready, or the shared store's round trip, boxed. Every request's future
/// holds this one across its await, and is moved a few times per request:
/// inline, Redis's ~2 KB future made each guarded request's ~1.9 KB larger
/// for a store most deployments do not use.
pub type StoreFuture<'a, T> = Either<Ready<T>, Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

fn ready<'a, T>(v: T) -> StoreFuture<'a, T> {
    Either::Left(std::future::ready(v))
}

/// The store the gateway and the admin API use: memory, or Redis with a
/// fallback, and how accounts are keyed in it. Its methods never fail but
/// for [`Unavailable`] (the `closed` fallback).
pub struct Store {
    backend: Backend,
    keyer: AccountKeyer,
}

enum Backend {
    /// `store.kind = "memory"`.
    Memory(Arc<MemoryStore>),
    /// `store.kind = "redis"`: Redis behind the breaker and the fallback.
    Shared(Fallback),
}

impl Store {
    /// Builds the configured store. Redis is connected lazily: it need not be
    /// up at start, the fallback covers until it is.
    ///
    /// Accounts are keyed with a random key in memory (no other process reads
    /// those keys), with `store.redis.account_key_secret_env`'s secret in
    /// Redis, and unkeyed in Redis without one (see [`account_key`]).
    pub fn new(
        cfg: &StoreConfig,
        guards: &GuardsConfig,
        rate: &RateLimitConfig,
        hold: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<Store> {
        let local = Arc::new(MemoryStore::new(guards, rate));
        Ok(match cfg {
            StoreConfig::Redis(r) => {
                let keyer = r
                    .account_key_secret
                    .as_ref()
                    .map_or_else(AccountKeyer::unkeyed, |s| {
                        AccountKeyer::from_secret(s.expose())
                    });
                let redis = RedisStore::new(r, hold, metrics.clone())?
                    .with_rates(rate)
                    .with_keyer(keyer);
                Store {
                    backend: Backend::Shared(Fallback::new(redis, local, r, metrics)),
                    keyer,
                }
            }
            StoreConfig::Memory => Store {
                backend: Backend::Memory(local),
                keyer: AccountKeyer::random(),
            },
        })
    }

    /// How account identifiers become counter keys in this store.
    pub fn account_keyer(&self) -> &AccountKeyer {
        &self.keyer
    }

    /// This replica's memory store (the whole store, or the fallback's), for
    /// the sweeper and the metrics collector.
    pub fn memory(&self) -> &Arc<MemoryStore> {
        match &self.backend {
            Backend::Memory(m) => m,
            Backend::Shared(f) => f.local(),
        }
    }

    /// Applies reloaded rate limits in place: this replica's limiters (the
    /// classes whose rate changed start fresh, the others keep their state)
    /// and, with `rate_limit.shared`, the quotas kept in Redis. Returns the
    /// local classes rebuilt.
    pub fn reconfigure_rates(&self, rate: &RateLimitConfig) -> Vec<&'static str> {
        if let Some(redis) = self.shared() {
            redis.reconfigure_rates(rate);
        }
        self.memory().rate.reconfigure(rate)
    }

    /// The shared store, if configured.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Shared(f) => Some(f.redis()),
        }
    }

    /// Sends what the shared store still has queued (the refunds of the
    /// last requests), unless its breaker keeps it out: the end of a
    /// shutdown, once the requests have drained.
    pub async fn flush(&self) {
        if let Backend::Shared(f) = &self.backend {
            if f.shared_in_use() {
                f.redis().flush_refunds().await;
            }
        }
    }

    /// See [`CounterStore::reserve`].
    pub fn reserve<'a>(
        &'a self,
        asks: &'a [Ask],
        force: bool,
    ) -> StoreFuture<'a, Result<Vec<Reservation>, Unavailable>> {
        if asks.is_empty() {
            return ready(Ok(Vec::new()));
        }
        match &self.backend {
            Backend::Memory(m) => ready(Ok(m.reserve_now(asks, force))),
            Backend::Shared(f) => Either::Right(Box::pin(f.reserve(asks, force))),
        }
    }

    /// The per-client rate limit of `kind`: `Err(wait)` when `key` is over
    /// it. With `rate_limit.shared`, the state is in Redis (one script call)
    /// and the replicas together allow the configured rate; while Redis
    /// cannot be used this replica's own limiter decides, whatever
    /// `store.redis.fallback` says: a rate limit is no reason to refuse
    /// everything or nothing.
    pub fn check_rate(&self, kind: RouteKind, key: u128) -> StoreFuture<'_, Result<(), Duration>> {
        match &self.backend {
            Backend::Memory(m) => ready(m.rate.check(kind, key)),
            Backend::Shared(f) => Either::Right(Box::pin(async move {
                f.check_rate(kind, key).await.unwrap_or(Ok(()))
            })),
        }
    }

    /// Issues a captcha for `client`: its token and SVG (`None`: the store is full).
    pub async fn issue_captcha(
        &self,
        client: u128,
    ) -> Result<Option<(crate::captcha::Token, String)>, Unavailable> {
        let room = match &self.backend {
            Backend::Memory(m) => m.captcha_room(),
            Backend::Shared(f) => f.captcha_room(),
        };
        if !room {
            return Ok(None);
        }
        let fresh = crate::captcha::Fresh::new();
        let ttl = self.memory().captcha_ttl();
        let stored = match &self.backend {
            Backend::Memory(m) => m.put_now(&fresh.token, client, &fresh.answer, ttl),
            Backend::Shared(f) => {
                Box::pin(f.put_captcha(&fresh.token, client, &fresh.answer, ttl)).await?
            }
        };
        Ok(stored.then_some((fresh.token, fresh.svg)))
    }

    /// Checks a captcha answer, burning the captcha (single use).
    pub async fn verify_captcha(
        &self,
        token: &str,
        client: u128,
        answer: &str,
    ) -> Result<Result<(), Rejected>, Unavailable> {
        // Tokens are 32 hex digits; anything else was never issued (and costs no round trip).
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err(Rejected::Unknown));
        }
        let issued = match &self.backend {
            Backend::Memory(m) => m.take_now(token),
            // Boxed, as in `reserve`: Redis's future is large and this one
            // is part of every guarded request's.
            Backend::Shared(f) => Box::pin(f.take_captcha(token)).await?,
        };
        Ok(Issued::check(issued, client, answer))
    }

    /// The state of a counter, for the admin API.
    pub async fn show(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Option<Shown> {
        match &self.backend {
            Backend::Memory(m) => m.inspect_now(counter, subject, window),
            Backend::Shared(f) => f.inspect(counter, subject, window).await.unwrap_or(None),
        }
    }

    /// Clears a counter (unblock) in the shared store and in memory; the
    /// shared store keeps a count per `window`, so it is named.
    pub async fn clear(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Memory(m) => {
                m.clear_now(counter, subject);
                Ok(())
            }
            Backend::Shared(f) => f
                .clear(counter, subject, window)
                .await
                .map(|_| ())
                .map_err(|_| anyhow::anyhow!("the shared store (redis) did not clear it")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_captcha_check_burns_and_names_the_reason() {
        let issued = |client, expired| {
            Some(Issued {
                client,
                answer: b"AbC12".to_vec(),
                expired,
            })
        };
        assert!(Issued::check(issued(1, false), 1, " abc12 ").is_ok());
        assert_eq!(Issued::check(None, 1, "abc12"), Err(Rejected::Unknown));
        assert_eq!(
            Issued::check(issued(2, false), 1, "abc12"),
            Err(Rejected::OtherClient)
        );
        assert_eq!(
            Issued::check(issued(1, true), 1, "abc12"),
            Err(Rejected::Expired)
        );
        assert_eq!(
            Issued::check(issued(1, false), 1, "abc13"),
            Err(Rejected::Wrong)
        );
    }
}
