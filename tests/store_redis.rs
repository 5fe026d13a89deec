//! The shared counter store, end to end: several poolgate instances, each
//! with its own fake login service, share one real `redis-server` started on
//! a free loopback port. They must hold one limit together, accept each
//! other's captchas, and survive Redis going away and coming back.
//!
//! `redis-server` comes from Debian's package (`.ci/run` installs it). Where it
//! is missing the tests say so and pass, unless `POOLGATE_REQUIRE_REDIS=1`
//! (set by CI), which makes its absence a failure.

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use harness::fresh::{get, post_json};
use harness::redis::RedisServer;
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

/// The `[store]` section for `redis`, with a prefix of its own per test.
fn store_toml(redis: &RedisServer, prefix: &str, extra: &str) -> String {
    redis_store_toml(&redis.url(), &format!("key_prefix = {prefix:?}\n{extra}"))
}

/// Starts `n` instances of one pool sharing `redis`.
async fn replicas(n: usize, pool: Value, toml: &str, trusted: bool) -> Vec<Stack> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = Setup::new(pool.clone()).toml(toml);
        if trusted {
            s = s.trusted();
        }
        out.push(s.start().await);
    }
    out
}

async fn shutdown_all(stacks: Vec<Stack>) {
    for s in stacks {
        s.shutdown().await;
    }
}

fn forwarded(stacks: &[Stack], path: &str) -> usize {
    stacks.iter().map(|s| s.up.count(path)).sum()
}

