//! The shared store over TLS (`rediss://`): a real `redis-server` started
//! with `--tls-port`, a certificate authority made by the test (rcgen), the
//! server's certificate verified against `store.redis.ca_file`, and a client
//! certificate for servers that ask for one (`--tls-auth-clients yes`).

mod harness;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use harness::redis::{free_port, have, replica_store, Pki, RedisProc};
use harness::*;
use poolgate::config::{RateLimitConfig, RedisConfig, Secret};
use poolgate::metrics::Metrics;
use poolgate::policy::WindowLimit;
use poolgate::store::{Ask, Counter, RedisStore, Reservation, Slot, Subject};
use serde_json::json;

/// A `redis-server` that speaks only TLS; `auth_clients`: `yes` or `no`.
fn tls_server(pki: &Pki, dir: &Path, auth_clients: &str) -> RedisProc {
    let port = free_port();
    RedisProc::start(port, dir, &pki.server_args(port, auth_clients))
}

fn config(port: u16, ca: Option<PathBuf>, client: Option<(PathBuf, PathBuf)>) -> RedisConfig {
    let (client_cert_file, client_key_file) = client.unzip();
    RedisConfig {
        url: Secret::new(format!("rediss://127.0.0.1:{port}/0")),
        ca_file: ca,
        client_cert_file,
        client_key_file,
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        key_prefix: "tls".into(),
        ..RedisConfig::default()
    }
}

