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
        if f["count"] == 4 && f["inflight"] == 0 {
            break;
        }
        assert!(
            f["count"].as_u64().unwrap_or(0) + f["inflight"].as_u64().unwrap_or(0) == 4,
            "{body}"
        );
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
    let pool =
        json!({"loginPasswordFailCheck": check(3, 60), "loginFailStrategy": "block-account"});
    let toml = store_toml(&redis, "tk", "");
    let secret = "one secret, every replica: 32 b.";
    let other = "another secret, some other pool.";
    let mut stacks = Vec::new();
    for s in [secret, secret, other] {
        let setup = Setup::new(pool.clone()).toml(&toml).trusted().env(VAR, s);
        stacks.push(setup.start().await);
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
    assert!(!redis.keys("t5:v2:{login_ip:*").await.is_empty());

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
    let fresh = redis.keys("t5:v2:{login_ip:*").await;
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
        if c["login_failures"]["inflight"] == 0 && c["login_failures"]["count"] == sent as u64 {
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
    let s = store_of(&poolgate::config::RedisConfig {
        url: poolgate::config::Secret::new(redis.url()),
        key_prefix: prefix.into(),
        ..poolgate::config::RedisConfig::default()
    });
    s.ping().await.expect("redis answers");
    s
}

/// A store on `cfg`, holding a slot 30 s (not connected yet).
fn store_of(cfg: &poolgate::config::RedisConfig) -> std::sync::Arc<poolgate::store::RedisStore> {
    std::sync::Arc::new(
        poolgate::store::RedisStore::new(
            cfg,
            Duration::from_secs(30),
            poolgate::metrics::Metrics::new(),
        )
        .expect("a store"),
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

/// Redis's clock, in ms.
async fn redis_now(c: &::redis::aio::MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = query(c, &["TIME"]).await;
    s * 1000 + us / 1000
}

/// The Redis key of `client`'s login-IP counter under `prefix`, spelled out
/// as the layout is documented (docs/redis.md).
fn login_ip_key(prefix: &str, client: u128) -> String {
    format!("{prefix}:v2:{{login_ip:{client:032x}}}")
}

fn held(r: Vec<poolgate::store::Reservation>) -> poolgate::store::Slot {
    match r.into_iter().next() {
        Some(poolgate::store::Reservation::Held(slot)) => slot,
        other => panic!("not held: {other:?}"),
    }
}

/// A counter is one hash: its count, its window's end, its reservations in
/// flight; the key's TTL covers the window and the reservations, so Redis
/// forgets it; a settle frees the reservation's field, a commit counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_is_one_hash_whose_ttl_covers_its_window_and_reservations() {
    use poolgate::store::Slot;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "hash").await;
    let c = redis.conn().await.expect("a connection");
    let key = login_ip_key("hash", 1);

    // First seen: the window opens (its end a window away; no count is
    // written until an event is), the reservation is a field, the key lives
    // as long as the window.
    let before = redis_now(&c).await;
    let slot = held(
        s.reserve(&[harness::redis::login_ip_ask(1, 2)], false)
            .await
            .expect("answers"),
    );
    assert_eq!(query::<String>(&c, &["TYPE", &key]).await, "hash");
    let fields: std::collections::HashMap<String, i64> = query(&c, &["HGETALL", &key]).await;
    assert_eq!(fields.len(), 3, "e, m and one reservation: {fields:?}");
    assert!(!fields.contains_key("c"), "{fields:?}");
    let end = fields["e"] - before;
    assert!((60_000..61_000).contains(&end), "window end {end}");
    let lapse = fields
        .iter()
        .find(|(f, _)| !["c", "e", "m"].contains(&f.as_str()))
        .map(|(_, v)| *v - before)
        .expect("a reservation field");
    assert!((30_000..31_000).contains(&lapse), "lapse {lapse}");
    let ttl: i64 = query(&c, &["PTTL", &key]).await;
    assert!(ttl > 55_000 && ttl <= 60_000, "{ttl}");
    // Only this key was written.
    assert_eq!(redis.keys("hash:*").await, vec![key.clone()]);

    // The outcome: the reservation's field goes, the event is counted.
    Slot::settle_all([(slot, true)]);
    wait_for_async("the event is counted", Duration::from_secs(5), || {
        let c = c.clone();
        let key = key.clone();
        async move { query::<Option<i64>>(&c, &["HGET", &key, "c"]).await == Some(1) }
    })
    .await;
    assert_eq!(query::<i64>(&c, &["HLEN", &key]).await, 3, "c, e, m");

    // A window shorter than the hold: the key lives until the reservation
    // would lapse, not just until the window ends.
    let mut short = harness::redis::login_ip_ask(2, 2);
    short.limit.window = Duration::from_secs(2);
    let key2 = login_ip_key("hash", 2);
    let _slot = held(s.reserve(&[short], false).await.expect("answers"));
    let ttl: i64 = query(&c, &["PTTL", &key2]).await;
    assert!(ttl > 25_000 && ttl <= 30_000, "held for the hold: {ttl}");

    // The admin view and the unblock read and clear the hash.
    let shown = s
        .show(
            poolgate::store::Counter::LoginIp,
            poolgate::store::Subject::Client(1),
        )
        .await
        .expect("answers")
        .expect("a counter");
    assert_eq!((shown.count, shown.inflight), (1, 0));
    assert!(
        (59..=60).contains(&shown.window_remaining_secs),
        "{shown:?}"
    );
    assert!(s
        .clear(
            poolgate::store::Counter::LoginIp,
            poolgate::store::Subject::Client(1)
        )
        .await
        .expect("answers"));
    assert!(s
        .show(
            poolgate::store::Counter::LoginIp,
            poolgate::store::Subject::Client(1)
        )
        .await
        .expect("answers")
        .is_none());
}

/// The script's shortcuts keep the window's rules: an event whose window
/// lapsed while it was in flight opens a new one (the key's TTL covering
/// it); a refusal says how long is left; a reservation never settled (its
/// replica died) stops counting once it lapses, and its field is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_keep_their_window_through_the_scripts_shortcuts() {
    use poolgate::store::{Reservation, Slot};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "win").await;
    let c = redis.conn().await.expect("a connection");
    let ask = |client: u128| harness::redis::login_ip_ask(client, 1);
    let key = |client: u128| login_ip_key("win", client);

    // Its window lapses while the attempt is in flight (here: the key is
    // gone): the event opens a new one.
    let slot = held(s.reserve(&[ask(1)], false).await.expect("answers"));
    let _: () = query(&c, &["DEL", &key(1)]).await;
    Slot::settle_all([(slot, true)]);
    wait_for_async("the event is counted", Duration::from_secs(5), || {
        let c = c.clone();
        let k = key(1);
        async move { query::<Option<i64>>(&c, &["HGET", &k, "c"]).await == Some(1) }
    })
    .await;
    let ttl: i64 = query(&c, &["PTTL", &key(1)]).await;
    assert!(ttl > 55_000 && ttl <= 60_000, "a new window: {ttl}");

    // At the limit: refused, for the window's rest.
    match s.reserve(&[ask(1)], false).await.expect("answers").pop() {
        Some(Reservation::Denied(after)) => assert_eq!(after, Duration::from_secs(60)),
        other => panic!("not refused: {other:?}"),
    }

    // The window ended (its end is in the past): the count starts again.
    let _: () = query(&c, &["HSET", &key(1), "e", "1"]).await;
    let _slot = held(s.reserve(&[ask(1)], false).await.expect("answers"));
    assert_eq!(
        query::<Option<i64>>(&c, &["HGET", &key(1), "c"]).await,
        Some(0)
    );

    // A reservation left by a dead replica, lapsed: it no longer holds the
    // slot (limit 1), and its field is dropped.
    let now = redis_now(&c).await;
    let past = (now - 1).to_string();
    let _: () = query(
        &c,
        &[
            "HSET",
            &key(2),
            "c",
            "0",
            "e",
            &(now + 60_000).to_string(),
            "m",
            &past,
            "dead-1",
            &past,
        ],
    )
    .await;
    let _: () = query(&c, &["PEXPIRE", &key(2), "60000"]).await;
    let _slot = held(s.reserve(&[ask(2)], false).await.expect("answers"));
    let dead: Option<String> = query(&c, &["HGET", &key(2), "dead-1"]).await;
    assert_eq!(dead, None, "the lapsed reservation is dropped");
    // The live one now holds the only slot.
    assert!(matches!(
        s.reserve(&[ask(2)], false).await.expect("answers").pop(),
        Some(Reservation::Denied(_))
    ));
}

