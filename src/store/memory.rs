//! The memory store: this replica's window counters, issued captchas and
//! rate limiters, with eviction and hard caps. The whole store with
//! `store.kind = "memory"`; the fallback (and the rate limiters, unless
//! `rate_limit.shared`) with Redis.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use super::counters::{Clients, Shown, WindowCounter, LOGIN_LANE, REGISTER_LANE};
use super::ratelimit::RateLimits;
use super::{Ask, Counter, CounterStore, Issued, Reservation, Subject};
use crate::captcha::CaptchaStore;
use crate::config::{GuardsConfig, RateLimitConfig};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::routes::RouteKind;

/// Everything the guards count in this replica's memory.
pub struct MemoryStore {
    /// `loginFailCheck`: failed logins per client.
    pub login_ip: Arc<WindowCounter>,
    /// `loginPasswordFailCheck`: wrong passwords per account.
    pub account: Arc<WindowCounter>,
    /// `frequentRegisterCheck`: registrations per client.
    pub register_ip: Arc<WindowCounter>,
    /// `guards.send_code.per_client`: one-time codes sent per client.
    pub send_client: Arc<WindowCounter>,
    /// `guards.send_code.per_recipient`: one-time codes sent per recipient.
    pub send_recipient: Arc<WindowCounter>,
    /// The window of the send-code counters (from the configuration).
    pub send_window: Duration,
    /// Issued captchas.
    pub captcha: CaptchaStore,
    /// Per-client rate limits.
    pub rate: RateLimits,
    /// Every client's login-IP and registration windows and login and
    /// registration rate-limit cells, one entry per client.
    pub clients: Arc<Clients>,
    captcha_ttl: Duration,
}

impl MemoryStore {
    /// Empty state sized by the configuration.
    pub fn new(g: &GuardsConfig, rate: &RateLimitConfig) -> Self {
        let clients = Clients::new();
        MemoryStore {
            login_ip: WindowCounter::of_clients(
                "login_ip",
                g.max_tracked_keys,
                clients.clone(),
                LOGIN_LANE,
            ),
            account: WindowCounter::new("account", g.max_tracked_keys),
            register_ip: WindowCounter::of_clients(
                "register_ip",
                g.max_tracked_keys,
                clients.clone(),
                REGISTER_LANE,
            ),
            send_client: WindowCounter::new("send_client", g.max_tracked_keys),
            send_recipient: WindowCounter::new("send_recipient", g.max_tracked_keys),
            send_window: g.send_code.window,
            captcha: CaptchaStore::new(g.captcha_ttl, g.max_captchas),
            rate: RateLimits::with_clients(rate, clients.clone()),
            clients,
            captcha_ttl: g.captcha_ttl,
        }
    }

    /// The in-memory counter of `counter`.
    pub fn counter(&self, counter: Counter) -> &Arc<WindowCounter> {
        match counter {
            Counter::LoginIp => &self.login_ip,
            Counter::Account => &self.account,
            Counter::RegisterIp => &self.register_ip,
            Counter::SendClient => &self.send_client,
            Counter::SendRecipient => &self.send_recipient,
        }
    }

    /// How long an issued captcha lives.
    pub fn captcha_ttl(&self) -> Duration {
        self.captcha_ttl
    }

    /// [`CounterStore::reserve`], synchronously (it never waits).
    pub fn reserve_now(&self, asks: &[Ask], force: bool) -> Vec<Reservation> {
        // One clock read for every counter asked.
        let t = self.login_ip.clock();
        asks.iter()
            .map(|a| {
                self.counter(a.counter)
                    .try_reserve_when(a.subject.key(), a.limit, force, t)
            })
            .collect()
    }

    /// [`CounterStore::inspect`], synchronously.
    pub fn inspect_now(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Option<Shown> {
        self.counter(counter).show(subject.key(), window)
    }

    /// [`CounterStore::clear`], synchronously.
    pub fn clear_now(&self, counter: Counter, subject: Subject) -> bool {
        self.counter(counter).clear(subject.key())
    }

    /// [`CounterStore::put_captcha`], synchronously (the TTL is the store's).
    pub fn put_now(&self, token: &str, client: u128, answer: &[u8], _ttl: Duration) -> bool {
        self.captcha.put(token, client, answer)
    }

    /// [`CounterStore::take_captcha`], synchronously.
    pub fn take_now(&self, token: &str) -> Option<Issued> {
        self.captcha.take(token)
    }

    /// Evicts expired state and refreshes the gauges.
    pub fn sweep(&self, policy: &PolicyStore, metrics: &Metrics) {
        let p = policy.current();
        let w = |f: fn(&crate::policy::CompiledPolicy) -> Option<crate::policy::WindowLimit>| {
            p.as_ref().and_then(|p| f(p)).map(|l| l.window)
        };
        self.login_ip.sweep(w(|p| p.login_fail));
        self.account.sweep(w(|p| p.password_fail));
        self.register_ip.sweep(w(|p| p.register_limit));
        self.send_client.sweep(Some(self.send_window));
        self.send_recipient.sweep(Some(self.send_window));
        self.captcha.sweep();
        let rate_keys = self.rate.sweep();
        for c in [
            &self.login_ip,
            &self.account,
            &self.register_ip,
            &self.send_client,
            &self.send_recipient,
        ] {
            metrics
                .tracked_keys
                .with_label_values(&[c.name()])
                .set(c.len() as i64);
        }
        metrics
            .tracked_keys
            .with_label_values(&["rate_limit"])
            .set(rate_keys as i64);
        metrics.captchas_outstanding.set(self.captcha.len() as i64);
    }

    /// Runs [`Self::sweep`] every `every` until shutdown.
    pub async fn run_sweeper(
        self: Arc<Self>,
        policy: Arc<PolicyStore>,
        metrics: Metrics,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.sweep(&policy, &metrics),
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl CounterStore for MemoryStore {
    type Error = Infallible;

    async fn reserve(&self, asks: &[Ask], force: bool) -> Result<Vec<Reservation>, Infallible> {
        Ok(self.reserve_now(asks, force))
    }

    async fn clear(
        &self,
        counter: Counter,
        subject: Subject,
        _window: Duration,
    ) -> Result<bool, Infallible> {
        Ok(self.clear_now(counter, subject))
    }

    async fn inspect(
        &self,
        counter: Counter,
        subject: Subject,
        window: Duration,
    ) -> Result<Option<Shown>, Infallible> {
        Ok(self.inspect_now(counter, subject, window))
    }

    fn captcha_room(&self) -> bool {
        self.captcha.has_room()
    }

    async fn put_captcha(
        &self,
        token: &str,
        client: u128,
        answer: &[u8],
        ttl: Duration,
    ) -> Result<bool, Infallible> {
        Ok(self.put_now(token, client, answer, ttl))
    }

    async fn take_captcha(&self, token: &str) -> Result<Option<Issued>, Infallible> {
        Ok(self.take_now(token))
    }

    async fn check_rate(
        &self,
        kind: RouteKind,
        client: u128,
    ) -> Result<Result<(), Duration>, Infallible> {
        Ok(self.rate.check(kind, client))
    }
}