/// The sum of the samples of `name` on `/metrics` whose labels include all of `labels`.
async fn admin_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&metrics(admin).await, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_one_login_limit_under_a_parallel_burst() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let stacks = replicas(
        3,
        json!({"loginFailCheck": check(5, 60)}),
        &store_toml(&redis, "t1", ""),
        false,
    )
    .await;
    // 45 wrong passwords at once from one client, spread over the replicas.
    let burst = (0..45).map(|i| wrong_login(stacks[i % 3].gw(), "bob", None));
    let answers = join_all(burst).await;
    let gated = answers
        .iter()
        .filter(|r| r.json() == captcha_required_v2())
        .count();
    let wrong = answers
        .iter()
        .filter(|r| r.json() == wrong_password_v2())
        .count();
    assert_eq!(
        forwarded(&stacks, LOGIN),
        5,
        "three replicas together forward exactly the limit"
    );
    assert_eq!((wrong, gated), (5, 40));
    // The next one, on any replica, is gated too and never forwarded.
    for s in &stacks {
        let r = wrong_login(s.gw(), "bob", None).await;
        assert_eq!(r.json(), captcha_required_v2());
    }
    assert_eq!(forwarded(&stacks, LOGIN), 5);
    // Nothing personal is written to Redis: accounts are hashed, clients are keys.
    for k in redis.keys("t1:*").await {
        assert!(!k.contains("bob"), "{k}");
    }
    shutdown_all(stacks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_attacked_from_many_ips_over_many_replicas_gets_the_limit_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let stacks = replicas(
        3,
        json!({"loginPasswordFailCheck": check(4, 60), "loginFailStrategy": "block-account"}),
        &store_toml(&redis, "t2", ""),
        true,
    )
    .await;
    let ips: Vec<String> = (0..30).map(|i| format!("198.51.100.{i}")).collect();
    // Case differs: accounts count case-insensitively, as Authing's do.
    let burst = ips.iter().enumerate().map(|(i, ip)| {
        let account = if i % 2 == 0 {
            "Alice@Example.com"
        } else {
            "alice@example.com"
        };
        wrong_login(stacks[i % 3].gw(), account, Some(ip))
    });
    let answers = join_all(burst).await;
    assert_eq!(forwarded(&stacks, LOGIN), 4);
    let locked = answers
        .iter()
        .filter(|r| r.json()["code"] == json!(2057))
        .count();
    assert_eq!(locked, 26, "the others are refused: account locked");
    // The lock shows on every replica's admin API, and clearing it on one frees
    // it on all. Outcomes are written after the answers (off the response
    // path), so the count may still be in flight for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, body) = admin_get(stacks[2].admin(), "/counters?account=alice@example.com").await;
        assert_eq!(st, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        let f = &v["password_failures"];
        // Redis counts attempts up front: the count includes those in
        // flight, and the denied ones' refunds may still be on their way.
        if f["count"] == 4 {
            break;
        }
        assert!(f["count"].as_u64().unwrap_or(0) >= 4, "{body}");
        assert!(
            Instant::now() < deadline,
            "the four failures were never recorded: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, _) = admin_post(stacks[1].admin(), "/unblock?account=alice@example.com").await;
    assert_eq!(st, StatusCode::OK);
    let r = wrong_login(stacks[0].gw(), "alice@example.com", Some("198.51.100.200")).await;
    assert_eq!(r.json(), wrong_password_v2(), "unblocked everywhere");
    shutdown_all(stacks).await;
}

/// With `POOLGATE_ACCOUNT_KEY_SECRET`, an account's counter key in Redis is
/// keyed: replicas given the same secret share its count, the key is not the
/// identifier's SHA-256 (which anyone reading Redis could test phone numbers
/// against), and a replica given another secret counts apart (which is why
/// every replica must get the same one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_keys_in_redis_are_keyed_by_the_replicas_shared_secret() {
    use poolgate::config::DEFAULT_ACCOUNT_KEY_SECRET_ENV as VAR;
    use poolgate::store::AccountKeyer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // The per-IP check too (never reached), so clients' keys are written.
    let pool = json!({"loginPasswordFailCheck": check(3, 60),
        "loginFailCheck": check(100, 60), "loginFailStrategy": "block-account"});
    let toml = store_toml(&redis, "tk", "");
    let secret = "one secret, every replica: 32 b.";
    let other = "another secret, some other pool.";
    // Each replica announces its keyer's fingerprint when it starts: the two
    // with one secret see one keyer, the third (started once they have
    // announced) sees two.
    let keyers = |admin| admin_metric(admin, "poolgate_account_key_fingerprints", &[]);
    let mut stacks = Vec::new();
    for s in [secret, secret, other] {
        let setup = Setup::new(pool.clone()).toml(&toml).trusted().env(VAR, s);
        let stack = setup.start().await;
        let want = if s == secret { 1.0 } else { 2.0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while keyers(stack.admin()).await != want {
            assert!(
                Instant::now() < deadline,
                "replica {} never saw {want} keyer(s)",
                stacks.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stacks.push(stack);
    }
    let account = "+8613800000000";
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        let r = wrong_login(stacks[i % 2].gw(), account, Some(&ip)).await;
        assert_eq!(r.json(), wrong_password_v2(), "attempt {i}");
    }
    // The fourth, on either replica with the secret, finds the account
    // locked once the third's outcome is in Redis (written off the response
    // path, so it may lag the answer).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = wrong_login(stacks[1].gw(), account, Some("198.51.100.9")).await;
        if r.json()["code"] == json!(2057) {
            break;
        }
        assert!(Instant::now() < deadline, "never locked: {}", r.json());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(forwarded(&stacks[..2], LOGIN), 3, "the limit, exactly");
    // The replica keyed otherwise does not see that count.
    let r = wrong_login(stacks[2].gw(), account, Some("198.51.100.10")).await;
    assert_eq!(r.json(), wrong_password_v2());
    // Redis holds the keyed key, never the unkeyed one nor the number.
    let hex = |k: poolgate::store::AccountKey| format!("{:032x}", k.get());
    let keys = redis.keys("tk:*").await.join(" ");
    assert!(
        keys.contains(&hex(AccountKeyer::from_secret(secret).key(account))),
        "{keys}"
    );
    assert!(
        !keys.contains(&hex(AccountKeyer::unkeyed().key(account))),
        "{keys}"
    );
    assert!(!keys.contains("8613800000000"), "{keys}");
    // Clients are keyed too: no key names an address the logins came from
    // (198.51.100.0-2 and .9-.10, IPv4-mapped, in hex).
    for i in [0u8, 1, 2, 9, 10] {
        let ip = std::net::IpAddr::from([198, 51, 100, i]);
        let raw = format!("{:032x}", poolgate::client_ip::client_key(ip, 64));
        assert!(!keys.contains(&raw), "{ip} in {keys}");
    }
    assert!(
        keys.contains("{login_ip:"),
        "the clients are counted: {keys}"
    );
    shutdown_all(stacks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_per_ip_are_limited_across_replicas() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let stacks = replicas(
        2,
        json!({"frequentRegisterCheck": check(3, 60)}),
        &store_toml(&redis, "t3", ""),
        false,
    )
    .await;
    let burst = (0..12).map(|i| {
        let body = json!({"email": format!("u{i}@x.com"), "password": "abc12345!"});
        let gw = stacks[i % 2].gw();
        async move { post_json(gw, REGISTER, &body, &[]).await }
    });
    let answers = join_all(burst).await;
    assert_eq!(forwarded(&stacks, REGISTER), 3);
    let refused = answers
        .iter()
        .filter(|r| r.json()["code"] == json!(2100))
        .count();
    assert_eq!(refused, 9);
    shutdown_all(stacks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_fetched_from_one_replica_is_accepted_by_another_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let stacks = replicas(
        3,
        json!({"loginFailCheck": check(1, 60)}),
        &store_toml(&redis, "t4", ""),
        false,
    )
    .await;
    let r = wrong_login(stacks[0].gw(), "carol", None).await;
    assert_eq!(r.json(), wrong_password_v2());
    let signin = |token: &str, code: &str| {
        json!({"connection": "PASSWORD",
               "passwordPayload": {"email": "carol@x.com", "password": "right"},
               "options": {"captchaCode": code, "captchaToken": token}})
    };
    let fetch = |i: usize| {
        let gw = stacks[i].gw();
        async move {
            let r = get(gw, "/api/v3/get-captcha-code", &[]).await;
            assert_eq!(r.status, StatusCode::OK);
            r.json()["data"]["captchaToken"]
                .as_str()
                .expect("a token")
                .to_string()
        }
    };
    // Fetched on replica 0, answered on replica 1: the login goes through.
    let token = fetch(0).await;
    let answer = redis.captcha_answer("t4", &token).await;
    let r = post_json(stacks[1].gw(), SIGNIN, &signin(&token, &answer), &[]).await;
    assert_eq!(r.json()["statusCode"], 200, "{}", r.text());
    assert_eq!(forwarded(&stacks, SIGNIN), 1);
    // Single use: the same answer on replica 2 is refused (2001) and not forwarded.
    let r = post_json(stacks[2].gw(), SIGNIN, &signin(&token, &answer), &[]).await;
    assert_eq!(r.json()["apiCode"], 2001, "{}", r.text());
    // A wrong answer burns it for every replica.
    let token = fetch(2).await;
    let answer = redis.captcha_answer("t4", &token).await;
    let r = post_json(stacks[0].gw(), SIGNIN, &signin(&token, "ZZZZ"), &[]).await;
    assert_eq!(r.json()["apiCode"], 2001);
    let r = post_json(stacks[1].gw(), SIGNIN, &signin(&token, &answer), &[]).await;
    assert_eq!(r.json()["apiCode"], 2001, "burned by the wrong answer");
    assert_eq!(forwarded(&stacks, SIGNIN), 1);
    shutdown_all(stacks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_falls_back_to_local_counters_and_recovers() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let toml = store_toml(
        &redis,
        "t5",
        "timeout = \"200ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"300ms\"",
    );
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .trusted()
        .toml(&toml)
        .start()
        .await;
    let ip = |i: u32| format!("203.0.113.{i}");
    // Healthy: counted in Redis.
    let r = wrong_login(s.gw(), "dave", Some(&ip(1))).await;
    assert_eq!(r.json(), wrong_password_v2());
    assert!(!redis.keys("t5:v3:{login_ip:*").await.is_empty());

    redis.kill();
    // Down: every login still gets an answer, judged by this replica's own
    // counters: three failures, then the captcha.
    for i in 0..3 {
        let r = wrong_login(s.gw(), "dave", Some(&ip(2))).await;
        assert_eq!(
            r.json(),
            wrong_password_v2(),
            "attempt {i} while Redis is down"
        );
    }
    let r = wrong_login(s.gw(), "dave", Some(&ip(2))).await;
    assert_eq!(r.json(), captcha_required_v2(), "the local limit holds");
    assert_eq!(
        admin_metric(s.admin(), "poolgate_store_breaker_open", &[]).await,
        1.0
    );
    assert!(
        admin_metric(
            s.admin(),
            "poolgate_store_fallbacks_total",
            &[("mode", "local")]
        )
        .await
            >= 4.0
    );
    assert!(
        admin_metric(
            s.admin(),
            "poolgate_store_errors_total",
            &[("op", "reserve")]
        )
        .await
            >= 1.0
    );
    // A captcha can still be fetched and solved (issued locally).
    let r = get(
        s.gw(),
        "/api/v3/get-captcha-code",
        &[("x-forwarded-for", &ip(2))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    redis.restart().await;
    // Back: after the cooldown a call goes through and closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = wrong_login(s.gw(), "dave", Some(&ip(3))).await;
        assert!(r.status == StatusCode::OK, "{}", r.text());
        if admin_metric(s.admin(), "poolgate_store_breaker_open", &[]).await == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counting is in Redis again (the restarted server was empty). The
    // background probe may have closed the breaker after the last login
    // above was judged locally: this one is the first sure to reach Redis.
    let r = wrong_login(s.gw(), "dave", Some(&ip(4))).await;
    assert_eq!(r.json(), wrong_password_v2());
    let fresh = redis.keys("t5:v3:{login_ip:*").await;
    assert!(!fresh.is_empty(), "counts are written to Redis again");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_closed_fallback_refuses_and_an_open_one_forwards() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let url = redis.url();
    redis.kill();
    let section = |fallback: &str| {
        redis_store_toml(
            &url,
            &format!("timeout = \"100ms\"\nconnect_timeout = \"100ms\"\nfallback = \"{fallback}\""),
        )
    };
    let pool = json!({"loginFailCheck": check(1, 60), "frequentRegisterCheck": check(1, 60)});
    // Closed: guarded requests are refused with a clear 503; others still pass.
    let s = Setup::new(pool.clone())
        .toml(&section("closed"))
        .start()
        .await;
    let r = wrong_login(s.gw(), "erin", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["code"], 503);
    assert!(r.retry_after().is_some());
    assert_eq!(s.up.count(LOGIN), 0, "not forwarded");
    let r = get(s.gw(), "/api/v2/users/me", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "unguarded routes are unaffected");
    let r = get(s.gw(), "/api/v3/get-captcha-code", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        admin_metric(
            s.admin(),
            "poolgate_rejections_total",
            &[("reason", "store_unavailable")]
        )
        .await
            >= 2.0
    );
    s.shutdown().await;

    // Open: nothing is counted, every login is forwarded.
    let s = Setup::new(pool).toml(&section("open")).start().await;
    for _ in 0..4 {
        let r = wrong_login(s.gw(), "erin", None).await;
        assert_eq!(r.json(), wrong_password_v2());
    }
    assert_eq!(s.up.count(LOGIN), 4);
    s.shutdown().await;
}

/// Hanging up does not make an attempt free with the shared store either:
/// 30 wrong logins over two replicas, each on a connection closed 20 ms
/// after sending while the login service takes 300 ms, and at most the
/// limit reaches it; every forwarded one is counted in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_does_not_free_an_attempt_in_the_shared_store() {
    use tokio::io::AsyncWriteExt;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let stacks = replicas(
        2,
        json!({"loginFailCheck": check(5, 300)}),
        &store_toml(&redis, "hangup", ""),
        false,
    )
    .await;
    for s in &stacks {
        s.up.set_delay_ms(300);
    }
    let body = login_body("victim@x.com", "wrong").to_string();
    let raw = format!(
        "POST {LOGIN} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    for i in 0..30 {
        let gw = stacks[i % stacks.len()].gw();
        let mut c = tokio::net::TcpStream::connect(gw).await.expect("connect");
        c.write_all(raw.as_bytes()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(c);
    }
    // Every forwarded attempt counts, on every replica's shared counter. A
    // hang-up before forwarding (a loaded machine) releases its slot; that
    // attempt never reached a login service, so the invariant is
    // "counted == forwarded <= limit".
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        let (_, c) = admin_get(stacks[0].admin(), "/counters?ip=127.0.0.1").await;
        let c: Value = serde_json::from_str(&c).expect("counters JSON");
        let sent = forwarded(&stacks, LOGIN);
        if c["login_failures"]["count"] == sent as u64 {
            break sent;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {c}, forwarded {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((1..=5).contains(&counted), "forwarded {counted}");
    shutdown_all(stacks).await;
}

/// A store of its own on `redis` under `prefix`, holding a slot 30 s.
async fn direct_store(
    redis: &RedisServer,
    prefix: &str,
) -> std::sync::Arc<poolgate::store::RedisStore> {
    direct_store_with(redis, prefix, poolgate::metrics::Metrics::new()).await
}

/// [`direct_store`], counting its calls in `metrics`.
async fn direct_store_with(
    redis: &RedisServer,
    prefix: &str,
    metrics: poolgate::metrics::Metrics,
) -> std::sync::Arc<poolgate::store::RedisStore> {
    let s = store_with(
        &poolgate::config::RedisConfig {
            url: poolgate::config::Secret::new(redis.url()),
            key_prefix: prefix.into(),
            ..poolgate::config::RedisConfig::default()
        },
        metrics,
    );
    s.ping().await.expect("redis answers");
    s
}

/// A store on `cfg`, holding a slot 30 s (not connected yet).
fn store_of(cfg: &poolgate::config::RedisConfig) -> std::sync::Arc<poolgate::store::RedisStore> {
    store_with(cfg, poolgate::metrics::Metrics::new())
}

/// [`store_of`], counting its calls in `metrics`.
fn store_with(
    cfg: &poolgate::config::RedisConfig,
    metrics: poolgate::metrics::Metrics,
) -> std::sync::Arc<poolgate::store::RedisStore> {
    std::sync::Arc::new(
        poolgate::store::RedisStore::new(cfg, Duration::from_secs(30), metrics).expect("a store"),
    )
}

/// Runs one command on `c`, its reply as `T`.
async fn query<T: ::redis::FromRedisValue>(
    c: &::redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut c = c.clone();
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<T>(&mut c).await.expect("a reply")
}

/// This machine's wall clock in Unix ms: the clock the windows are aligned to.
fn unix_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    u64::try_from(d.as_millis()).expect("ms fit")
}

/// The Redis key of `client`'s login-IP counter under `prefix` in its window
/// starting at `start` (Unix ms), spelled out as the layout is documented
/// (docs/redis.md).
fn login_ip_key(prefix: &str, client: u128, start: u64) -> String {
    format!("{prefix}:v3:{{login_ip:{client:032x}}}:{start}")
}

/// The one window key of `client`'s login-IP counter under `prefix` that
/// Redis holds, with its window's start; checked against the layout: the
/// start is aligned to the window (`window_ms`) and was current at some
/// instant of `during` (Unix ms, before and after the call that wrote it).
async fn the_window_key(
    redis: &RedisServer,
    prefix: &str,
    client: u128,
    window_ms: u64,
    during: (u64, u64),
) -> (String, u64) {
    let keys = redis
        .keys(&format!("{prefix}:v3:{{login_ip:{client:032x}}}:*"))
        .await;
    let [key] = &keys[..] else {
        panic!("one window key: {keys:?}");
    };
    let start: u64 = key
        .rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a window start in {key}"));
    assert_eq!(start % window_ms, 0, "aligned: {key}");
    let (before, after) = during;
    assert!(
        start <= after && before < start + window_ms,
        "{key} current during {during:?}"
    );
    assert_eq!(*key, login_ip_key(prefix, client, start));
    (key.clone(), start)
}

fn held(r: Vec<poolgate::store::Reservation>) -> poolgate::store::Slot {
    match r.into_iter().next() {
        Some(poolgate::store::Reservation::Held(slot)) => slot,
        other => panic!("not held: {other:?}"),
    }
}

/// The count of `key`, 0 when absent.
async fn count_of(c: &::redis::aio::MultiplexedConnection, key: &str) -> i64 {
    query::<Option<i64>>(c, &["GET", key]).await.unwrap_or(0)
}

/// Waits (bounded) until `key` counts `want`.
async fn wait_for_count(c: &::redis::aio::MultiplexedConnection, key: &str, want: i64, what: &str) {
    wait_for_async(what, Duration::from_secs(5), || {
        let (c, key) = (c.clone(), key.to_string());
        async move { count_of(&c, &key).await == want }
    })
    .await;
}

/// A counter is one count per window, in a key named by the window's start
/// and living until the window's end plus the hold (so Redis forgets it). An
/// attempt is counted when it is let through; a failure needs nothing more,
/// anything else is refunded, and a denied attempt is refunded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_is_one_count_per_window_counted_up_front_and_refunded() {
    use poolgate::store::{Counter, Reservation, Slot, Subject};
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "win").await;
    let c = redis.conn().await.expect("a connection");
    let window = Duration::from_secs(60);

    // First attempt: counted at once, in a key made with its TTL.
    let before = unix_ms();
    let first = held(
        s.reserve(&[harness::redis::login_ip_ask(1, 2)], false)
            .await
            .expect("answers"),
    );
    let after = unix_ms();
    let (key, start) = the_window_key(&redis, "win", 1, 60_000, (before, after)).await;
    assert_eq!(query::<String>(&c, &["TYPE", &key]).await, "string");
    assert_eq!(count_of(&c, &key).await, 1, "counted up front");
    let ttl: i64 = query(&c, &["PTTL", &key]).await;
    let end = i64::try_from(start + 60_000).unwrap();
    let (before, after) = (
        i64::try_from(before).unwrap(),
        i64::try_from(after).unwrap(),
    );
    assert!(
        ttl <= end - before + 30_000 && ttl > end - after + 30_000 - 1_000,
        "the window's end plus the 30 s hold: {ttl}"
    );
    assert_eq!(redis.keys("win:*").await, vec![key.clone()], "nothing else");

    // A failure is counted already: its settle changes nothing.
    Slot::settle_all([(first, true)]);
    // A second attempt, then released (a success): refunded.
    let second = held(
        s.reserve(&[harness::redis::login_ip_ask(1, 2)], false)
            .await
            .expect("answers"),
    );
    assert_eq!(count_of(&c, &key).await, 2);
    Slot::settle_all([(second, false)]);
    wait_for_count(&c, &key, 1, "the success is refunded").await;

    // At the limit (2): the next is let through, the one after is denied
    // for the window's rest, and its count refunded.
    let _third = held(
        s.reserve(&[harness::redis::login_ip_ask(1, 2)], false)
            .await
            .expect("answers"),
    );
    let left = end - i64::try_from(unix_ms()).unwrap();
    match s
        .reserve(&[harness::redis::login_ip_ask(1, 2)], false)
        .await
        .expect("answers")
        .pop()
    {
        Some(Reservation::Denied(after)) => {
            let secs = i64::try_from(after.as_secs()).unwrap();
            assert!(
                (left / 1000..=left / 1000 + 1).contains(&secs),
                "the window's rest ({left} ms): {after:?}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    wait_for_count(&c, &key, 2, "the denied attempt is refunded").await;

    // The admin view reads the window's count (in-flight attempts
    // included, not told apart); the unblock forgets it.
    let shown = s
        .show(Counter::LoginIp, Subject::Client(1), window)
        .await
        .expect("answers")
        .expect("a counter");
    assert_eq!((shown.count, shown.inflight), (2, None));
    assert!(
        shown.window_remaining_secs <= 60
            && shown.window_remaining_secs * 1000 + 1000 >= left as u64,
        "{shown:?}"
    );
    assert!(s
        .clear(Counter::LoginIp, Subject::Client(1), window)
        .await
        .expect("answers"));
    assert!(s
        .show(Counter::LoginIp, Subject::Client(1), window)
        .await
        .expect("answers")
        .is_none());
}

/// An attempt counts in the window it began in: its refund after that
/// window is not sent (the count it would lower is over), and the next
/// window is a new key. An attempt never settled (its replica died) stays
/// counted as a failure until its window ends: fail closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_counts_in_the_window_it_began_in() {
    use poolgate::store::Reservation;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "lap").await;
    let c = redis.conn().await.expect("a connection");
    let mut short = harness::redis::login_ip_ask(1, 5);
    short.limit.window = Duration::from_secs(1);

    // In flight across its window's end, then released: no refund.
    let before = unix_ms();
    let slot = held(s.reserve(&[short], false).await.expect("answers"));
    let (key, start) = the_window_key(&redis, "lap", 1, 1_000, (before, unix_ms())).await;
    wait_for("the window ends", Duration::from_secs(3), || {
        unix_ms() >= start + 1_000
    })
    .await;
    drop(slot);
    // The next window's attempt is a new key; the refund, had it been
    // queued, would have gone with this call.
    let _next = held(s.reserve(&[short], false).await.expect("answers"));
    assert_eq!(
        count_of(&c, &key).await,
        1,
        "the old window keeps its count"
    );
    let next = login_ip_key("lap", 1, start + 1_000);
    let later = redis.keys("lap:*").await;
    assert!(
        later.len() == 2 && later.contains(&key),
        "a new window, a new key: {later:?} (expected {next} or later)"
    );

    // A replica dies mid-attempt (its slot never settled): the attempt holds
    // the limit (1) for the rest of its window.
    let dead = held(
        s.reserve(&[harness::redis::login_ip_ask(2, 1)], false)
            .await
            .expect("answers"),
    );
    std::mem::forget(dead);
    assert!(matches!(
        s.reserve(&[harness::redis::login_ip_ask(2, 1)], false)
            .await
            .expect("answers")
            .pop(),
        Some(Reservation::Denied(_))
    ));
}

/// During a rolling upgrade old replicas write the layouts before this one
/// (`v2`: a hash per counter; before it, a count and a sorted set): this
/// version never reads nor writes those keys (no WRONGTYPE, no misread
/// count), and the old keys are left to their TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_previous_layouts_are_never_read() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "mix").await;
    let c = redis.conn().await.expect("a connection");
    let v1 = format!("mix:{{login_ip:{:032x}}}", 3u128);
    let v1_f = format!("{v1}:f");
    let v2 = format!("mix:v2:{{login_ip:{:032x}}}", 3u128);
    // Old replicas' client over its limit, with attempts in flight.
    let _: () = query(&c, &["SET", &v1, "9", "PX", "60000"]).await;
    let _: () = query(&c, &["ZADD", &v1_f, "99999999999999", "old-1"]).await;
    let _: () = query(&c, &["PEXPIRE", &v1_f, "60000"]).await;
    let _: () = query(
        &c,
        &[
            "HSET",
            &v2,
            "c",
            "9",
            "e",
            "99999999999999",
            "old-2",
            "99999999999999",
        ],
    )
    .await;
    let _: () = query(&c, &["PEXPIRE", &v2, "60000"]).await;
    // This version counts apart: granted, in its own key (and held to the
    // end: a dropped slot is refunded in the background).
    let before = unix_ms();
    let _slot = held(
        s.reserve(&[harness::redis::login_ip_ask(3, 1)], false)
            .await
            .expect("answers"),
    );
    assert_eq!(query::<String>(&c, &["GET", &v1]).await, "9");
    assert_eq!(query::<i64>(&c, &["ZCARD", &v1_f]).await, 1);
    assert_eq!(query::<i64>(&c, &["HLEN", &v2]).await, 3);
    let (key, _) = the_window_key(&redis, "mix", 3, 60_000, (before, unix_ms())).await;
    assert_eq!(count_of(&c, &key).await, 1);
    // And the old layouts' view is not this version's view.
    let shown = s
        .show(
            poolgate::store::Counter::LoginIp,
            poolgate::store::Subject::Client(3),
            Duration::from_secs(60),
        )
        .await
        .expect("answers")
        .expect("a counter");
    assert_eq!((shown.count, shown.inflight), (1, None));
}

/// `calls` of `cmdstat_<command>` in `INFO commandstats` (0 if never called).
async fn command_calls(c: &::redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = query(c, &["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The reservations that one thread's requests make in one turn of its
/// event loop go to Redis in one pipeline (no script), and the limit still
/// holds exactly: 32 concurrent asks for one client with a limit of 5, five
/// granted, and the 27 denied refunded.
#[tokio::test(flavor = "current_thread")]
async fn the_reservations_of_one_event_loop_turn_share_one_pipeline() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let metrics = poolgate::metrics::Metrics::new();
    let s = direct_store_with(&redis, "batch", metrics.clone()).await;
    let c = redis.conn().await.expect("a connection");
    let _: () = query(&c, &["CONFIG", "RESETSTAT"]).await;
    let before = unix_ms();
    let asks = (0..32).map(|_| {
        let s = &s;
        async move {
            s.reserve(&[harness::redis::login_ip_ask(9, 5)], false)
                .await
        }
    });
    let answers = join_all(asks).await;
    let held = answers
        .iter()
        .filter(|a| matches!(a, Ok(r) if matches!(r[..], [poolgate::store::Reservation::Held(_)])))
        .count();
    let denied = answers
        .iter()
        .filter(
            |a| matches!(a, Ok(r) if matches!(r[..], [poolgate::store::Reservation::Denied(_)])),
        )
        .count();
    assert_eq!((held, denied), (5, 27), "{answers:?}");
    let calls = metrics
        .store_duration
        .with_label_values(&["reserve"])
        .get_sample_count();
    assert!(calls <= 2, "{calls} calls for 32 reservations");
    eprintln!("32 reservations in {calls} call(s)");
    assert_eq!(command_calls(&c, "incr").await, 32);
    assert_eq!(
        command_calls(&c, "evalsha").await + command_calls(&c, "eval").await,
        0
    );
    // The five in flight stay counted; the 27 denied are refunded.
    let (key, _) = the_window_key(&redis, "batch", 9, 60_000, (before, unix_ms())).await;
    wait_for_count(&c, &key, 5, "the denied are refunded").await;
    drop(answers);
    wait_for_count(&c, &key, 0, "the five released are refunded").await;
}

/// The same through a gateway: a parallel burst of 32 wrong logins from one
/// client on one proxy worker takes fewer calls than logins, no script, and
/// exactly the limit (5) is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_worker_is_reserved_in_fewer_calls_than_logins() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = Setup::new(json!({"loginFailCheck": check(5, 60)}))
        .server("workers = 1")
        .toml(&store_toml(&redis, "burst", ""))
        .start()
        .await;
    let c = redis.conn().await.expect("a connection");
    let _: () = query(&c, &["CONFIG", "RESETSTAT"]).await;
    let answers = join_all((0..32).map(|_| wrong_login(s.gw(), "bob", None))).await;
    let wrong = answers
        .iter()
        .filter(|r| r.json() == wrong_password_v2())
        .count();
    let gated = answers
        .iter()
        .filter(|r| r.json() == captcha_required_v2())
        .count();
    assert_eq!((wrong, gated), (5, 27));
    assert_eq!(s.up.count(LOGIN), 5, "exactly the limit is forwarded");
    let m = metrics(s.admin()).await;
    let reserve_calls = metric_sum(
        &m,
        "poolgate_store_duration_seconds_count",
        &[("op", "reserve")],
    );
    eprintln!("32 logins: {reserve_calls} reserve calls");
    assert!(
        reserve_calls < 32.0,
        "{reserve_calls} reserve calls for 32 logins"
    );
    let scripts = command_calls(&c, "evalsha").await + command_calls(&c, "eval").await;
    assert_eq!(scripts, 0, "no script on the login path");
    // Once the denied are refunded, the client's window counts the five
    // failures; and every key written expires (a count never lives without
    // a TTL, refunds included).
    let ip = redis.keys("burst:v3:{login_ip:*").await;
    let [ip] = &ip[..] else {
        panic!("one client window: {ip:?}");
    };
    wait_for_count(&c, ip, 5, "the 27 denied are refunded").await;
    let keys = redis.keys("burst:*").await;
    assert!(!keys.is_empty());
    for k in &keys {
        let ttl: i64 = query(&c, &["PTTL", k]).await;
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
    s.shutdown().await;
}

/// A request dropped while its reservation is queued (its client hung up)
/// leaks nothing: what the call counted for it is refunded, and the
/// limit's one slot is free again.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_waiter_s_granted_slot_is_released() {
    use futures_util::FutureExt;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "gone").await;
    let c = redis.conn().await.expect("a connection");
    let _: () = query(&c, &["CONFIG", "RESETSTAT"]).await;
    // Polled once: queued (its call not yet sent), then dropped.
    let before = unix_ms();
    let once = s
        .reserve(&[harness::redis::login_ip_ask(4, 1)], false)
        .now_or_never();
    assert!(once.is_none(), "answered without a round trip: {once:?}");
    // The call goes out anyway and counts it; the answer has nobody to go
    // to, so its count is refunded.
    wait_for_async("the call is sent", Duration::from_secs(5), || {
        let c = c.clone();
        async move { command_calls(&c, "incr").await >= 1 }
    })
    .await;
    let (key, _) = the_window_key(&redis, "gone", 4, 60_000, (before, unix_ms())).await;
    wait_for_count(&c, &key, 0, "the granted slot is refunded").await;
    // Free: the limit's one slot is granted again.
    let _slot = held(
        s.reserve(&[harness::redis::login_ip_ask(4, 1)], false)
            .await
            .expect("answers"),
    );
}

/// A refund queued as a proxy worker's runtime stops (the last requests of
/// a shutdown) is not lost: the flusher that would have sent it ran on that
/// runtime, and the shutdown sends what is left.
#[tokio::test(flavor = "current_thread")]
async fn refunds_left_when_a_worker_stops_are_sent_at_shutdown() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "stop").await;
    let c = redis.conn().await.expect("a connection");
    let before = unix_ms();
    // A worker of its own: reserves, the request succeeds (a refund is
    // queued), and the worker's runtime stops at once.
    let worker = {
        let s = s.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let slot = held(
                    s.reserve(&[harness::redis::login_ip_ask(6, 5)], false)
                        .await
                        .expect("answers"),
                );
                poolgate::store::Slot::settle_all([(slot, false)]);
            });
        })
    };
    worker.join().expect("the worker ran");
    let (key, _) = the_window_key(&redis, "stop", 6, 60_000, (before, unix_ms())).await;
    s.flush_refunds().await;
    assert_eq!(count_of(&c, &key).await, 0, "the success is refunded");
}

/// Redis down: every request of a batch gets an error promptly, all of one
/// kind; behind the breaker every one is answered by the local fallback.
#[tokio::test(flavor = "current_thread")]
async fn with_redis_down_every_waiter_of_a_batch_gets_an_error_promptly() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let cfg = poolgate::config::RedisConfig {
        url: poolgate::config::Secret::new(redis.url()),
        key_prefix: "down".into(),
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
        breaker_failures: 2,
        ..poolgate::config::RedisConfig::default()
    };
    let s = store_of(&cfg);
    // Up: this thread's connection is open.
    held(
        s.reserve(&[harness::redis::login_ip_ask(5, 10)], false)
            .await
            .expect("answers"),
    );
    redis.kill();
    let started = Instant::now();
    let answers = join_all((0..16).map(|i| {
        let s = &s;
        async move {
            s.reserve(&[harness::redis::login_ip_ask(i, 10)], false)
                .await
        }
    }))
    .await;
    let took = started.elapsed();
    let kinds: Vec<&str> = answers
        .iter()
        .map(|a| a.as_ref().err().map_or("ok", |e| e.kind()))
        .collect();
    // All of one kind, the connection's error (not a waiter's own bound).
    assert!(kinds.iter().all(|k| *k == "io"), "{kinds:?}");
    eprintln!("16 waiters, Redis down: {kinds:?} after {took:?}");
    // Within a call's timeout, and slack.
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Behind the breaker and the local fallback: each one is answered.
    let (store, m) =
        harness::redis::replica_store(cfg, &poolgate::config::RateLimitConfig::default());
    let answers = join_all((0..16).map(|i| {
        let store = &store;
        async move {
            store
                .reserve(&[harness::redis::login_ip_ask(i, 10)], false)
                .await
        }
    }))
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(
        m.render().contains("poolgate_store_breaker_open 1"),
        "the breaker opened"
    );
}

/// A waiter whose batch's task is dropped before it ran (its runtime shut
/// down) gets an error, never waits; and the next request on the thread is
/// sent (the queue was not left behind).
#[test]
fn a_waiter_whose_batch_task_is_dropped_gets_an_error() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(redis) = setup.block_on(RedisServer::start()) else {
        return;
    };
    let s = setup.block_on(direct_store(&redis, "drop"));
    drop(setup);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = s.clone();
    let mut fut = Box::pin(async move {
        store
            .reserve(&[harness::redis::login_ip_ask(6, 1)], false)
            .await
    });
    let mut cx = Context::from_waker(Waker::noop());
    {
        let _in = rt.enter();
        // Queued; the task that would send it is spawned but never runs.
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    drop(rt);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), "cancelled", "{e}"),
        other => panic!("not an error at once: {other:?}"),
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            s.reserve(&[harness::redis::login_ip_ask(6, 1)], false),
        )
        .await
        .expect("answered: the thread's queue was not left behind");
        held(r.expect("answers"));
    });
}
