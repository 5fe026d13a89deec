//! Wiring: builds the policy source, the refresher, the gateway and the two
//! listeners from a [`Config`], and tears them down gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::client_ip::ClientIpResolver;
use crate::config::{Config, PolicySource, SourceKind};
use crate::gateway::{ConnService, Gateway};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::proxy::Upstream;
use crate::routes::{default_graphql_ops, default_routes, RouteTable};
use crate::runtime::{AccessLog, GuardSettings, Runtime};
use crate::server::{serve, ConnectionCap, HeadLimits, ListenerOptions, RequestHygiene};
use crate::source::authing::AuthingSource;
use crate::source::file::FileSource;
use crate::source::refresh::Refresher;
use crate::source::Source;
use crate::store::{MemoryStore, Store};

/// Connection cap of the admin listener.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// A running gateway.
pub struct App {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    reload: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    /// The policy in force (for embedding and tests).
    pub policy: Arc<PolicyStore>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The guards' counters and captchas (for embedding, admin tooling and tests).
    pub guard_state: Arc<MemoryStore>,
    /// The store the guards use (memory, or Redis with the memory store as fallback).
    pub store: Arc<Store>,
    reloader: Reloader,
}

/// What a configuration reload changes in place, and the configuration in force.
struct Reloader {
    /// The configuration in force; the lock also keeps two reloads apart.
    current: std::sync::Mutex<Config>,
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    /// `poolgate_config_reloads_total{result}`.
    reloads: prometheus::IntCounterVec,
    /// Sets the log filter (the binary's tracing-subscriber reload handle).
    log_level: Option<LogLevelHook>,
}

/// Sets the log filter to a `log.level` value.
pub type LogLevelHook = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// The results a configuration reload is counted by.
pub const CONFIG_RELOAD_RESULTS: [&str; 3] = ["applied", "refused", "invalid"];

/// What a configuration reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigReload {
    /// The new configuration is in force; these keys changed (none: nothing did).
    Applied(Vec<&'static str>),
    /// These changed keys need a restart: nothing was applied.
    Refused(Vec<&'static str>),
    /// The new configuration is invalid (the error): nothing was applied.
    Invalid(String),
}

// Static construction: the name and labels are constants.
#[allow(clippy::expect_used)]
fn config_reloads_metric(metrics: &Metrics) -> prometheus::IntCounterVec {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "poolgate_config_reloads_total",
            "Configuration reloads (SIGHUP), by result: applied, refused (a changed key needs a restart) or invalid.",
        ),
        &["result"],
    )
    .expect("valid metric");
    for r in CONFIG_RELOAD_RESULTS {
        c.with_label_values(&[r]);
    }
    metrics.register_collector(Box::new(c.clone()));
    c
}

/// The series [`Metrics::precreate`] makes for `cfg`.
fn precreate(metrics: &Metrics, cfg: &Config) {
    metrics.precreate(&crate::metrics::Known {
        source: cfg.policy.source.kind().as_str(),
        store_fallback: cfg.store.redis().map(|r| r.fallback.as_str()),
        shadowed: crate::guards::Guard::ALL
            .into_iter()
            .filter(|g| cfg.guards.dry_run || cfg.guards.dry_run_guards.contains(g))
            .collect(),
    });
}

