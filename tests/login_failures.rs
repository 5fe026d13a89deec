//! `loginFailCheck`, failed logins per client, end to end over real sockets:
//! the failure after the limit asks for a captcha and is not forwarded;
//! clients behind a trusted proxy are counted apart, an untrusted peer
//! cannot choose its key, IPv6 clients share a counter per /64; parallel
//! bursts, hot-swapped limits and the window passing; the admin
//! `/counters` and `/unblock` endpoints.
//!
//! Every rejected request is also checked not to have reached the fake upstream.

mod harness;

use std::time::Duration;

use futures_util::future::join_all;
use harness::fresh::post_json;
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn fourth_failure_from_one_ip_needs_a_captcha_and_is_not_forwarded() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    for i in 0..3 {
        let r = wrong_login(s.gw(), "bob", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), wrong_password_v2(), "attempt {i} is forwarded");
    }
    assert_eq!(s.up.count(LOGIN), 3);
    let r = wrong_login(s.gw(), "bob", None).await;
    assert_eq!(r.status, StatusCode::OK, "business rejections are HTTP 200");
    assert_eq!(r.json(), captcha_required_v2());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    // Even the right password needs the captcha now.
    let r = post_json(s.gw(), LOGIN, &login_body("bob", "right"), &[]).await;
    assert_eq!(r.json(), captcha_required_v2());
    // And another account from the same client.
    let r = post_json(s.gw(), LOGIN, &login_body("alice", "right"), &[]).await;
    assert_eq!(r.json(), captcha_required_v2());
    assert_eq!(
        s.up.count(LOGIN),
        3,
        "no rejected login reached the upstream"
    );
    assert_eq!(s.up.total(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn successful_logins_are_not_failures() {
    let s = Setup::new(json!({"loginFailCheck": check(2, 60)}))
        .start()
        .await;
    for _ in 0..5 {
        let r = post_json(s.gw(), LOGIN, &login_body("bob", "right"), &[]).await;
        assert_eq!(r.json(), login_ok_v2());
    }
    wrong_login(s.gw(), "bob", None).await;
    let r = wrong_login(s.gw(), "bob", None).await;
    assert_eq!(r.json(), wrong_password_v2());
    let r = wrong_login(s.gw(), "bob", None).await;
    assert_eq!(r.json(), captcha_required_v2());
    assert_eq!(s.up.count(LOGIN), 7);
    s.shutdown().await;
}

#[tokio::test]
async fn trusted_proxy_clients_are_counted_apart() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .trusted()
        .start()
        .await;
    let a = Some("203.0.113.10");
    let b = Some("203.0.113.11");
    for _ in 0..3 {
        assert_eq!(
            wrong_login(s.gw(), "bob", a).await.json(),
            wrong_password_v2()
        );
    }
    assert_eq!(
        wrong_login(s.gw(), "bob", a).await.json(),
        captcha_required_v2()
    );
    // Client b is untouched by a's failures.
    for _ in 0..3 {
        assert_eq!(
            wrong_login(s.gw(), "bob", b).await.json(),
            wrong_password_v2()
        );
    }
    assert_eq!(
        wrong_login(s.gw(), "bob", b).await.json(),
        captcha_required_v2()
    );
    // A proxy chain: the right-most untrusted hop is the client.
    let r = wrong_login(s.gw(), "bob", Some("203.0.113.10, 198.51.100.7")).await;
    assert_eq!(
        r.json(),
        wrong_password_v2(),
        "198.51.100.7 is a new client"
    );
    // The loopback peer itself (no XFF) is yet another client.
    assert_eq!(
        wrong_login(s.gw(), "bob", None).await.json(),
        wrong_password_v2()
    );
    assert_eq!(s.up.count(LOGIN), 8);
    s.shutdown().await;
}

#[tokio::test]
async fn untrusted_peer_xff_is_ignored() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        assert_eq!(
            wrong_login(s.gw(), "bob", Some(&xff)).await.json(),
            wrong_password_v2()
        );
    }
    let r = wrong_login(s.gw(), "bob", Some("203.0.113.99")).await;
    assert_eq!(
        r.json(),
        captcha_required_v2(),
        "without trusted_proxies every XFF value is the same client: the socket peer"
    );
    assert_eq!(s.up.count(LOGIN), 3);
    // The admin view counts the socket peer.
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 3, "{c}");
    s.shutdown().await;
}

