//! The `poolgate` command: run the gateway, or check a configuration.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use poolgate::app::LogLevelHook;
use poolgate::config::{Config, LogFormat, Reload};
use poolgate::policy::CompiledPolicy;
use poolgate::server::{serve, ListenerOptions};

/// A reverse-proxy security gateway that enforces an Authing user pool's
/// security policy in front of a login service.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The TOML configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "POOLGATE_CONFIG",
        default_value = "config/poolgate.toml"
    )]
    config: PathBuf,
    /// Log format: `text` or `json` (overrides `[log] format`).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    /// Also start the built-in demo login service on the upstream address
    /// (loopback only), for trying poolgate out.
    #[arg(long, global = true)]
    demo_upstream: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and the pool source, print the compiled
    /// policy and which keys a reload (SIGHUP) applies in place, and exit
    /// non-zero on any error.
    Check {
        /// The configuration in force now: say whether a reload from it to
        /// `--config` would be applied or refused (exit 1 when refused).
        #[arg(long, value_name = "OLD.toml")]
        against: Option<PathBuf>,
    },
    /// Ask the running gateway's admin `/readyz` (for a container
    /// HEALTHCHECK): exit 0 when ready, 1 when not (or unreachable within
    /// 2s), 2 when the configuration cannot be loaded.
    Healthcheck,
}

