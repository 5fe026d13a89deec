//! Prometheus metrics. One registry per gateway instance (not the global
//! default), so several instances can live in one process, as the tests do.
//!
//! Every counter whose label values are known up front is created at zero
//! when the gateway starts ([`Metrics::precreate`]), so the first scrape
//! already has every series an alert or a dashboard asks for, and `rate()`
//! sees the first increment. The label sets live in the constants below.

// Static construction: a metric constructor fails only on a malformed name
// or label set, all constants here, which every test run builds.
#![allow(clippy::expect_used)]

use crate::guards::Guard;
use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every `(guard, reason)` a guard rejection can carry (the labels of
/// `poolgate_guard_decisions_total` and, by reason, `poolgate_rejections_total`):
/// every [`Guard`] with the reasons its module lists ([`Guard::reasons`]).
/// A pair missing there is still counted when it happens; it is only not
/// exported at zero before.
pub fn guard_reasons() -> impl Iterator<Item = (Guard, &'static str)> {
    Guard::ALL
        .into_iter()
        .flat_map(|g| g.reasons().iter().map(move |r| (g, *r)))
}

/// Reasons of `poolgate_rejections_total` that are not guard reasons:
/// refusals decided before a guard runs, and forwarding failures.
pub const OTHER_REJECTION_REASONS: &[&str] = &[
    "policy_not_ready",
    "headers_too_large",
    "bad_transfer_encoding",
    "upstream_error",
    "upstream_timeout",
    "body_too_large",
    "client_body_error",
];

/// `poolgate_login_outcomes_total{outcome}` (`guards::outcome::Outcome::as_str`).
pub const LOGIN_OUTCOMES: &[&str] = &[
    "success",
    "wrong_password",
    "failed",
    "unknown",
    "unreadable",
];

/// `poolgate_policy_fetch_failures_total{reason}` by source (`SourceError::reason`).
pub fn fetch_failure_reasons(source: &str) -> &'static [&'static str] {
    match source {
        "file" => &["io", "parse"],
        "authing" => &[
            "timeout",
            "connect",
            "http_status",
            "unauthorized",
            "parse",
            "api_error",
        ],
        _ => &[],
    }
}

/// Redis operations (`op` of the `poolgate_store_*` metrics).
pub const STORE_OPS: &[&str] = &[
    "reserve",
    "settle",
    "captcha_put",
    "captcha_take",
    "show",
    "clear",
];
/// Operations the store fallback can answer (`poolgate_store_fallbacks_total{op}`).
pub const STORE_FALLBACK_OPS: &[&str] = &["reserve", "captcha_put", "captcha_take"];
/// `kind` of `poolgate_store_errors_total`.
pub const STORE_ERROR_KINDS: &[&str] = &["timeout", "io", "server", "reply", "breaker_open"];
/// `reason` of `poolgate_connection_errors_total`.
pub const CONNECTION_ERROR_REASONS: &[&str] = &[
    "head_too_large",
    "bad_request",
    "header_timeout",
    "client_gone",
    "other",
];

/// The `(route, method, outcome)` series of `poolgate_requests_total`
/// created at zero: each route class with the method its clients use (`GET`
/// and `POST` for `other`) and the outcomes it can have. Other combinations
/// (a `PUT` to an unguarded path, a preflight) appear when they first happen.
pub fn request_series() -> Vec<(&'static str, &'static str, &'static str)> {
    const FORWARDED: &[&str] = &[
        "forwarded",
        "rejected",
        "upstream_error",
        "upstream_timeout",
    ];
    let mut out = Vec::new();
    for route in [
        "login",
        "register",
        "password",
        "send_code",
        "verify",
        "graphql",
    ] {
        for outcome in FORWARDED {
            out.push((route, "POST", *outcome));
        }
    }
    for method in ["GET", "POST"] {
        for outcome in FORWARDED {
            out.push(("other", method, *outcome));
        }
    }
    for outcome in ["captcha_issued", "rejected"] {
        out.push(("captcha", "GET", outcome));
    }
    out
}

/// `counter` of `poolgate_tracked_keys` (the store's window counters, and the
/// rate limiters together); 0 at start, updated every `guards.sweep_interval`.
pub const TRACKED_COUNTERS: &[&str] = &[
    "login_ip",
    "account",
    "register_ip",
    "send_client",
    "send_recipient",
    "rate_limit",
];