/// During a rolling upgrade old replicas write the layout before the hash
/// (`<p>:{<counter>:<subject>}` a count, `…:f` a sorted set): this version
/// never reads nor writes those keys (no WRONGTYPE, no misread count), and
/// the old keys are left to their TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_previous_layout_are_never_read() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "mix").await;
    let c = redis.conn().await.expect("a connection");
    let old = format!("mix:{{login_ip:{:032x}}}", 3u128);
    let old_f = format!("{old}:f");
    // An old replica's client over its limit, with one attempt in flight.
    let _: () = query(&c, &["SET", &old, "9", "PX", "60000"]).await;
    let _: () = query(&c, &["ZADD", &old_f, "99999999999999", "old-1"]).await;
    let _: () = query(&c, &["PEXPIRE", &old_f, "60000"]).await;
    // This version counts apart: granted, in its own key (and held to the
    // end: a dropped slot settles in the background).
    let _slot = held(
        s.reserve(&[harness::redis::login_ip_ask(3, 1)], false)
            .await
            .expect("answers"),
    );
    assert_eq!(query::<String>(&c, &["GET", &old]).await, "9");
    assert_eq!(query::<i64>(&c, &["ZCARD", &old_f]).await, 1);
    let new = login_ip_key("mix", 3);
    assert_eq!(query::<String>(&c, &["TYPE", &new]).await, "hash");
    // And the old layout's view is not this version's view.
    let shown = s
        .show(
            poolgate::store::Counter::LoginIp,
            poolgate::store::Subject::Client(3),
        )
        .await
        .expect("answers")
        .expect("a counter");
    assert_eq!((shown.count, shown.inflight), (0, 1));
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
/// event loop go to Redis in one script call, and the limit still holds
/// exactly: 32 concurrent asks for one client with a limit of 5, five granted.
#[tokio::test(flavor = "current_thread")]
async fn the_reservations_of_one_event_loop_turn_share_one_script_call() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "batch").await;
    let c = redis.conn().await.expect("a connection");
    let _: () = query(&c, &["CONFIG", "RESETSTAT"]).await;
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
    let calls = command_calls(&c, "evalsha").await + command_calls(&c, "eval").await;
    assert!(calls <= 2, "{calls} script calls for 32 reservations");
    eprintln!("32 reservations in {calls} script call(s)");
    // Five reservations in flight in the one hash (beside `e` and `m`),
    // nothing counted yet, so no `c`.
    let fields: std::collections::HashMap<String, String> =
        query(&c, &["HGETALL", &login_ip_key("batch", 9)]).await;
    assert_eq!(fields.len(), 2 + 5, "{fields:?}");
    assert!(!fields.contains_key("c"), "{fields:?}");
}