/// The configuration as the command line asks: the file, the environment,
/// then `--log-format` (at start and at every reload).
fn load(cli_config: &std::path::Path, log_format: Option<LogFormat>) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli_config)?;
    if let Some(f) = log_format {
        cfg.log.format = f;
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let cfg = match load(&cli.config, cli.log_format) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("poolgate: {e:#}");
            return ExitCode::from(2);
        }
    };
    let log_level = init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("poolgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.take().unwrap_or(Command::Run) {
        Command::Check { against } => rt.block_on(check(&cfg, against.as_deref())),
        Command::Run => rt.block_on(run(cfg, &cli, log_level)),
        Command::Healthcheck => return healthcheck(&cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poolgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long `poolgate healthcheck` waits for each of connect, write, read.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz` on the admin listener, blocking, with short timeouts.
fn healthcheck(cfg: &Config) -> ExitCode {
    use std::io::{Read, Write};
    let mut addr = cfg.server.admin_listen;
    // Listening on every address: ask on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)?;
        s.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
        s.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
        write!(
            s,
            "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = Vec::new();
        // The answer is a few bytes; cap what is read all the same.
        s.take(4096).read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match ask() {
        Ok(answer) => {
            let status = answer.split(' ').nth(1).unwrap_or("");
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
            if status == "200" {
                println!("ready ({addr})");
                ExitCode::SUCCESS
            } else {
                eprintln!("poolgate: not ready ({addr}): {status} {body}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("poolgate: cannot ask {addr}/readyz: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the log subscriber; returns what sets its filter on a reload.
fn init_logging(cfg: &Config) -> LogLevelHook {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    // RUST_LOG wins over `log.level`, at start and at every reload.
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&cfg.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => {
            let b = builder.json().flatten_event(true).with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            level_hook(pinned, move |f| handle.reload(f).map_err(Into::into))
        }
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            level_hook(pinned, move |f| handle.reload(f).map_err(Into::into))
        }
    }
}

fn level_hook(
    pinned: bool,
    set: impl Fn(tracing_subscriber::EnvFilter) -> anyhow::Result<()> + Send + Sync + 'static,
) -> LogLevelHook {
    Box::new(move |level: &str| {
        if pinned {
            tracing::warn!("log.level changed but RUST_LOG is set and wins; the filter stays");
            return Ok(());
        }
        set(tracing_subscriber::EnvFilter::try_new(level)?)?;
        tracing::info!(level, "log level changed");
        Ok(())
    })
}

async fn run(cfg: Config, cli: &Cli, log_level: LogLevelHook) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (demo_stop, demo_task) = if cli.demo_upstream {
        let (tx, task) = start_demo(&cfg).await?;
        (Some(tx), Some(task))
    } else {
        (None, None)
    };
    let app = poolgate::App::start(cfg).await?.with_log_level(log_level);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = hup.recv() => {
                tracing::info!(config = %cli.config.display(), "SIGHUP: reloading the configuration and the policy");
                // Reading a file: off the async workers.
                let (path, format) = (cli.config.clone(), cli.log_format);
                let loaded = tokio::task::spawn_blocking(move || load(&path, format))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("config loader failed: {e}")));
                app.reload_config(loaded);
                app.reload();
            }
        }
    }
    app.shutdown().await;
    if let (Some(tx), Some(task)) = (demo_stop, demo_task) {
        let _ = tx.send(true);
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the demo login service on the upstream's (loopback) address.
async fn start_demo(
    cfg: &Config,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let uri = cfg.upstream_uri()?;
    let host = uri.host().unwrap_or("");
    let ip: std::net::IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .or_else(|_| {
            if host == "localhost" {
                Ok("127.0.0.1".parse()?)
            } else {
                Err(anyhow::anyhow!(""))
            }
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "--demo-upstream needs upstream.url on a loopback address, not {host:?}"
            )
        })?;
    if !ip.is_loopback() {
        anyhow::bail!("--demo-upstream needs upstream.url on a loopback address, not {ip}");
    }
    let addr = std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the demo upstream on {addr}: {e}"))?;
    tracing::info!(%addr, password = poolgate::demo::DEMO_PASSWORD, "demo login service started");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(
        listener,
        ListenerOptions {
            header_read_timeout: Duration::from_secs(10),
            cap: poolgate::server::ConnectionCap::new(1024),
            head_backstop_bytes: 64 * 1024,
            http2_max_concurrent_streams: 100,
            rejected: None,
            errors: None,
            shutdown_grace: Duration::from_secs(1),
            name: "demo-upstream",
        },
        rx,
        |_| {},
        |_| hyper::service::service_fn(poolgate::demo::handle),
    ));
    Ok((tx, task))
}

async fn check(cfg: &Config, against: Option<&std::path::Path>) -> anyhow::Result<()> {
    let metrics = poolgate::metrics::Metrics::new();
    let (mut source, _) = poolgate::app::build_source(cfg, &metrics)?;
    let doc = tokio::time::timeout(Duration::from_secs(30), source.fetch())
        .await
        .map_err(|_| anyhow::anyhow!("the {} source did not answer within 30s", source.name()))?
        .map_err(|e| anyhow::anyhow!("the {} source failed: {e}", source.name()))?;
    let norm = poolgate::app::normalize_of(cfg)?;
    let p = CompiledPolicy::compile_with(&doc.pool, &doc.whitelist, source.name(), norm)
        .map_err(|e| anyhow::anyhow!("the pool document is not a valid policy: {e}"))?;
    let routes = poolgate::app::route_table(cfg)?;
    println!("config      ok");
    println!(
        "routes      {} judged ({} from [[routes]]), {} GraphQL mutations",
        routes.routes().count(),
        cfg.routes.len(),
        routes.graphql_ops().len()
    );
    if cfg.guards.dry_run {
        println!("dry run     all guards (nothing is rejected)");
    } else if !cfg.guards.dry_run_guards.is_empty() {
        let names: Vec<&str> = cfg
            .guards
            .dry_run_guards
            .iter()
            .map(|g| g.as_str())
            .collect();
        println!("dry run     {}", names.join(", "));
    }
    match &cfg.store {
        poolgate::config::StoreConfig::Redis(r) => {
            let url = poolgate::store::redis::redacted_url(r.url.expose());
            let store = poolgate::store::redis::RedisStore::new(
                r,
                Duration::from_secs(60),
                metrics.clone(),
            )?;
            store.ping().await.map_err(|e| {
                anyhow::anyhow!("the shared store (redis at {url}) does not answer: {e}")
            })?;
            println!(
                "store       redis {url} (prefix {}, fallback {})",
                r.key_prefix,
                r.fallback.as_str()
            );
        }
        poolgate::config::StoreConfig::Memory => println!("store       memory"),
    }
    println!("upstream    {}", cfg.upstream.url);
    println!(
        "listen      {} (admin {})",
        cfg.server.listen, cfg.server.admin_listen
    );
    print_policy(&p);
    print_reload(cfg);
    if let Some(old_path) = against {
        let old = Config::load(old_path)
            .map_err(|e| anyhow::anyhow!("--against {}: {e:#}", old_path.display()))?;
        let plan = old.reload_plan(cfg);
        if !plan.allowed() {
            println!("against     {}: a reload is refused", old_path.display());
            anyhow::bail!(
                "a reload from {} would be refused: {} need a restart",
                old_path.display(),
                plan.restart.join(", ")
            );
        }
        if plan.in_place.is_empty() {
            println!("against     {}: nothing changed", old_path.display());
        } else {
            println!(
                "against     {}: a reload applies {}",
                old_path.display(),
                plan.in_place.join(", ")
            );
        }
    }
    Ok(())
}

/// Which keys a reload (SIGHUP) applies in place and which need a restart,
/// by section (`section.*` when the whole section is one way).
fn print_reload(cfg: &Config) {
    let keys = cfg.reload_keys();
    let line = |class: Reload| {
        let mut sections: Vec<(&str, Vec<&str>, bool)> = Vec::new();
        for (key, c, _) in &keys {
            let (section, rest) = key.split_once('.').unwrap_or((key, ""));
            let pos = match sections.iter().position(|(s, _, _)| *s == section) {
                Some(i) => i,
                None => {
                    sections.push((section, Vec::new(), true));
                    sections.len() - 1
                }
            };
            let entry = &mut sections[pos];
            if *c == class {
                entry.1.push(rest);
            } else {
                entry.2 = false;
            }
        }
        sections
            .into_iter()
            .filter(|(_, ks, _)| !ks.is_empty())
            .map(|(s, ks, whole)| match (whole, ks.as_slice()) {
                (true, [""]) => s.to_string(),
                (true, _) => format!("{s}.*"),
                (false, ks) => format!("{s}.{{{}}}", ks.join(", ")),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("reload      in place on SIGHUP: {}", line(Reload::InPlace));
    println!("restart     needed for: {}", line(Reload::Restart));
}

fn print_policy(p: &CompiledPolicy) {
    let limit = |l: &Option<poolgate::policy::WindowLimit>| match l {
        Some(l) => format!("{} per {}", l.limit, humantime::format_duration(l.window)),
        None => "off".to_string(),
    };
    println!("source      {}", p.source);
    println!(
        "pool        {} ({})",
        p.pool_name.as_deref().unwrap_or("-"),
        p.pool_id.as_deref().unwrap_or("-")
    );
    println!("version     {}", p.version);
    println!("loginFailCheck          {}", limit(&p.login_fail));
    println!(
        "loginPasswordFailCheck  {} (strategy {:?})",
        limit(&p.password_fail),
        p.fail_strategy
    );
    println!("frequentRegisterCheck   {}", limit(&p.register_limit));
    println!("registerDisabled        {}", p.register_disabled);
    if p.origins.allows_all() {
        println!("allowedOrigins          any origin");
    } else {
        println!(
            "allowedOrigins          {} entries: {}",
            p.origins.entries().len(),
            p.origins.entries().join(" ")
        );
    }
    let wl = |s: &Option<std::collections::HashSet<String>>| match s {
        Some(s) => format!("on ({} entries)", s.len()),
        None => "off".to_string(),
    };
    println!(
        "whitelist               username {}, email {}, phone {}",
        wl(&p.whitelist.username),
        wl(&p.whitelist.email),
        wl(&p.whitelist.phone)
    );
    println!("passwordStrength        {:?}", p.password_rule);
    for w in &p.warnings {
        println!("warning     {w}");
    }
}