#[tokio::test]
async fn ipv6_clients_share_a_counter_per_64() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .trusted()
        .start()
        .await;
    for ip in [
        "2001:db8:1:2::1",
        "2001:db8:1:2:aaaa::2",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
    ] {
        assert_eq!(
            wrong_login(s.gw(), "bob", Some(ip)).await.json(),
            wrong_password_v2()
        );
    }
    let r = wrong_login(s.gw(), "bob", Some("2001:db8:1:2:1234::5")).await;
    assert_eq!(r.json(), captcha_required_v2(), "same /64");
    // The bracketed form with a port is the same client.
    let r = wrong_login(s.gw(), "bob", Some("[2001:db8:1:2::77]:4711")).await;
    assert_eq!(r.json(), captcha_required_v2());
    // The neighbouring /64 is another client.
    let r = wrong_login(s.gw(), "bob", Some("2001:db8:1:3::1")).await;
    assert_eq!(r.json(), wrong_password_v2());
    assert_eq!(s.up.count(LOGIN), 4);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_burst_forwards_exactly_the_limit() {
    let s = Setup::new(json!({"loginFailCheck": check(5, 600)}))
        .start()
        .await;
    s.up.set_delay_ms(300);
    s.up.set_always_wrong(true);
    let gw = s.gw();
    let answers = join_all((0..30).map(|i| {
        tokio::spawn(async move {
            // Even the right password: the upstream answers "wrong" for all.
            let pw = if i % 2 == 0 { "right" } else { "wrong" };
            post_json(gw, LOGIN, &login_body("bob", pw), &[]).await
        })
    }))
    .await;
    let mut forwarded = 0;
    let mut captcha = 0;
    for a in answers {
        let a = a.expect("task");
        assert_eq!(a.status, StatusCode::OK);
        let v = a.json();
        if v == wrong_password_v2() {
            forwarded += 1;
        } else if v == captcha_required_v2() {
            captcha += 1;
        } else {
            panic!("unexpected answer {v}");
        }
    }
    assert_eq!((forwarded, captcha), (5, 25));
    assert_eq!(
        s.up.count(LOGIN),
        5,
        "exactly the limit reached the upstream"
    );
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 5, "{c}");
    assert_eq!(c["login_failures"]["inflight"], 0, "{c}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swapped_limits_keep_counts() {
    let mut p = pool(json!({"loginFailCheck": check(5, 600)}));
    let s = Setup::new(p.clone()).start().await;
    for _ in 0..3 {
        assert_eq!(
            wrong_login(s.gw(), "bob", None).await.json(),
            wrong_password_v2()
        );
    }
    // Limit 5 -> 4: one more failure is allowed, not four.
    p["loginFailCheck"] = check(4, 600);
    s.swap_pool(&p, |c| c.login_fail.is_some_and(|l| l.limit == 4))
        .await;
    let mut forwarded = 0;
    for _ in 0..5 {
        if wrong_login(s.gw(), "bob", None).await.json() == wrong_password_v2() {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 1);
    assert_eq!(s.up.count(LOGIN), 4);
    // Limit 4 -> 10: six more.
    p["loginFailCheck"] = check(10, 600);
    s.swap_pool(&p, |c| c.login_fail.is_some_and(|l| l.limit == 10))
        .await;
    let mut forwarded = 0;
    for _ in 0..10 {
        if wrong_login(s.gw(), "bob", None).await.json() == wrong_password_v2() {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 6);
    assert_eq!(s.up.count(LOGIN), 10);
    // Turning the check off lets everything through; turning it back on finds the count.
    p["loginFailCheck"] = json!({"enabled": false, "limit": 10, "timeInterval": 600});
    s.swap_pool(&p, |c| c.login_fail.is_none()).await;
    assert_eq!(
        wrong_login(s.gw(), "bob", None).await.json(),
        wrong_password_v2()
    );
    assert_eq!(s.up.count(LOGIN), 11);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_leak_its_reservation() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 600)}))
        .start()
        .await;
    s.up.set_delay_ms(1_500);
    // Start a login and abandon it while the upstream is still thinking.
    let gw = s.gw();
    let pending = tokio::spawn(async move { wrong_login(gw, "bob", None).await });
    let arrived = eventually(Duration::from_secs(10), || s.up.count(LOGIN) == 1).await;
    assert!(arrived, "the first login reached the upstream");
    pending.abort();
    let _ = pending.await;
    // Whether the gateway notices at once (released) or only when the upstream
    // answers "wrong password" (committed), the slot must not stay reserved.
    let key = poolgate::client_ip::client_key("127.0.0.1".parse().unwrap(), 64);
    let settled = eventually(Duration::from_secs(10), || {
        s.app
            .guard_state
            .login_ip
            .show(key, Duration::from_secs(600))
            .is_none_or(|e| e.inflight == Some(0))
    })
    .await;
    assert!(settled, "the abandoned request's reservation is settled");
    let shown = s
        .app
        .guard_state
        .login_ip
        .show(key, Duration::from_secs(600));
    assert!(shown.is_none_or(|e| e.count <= 1), "{shown:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_window_passes_and_logins_are_forwarded_again() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 1)}))
        .start()
        .await;
    assert_eq!(
        wrong_login(s.gw(), "bob", None).await.json(),
        wrong_password_v2()
    );
    // Within the window: refused (unless the one-second window already passed).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut forwarded_again = false;
    while std::time::Instant::now() < deadline {
        let r = post_json(s.gw(), LOGIN, &login_body("bob", "right"), &[]).await;
        if r.json() == login_ok_v2() {
            forwarded_again = true;
            break;
        }
        assert_eq!(r.json(), captcha_required_v2());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forwarded_again, "a 1s window ended within 10s");
    assert_eq!(s.up.count(LOGIN), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn admin_counters_and_unblock() {
    let s = Setup::new(json!({
        "loginFailCheck": check(2, 60),
        "loginPasswordFailCheck": check(3, 60),
    }))
    .start()
    .await;
    for _ in 0..2 {
        wrong_login(s.gw(), "Bob@Example.com", None).await;
    }
    assert_eq!(
        wrong_login(s.gw(), "bob@example.com", None).await.json(),
        captcha_required_v2()
    );
    let (st, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    assert_eq!(st, StatusCode::OK);
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["ip"], "127.0.0.1");
    assert_eq!(c["login_failures"]["count"], 2, "{c}");
    let remaining = c["login_failures"]["window_remaining_secs"]
        .as_u64()
        .unwrap();
    assert!((1..=60).contains(&remaining), "{c}");
    let (_, c) = admin_get(s.admin(), "/counters?account=bob@example.com").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["password_failures"]["count"], 2, "{c}");

    // GET on /unblock is refused; POST clears the client's count.
    let (st, _) = admin_get(s.admin(), "/unblock?ip=127.0.0.1").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let (st, _) = admin_post(s.admin(), "/unblock?ip=127.0.0.1").await;
    assert_eq!(st, StatusCode::OK);
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert!(c["login_failures"].is_null(), "{c}");
    // The next login is forwarded again: now the account (2 of 3) fails a third time.
    assert_eq!(
        wrong_login(s.gw(), "bob@example.com", None).await.json(),
        wrong_password_v2()
    );
    assert_eq!(s.up.count(LOGIN), 3);
    // The IP counter is at 1; the account counter at 3: the account needs a captcha.
    assert_eq!(
        post_json(s.gw(), LOGIN, &login_body("BOB@example.com", "right"), &[])
            .await
            .json(),
        captcha_required_v2()
    );
    let (st, _) = admin_post(s.admin(), "/unblock?account=Bob%40Example.com").await;
    assert_eq!(st, StatusCode::OK);
    let (_, c) = admin_get(s.admin(), "/counters?account=bob@example.com").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert!(c["password_failures"].is_null(), "{c}");
    assert_eq!(
        post_json(s.gw(), LOGIN, &login_body("bob@example.com", "right"), &[])
            .await
            .json(),
        login_ok_v2()
    );
    assert_eq!(s.up.count(LOGIN), 4);
    // A phone number's `+` is not a space.
    wrong_login(s.gw(), "+86 138-0013-8000", None).await;
    let (_, c) = admin_get(s.admin(), "/counters?account=+8613800138000").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["password_failures"]["count"], 1, "{c}");
    // Bad parameters.
    let (st, _) = admin_get(s.admin(), "/counters").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = admin_get(s.admin(), "/counters?ip=not-an-ip").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    s.shutdown().await;
}

#[tokio::test]
async fn unblock_ipv6_clears_the_whole_64() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .trusted()
        .start()
        .await;
    wrong_login(s.gw(), "bob", Some("2001:db8:9:9::1")).await;
    assert_eq!(
        wrong_login(s.gw(), "bob", Some("2001:db8:9:9::2"))
            .await
            .json(),
        captcha_required_v2()
    );
    let (_, c) = admin_get(s.admin(), "/counters?ip=2001:db8:9:9::abcd").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 1, "{c}");
    let (st, _) = admin_post(s.admin(), "/unblock?ip=2001:db8:9:9::3").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        wrong_login(s.gw(), "bob", Some("2001:db8:9:9::4"))
            .await
            .json(),
        wrong_password_v2()
    );
    assert_eq!(s.up.count(LOGIN), 2);
    s.shutdown().await;
}