/// Builds the configured policy source.
pub fn build_source(
    cfg: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(Source, Option<std::time::Duration>)> {
    Ok(match &cfg.policy.source {
        PolicySource::File(f) => (
            Source::File(FileSource::new(f.path.clone(), f.whitelist_path.clone())),
            Some(f.poll_interval),
        ),
        PolicySource::Authing(a) => (
            Source::Authing(Box::new(AuthingSource::new(a, metrics.clone())?)),
            None,
        ),
    })
}

/// How identifiers are normalised, from `[guards]`.
pub fn normalize_of(cfg: &Config) -> anyhow::Result<crate::extract::Normalize> {
    Ok(crate::extract::Normalize {
        phone_region: crate::extract::phone::PhoneRegion::parse(&cfg.guards.phone_default_region)
            .context("guards.phone_default_region")?,
    })
}

/// The route table: the built-in Authing routes (unless replaced) plus `[[routes]]`.
pub fn route_table(cfg: &Config) -> anyhow::Result<RouteTable> {
    let mut routes = if cfg.guards.replace_default_routes {
        Vec::new()
    } else {
        default_routes()
    };
    routes.extend(cfg.routes.iter().cloned());
    RouteTable::new(routes, default_graphql_ops()).context("[[routes]]")
}

/// The run-time settings of the request path, from the configuration.
pub fn runtime_of(cfg: &Config) -> anyhow::Result<Runtime> {
    let captcha_provider = crate::captcha::provider::SiteVerify::from_config(&cfg.captcha)
        .map_err(|e| anyhow::anyhow!("[captcha]: {e}"))?;
    Ok(Runtime {
        client_ip: ClientIpResolver::new(cfg.server.trusted_proxies.clone())
            .with_backends(cfg.server.trusted_backends.clone())
            .with_ipv6_prefix(cfg.guards.ipv6_prefix),
        max_body_bytes: cfg.server.max_body_bytes,
        routes: route_table(cfg)?,
        captcha_provider,
        settings: GuardSettings {
            dry_run_all: cfg.guards.dry_run,
            dry_run: cfg.guards.dry_run_guards.clone(),
            inspect_body_bytes: cfg.guards.inspect_body_bytes,
            inspect_response_bytes: cfg.guards.inspect_response_bytes,
            body_read_timeout: Some(cfg.server.body_read_timeout),
            normalize: normalize_of(cfg)?,
            send_code: cfg.guards.send_code,
            captcha_ttl: cfg.guards.captcha_ttl,
            captcha_cookie_samesite: cfg.guards.captcha_cookie_samesite,
            access_log: AccessLog {
                on: cfg.log.access_log,
                sample: cfg.log.access_log_sample,
            },
        },
    })
}

impl App {
    /// Loads the first policy, binds both listeners and starts serving.
    ///
    /// A `file` source that yields no policy (and no snapshot) is a start-up
    /// error: it is almost always a mistake in the deployment. An `authing`
    /// source that cannot be reached is not: the gateway starts unready and
    /// keeps retrying, so a brief API outage does not crash-loop the pod.
    pub async fn start(cfg: Config) -> anyhow::Result<App> {
        let metrics = Metrics::new();
        let policy = Arc::new(PolicyStore::new());
        let reload = Arc::new(Notify::new());
        let (source, poll) = build_source(&cfg, &metrics)?;
        let source_kind = cfg.policy.source.kind();
        let mut refresher = Refresher::new(
            source,
            policy.clone(),
            metrics.clone(),
            cfg.policy.snapshot_path.clone(),
            cfg.policy.refresh_interval,
            poll,
            reload.clone(),
        )
        .with_normalize(normalize_of(&cfg)?);
        if let Err(e) = refresher.initial().await {
            match source_kind {
                SourceKind::File => return Err(e.context("no policy could be loaded")),
                SourceKind::Authing => tracing::error!(
                    error = %format!("{e:#}"),
                    "no policy in force yet; not ready, retrying in the background"
                ),
            }
        }

        let workers = match cfg.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let upstream = Upstream::new(&cfg.upstream, &cfg.upstream_uri()?, workers)?;
        // Longer than a forwarded request can take, and then some: how long
        // a Redis counter's key outlives its window, so a request's refund
        // always finds it.
        let hold = cfg.upstream.request_timeout + std::time::Duration::from_secs(10);
        let store = Arc::new(Store::new(
            &cfg.store,
            &cfg.guards,
            &cfg.rate_limit,
            hold,
            metrics.clone(),
        )?);
        if let Some(shared) = store.shared() {
            let url =
                crate::store::redis::redacted_url(cfg.store.redis().map_or("", |r| r.url.expose()));
            match shared.ping().await {
                Ok(()) => tracing::info!(%url, "shared store (redis) reachable"),
                Err(e) => tracing::error!(%url, error = %e,
                    "shared store (redis) unreachable at start; the fallback applies until it answers"),
            }
            if let Some(r) = cfg
                .store
                .redis()
                .filter(|_| !store.account_keyer().is_keyed())
            {
                tracing::warn!(
                    variable = %r.account_key_secret_env,
                    "account counters in redis are keyed by the identifier's unkeyed SHA-256: \
                     whoever reads redis can test phone numbers and addresses against them; \
                     set the same secret (at least 16 bytes) in this variable on every replica \
                     (see docs/redis.md)"
                );
            }
        }
        metrics
            .account_keys_keyed
            .set(i64::from(store.account_keyer().is_keyed()));
        let state = store.memory().clone();
        metrics.register_collector(state.rate.collector());
        precreate(&metrics, &cfg);
        let reloads = config_reloads_metric(&metrics);
        let rejection_log = Arc::new(crate::rejection_log::RejectionLog::new(
            cfg.log.rejections_per_second,
        ));
        let runtime = runtime_of(&cfg)?;
        if let Some(p) = &runtime.captcha_provider {
            tracing::info!(
                provider = p.provider().as_str(),
                "captchas are a third-party challenge"
            );
        }
        let gateway = Arc::new(Gateway {
            rejection_log: rejection_log.clone(),
            upstream,
            policy: policy.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
        });
        let proxy_listeners = crate::server::bind_reuseport(cfg.server.listen, workers)
            .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
        let admin_listener = TcpListener::bind(cfg.server.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.server.admin_listen))?;
        let proxy_addr = proxy_listeners
            .first()
            .context("no proxy listener")?
            .local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();

        let opts = ListenerOptions {
            header_read_timeout: cfg.server.header_read_timeout,
            cap: ConnectionCap::new(cfg.server.max_connections),
            // Room for the JSON 431 to be the answer clients normally see.
            head_backstop_bytes: cfg.server.max_header_bytes.saturating_mul(4),
            http2_max_concurrent_streams: cfg.server.http2_max_concurrent_streams,
            rejected: Some(metrics.connections_rejected.with_label_values(&["proxy"])),
            errors: Some(metrics.connection_errors.clone()),
            shutdown_grace: cfg.server.shutdown_grace,
            name: "proxy",
        };
        let limits = Arc::new(HeadLimits {
            max_header_bytes: cfg.server.max_header_bytes,
            rejection_log: gateway.rejection_log.clone(),
            metrics: metrics.clone(),
        });
        // Thread per core, as nginx and Pingora do: each worker accepts on its
        // own socket and drives its connections and its upstream pool on one
        // thread, so a request never wakes another thread on its way through.
        for (i, listener) in proxy_listeners.into_iter().enumerate() {
            let conns = metrics.connections.clone();
            let gateway = gateway.clone();
            let limits = limits.clone();
            let (opts, shutdown_rx) = (opts.clone(), shutdown_rx.clone());
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("poolgate-proxy-{i}"))
                .spawn(move || {
                    crate::proxy::set_worker(i);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "cannot start a proxy worker");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "cannot use the proxy socket");
                                return;
                            }
                        };
                        serve(
                            listener,
                            opts,
                            shutdown_rx,
                            move |open| if open { conns.inc() } else { conns.dec() },
                            move |peer| {
                                TowerToHyperService::new(RequestHygiene::new(
                                    ConnService::new(gateway.clone(), peer),
                                    limits.clone(),
                                    peer,
                                ))
                            },
                        )
                        .await;
                    });
                    let _ = done.send(());
                })
                .context("cannot start a proxy worker thread")?;
            tasks.push(tokio::spawn(async move {
                let _ = finished.await;
            }));
        }

        let admin = Arc::new(Admin {
            normalize: normalize_of(&cfg)?,
            ipv6_prefix: cfg.guards.ipv6_prefix,
            send_code_window: cfg.guards.send_code.window,
            policy: policy.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            store: store.clone(),
            auth: arc_swap::ArcSwap::from_pointee(crate::admin::AdminAuth::new(&cfg.admin)),
        });
        if !admin.auth.load().has_token() && !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr,
                "the admin listener is not on loopback and no admin token is set: anyone who can reach it reads /policy and /counters; set [admin] token or POOLGATE_ADMIN_TOKEN");
        }
        let admin_handle = admin.clone();
        tasks.push(tokio::spawn(serve(
            admin_listener,
            ListenerOptions {
                name: "admin",
                // Scrapers and probes need few; a fixed cap keeps a runaway
                // client of the admin port from starving the proxy of descriptors.
                cap: ConnectionCap::new(ADMIN_MAX_CONNECTIONS),
                rejected: Some(metrics.connections_rejected.with_label_values(&["admin"])),
                ..opts
            },
            shutdown_rx.clone(),
            |_| {},
            move |peer: SocketAddr| {
                let admin = admin.clone();
                hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { admin.handle(req, peer.ip()).await }
                })
            },
        )));
        tasks.push(tokio::spawn(state.clone().run_sweeper(
            policy.clone(),
            metrics.clone(),
            cfg.guards.sweep_interval,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(rejection_log.run_reporter(
            std::time::Duration::from_secs(10),
            shutdown_rx.clone(),
        )));
        if let Some(shared) = store.shared() {
            tasks.push(tokio::spawn(shared.clone().run_keyer_check(
                store.account_keyer().fingerprint(),
                metrics.account_key_fingerprints.clone(),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(refresher.run(shutdown_rx)));
        tracing::info!(%proxy_addr, %admin_addr, upstream = %cfg.upstream.url, source = source_kind.as_str(), "poolgate listening");
        let reloader = Reloader {
            current: std::sync::Mutex::new(cfg),
            gateway,
            admin: admin_handle,
            reloads,
            log_level: None,
        };
        Ok(App {
            proxy_addr,
            admin_addr,
            shutdown,
            draining,
            reload,
            tasks,
            policy,
            metrics,
            guard_state: state,
            store,
            reloader,
        })
    }

    /// Lets [`Self::reload_config`] change the log filter (`log.level`);
    /// without it a changed level is applied at the next start only.
    pub fn with_log_level(mut self, set: LogLevelHook) -> App {
        self.reloader.log_level = Some(set);
        self
    }

    /// Applies a reloaded configuration (`Config::load` again, as SIGHUP
    /// does) in place, keeping every counter, or refuses it as a whole.
    ///
    /// Applied in place: the run-time settings ([`Runtime`]: limits, trusted
    /// proxies and backends, routes, guard settings, access log, captcha),
    /// the rate limits (a class whose rate changed starts fresh, the others
    /// keep their clients' state), the admin token and the log level.
    /// Refused, with the old configuration kept entirely: an invalid
    /// configuration, or one that changes a key that needs a restart
    /// ([`Config::reload_keys`]). Each outcome is logged and counted in
    /// `poolgate_config_reloads_total{result}`.
    pub fn reload_config(&self, loaded: anyhow::Result<Config>) -> ConfigReload {
        let r = &self.reloader;
        let mut current = match r.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let outcome = match loaded.and_then(|new| {
            let plan = current.reload_plan(&new);
            // Built before anything is applied: a failure here leaves the
            // old configuration whole.
            let runtime = if plan.allowed() {
                Some(runtime_of(&new)?)
            } else {
                None
            };
            Ok((new, plan, runtime))
        }) {
            Err(e) => {
                let e = format!("{e:#}");
                // One log line, though toml's errors quote the file over several.
                let one_line = e.split_whitespace().collect::<Vec<_>>().join(" ");
                tracing::error!(error = %one_line, result = "invalid",
                    "configuration reload refused: the new configuration is invalid; the old one stays in force");
                ConfigReload::Invalid(e)
            }
            Ok((_, plan, _)) if !plan.allowed() => {
                tracing::error!(keys = %plan.restart.join(", "), result = "refused",
                    "configuration reload refused: these changed keys need a restart; the old configuration stays in force");
                ConfigReload::Refused(plan.restart)
            }
            Ok((new, plan, runtime)) => {
                if let Some(rt) = runtime {
                    r.gateway.runtime.store(Arc::new(rt));
                }
                let rebuilt = self.store.reconfigure_rates(&new.rate_limit);
                r.admin
                    .auth
                    .store(Arc::new(crate::admin::AdminAuth::new(&new.admin)));
                if plan.in_place.contains(&"log.level") {
                    match &r.log_level {
                        Some(set) => {
                            if let Err(e) = set(&new.log.level) {
                                tracing::error!(error = %format!("{e:#}"), "log.level not applied");
                            }
                        }
                        None => tracing::warn!("log.level changed but cannot be applied in place; it takes effect at the next start"),
                    }
                }
                precreate(&self.metrics, &new);
                if plan.in_place.is_empty() {
                    tracing::info!(
                        result = "applied",
                        "configuration reloaded: nothing changed"
                    );
                } else {
                    tracing::info!(keys = %plan.in_place.join(", "),
                        rate_limits_restarted = %rebuilt.join(", "), result = "applied",
                        "configuration reloaded in place; counters kept");
                }
                *current = new;
                ConfigReload::Applied(plan.in_place)
            }
        };
        let result = match &outcome {
            ConfigReload::Applied(_) => "applied",
            ConfigReload::Refused(_) => "refused",
            ConfigReload::Invalid(_) => "invalid",
        };
        r.reloads.with_label_values(&[result]).inc();
        outcome
    }

    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Asks the refresher to fetch the policy now (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and returns.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The drained requests' last refunds, which the workers' runtimes
        // (now stopped) had no turn left to send.
        self.store.flush().await;
    }
}