/// The same through a gateway: a parallel burst of 32 wrong logins from one
/// client on one proxy worker takes fewer script calls than logins, and
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
    // Every script call, the settles' included (at most five).
    let calls = command_calls(&c, "evalsha").await + command_calls(&c, "eval").await;
    eprintln!("32 logins: {reserve_calls} reserve calls, {calls} script calls in all");
    assert!(
        reserve_calls < 32.0 && calls < 32,
        "{reserve_calls} reserve calls, {calls} script calls for 32 logins"
    );
    s.shutdown().await;
}

/// A request dropped while its reservation is queued (its client hung up)
/// leaks nothing: the slot the call granted it is released (not counted),
/// and the limit's one slot is free again.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_waiter_s_granted_slot_is_released() {
    use futures_util::FutureExt;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = direct_store(&redis, "gone").await;
    let c = redis.conn().await.expect("a connection");
    let key = login_ip_key("gone", 4);
    let _: () = query(&c, &["CONFIG", "RESETSTAT"]).await;
    // Polled once: queued (its call not yet sent), then dropped.
    let once = s
        .reserve(&[harness::redis::login_ip_ask(4, 1)], false)
        .now_or_never();
    assert!(once.is_none(), "answered without a round trip: {once:?}");
    // The call goes out anyway and grants the slot; the answer has nobody
    // to go to, so its slot is released: the hash keeps e and m only
    // (nothing was counted).
    wait_for_async(
        "the granted slot is released",
        Duration::from_secs(5),
        || {
            let c = c.clone();
            let key = key.clone();
            async move {
                let f: std::collections::HashMap<String, String> =
                    query(&c, &["HGETALL", &key]).await;
                f.len() == 2 && f.contains_key("e") && f.contains_key("m")
            }
        },
    )
    .await;
    assert!(command_calls(&c, "evalsha").await >= 1, "the call was sent");
    // Free: the limit's one slot is granted again.
    let _slot = held(
        s.reserve(&[harness::redis::login_ip_ask(4, 1)], false)
            .await
            .expect("answers"),
    );
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
    // Within a call's timeout, twice (EVALSHA, and EVAL on NOSCRIPT), and slack.
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
