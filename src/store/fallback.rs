//! Redis behind a circuit breaker, with the configured fallback while it is
//! out (`local`: this replica's memory store; `open`: count nothing;
//! `closed`: refuse), and a background probe that brings it back.
//!
//! The breaker opens after `breaker_failures` consecutive failed calls; from
//! then on requests go to the fallback at once. Once `breaker_cooldown` has
//! passed, a task opens fresh connections to Redis every
//! [`super::breaker::PROBE_EVERY`] (`PING`, and the scripts loaded); the
//! first that succeeds replaces the pool and closes the breaker. No request
//! is spent on a stale connection, and shared counting resumes within a
//! probe period (plus a connect) of Redis answering again, on every replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{Breaker, Tripped, PROBE_EVERY};
use super::counters::Shown;
use super::redis::StoreError;
use super::{
    Ask, Counter, CounterStore, Issued, MemoryStore, RedisStore, Reservation, Slot, Subject,
    Unavailable,
};
use crate::config::{RedisConfig, StoreFallback};
use crate::metrics::Metrics;
use crate::routes::RouteKind;

/// Redis with its breaker and fallback.
pub struct Fallback {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Arc<RedisStore>,
    local: Arc<MemoryStore>,
    mode: StoreFallback,
    breaker: Breaker,
    probing: AtomicBool,
    metrics: Metrics,
}

impl Fallback {
    /// Wraps `redis`, falling back as `cfg.fallback` says (on `local`).
    pub fn new(
        redis: RedisStore,
        local: Arc<MemoryStore>,
        cfg: &RedisConfig,
        metrics: Metrics,
    ) -> Fallback {
        Fallback {
            inner: Arc::new(Inner {
                redis: Arc::new(redis),
                local,
                mode: cfg.fallback,
                breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
                probing: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// The Redis store.
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.inner.redis
    }

    /// The memory store (the `local` fallback, and the local rate limiters).
    pub fn local(&self) -> &Arc<MemoryStore> {
        &self.inner.local
    }

    /// Whether Redis is in use now (the breaker is closed).
    pub fn shared_in_use(&self) -> bool {
        self.inner.breaker.allows()
    }
}

impl Inner {
    /// Runs a Redis call through the breaker: `Err` when not attempted (the
    /// breaker is open) or failed.
    async fn guarded<T>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ()> {
        if !self.breaker.allows() {
            self.metrics
                .store_errors
                .with_label_values(&[op, "breaker_open"])
                .inc();
            return Err(());
        }
        match call.await {
            Ok(v) => {
                self.breaker.success();
                Ok(v)
            }
            Err(e) => {
                match self.breaker.failure() {
                    Tripped::Opened => {
                        self.metrics.store_breaker_open.set(1);
                        tracing::error!(op, error = %e, fallback = self.mode.as_str(),
                            "shared store (redis) failing; breaker open, using the fallback");
                        self.start_probe();
                    }
                    Tripped::AlreadyOpen => {
                        tracing::warn!(op, error = %e, "shared store (redis) still failing")
                    }
                    Tripped::No => tracing::warn!(op, error = %e, "shared store call failed"),
                }
                Err(())
            }
        }
    }

    /// Notes that `op` was answered by the fallback; `Err` when it is `closed`.
    fn fall_back(&self, op: &'static str) -> Result<(), Unavailable> {
        self.metrics
            .store_fallbacks
            .with_label_values(&[op, self.mode.as_str()])
            .inc();
        match self.mode {
            StoreFallback::Closed => Err(Unavailable),
            _ => Ok(()),
        }
    }

    /// Starts the probe (once per opening): after the cool-down, fresh
    /// connections every [`PROBE_EVERY`] until Redis answers.
    fn start_probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            let wait = match me.upgrade() {
                Some(s) => s.breaker.cooldown_left(),
                None => return,
            };
            tokio::time::sleep(wait).await;
            loop {
                let Some(s) = me.upgrade() else {
                    return;
                };
                match s.redis.reconnect().await {
                    Ok(()) => {
                        s.probing.store(false, Ordering::Release);
                        if s.breaker.close() {
                            s.metrics.store_breaker_open.set(0);
                            tracing::info!("shared store (redis) answers again; breaker closed");
                        }
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "shared store (redis) probe failed"),
                }
                drop(s);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }
}

impl CounterStore for Fallback {
    type Error = Unavailable;

    async fn reserve(&self, asks: &[Ask], force: bool) -> Result<Vec<Reservation>, Unavailable> {
        let s = &self.inner;
        match s.guarded("reserve", s.redis.reserve(asks, force)).await {
            Ok(answers) => Ok(answers),
            Err(()) => {
                s.fall_back("reserve")?;
                Ok(match s.mode {
                    StoreFallback::Open => asks
                        .iter()
                        .map(|_| Reservation::Held(Slot::free()))
                        .collect(),
                    _ => s.local.reserve_now(asks, force),
                })
            }
        }
    }

    async fn clear(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Result<bool, Unavailable> {
        let s = &self.inner;
        let local = s.local.clear_now(counter, subject);
        // Unblocking must reach Redis, whatever the fallback: its count is the one in force.
        match s.redis.clear(counter, subject, window).await {
            Ok(shared) => Ok(local || shared),
            Err(e) => {
                tracing::warn!(error = %e, "the shared store (redis) did not clear a counter");
                Err(Unavailable)
            }
        }
    }

    async fn inspect(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Result<Option<Shown>, Unavailable> {
        let s = &self.inner;
        if let Ok(shown) = s
            .guarded("show", s.redis.show(counter, subject, window))
            .await
        {
            return Ok(shown);
        }
        Ok(s.local.inspect_now(counter, subject, window))
    }

    fn captcha_room(&self) -> bool {
        // With Redis in use there is no cap here; in a fallback, the memory store's.
        self.inner.breaker.allows() || self.inner.local.captcha.has_room()
    }

    async fn put_captcha(
        &self,
        token: &str,
        client: u128,
        answer: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        let s = &self.inner;
        let put = s.redis.put_captcha(token, client, answer, ttl);
        if s.guarded("captcha_put", put).await.is_ok() {
            return Ok(true);
        }
        s.fall_back("captcha_put")?;
        Ok(s.local.put_now(token, client, answer, ttl))
    }

    async fn take_captcha(&self, token: &str) -> Result<Option<Issued>, Unavailable> {
        let s = &self.inner;
        match s.guarded("captcha_take", s.redis.take_captcha(token)).await {
            Ok(Some(issued)) => return Ok(Some(issued)),
            // Not in Redis: it may have been issued locally during an outage.
            Ok(None) => {}
            Err(()) => s.fall_back("captcha_take")?,
        }
        Ok(s.local.take_now(token))
    }

    async fn check_rate(
        &self,
        kind: RouteKind,
        client: u128,
    ) -> Result<Result<(), Duration>, Unavailable> {
        let s = &self.inner;
        if let Some(q) = s.redis.shared_quota(kind) {
            let call = s.redis.rate_check(q.class, client, q.interval, q.burst);
            match s.guarded("rate_limit", call).await {
                Ok(answer) => return Ok(answer),
                Err(()) => s
                    .metrics
                    .store_fallbacks
                    .with_label_values(&["rate_limit", StoreFallback::Local.as_str()])
                    .inc(),
            }
        }
        Ok(s.local.rate.check(kind, client))
    }
}
