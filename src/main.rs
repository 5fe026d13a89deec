//! The `poolgate` command: run the gateway, or check a configuration.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use poolgate::config::{Config, LogFormat};
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
    /// policy, and exit non-zero on any error.
    Check,
    /// Ask the running gateway's admin `/readyz` (for a container
    /// HEALTHCHECK): exit 0 when ready, 1 when not (or unreachable within
    /// 2s), 2 when the configuration cannot be loaded.
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("poolgate: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(f) = cli.log_format {
        cfg.log.format = f;
    }
    init_logging(&cfg);
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
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => rt.block_on(check(&cfg)),
        Command::Run => rt.block_on(run(cfg, cli.demo_upstream)),
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

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cfg: Config, demo: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (demo_stop, demo_task) = if demo {
        let (tx, task) = start_demo(&cfg).await?;
        (Some(tx), Some(task))
    } else {
        (None, None)
    };
    let app = poolgate::App::start(cfg).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP: reloading the policy"); app.reload(); }
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

async fn check(cfg: &Config) -> anyhow::Result<()> {
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
    match (&cfg.store.kind, &cfg.store.redis) {
        (poolgate::config::StoreKind::Redis, Some(r)) => {
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
        _ => println!("store       memory"),
    }
    println!("upstream    {}", cfg.upstream.url);
    println!(
        "listen      {} (admin {})",
        cfg.server.listen, cfg.server.admin_listen
    );
    print_policy(&p);
    Ok(())
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
