//! The settings the request path reads that a reload may change in place.
//!
//! [`crate::gateway::Gateway`] keeps one [`Runtime`] behind an `ArcSwap`; a
//! request loads it once and keeps that snapshot to its end, so a reload never
//! changes the rules half-way through a request. Counters and limiter state
//! live in the store, not here, so swapping a `Runtime` keeps them.

use crate::client_ip::ClientIpResolver;
use crate::extract;
use crate::routes::RouteTable;

/// Run-time settings of the request path.
pub struct Runtime {
    /// Client IP resolution.
    pub client_ip: ClientIpResolver,
    /// Largest request body forwarded.
    pub max_body_bytes: u64,
    /// The route table.
    pub routes: RouteTable,
    /// Dry-run settings and body limits.
    pub settings: GuardSettings,
    /// A third-party challenge (`[captcha] provider`) instead of poolgate's
    /// own captcha, when configured.
    pub captcha_provider: Option<crate::captcha::provider::SiteVerify>,
}

/// Guard settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct GuardSettings {
    /// Shadow mode for every guard.
    pub dry_run_all: bool,
    /// Shadow mode for these guards.
    pub dry_run: Vec<crate::guards::Guard>,
    /// Largest guarded request body read.
    pub inspect_body_bytes: usize,
    /// Largest upstream answer read to judge a login or registration.
    pub inspect_response_bytes: usize,
    /// Time a client has to send a guarded body (`None`: no limit).
    pub body_read_timeout: Option<std::time::Duration>,
    /// How identifiers are normalised.
    pub normalize: extract::Normalize,
    /// Limits on sending one-time codes.
    pub send_code: crate::config::SendCodeConfig,
    /// How long an issued captcha lives (the v2 cookie's `Max-Age`).
    pub captcha_ttl: std::time::Duration,
    /// `SameSite` of the v2 captcha cookie.
    pub captcha_cookie_samesite: crate::config::SameSite,
    /// The access log.
    pub access_log: AccessLog,
}

impl GuardSettings {
    /// Whether `guard` is in dry run: its verdicts are logged, not enforced.
    pub(crate) fn shadow(&self, guard: crate::guards::Guard) -> bool {
        self.dry_run_all || self.dry_run.contains(&guard)
    }
}

/// The access log's settings: off, or every `1/sample`-th request on average.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog {
    /// Whether it is on.
    pub on: bool,
    /// The share of requests logged (0 to 1).
    pub sample: f64,
}

impl AccessLog {
    pub(crate) fn enabled(&self) -> bool {
        self.on && self.sample > 0.0
    }

    pub(crate) fn sampled(&self) -> bool {
        self.enabled() && (self.sample >= 1.0 || rand::random::<f64>() < self.sample)
    }
}