/// Route classes whose requests are forwarded (`poolgate_upstream_duration_seconds{route}`).
pub const FORWARDED_ROUTES: &[&str] = &[
    "login",
    "register",
    "password",
    "send_code",
    "verify",
    "graphql",
    "other",
];

/// The commit poolgate was built from (`build.rs`; `unknown` without git).
pub const BUILD_COMMIT: &str = env!("POOLGATE_BUILD_COMMIT");
/// The compiler poolgate was built with (`build.rs`; `unknown` if it could not tell).
pub const BUILD_RUSTC: &str = env!("POOLGATE_BUILD_RUSTC");

/// What [`Metrics::precreate`] needs to know of the configuration.
pub struct Known<'a> {
    /// The configured policy source (`file` or `authing`).
    pub source: &'a str,
    /// The Redis store's fallback mode, when a Redis store is configured.
    pub store_fallback: Option<&'a str>,
    /// Guards in dry run: their `shadow_reject` series are created instead of `reject`.
    pub shadowed: Vec<Guard>,
}

/// Every metric poolgate exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `poolgate_requests_total{route, method, outcome}`.
    pub requests: IntCounterVec,
    /// `poolgate_upstream_duration_seconds{route}`: time to the upstream's response headers.
    pub upstream_duration: HistogramVec,
    /// `poolgate_inflight_requests`.
    pub inflight: IntGauge,
    /// `poolgate_rejections_total{reason}`: requests poolgate answered itself, by reason.
    pub rejections: IntCounterVec,
    /// `poolgate_policy_reloads_total{result}`: applied, unchanged, invalid.
    pub policy_reloads: IntCounterVec,
    /// `poolgate_policy_fetch_failures_total{source, reason}`.
    pub policy_fetch_failures: IntCounterVec,
    /// `poolgate_policy_last_success_timestamp_seconds`.
    pub policy_last_success: IntGauge,
    /// `poolgate_policy_info{version, source}`: 1 for the policy in force.
    pub policy_info: IntGaugeVec,
    /// `poolgate_policy_ready`: 1 once a policy is in force.
    pub policy_ready: IntGauge,
    /// `poolgate_policy_fetch_duration_seconds`.
    pub policy_fetch_duration: Histogram,
    /// `poolgate_management_token_renewals_total{result}`.
    pub token_renewals: IntCounterVec,
    /// `poolgate_policy_snapshot_writes_total{result}`.
    pub snapshot_writes: IntCounterVec,
    /// `poolgate_connections_open`.
    pub connections: IntGauge,
    /// `poolgate_connections_rejected_total{listener}`: connections closed at
    /// accept because the listener was at its connection cap.
    pub connections_rejected: IntCounterVec,
    /// `poolgate_connection_errors_total{listener, reason}`: connections that
    /// ended in an error, most of them refused by the HTTP parser (reason
    /// `bad_request`, `head_too_large`, `header_timeout`; also `client_gone`, `other`).
    pub connection_errors: IntCounterVec,
    /// `poolgate_guard_decisions_total{guard, decision, reason}`: decision is
    /// `reject`, `shadow_reject` (dry run) or `allow_captcha` (a solved captcha let a login through).
    pub guard_decisions: IntCounterVec,
    /// `poolgate_login_outcomes_total{outcome}`: what the upstream said about forwarded logins.
    pub login_outcomes: IntCounterVec,
    /// `poolgate_tracked_keys{counter}`: keys each counter holds now.
    pub tracked_keys: IntGaugeVec,
    /// `poolgate_captchas_outstanding`: captchas issued and not yet used or expired.
    pub captchas_outstanding: IntGauge,
    /// `poolgate_captchas_issued_total`.
    pub captchas_issued: prometheus::IntCounter,
    /// `poolgate_encrypted_passwords_total`: clear-text checks skipped because the password was encrypted.
    pub encrypted_passwords: prometheus::IntCounter,
    /// `poolgate_abandoned_attempts_total`: guarded requests whose client went
    /// away after they were forwarded (the answer is still read and counted).
    pub abandoned_attempts: prometheus::IntCounter,
    /// `poolgate_store_duration_seconds{op}`: time of shared-store (Redis) calls.
    pub store_duration: HistogramVec,
    /// `poolgate_store_errors_total{op, kind}`: failed shared-store calls (timeout, io, server...).
    pub store_errors: IntCounterVec,
    /// `poolgate_store_fallbacks_total{op, mode}`: calls the fallback answered instead of Redis.
    pub store_fallbacks: IntCounterVec,
    /// `poolgate_store_breaker_open`: 1 while the circuit breaker keeps Redis out of the path.
    pub store_breaker_open: IntGauge,
    /// `poolgate_account_keys_keyed`: 1 when account counter keys are a keyed
    /// hash, 0 when Redis holds unkeyed ones (no account key secret).
    pub account_keys_keyed: IntGauge,
    /// `poolgate_account_key_fingerprints`: how many account keyers the
    /// replicas sharing this Redis announced lately (1 when they agree).
    pub account_key_fingerprints: IntGauge,
    /// The series every request updates, looked up once ([`Hot`]).
    hot: Arc<Hot>,
}

