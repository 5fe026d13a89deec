//! The shared store on a Redis Cluster (`store.redis.cluster = true`): three
//! masters started by the test on free loopback ports and joined with
//! `redis-cli --cluster create`. Replicas must hold the limits exactly while
//! the counters spread over the masters, release what a refused request was
//! granted, and ride out a master's restart: the fallback while it is gone,
//! the cluster again once it is back.

mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use harness::redis::{free_port, have, replica_store, try_cli, wait_until, Pki, RedisProc};
use harness::*;
use poolgate::config::{RateLimitConfig, RedisConfig, Secret};
use poolgate::metrics::Metrics;
use poolgate::policy::WindowLimit;
use poolgate::store::{Ask, Counter, Reservation, Slot, Store, Subject};
use serde_json::json;

/// Three masters, no replicas, killed on drop.
struct Cluster {
    nodes: Vec<RedisProc>,
    /// Certificates of a TLS cluster (`--tls-cluster yes`).
    tls: Option<Pki>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        Self::start_with(None)
    }

    fn start_with(tls: Option<Pki>) -> Option<Cluster> {
        if !have("redis-server") || !have("redis-cli") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        Some(Cluster::create(dir, &ports, tls))
    }

    /// Starts a node on each port and joins them with `redis-cli --cluster create`.
    fn create(dir: tempfile::TempDir, ports: &[u16], tls: Option<Pki>) -> Cluster {
        let nodes = ports
            .iter()
            .map(|&p| node(dir.path(), p, tls.as_ref()))
            .collect();
        let c = Cluster {
            nodes,
            tls,
            _dir: dir,
        };
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        c.cli(&args);
        c.wait_ok();
        c
    }

    /// `redis-cli` with the TLS arguments where the cluster needs them.
    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::cli`] that reports a failed run instead of panicking.
    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let tls = self.tls.as_ref().map(Pki::cli_args).unwrap_or_default();
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend(args);
        try_cli(&all)
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_ok(&self) {
        for n in &self.nodes {
            let port = n.port.to_string();
            wait_until(
                &format!("cluster_state:ok on port {port}"),
                Duration::from_secs(20),
                // A node just restarted may refuse a run or two: retried.
                || {
                    self.try_cli(&["-p", &port, "cluster", "info"])
                        .is_ok_and(|info| info.contains("cluster_state:ok"))
                },
            );
        }
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The `[store]` section: node 0 as `url`, the others as `nodes`.
    fn toml(&self, prefix: &str) -> String {
        let ca = match &self.tls {
            Some(pki) => format!("ca_file = {:?}\n", pki.path("ca.crt").display().to_string()),
            None => String::new(),
        };
        redis_store_toml(
            &self.url(0),
            &format!(
                "nodes = [{:?}, {:?}]\ncluster = true\nkey_prefix = {prefix:?}\ntimeout = \"1s\"\n{ca}",
                self.url(1),
                self.url(2)
            ),
        )
    }

    /// Keys stored on node `i`.
    fn keys_on(&self, i: usize) -> usize {
        let port = self.nodes[i].port.to_string();
        self.cli(&["-p", &port, "dbsize"])
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

/// A cluster node on `port`, its cluster bus on another free port (not
/// `port + 10000`, which may be taken or past 65535), its `nodes.conf` in
/// `dir` so that a restart rejoins with the same identity and slots.
fn node(dir: &Path, port: u16, tls: Option<&Pki>) -> RedisProc {
    let mut args: Vec<String> = match tls {
        Some(pki) => {
            let mut a = pki.server_args(port, "no");
            a.extend(["--tls-cluster".into(), "yes".into()]);
            a
        }
        None => vec!["--port".into(), port.to_string()],
    };
    args.extend([
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-port".into(),
        free_port().to_string(),
        "--cluster-config-file".into(),
        format!("nodes-{port}.conf"),
        // Long enough that a master restarted by the test is never marked
        // failed by the others (which would take the whole cluster down).
        "--cluster-node-timeout".into(),
        "15000".into(),
    ]);
    RedisProc::start(port, dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_a_cluster_forward_exactly_the_limit_per_client() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut stacks = Vec::new();
    for _ in 0..3 {
        stacks.push(
            Setup::new(json!({"loginFailCheck": check(3, 60)}))
                .trusted()
                .toml(&cluster.toml("c1"))
                .start()
                .await,
        );
    }
    // Eight clients, twelve wrong passwords each, all at once, spread over the gateways.
    let ips: Vec<String> = (0..8).map(|i| format!("198.51.100.{}", i + 1)).collect();
    let burst = (0..96).map(|i| wrong_login(stacks[i % 3].gw(), "bob", Some(&ips[i % 8])));
    let answers = join_all(burst).await;
    let forwarded: usize = stacks.iter().map(|s| s.up.count(LOGIN)).sum();
    assert_eq!(
        forwarded,
        8 * 3,
        "exactly the limit of each client, all gateways together"
    );
    let gated = answers
        .iter()
        .filter(|r| r.json() == captcha_required_v2())
        .count();
    assert_eq!(gated, 96 - 24);
    // The counters are spread over the masters (hash tags per counter and client).
    let spread = (0..3).filter(|&i| cluster.keys_on(i) > 0).count();
    assert!(spread >= 2, "eight clients' counters on {spread} master(s)");
    for s in stacks {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_holds_the_limit_too() {
    let Some(cluster) = Cluster::start_with(Some(Pki::new())) else {
        return;
    };
    let mut stacks = Vec::new();
    for _ in 0..2 {
        stacks.push(
            Setup::new(json!({"loginFailCheck": check(3, 60)}))
                .trusted()
                .toml(&cluster.toml("c5"))
                .start()
                .await,
        );
    }
    let ips: Vec<String> = (0..4).map(|i| format!("198.51.100.{}", i + 1)).collect();
    let burst = (0..40).map(|i| wrong_login(stacks[i % 2].gw(), "bob", Some(&ips[i % 4])));
    join_all(burst).await;
    let forwarded: usize = stacks.iter().map(|s| s.up.count(LOGIN)).sum();
    assert_eq!(forwarded, 4 * 3, "over TLS, each client's limit exactly");
    assert!((0..3).map(|i| cluster.keys_on(i)).sum::<usize>() > 0);
    for s in stacks {
        s.shutdown().await;
    }
}

fn store(cluster: &Cluster, prefix: &str) -> (Arc<Store>, Metrics) {
    let cfg = RedisConfig {
        url: Secret::new(cluster.url(0)),
        nodes: vec![cluster.url(1), cluster.url(2)],
        cluster: true,
        key_prefix: prefix.into(),
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(200),
        // Keyed account keys: the replicas agree on them through the secret.
        account_key_secret: Some(Secret::new("every replica of the cluster test")),
        ..RedisConfig::default()
    };
    replica_store(cfg, &RateLimitConfig::default())
}

fn window(limit: u32) -> WindowLimit {
    WindowLimit {
        limit,
        window: Duration::from_secs(60),
    }
}

/// One request as the gateway makes it: a slot in the client's counter and
/// one in the account's; forwarded (both committed) only if both are held,
/// else what was held is released. Returns whether it was forwarded.
async fn attempt(s: &Store, client: u128, account: &str, client_limit: u32) -> bool {
    let asks = [
        Ask {
            counter: Counter::LoginIp,
            subject: Subject::Client(client),
            limit: window(client_limit),
        },
        Ask {
            counter: Counter::Account,
            subject: Subject::Account(s.account_keyer().key(account)),
            limit: window(1000),
        },
    ];
    let answers = s
        .reserve(&asks, false)
        .await
        .expect("local fallback: never refused");
    let mut held = Vec::new();
    for a in answers {
        if let Reservation::Held(slot) = a {
            held.push(slot);
        }
    }
    let forwarded = held.len() == 2;
    Slot::settle_all(held.into_iter().map(|s| (s, forwarded)));
    forwarded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_of_counters_in_two_slots_holds_the_limit_and_releases_what_was_refused() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let replicas: Vec<_> = (0..3).map(|_| store(&cluster, "c2").0).collect();
    // One client, forty accounts (their counters in many slots), at once.
    let accounts: Vec<String> = (0..40).map(|i| format!("user{i}@example.com")).collect();
    let burst = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| attempt(&replicas[i % 3], 77, a, 5));
    let forwarded = join_all(burst).await.into_iter().filter(|&f| f).count();
    assert_eq!(forwarded, 5, "the client's limit, exactly");
    // Every account counted for a refused request was refunded: the accounts'
    // counts add up to the five attempts forwarded (counted as failures here).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut total = 0;
        for a in &accounts {
            let shown = replicas[0]
                .show(
                    Counter::Account,
                    Subject::Account(replicas[0].account_keyer().key(a)),
                    Duration::from_secs(60),
                )
                .await;
            total += shown.map_or(0, |s| s.count);
        }
        if total == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the accounts count {total}, not the 5 forwarded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_during_a_burst_costs_the_fallback_then_the_cluster_resumes() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let (a, metrics) = store(&cluster, "c3");
    let (b, _) = store(&cluster, "c3");
    // Thirty clients: about a third of them counted on each master.
    let run = {
        let (a, b) = (a.clone(), b.clone());
        move |round: u128| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                let attempts = (0..30u128).map(|c| {
                    let s = if c % 2 == 0 { a.clone() } else { b.clone() };
                    async move { attempt(&s, round * 100 + c, "x", 1000).await }
                });
                join_all(attempts).await.into_iter().filter(|&f| f).count()
            }
        }
    };
    assert_eq!(run(1).await, 30);
    assert!(cluster.keys_on(1) > 0, "master 1 holds some counters");

    // Master 1 goes away (SIGKILL) in the middle of bursts.
    let bursts = tokio::spawn({
        let run = run.clone();
        async move {
            let mut forwarded = 0;
            for round in 2..12 {
                forwarded += run(round).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            forwarded
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.nodes[1].kill();
    // Every attempt still gets an answer (the local fallback counts);
    // none is over a limit of 1000, so all are forwarded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bursts.is_finished() {
        assert!(Instant::now() < deadline, "the bursts never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bursts.await.expect("the bursts end"), 10 * 30);
    let fallbacks = |m: &Metrics| {
        metric_sum(
            &m.render(),
            "poolgate_store_fallbacks_total",
            &[("op", "reserve")],
        )
    };
    assert!(fallbacks(&metrics) > 0.0, "{}", metrics.render());

    // Back on the same port with its nodes.conf: it serves its slots again,
    // and the counters of its clients are written to it again.
    cluster.nodes[1].restart();
    cluster.wait_ok();
    assert_eq!(cluster.keys_on(1), 0, "restarted empty (nothing persisted)");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 20;
    while cluster.keys_on(1) == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing was written to the restarted master:\n{}",
            cluster.nodes[1].log()
        );
        assert_eq!(run(round).await, 30);
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = metric(&metrics.render(), "poolgate_store_breaker_open", &[]);
    assert_ne!(open, Some(1.0), "the breaker is closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_is_not_up_at_start_is_used_once_it_is() {
    if !have("redis-server") || !have("redis-cli") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let url = |p: u16| format!("redis://127.0.0.1:{p}");
    let cfg = RedisConfig {
        url: Secret::new(url(ports[0])),
        nodes: vec![url(ports[1]), url(ports[2])],
        cluster: true,
        key_prefix: "c4".into(),
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    // Redis need not be up at start.
    let (s, _) = replica_store(cfg, &RateLimitConfig::default());
    // Nothing listens yet: the local fallback answers.
    assert!(attempt(&s, 1, "y", 1000).await);

    let cluster = Cluster::create(dir, &ports, None);
    // Up now: the counts reach the cluster.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = 100;
    while (0..3).map(|i| cluster.keys_on(i)).sum::<usize>() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing ever reached the cluster"
        );
        assert!(attempt(&s, client, "y", 1000).await);
        client += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
