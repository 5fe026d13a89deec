//! The refresher: fetches the source on a schedule (and on SIGHUP), compiles,
//! and swaps the policy in force. A failed fetch or an invalid document never
//! replaces the policy in force; it is retried with jittered exponential
//! backoff, counted and logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{watch, Notify};

use super::{snapshot, Fetched, Source};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyStore};

/// First retry delay after a failure; doubled per failure up to the interval.
const BACKOFF_START: Duration = Duration::from_millis(500);

/// Keeps the policy in force fresh.
pub struct Refresher {
    source: Source,
    store: Arc<PolicyStore>,
    metrics: Metrics,
    snapshot_path: Option<PathBuf>,
    interval: Duration,
    poll: Option<Duration>,
    reload: Arc<Notify>,
    failures: u32,
    normalize: crate::extract::Normalize,
}

/// The outcome of one refresh.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is in force.
    Applied,
    /// The document is the one in force already.
    Unchanged,
    /// Fetch or compile failed; the previous policy stays.
    Failed,
}

impl Refresher {
    /// A refresher for `source` feeding `store`. `poll` is how often a source
    /// that can detect changes cheaply (files) is checked.
    pub fn new(
        source: Source,
        store: Arc<PolicyStore>,
        metrics: Metrics,
        snapshot_path: Option<PathBuf>,
        interval: Duration,
        poll: Option<Duration>,
        reload: Arc<Notify>,
    ) -> Self {
        Refresher {
            source,
            store,
            metrics,
            snapshot_path,
            interval,
            poll,
            reload,
            failures: 0,
            normalize: crate::extract::Normalize::default(),
        }
    }

    /// Normalises whitelisted identifiers with `norm` (the phone region of
    /// the configuration), as request identifiers are.
    pub fn with_normalize(mut self, norm: crate::extract::Normalize) -> Self {
        self.normalize = norm;
        self
    }

    /// Loads the first policy: from the source, else from the snapshot.
    /// Returns an error describing both failures when neither gives a policy.
    pub async fn initial(&mut self) -> anyhow::Result<()> {
        let source_err = match self.refresh_inner().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let Some(path) = self.snapshot_path.clone() else {
            anyhow::bail!("{source_err} (and no snapshot_path is configured)");
        };
        let loaded = snapshot::load(&path).and_then(|(doc, src, saved_at)| {
            let p = CompiledPolicy::compile_with(
                &doc.pool,
                &doc.whitelist,
                "snapshot",
                self.normalize,
            )?;
            Ok((p, src, saved_at))
        });
        match loaded {
            Ok((policy, src, saved_at)) => {
                tracing::warn!(
                    error = %source_err,
                    snapshot = %path.display(),
                    snapshot_source = %src,
                    saved_at = %humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(saved_at)),
                    version = %policy.version,
                    "policy source unavailable at start; enforcing the last good policy from the snapshot"
                );
                self.metrics.set_policy(&policy.version, "snapshot");
                self.store.install(policy);
                Ok(())
            }
            Err(e) => anyhow::bail!("{source_err}; snapshot {}: {e:#}", path.display()),
        }
    }

    /// Fetches once and installs the result if it is new and valid.
    pub async fn refresh(&mut self) -> Outcome {
        match self.refresh_inner().await {
            Ok(o) => o,
            Err(e) => {
                if self.store.is_ready() {
                    tracing::error!(source = self.source.name(), error = %e, "policy refresh failed; keeping the policy in force");
                } else {
                    tracing::error!(source = self.source.name(), error = %e, "policy refresh failed; still no policy in force (not ready)");
                }
                Outcome::Failed
            }
        }
    }

    async fn refresh_inner(&mut self) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let fetched = self.source.fetch().await;
        self.metrics
            .policy_fetch_duration
            .observe(started.elapsed().as_secs_f64());
        let doc = match fetched {
            Ok(d) => d,
            Err(e) => {
                self.failures += 1;
                self.metrics
                    .policy_fetch_failures
                    .with_label_values(&[self.source.name(), e.reason()])
                    .inc();
                return Err(e.into());
            }
        };
        let policy = match CompiledPolicy::compile_with(
            &doc.pool,
            &doc.whitelist,
            self.source.name(),
            self.normalize,
        ) {
            Ok(p) => p,
            Err(e) => {
                self.failures += 1;
                self.metrics
                    .policy_reloads
                    .with_label_values(&["invalid"])
                    .inc();
                anyhow::bail!("the pool document is not a valid policy: {e}");
            }
        };
        self.failures = 0;
        self.metrics.policy_last_success.set(unix_now());
        if self.store.is_in_force(&policy) {
            self.metrics
                .policy_reloads
                .with_label_values(&["unchanged"])
                .inc();
            return Ok(Outcome::Unchanged);
        }
        for w in &policy.warnings {
            tracing::warn!(warning = %w, "pool policy");
        }
        tracing::info!(
            version = %policy.version,
            previous = self
                .store
                .current()
                .as_ref()
                .map_or_else(|| "none".to_string(), |p| p.version.clone()),
            source = self.source.name(),
            "policy applied"
        );
        self.metrics.set_policy(&policy.version, self.source.name());
        let version_changed = self.store.install(policy);
        self.metrics
            .policy_reloads
            .with_label_values(&["applied"])
            .inc();
        if version_changed {
            self.save_snapshot(&doc);
        }
        Ok(Outcome::Applied)
    }

    fn save_snapshot(&self, doc: &Fetched) {
        let Some(path) = &self.snapshot_path else {
            return;
        };
        match snapshot::save(path, self.source.name(), doc) {
            Ok(()) => self
                .metrics
                .snapshot_writes
                .with_label_values(&["ok"])
                .inc(),
            Err(e) => {
                // Not fatal: the policy is in force; only a restart during an
                // outage would miss it.
                self.metrics
                    .snapshot_writes
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(path = %path.display(), error = %e, "cannot write the policy snapshot");
            }
        }
    }

    /// The wait before the next fetch: the interval, or backoff after failures.
    fn next_delay(&self) -> Duration {
        if self.failures == 0 {
            return self.interval;
        }
        let exp = BACKOFF_START.saturating_mul(1u32 << self.failures.min(16).saturating_sub(1));
        let capped = exp.min(self.interval);
        // Full jitter in [50%, 100%] keeps replicas from retrying in lockstep.
        let factor = rand::rng().random_range(0.5..=1.0);
        capped.mul_f64(factor)
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut next_fetch = Instant::now() + self.next_delay();
        loop {
            let wake = match self.poll {
                Some(p) => (Instant::now() + p).min(next_fetch),
                None => next_fetch,
            };
            let forced = tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => false,
                _ = self.reload.notified() => true,
                _ = shutdown.changed() => return,
            };
            if *shutdown.borrow() {
                return;
            }
            let due = forced || Instant::now() >= next_fetch;
            let changed = if due {
                true
            } else {
                self.source.maybe_changed().await.unwrap_or(false)
            };
            if !changed {
                continue;
            }
            if forced {
                tracing::info!(source = self.source.name(), "reload requested");
            }
            self.refresh().await;
            next_fetch = Instant::now() + self.next_delay();
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