/// Route labels [`Hot`] keeps series of: [`FORWARDED_ROUTES`], then
/// `captcha` (every route of [`request_series`]).
const HOT_ROUTES: usize = FORWARDED_ROUTES.len() + 1;

fn hot_route(route: &str) -> Option<usize> {
    index_of(FORWARDED_ROUTES, route).or((route == "captcha").then_some(FORWARDED_ROUTES.len()))
}

/// Outcome labels of the `poolgate_requests_total` series [`Hot`] keeps.
const HOT_OUTCOMES: [&str; 5] = [
    "forwarded",
    "rejected",
    "upstream_error",
    "upstream_timeout",
    "captcha_issued",
];
/// Method labels of the same.
const HOT_METHODS: [&str; 2] = ["GET", "POST"];

/// Handles of the series a request updates, made once: `with_label_values`
/// hashes the labels, takes the family's read lock and clones an `Arc` whose
/// count every worker then writes, on each call (three per login). Only the
/// series [`Metrics::precreate`] makes anyway are kept; any other label set
/// goes through `with_label_values` as before.
struct Hot {
    requests: [[[Option<IntCounter>; HOT_OUTCOMES.len()]; HOT_METHODS.len()]; HOT_ROUTES],
    upstream: [Option<Histogram>; HOT_ROUTES],
    login_outcomes: Vec<IntCounter>,
}

fn index_of(list: &[&str], label: &str) -> Option<usize> {
    list.iter().position(|l| *l == label)
}

impl Hot {
    fn of(requests: &IntCounterVec, upstream: &HistogramVec, outcomes: &IntCounterVec) -> Hot {
        let mut hot = Hot {
            requests: Default::default(),
            upstream: Default::default(),
            login_outcomes: LOGIN_OUTCOMES
                .iter()
                .map(|o| outcomes.with_label_values(&[o]))
                .collect(),
        };
        for (route, method, outcome) in request_series() {
            if let (Some(r), Some(m), Some(o)) = (
                hot_route(route),
                index_of(&HOT_METHODS, method),
                index_of(&HOT_OUTCOMES, outcome),
            ) {
                hot.requests[r][m][o] = Some(requests.with_label_values(&[route, method, outcome]));
            }
        }
        for route in FORWARDED_ROUTES {
            if let Some(r) = hot_route(route) {
                hot.upstream[r] = Some(upstream.with_label_values(&[route]));
            }
        }
        hot
    }

