//! Counter stores: the state the guards consult (window counters, captchas,
//! rate limiters). [`GuardState`] keeps it in memory, with eviction and hard
//! caps; [`Store`] is what the gateway talks to: the memory store alone, or
//! Redis shared by every replica with the memory store as its fallback.

pub mod breaker;
pub mod counters;
pub mod redis;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::captcha::{CaptchaStore, Rejected};
use crate::classify::RouteKind;
use crate::config::{GuardsConfig, RateLimitConfig, StoreConfig, StoreFallback};
use crate::guards::ratelimit::RateLimits;
use crate::metrics::Metrics;
use crate::policy::{PolicyStore, WindowLimit};
use counters::{Permit, Reserve, Shown, WindowCounter};
use redis::{Answer, Held, RedisStore};

/// Everything the guards count, shared by all requests.
pub struct GuardState {
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
    ipv6_prefix: u8,
    hasher: std::collections::hash_map::RandomState,
}

impl GuardState {
    /// Empty state sized by the configuration.
    pub fn new(g: &GuardsConfig, rate: &RateLimitConfig) -> Self {
        GuardState {
            login_ip: WindowCounter::new("login_ip", g.max_tracked_keys),
            account: WindowCounter::new("account", g.max_tracked_keys),
            register_ip: WindowCounter::new("register_ip", g.max_tracked_keys),
            send_client: WindowCounter::new("send_client", g.max_tracked_keys),
            send_recipient: WindowCounter::new("send_recipient", g.max_tracked_keys),
            send_window: g.send_code.window,
            captcha: CaptchaStore::new(g.captcha_ttl, g.max_captchas),
            rate: RateLimits::new(rate),
            ipv6_prefix: g.ipv6_prefix,
            // Random keys: nobody outside can aim two accounts at one counter.
            hasher: Default::default(),
        }
    }