fn store(cfg: &RedisConfig) -> Arc<RedisStore> {
    Arc::new(RedisStore::new(cfg, Duration::from_secs(30), Metrics::new()).expect("a store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate_counts_in_redis() {
    if !have("redis-server") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(&pki, dir.path(), "yes");
    let cfg = config(
        server.port,
        Some(pki.path("ca.crt")),
        Some((pki.path("client.crt"), pki.path("client.key"))),
    );
    let s = store(&cfg);
    s.ping()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let limit = WindowLimit {
        limit: 2,
        window: Duration::from_secs(60),
    };
    let ask = [Ask {
        counter: Counter::LoginIp,
        subject: Subject::Client(7),
        limit,
    }];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut a = s.reserve(&ask, false).await.expect("reserve over TLS");
        assert!(matches!(a[0], Reservation::Held(_)), "{a:?}");
        held.append(&mut a);
    }
    let a = s.reserve(&ask, false).await.expect("reserve over TLS");
    assert!(
        matches!(a[0], Reservation::Denied(_)),
        "the third is over the limit"
    );
    // The two in flight are counted up front; the denied third is refunded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = s
            .show(Counter::LoginIp, Subject::Client(7), limit.window)
            .await
            .expect("show")
            .expect("the counter exists in Redis");
        if shown.count == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{shown:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_login_limit_over_tls() {
    if !have("redis-server") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Client certificates optional on this server: a CA file alone is enough.
    let server = tls_server(&pki, dir.path(), "no");
    let toml = redis_store_toml(
        &format!("rediss://127.0.0.1:{}/0", server.port),
        &format!(
            "key_prefix = \"tls2\"\ntimeout = \"2s\"\nca_file = {:?}",
            pki.path("ca.crt").display().to_string()
        ),
    );
    let mut stacks = Vec::new();
    for _ in 0..2 {
        stacks.push(
            Setup::new(json!({"loginFailCheck": check(3, 60)}))
                .toml(&toml)
                .start()
                .await,
        );
    }
    let answers = join_all((0..12).map(|i| wrong_login(stacks[i % 2].gw(), "bob", None))).await;
    let forwarded: usize = stacks.iter().map(|s| s.up.count(LOGIN)).sum();
    assert_eq!(
        forwarded, 3,
        "two gateways together forward exactly the limit"
    );
    let gated = answers
        .iter()
        .filter(|r| r.json() == captcha_required_v2())
        .count();
    assert_eq!(gated, 9);
    for s in stacks {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_and_the_client_certificate_are_checked() {
    if !have("redis-server") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(&pki, dir.path(), "yes");
    let client = || Some((pki.path("client.crt"), pki.path("client.key")));
    // A CA that did not sign the server's certificate: refused.
    let err = store(&config(
        server.port,
        Some(pki.path("other-ca.crt")),
        client(),
    ))
    .ping()
    .await
    .expect_err("an unknown issuer is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // No CA file: the public roots do not know a private CA either.
    let err = store(&config(server.port, None, client()))
        .ping()
        .await
        .expect_err("a private CA is not trusted by default");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // The right CA, but no client certificate where the server asks for one.
    store(&config(server.port, Some(pki.path("ca.crt")), None))
        .ping()
        .await
        .expect_err("the server wants a client certificate");
    // All of it: accepted.
    store(&config(server.port, Some(pki.path("ca.crt")), client()))
        .ping()
        .await
        .expect("accepted");
}

#[test]
fn unreadable_or_malformed_tls_files_are_start_up_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = RedisStore::new(
        &config(6380, Some(missing), None),
        Duration::from_secs(30),
        Metrics::new(),
    )
    .expect_err("a missing CA file");
    assert!(err.to_string().contains("store.redis.ca_file"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = RedisStore::new(
        &config(6380, Some(junk.clone()), Some((junk.clone(), junk))),
        Duration::from_secs(30),
        Metrics::new(),
    )
    .expect_err("a file with no PEM in it");
    assert!(err.to_string().contains("store.redis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_killed_and_restarted_costs_the_fallback_then_tls_resumes() {
    if !have("redis-server") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = tls_server(&pki, dir.path(), "yes");
    let mut redis = config(
        server.port,
        Some(pki.path("ca.crt")),
        Some((pki.path("client.crt"), pki.path("client.key"))),
    );
    redis.timeout = Duration::from_millis(300);
    redis.connect_timeout = Duration::from_millis(300);
    redis.breaker_failures = 2;
    redis.breaker_cooldown = Duration::from_millis(200);
    let (store, metrics) = replica_store(redis, &RateLimitConfig::default());
    let gauge =
        |m: &Metrics| metric(&m.render(), "poolgate_store_breaker_open", &[]).unwrap_or(-1.0);
    let ask = |client: u128| harness::redis::login_ip_ask(client, 1);
    // Healthy: reserved and committed in Redis, over TLS.
    let first = store.reserve(&[ask(1)], false).await.expect("answers");
    assert!(matches!(first[0], Reservation::Held(_)));
    Slot::settle_all(first.into_iter().filter_map(|r| match r {
        Reservation::Held(s) => Some((s, true)),
        _ => None,
    }));

    server.kill();
    // Down: the local counters answer (fallback `local`), the breaker opens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&metrics) != 1.0 {
        let r = store.reserve(&[ask(2)], false).await;
        assert!(r.is_ok(), "the local fallback always answers");
        assert!(Instant::now() < deadline, "the breaker never opened");
    }
    let fallbacks = metric_sum(
        &metrics.render(),
        "poolgate_store_fallbacks_total",
        &[("mode", "local")],
    );
    assert!(fallbacks >= 1.0);

    server.restart();
    // Back: the breaker's probe (a new TLS handshake, client certificate
    // included) closes the breaker, with no request spent on it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&metrics) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the breaker never closed:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counting in Redis again: the restarted server was empty, and now holds client 3's slot.
    let held = store.reserve(&[ask(3)], false).await.expect("answers");
    assert!(matches!(held[0], Reservation::Held(_)));
    let shown = store
        .shared()
        .expect("redis")
        .show(
            Counter::LoginIp,
            Subject::Client(3),
            Duration::from_secs(60),
        )
        .await
        .expect("show over TLS");
    assert!(
        shown.is_some(),
        "the reservation reached the restarted server"
    );
}
