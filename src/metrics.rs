//! Prometheus metrics. One registry per gateway instance (not the global
//! default), so several instances can live in one process, as the tests do.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

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
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
            requests: counter_vec(
                r,
                "poolgate_requests_total",
                "Requests handled, by route class, method and outcome.",
                &["route", "method", "outcome"],
            ),
            upstream_duration: histogram_vec(
                r,
                "poolgate_upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response headers.",
                exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
                &["route"],
            ),
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
            login_outcomes: counter_vec(
                r,
                "poolgate_login_outcomes_total",
                "Forwarded logins by the upstream's verdict.",
                &["outcome"],
            ),
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
