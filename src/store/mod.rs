//! Counter stores: the state the guards consult (window counters, captchas,
//! rate limiters), in memory, with eviction and hard caps.

pub mod counters;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::captcha::CaptchaStore;
use crate::config::{GuardsConfig, RateLimitConfig};
use crate::guards::ratelimit::RateLimits;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use counters::WindowCounter;

/// Everything the guards count, shared by all requests.
pub struct GuardState {
    /// `loginFailCheck`: failed logins per client.
    pub login_ip: Arc<WindowCounter>,
    /// `loginPasswordFailCheck`: wrong passwords per account.
    pub account: Arc<WindowCounter>,
    /// `frequentRegisterCheck`: registrations per client.
    pub register_ip: Arc<WindowCounter>,
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

    /// Evicts expired state and refreshes the gauges.
    pub fn sweep(&self, policy: &PolicyStore, metrics: &Metrics) {
        let p = policy.current();
        let w = |f: fn(&crate::policy::CompiledPolicy) -> Option<crate::policy::WindowLimit>| {
            p.as_ref().and_then(|p| f(p)).map(|l| l.window)
        };
        self.login_ip.sweep(w(|p| p.login_fail));
        self.account.sweep(w(|p| p.password_fail));
        self.register_ip.sweep(w(|p| p.register_limit));
        self.captcha.sweep();
        let rate_keys = self.rate.sweep();
        for c in [&self.login_ip, &self.account, &self.register_ip] {
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