    /// The kept handle of `poolgate_requests_total{route, method, outcome}`.
    #[inline]
    fn request(&self, route: &str, method: &str, outcome: &str) -> Option<&IntCounter> {
        let r = hot_route(route)?;
        let m = index_of(&HOT_METHODS, method)?;
        self.requests[r][m][index_of(&HOT_OUTCOMES, outcome)?].as_ref()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let requests = counter_vec(
            r,
            "poolgate_requests_total",
            "Requests handled, by route class, method and outcome.",
            &["route", "method", "outcome"],
        );
        let upstream_duration = histogram_vec(
            r,
            "poolgate_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response headers.",
            exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
            &["route"],
        );
        let login_outcomes = counter_vec(
            r,
            "poolgate_login_outcomes_total",
            "Forwarded logins by the upstream's verdict.",
            &["outcome"],
        );
        // Creates the series it keeps handles of, at zero.
        let hot = Arc::new(Hot::of(&requests, &upstream_duration, &login_outcomes));
        let m = Metrics {
            requests,
            upstream_duration,
            inflight: register(
                r,
                IntGauge::new("poolgate_inflight_requests", "Requests being handled now.")
                    .expect("valid metric"),
            ),
            rejections: counter_vec(
                r,
                "poolgate_rejections_total",
                "Requests answered by poolgate instead of the upstream, by reason.",
                &["reason"],
            ),
            policy_reloads: counter_vec(
                r,
                "poolgate_policy_reloads_total",
                "Policy fetches that succeeded, by result: applied, unchanged, invalid.",
                &["result"],
            ),
            policy_fetch_failures: counter_vec(
                r,
                "poolgate_policy_fetch_failures_total",
                "Policy fetches that failed, by source and reason.",
                &["source", "reason"],
            ),
            policy_last_success: register(
                r,
                IntGauge::new(
                    "poolgate_policy_last_success_timestamp_seconds",
                    "Unix time of the last successful policy fetch.",
                )
                .expect("valid metric"),
            ),
            policy_info: {
                let g = IntGaugeVec::new(
                    Opts::new("poolgate_policy_info", "The policy in force (value 1)."),
                    &["version", "source"],
                )
                .expect("valid metric");
                register(r, g)
            },
            policy_ready: register(
                r,
                IntGauge::new("poolgate_policy_ready", "1 once a policy is in force.")
                    .expect("valid metric"),
            ),
            policy_fetch_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "poolgate_policy_fetch_duration_seconds",
                        "Time a policy fetch took, successful or not.",
                    )
                    .buckets(exponential_buckets(0.005, 2.0, 12).unwrap_or_default()),
                )
                .expect("valid metric"),
            ),
            token_renewals: counter_vec(
                r,
                "poolgate_management_token_renewals_total",
                "Management token requests to Authing, by result.",
                &["result"],
            ),
            snapshot_writes: counter_vec(
                r,
                "poolgate_policy_snapshot_writes_total",
                "Writes of the last-good-policy snapshot, by result.",
                &["result"],
            ),
            connections: register(
                r,
                IntGauge::new("poolgate_connections_open", "Client connections open now.")
                    .expect("valid metric"),
            ),
            connections_rejected: counter_vec(
                r,
                "poolgate_connections_rejected_total",
                "Connections answered 503 and closed at accept because the listener was at server.max_connections.",
                &["listener"],
            ),
            connection_errors: counter_vec(
                r,
                "poolgate_connection_errors_total",
                "Connections that ended in an error, by listener and reason (bad_request, head_too_large, header_timeout: refused by the HTTP parser).",
                &["listener", "reason"],
            ),
            guard_decisions: counter_vec(
                r,
                "poolgate_guard_decisions_total",
                "Guard decisions that stopped (or in dry run would have stopped) a request.",
                &["guard", "decision", "reason"],
            ),
            login_outcomes,
            tracked_keys: {
                let g = IntGaugeVec::new(
                    Opts::new("poolgate_tracked_keys", "Keys tracked by each counter."),
                    &["counter"],
                )
                .expect("valid metric");
                register(r, g)
            },
            captchas_outstanding: register(
                r,
                IntGauge::new(
                    "poolgate_captchas_outstanding",
                    "Captchas issued and not yet used or expired.",
                )
                .expect("valid metric"),
            ),
            captchas_issued: register(
                r,
                prometheus::IntCounter::new("poolgate_captchas_issued_total", "Captchas issued.")
                    .expect("valid metric"),
            ),
            store_duration: histogram_vec(
                r,
                "poolgate_store_duration_seconds",
                "Time of calls to the shared counter store (Redis), by operation.",
                exponential_buckets(0.0001, 2.0, 14).unwrap_or_default(),
                &["op"],
            ),
            store_errors: counter_vec(
                r,
                "poolgate_store_errors_total",
                "Shared-store calls that failed, by operation and kind (timeout, io, server, reply).",
                &["op", "kind"],
            ),
            store_fallbacks: counter_vec(
                r,
                "poolgate_store_fallbacks_total",
                "Shared-store calls answered by the configured fallback, by operation and mode.",
                &["op", "mode"],
            ),
            store_breaker_open: register(
                r,
                IntGauge::new(
                    "poolgate_store_breaker_open",
                    "1 while the circuit breaker keeps the shared store out of the request path.",
                )
                .expect("valid metric"),
            ),
            account_keys_keyed: register(
                r,
                IntGauge::new(
                    "poolgate_account_keys_keyed",
                    "1 when account counter keys are a keyed hash (memory store, or Redis with an account key secret); 0 when Redis holds unkeyed ones.",
                )
                .expect("valid metric"),
            ),
            account_key_fingerprints: register(
                r,
                IntGauge::new(
                    "poolgate_account_key_fingerprints",
                    "Distinct account keyers (secrets) the replicas sharing this Redis announced in the last 2 minutes: 1 when they agree, more while replicas count accounts apart; 0 without Redis or before the first announcement.",
                )
                .expect("valid metric"),
            ),
            abandoned_attempts: register(
                r,
                prometheus::IntCounter::new(
                    "poolgate_abandoned_attempts_total",
                    "Guarded requests whose client went away after poolgate forwarded them; their answer was still read and counted.",
                )
                .expect("valid metric"),
            ),
            encrypted_passwords: register(
                r,
                prometheus::IntCounter::new(
                    "poolgate_encrypted_passwords_total",
                    "Password checks skipped because the client encrypted the password.",
                )
                .expect("valid metric"),
            ),
            registry,
            hot,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "poolgate_build_info",
                "Always 1; the labels name the poolgate version, the git commit and the compiler it was built from.",
            ),
            &["version", "commit", "rustc"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT, BUILD_RUSTC])
            .set(1);
        m.register_collector(Box::new(build_info));
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds, process_start_time_seconds... read
        // from /proc at scrape time.
        #[cfg(target_os = "linux")]
        m.register_collector(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    /// Counts a request in `poolgate_requests_total{route, method, outcome}`.
    #[inline]
    pub fn count_request(&self, route: &str, method: &str, outcome: &str) {
        match self.hot.request(route, method, outcome) {
            Some(c) => c.inc(),
            None => self
                .requests
                .with_label_values(&[route, method, outcome])
                .inc(),
        }
    }

    /// Observes an upstream call's time in `poolgate_upstream_duration_seconds{route}`.
    #[inline]
    pub fn observe_upstream(&self, route: &str, seconds: f64) {
        match hot_route(route).and_then(|r| self.hot.upstream[r].as_ref()) {
            Some(h) => h.observe(seconds),
            None => self
                .upstream_duration
                .with_label_values(&[route])
                .observe(seconds),
        }
    }

    /// Counts a forwarded login's outcome in `poolgate_login_outcomes_total{outcome}`.
    #[inline]
    pub fn count_login_outcome(&self, outcome: &str) {
        match index_of(LOGIN_OUTCOMES, outcome).and_then(|i| self.hot.login_outcomes.get(i)) {
            Some(c) => c.inc(),
            None => self.login_outcomes.with_label_values(&[outcome]).inc(),
        }
    }

    /// Creates at zero every series whose labels are known from the
    /// configuration (see the constants of this module), so that the first
    /// scrape has them. (The series of [`request_series`],
    /// [`FORWARDED_ROUTES`] and [`LOGIN_OUTCOMES`] are made by [`Metrics::new`],
    /// which keeps their handles.)
    pub fn precreate(&self, known: &Known<'_>) {
        for (guard, reason) in guard_reasons() {
            // A guard in dry run shadows rather than rejects.
            let decision = if known.shadowed.contains(&guard) {
                "shadow_reject"
            } else {
                "reject"
            };
            self.guard_decisions
                .with_label_values(&[guard.as_str(), decision, reason]);
            self.rejections.with_label_values(&[reason]);
        }
        for guard in [Guard::LoginFail, Guard::PasswordFail] {
            self.guard_decisions.with_label_values(&[
                guard.as_str(),
                "allow_captcha",
                "captcha_solved",
            ]);
        }
        for reason in OTHER_REJECTION_REASONS {
            self.rejections.with_label_values(&[reason]);
        }
        for counter in TRACKED_COUNTERS {
            self.tracked_keys.with_label_values(&[counter]);
        }
        for reason in fetch_failure_reasons(known.source) {
            self.policy_fetch_failures
                .with_label_values(&[known.source, reason]);
        }
        for result in ["applied", "unchanged", "invalid"] {
            self.policy_reloads.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            self.snapshot_writes.with_label_values(&[result]);
            if known.source == "authing" {
                self.token_renewals.with_label_values(&[result]);
            }
        }
        for listener in ["proxy", "admin"] {
            self.connections_rejected.with_label_values(&[listener]);
            for reason in CONNECTION_ERROR_REASONS {
                self.connection_errors
                    .with_label_values(&[listener, reason]);
            }
        }
        if let Some(mode) = known.store_fallback {
            for op in STORE_OPS {
                self.store_duration.with_label_values(&[op]);
                for kind in STORE_ERROR_KINDS {
                    self.store_errors.with_label_values(&[op, kind]);
                }
            }
            for op in STORE_FALLBACK_OPS {
                self.store_fallbacks.with_label_values(&[op, mode]);
            }
        }
    }

    /// Renders the registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric-family inconsistencies, which
        // registration already ruled out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Adds a collector that computes its figures at scrape time (such as the
    /// rate limiters' key counts). A collector whose names clash with one
    /// already registered is refused with a log line rather than a panic.
    pub fn register_collector(&self, c: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(c) {
            tracing::error!(error = %e, "metric collector not registered");
        }
    }

    /// Marks `version` from `source` as the policy in force.
    pub fn set_policy(&self, version: &str, source: &str) {
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[version, source])
            .set(1);
        self.policy_ready.set(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    // Names are static and unique within this fresh registry.
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn known_label_sets_are_non_empty_and_unique() {
        let pairs: Vec<_> = guard_reasons().collect();
        assert!(!pairs.is_empty());
        assert_eq!(
            pairs.iter().collect::<HashSet<_>>().len(),
            pairs.len(),
            "a (guard, reason) pair twice"
        );
        for g in Guard::ALL {
            assert!(!g.reasons().is_empty(), "{g} has no reasons");
        }
        for list in [
            OTHER_REJECTION_REASONS,
            LOGIN_OUTCOMES,
            STORE_OPS,
            STORE_FALLBACK_OPS,
            STORE_ERROR_KINDS,
            CONNECTION_ERROR_REASONS,
            FORWARDED_ROUTES,
            TRACKED_COUNTERS,
            fetch_failure_reasons("file"),
            fetch_failure_reasons("authing"),
        ] {
            assert!(!list.is_empty());
            assert_eq!(
                list.iter().collect::<HashSet<_>>().len(),
                list.len(),
                "{list:?}"
            );
        }
        let series = request_series();
        assert_eq!(series.iter().collect::<HashSet<_>>().len(), series.len());
    }

    #[test]
    fn precreated_series_are_rendered_at_zero() {
        let m = Metrics::new();
        m.precreate(&Known {
            source: "authing",
            store_fallback: Some("local"),
            shadowed: vec![Guard::Cors],
        });
        let text = m.render();
        for needle in [
            r#"poolgate_guard_decisions_total{decision="reject",guard="login_fail",reason="captcha_required"} 0"#,
            r#"poolgate_guard_decisions_total{decision="shadow_reject",guard="cors",reason="origin_not_allowed"} 0"#,
            r#"poolgate_policy_fetch_failures_total{reason="unauthorized",source="authing"} 0"#,
            r#"poolgate_store_fallbacks_total{mode="local",op="reserve"} 0"#,
            r#"poolgate_login_outcomes_total{outcome="unreadable"} 0"#,
            "poolgate_build_info{",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
        assert!(!text.contains(r#"shadow_reject",guard="whitelist""#));
        assert!(!text.contains(r#"decision="reject",guard="cors""#));
    }

    /// The kept handles count in the very series `with_label_values` names,
    /// and a label set they do not keep is still counted.
    #[test]
    fn kept_handles_count_in_the_named_series() {
        let m = Metrics::new();
        m.count_request("login", "POST", "forwarded");
        m.count_request("login", "POST", "forwarded");
        m.count_request("other", "PUT", "forwarded");
        m.count_request("captcha", "GET", "captcha_issued");
        m.observe_upstream("register", 0.25);
        m.observe_upstream("elsewhere", 0.5);
        m.count_login_outcome("wrong_password");
        m.count_login_outcome("not_an_outcome");
        let get = |labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(get(&["login", "POST", "forwarded"]), 2);
        assert_eq!(get(&["other", "PUT", "forwarded"]), 1);
        assert_eq!(get(&["captcha", "GET", "captcha_issued"]), 1);
        assert_eq!(get(&["login", "GET", "forwarded"]), 0);
        for route in ["register", "elsewhere"] {
            let h = m.upstream_duration.with_label_values(&[route]);
            assert_eq!(h.get_sample_count(), 1, "{route}");
        }
        assert_eq!(
            m.upstream_duration
                .with_label_values(&["login"])
                .get_sample_count(),
            0
        );
        for outcome in ["wrong_password", "not_an_outcome"] {
            assert_eq!(
                m.login_outcomes.with_label_values(&[outcome]).get(),
                1,
                "{outcome}"
            );
        }
        // Every precreated series is kept (none falls back to the lookup).
        for (route, method, outcome) in request_series() {
            let kept = m.hot.request(route, method, outcome);
            assert!(kept.is_some(), "{route} {method} {outcome}");
        }
        for route in FORWARDED_ROUTES {
            assert!(hot_route(route).is_some_and(|r| m.hot.upstream[r].is_some()));
        }
    }
}