    /// The counter key of a client: IPv4 address, or IPv6 network of the prefix.
    #[inline]
    pub fn client_key(&self, ip: IpAddr) -> u128 {
        match ip {
            // IPv4 keys live in the IPv4-mapped range, apart from any IPv6 prefix.
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = u32::from(self.ipv6_prefix.min(128));
                if p == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - p))
                }
            }
        }
    }

    /// The counter key of a normalised account identifier.
    #[inline]
    pub fn account_key(&self, normalised: &str) -> u128 {
        // Accounts count case-insensitively, so `Bob` and `bob` share their tries.
        let h = self.hasher.hash_one(normalised.to_lowercase());
        u128::from(h) | (1u128 << 127)
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

    fn key(&self, subject: &Subject<'_>) -> u128 {
        match subject {
            Subject::Client(k) => *k,
            Subject::Account(a) => self.account_key(a),
        }
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
    /// Short name (Redis key part).
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
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A client key ([`GuardState::client_key`]).
    Client(u128),
    /// A normalised account identifier (counted case-insensitively).
    Account(&'a str),
}

/// One counter a request wants a slot in.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Which counter.
    pub counter: Counter,
    /// Whose count.
    pub subject: Subject<'a>,
    /// The policy's limit and window.
    pub limit: WindowLimit,
}

/// The answer for one [`Ask`].
#[derive(Debug)]
pub enum Reservation {
    /// A slot is held until committed or released.
    Held(Slot),
    /// The limit is reached; retry after the duration.
    Denied(Duration),
    /// The memory store is at its key cap and this key is not in it.
    Full,
}

/// The shared store is down and the fallback is `closed`: refuse.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable;

/// A held slot in whichever store granted it, settled by [`Slot::settle_all`].
/// Dropping it releases it.
#[derive(Debug)]
pub struct Slot(SlotInner);

#[derive(Debug)]
enum SlotInner {
    Local(Permit),
    Shared(Held),
    /// Granted by the `open` fallback: nothing to settle.
    Free,
}

impl Slot {
    /// Commits or releases each slot; those held in the shared store are
    /// settled together, in one round trip.
    pub fn settle_all(slots: impl IntoIterator<Item = (Slot, bool)>) {
        let mut shared = Vec::new();
        for (slot, commit) in slots {
            match slot.0 {
                SlotInner::Shared(h) => shared.push((h, commit)),
                SlotInner::Local(p) if commit => p.commit(),
                SlotInner::Local(p) => p.release(),
                SlotInner::Free => {}
            }
        }
        if !shared.is_empty() {
            Held::settle_all(shared);
        }
    }
}

/// The store the gateway and the admin API use: memory, or Redis with a fallback.
pub struct Store {
    /// The in-memory state: the whole store for `memory`, the fallback (and
    /// the rate limiters, unless `rate_limit.shared`) for `redis`.
    pub local: Arc<GuardState>,
    shared: Option<Arc<RedisStore>>,
    fallback: StoreFallback,
    captcha_ttl: Duration,
    metrics: Metrics,
}

impl Store {
    /// Builds the configured store. Redis is connected lazily: it need not be
    /// up at start, the fallback covers until it is.
    pub fn new(
        cfg: &StoreConfig,
        guards: &GuardsConfig,
        rate: &RateLimitConfig,
        hold: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<Store> {
        let local = Arc::new(GuardState::new(guards, rate));
        let (shared, fallback) = match cfg {
            StoreConfig::Redis(r) => (
                Some(Arc::new(RedisStore::new(r, hold, metrics.clone())?)),
                r.fallback,
            ),
            StoreConfig::Memory => (None, StoreFallback::Local),
        };
        Ok(Store {
            local,
            shared,
            fallback,
            captcha_ttl: guards.captcha_ttl,
            metrics,
        })
    }

    /// The shared store, if configured.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    /// Notes that `op` was answered by the fallback; `Err` when it is `closed`.
    fn fall_back(&self, op: &'static str) -> Result<(), Unavailable> {
        self.metrics
            .store_fallbacks
            .with_label_values(&[op, self.fallback.as_str()])
            .inc();
        match self.fallback {
            StoreFallback::Closed => Err(Unavailable),
            _ => Ok(()),
        }
    }

    fn reserve_local(&self, ask: &Ask<'_>, force: bool) -> Reservation {
        let key = self.local.key(&ask.subject);
        match self
            .local
            .counter(ask.counter)
            .try_reserve(key, ask.limit, force)
        {
            Reserve::Granted(p) => Reservation::Held(Slot(SlotInner::Local(p))),
            Reserve::Denied { retry_after } => Reservation::Denied(retry_after),
            Reserve::Full => Reservation::Full,
        }
    }

    /// Reserves a slot in each counter asked for (at most one round trip to
    /// Redis); with `force`, over the limit too (a solved captcha, a dry run).
    /// The answers are in the order of `asks`.
    pub async fn reserve(
        &self,
        asks: &[Ask<'_>],
        force: bool,
    ) -> Result<Vec<Reservation>, Unavailable> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let Some(shared) = &self.shared else {
            return Ok(asks.iter().map(|a| self.reserve_local(a, force)).collect());
        };
        let wanted: Vec<_> = asks
            .iter()
            .map(|a| (a.counter, a.subject, a.limit))
            .collect();
        match shared.reserve(&wanted, force).await {
            Ok(answers) => Ok(answers
                .into_iter()
                .map(|ans| match ans {
                    Answer::Granted(h) => Reservation::Held(Slot(SlotInner::Shared(h))),
                    Answer::Denied { retry_after } => Reservation::Denied(retry_after),
                })
                .collect()),
            Err(_) => {
                self.fall_back("reserve")?;
                Ok(asks
                    .iter()
                    .map(|a| match self.fallback {
                        StoreFallback::Open => Reservation::Held(Slot(SlotInner::Free)),
                        _ => self.reserve_local(a, force),
                    })
                    .collect())
            }
        }
    }

    /// The per-client rate limit of `kind`: `Err(wait)` when `key` is over
    /// it. With `rate_limit.shared`, the state is in Redis (one script call)
    /// and the replicas together allow the configured rate; while Redis
    /// cannot be used (an error, a timeout, the breaker open) this replica's
    /// own limiter decides, whatever `store.redis.fallback` says: a rate
    /// limit is no reason to refuse everything or nothing.
    pub async fn check_rate(&self, kind: RouteKind, key: u128) -> Result<(), Duration> {
        if let (Some(shared), Some(q)) = (&self.shared, self.local.rate.shared_quota(kind)) {
            match shared.rate_check(q.class, key, q.interval, q.burst).await {
                Ok(answer) => return answer,
                Err(_) => self
                    .metrics
                    .store_fallbacks
                    .with_label_values(&["rate_limit", StoreFallback::Local.as_str()])
                    .inc(),
            }
        }
        self.local.rate.check(kind, key)
    }

    /// Issues a captcha for `client`: its token and SVG (`None`: the memory store is full).
    pub async fn issue_captcha(
        &self,
        client: u128,
    ) -> Result<Option<(crate::captcha::Token, String)>, Unavailable> {
        if let Some(shared) = &self.shared {
            let fresh = crate::captcha::Fresh::new();
            match shared
                .put_captcha(&fresh.token, client, &fresh.answer, self.captcha_ttl)
                .await
            {
                Ok(()) => return Ok(Some((fresh.token, fresh.svg))),
                Err(_) => self.fall_back("captcha_put")?,
            }
        }
        Ok(self.local.captcha.issue(client))
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
        if let Some(shared) = &self.shared {
            match shared.take_captcha(token).await {
                Ok(Some((owner, expected))) => {
                    return Ok(if owner != client {
                        Err(Rejected::OtherClient)
                    } else if crate::captcha::answer_matches(expected.as_bytes(), answer) {
                        Ok(())
                    } else {
                        Err(Rejected::Wrong)
                    });
                }
                // Not in Redis: it may have been issued locally during an outage.
                Ok(None) => {}
                Err(_) => self.fall_back("captcha_take")?,
            }
        }
        Ok(self.local.captcha.verify(token, client, answer))
    }

    /// The state of a counter, for the admin API.
    pub async fn show(
        &self,
        counter: Counter,
        subject: Subject<'_>,
        window: Duration,
    ) -> Option<Shown> {
        if let Some(shared) = &self.shared {
            if let Ok(s) = shared.show(counter, &subject).await {
                return s;
            }
        }
        self.local
            .counter(counter)
            .show(self.local.key(&subject), window)
    }

    /// Clears a counter (unblock) in the shared store and in memory.
    pub async fn clear(&self, counter: Counter, subject: Subject<'_>) -> anyhow::Result<()> {
        self.local.counter(counter).clear(self.local.key(&subject));
        if let Some(shared) = &self.shared {
            shared
                .clear(counter, &subject)
                .await
                .map_err(|e| anyhow::anyhow!("the shared store did not clear it: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_prefix_keys() {
        let s = GuardState::new(&GuardsConfig::default(), &RateLimitConfig::default());
        let a = s.client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = s.client_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = s.client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4a = s.client_key("1.2.3.4".parse().unwrap());
        let v4b = s.client_key("1.2.3.5".parse().unwrap());
        assert_ne!(v4a, v4b, "IPv4 addresses are never grouped");
        assert_eq!(s.account_key("Bob"), s.account_key("bob"));
        assert_ne!(s.account_key("bob"), s.account_key("alice"));
    }
}
