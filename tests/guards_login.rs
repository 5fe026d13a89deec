//! Login guards end to end over real sockets: `loginFailCheck` per client
//! (trusted proxies, IPv6 /64 grouping), captchas (v2 cookie and v3 token:
//! required, wrong, single use, bound to the client), `loginPasswordFailCheck`
//! per account with both strategies, parallel bursts, hot-swapped limits, and
//! the admin `/counters` and `/unblock` endpoints.
//!
//! Every rejected request is also checked not to have reached the fake upstream.

mod guards_common;

use std::time::Duration;

use futures_util::future::join_all;
use guards_common::*;
use http::StatusCode;
use serde_json::{json, Value};

/// Fetches a v2 captcha as the client `xff` (if given); returns (cookie pair, token).
async fn v2_captcha(stack: &Stack, xff: Option<&str>) -> (String, String) {
    let h: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    let r = get(stack.gw(), "/api/v2/security/captcha", &h).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.text().starts_with("<svg"), "an SVG image: {}", r.text());
    let set_cookie = r
        .header("set-cookie")
        .expect("a captcha cookie")
        .to_string();
    let pair = set_cookie.split(';').next().unwrap().trim().to_string();
    let token = pair
        .strip_prefix("poolgate_captcha=")
        .unwrap_or_else(|| panic!("cookie is poolgate_captcha: {set_cookie}"))
        .to_string();
    assert_eq!(token.len(), 32, "a 16-byte hex token: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    (pair, token)
}

/// Fetches a v3 captcha as client `ip`; returns its token.
async fn v3_captcha(stack: &Stack, ip: &str) -> String {
    let r = get(
        stack.gw(),
        "/api/v3/get-captcha-code",
        &[("x-forwarded-for", ip)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["statusCode"], 200);
    assert!(v["data"]["captchaCodeSvg"]
        .as_str()
        .is_some_and(|s| s.starts_with("<svg")));
    v["data"]["captchaToken"].as_str().unwrap().to_string()
}

fn answer_of(stack: &Stack, token: &str) -> String {
    stack
        .app
        .guard_state
        .captcha
        .peek_answer(token)
        .expect("the captcha is outstanding")
}

fn with_captcha(account: &str, password: &str, code: &str) -> Value {
    json!({"account": account, "password": password, "captchaCode": code})
}

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

#[tokio::test]
async fn v2_captcha_required_wrong_single_use_and_bound_to_the_client() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .trusted()
        .start()
        .await;
    let me = Some("203.0.113.20");
    let xff = [("x-forwarded-for", "203.0.113.20")];
    assert_eq!(
        wrong_login(s.gw(), "bob", me).await.json(),
        wrong_password_v2()
    );
    // (a) Required, none given.
    assert_eq!(
        wrong_login(s.gw(), "bob", me).await.json(),
        captcha_required_v2()
    );
    // A captcha code without any token (no cookie) is a failed captcha.
    let r = post_json(s.gw(), LOGIN, &with_captcha("bob", "right", "ABCD"), &xff).await;
    assert_eq!(r.json(), captcha_failed_v2());

    // (b) A wrong answer with a valid cookie: 2001, not forwarded.
    let (cookie, token) = v2_captcha(&s, me).await;
    let answer = answer_of(&s, &token);
    let wrong_answer = if answer == "2222" { "3333" } else { "2222" };
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob", "right", wrong_answer),
        &[xff[0], ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.json(), captcha_failed_v2());
    // (c) Any check burns it: the right answer afterwards is refused too.
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob", "right", &answer),
        &[xff[0], ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.json(), captcha_failed_v2(), "a captcha is single use");
    assert_eq!(s.up.count(LOGIN), 1);

    // Solved: forwarded (answers are case-insensitive; other cookies may come first).
    let (cookie, token) = v2_captcha(&s, me).await;
    let answer = answer_of(&s, &token).to_lowercase();
    let cookies = format!("session=abc; {cookie}; theme=dark");
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob", "right", &answer),
        &[xff[0], ("cookie", &cookies)],
    )
    .await;
    assert_eq!(
        r.json(),
        login_ok_v2(),
        "a solved captcha lets the login through"
    );
    assert_eq!(s.up.count(LOGIN), 2);
    // (c) Reusing the solved token: 2001.
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob", "right", &answer),
        &[xff[0], ("cookie", &cookies)],
    )
    .await;
    assert_eq!(r.json(), captcha_failed_v2());
    assert_eq!(s.up.count(LOGIN), 2);

    // (d) A token fetched by another client is refused, even with the right answer.
    let (cookie, token) = v2_captcha(&s, Some("203.0.113.21")).await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob", "right", &answer),
        &[xff[0], ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.json(), captcha_failed_v2());
    assert_eq!(s.up.count(LOGIN), 2);

    let m = metrics(s.admin()).await;
    for reason in ["captcha_unknown", "captcha_wrong", "captcha_other_client"] {
        let series = format!(
            r#"poolgate_guard_decisions_total{{decision="reject",guard="captcha",reason="{reason}"}}"#
        );
        assert!(
            sample(&m, &series).is_some_and(|v| v >= 1.0),
            "{series}\n{m}"
        );
    }
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="allow_captcha",guard="login_fail",reason="captcha_solved"}"#
        ),
        Some(1.0)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn v3_captcha_token_in_the_body() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .trusted()
        .start()
        .await;
    let xff = [("x-forwarded-for", "203.0.113.30")];
    let signin = |pw: &str, code: Option<&str>, token: Option<&str>| {
        let mut v = json!({"connection": "PASSWORD", "passwordPayload": {"email": "a@x.com", "password": pw}});
        if code.is_some() || token.is_some() {
            v["options"] = json!({"captchaCode": code, "captchaToken": token});
        }
        v
    };
    let r = post_json(s.gw(), SIGNIN, &signin("no", None, None), &xff).await;
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "apiCode": 2333, "message": "账号或密码错误", "data": null})
    );
    let r = post_json(s.gw(), SIGNIN, &signin("right", None, None), &xff).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "message": "账号异常，需要输入验证码", "apiCode": 2000, "data": null})
    );

    let failed_v3 = json!({"statusCode": 400, "message": "验证码验证失败(验证码错误)", "apiCode": 2001, "data": null});

    // Wrong answer: 2001, burned.
    let token = v3_captcha(&s, "203.0.113.30").await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right", Some("ZZZZ"), Some(&token)),
        &xff,
    )
    .await;
    assert_eq!(r.json(), failed_v3);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right", Some(&answer), Some(&token)),
        &xff,
    )
    .await;
    assert_eq!(r.json(), failed_v3, "single use");
    // Another client's token.
    let token = v3_captcha(&s, "203.0.113.31").await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right", Some(&answer), Some(&token)),
        &xff,
    )
    .await;
    assert_eq!(r.json(), failed_v3, "bound to the client that fetched it");
    assert_eq!(s.up.count(SIGNIN), 1);
    // Solved.
    let token = v3_captcha(&s, "203.0.113.30").await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right", Some(&answer), Some(&token)),
        &xff,
    )
    .await;
    assert_eq!(r.json()["statusCode"], 200);
    assert_eq!(s.up.count(SIGNIN), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn captcha_endpoints_are_answered_by_the_gateway() {
    let s = Setup::new(json!({})).start().await;
    let r = get(s.gw(), "/api/v2/security/captcha?r=0.123", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("poolgate_captcha="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("poolgate_captcha=");
    // The answer is not in the markup.
    let answer = answer_of(&s, token);
    assert!(
        !r.text().contains(&answer),
        "answer {answer} leaks into the SVG"
    );
    let r = get(s.gw(), "/api/v3/get-captcha-code", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert!(v["data"]["captchaCodeSvg"].is_string());
    assert!(v["data"]["captchaToken"].is_string());
    assert_eq!(s.up.total(), 0, "captchas never reach the upstream");
    s.shutdown().await;
}

#[tokio::test]
async fn password_fail_check_counts_accounts_case_insensitively_across_clients() {
    let s = Setup::new(json!({
        "loginPasswordFailCheck": check(2, 60),
        "loginFailStrategy": "captcha",
    }))
    .trusted()
    .start()
    .await;
    assert_eq!(
        wrong_login(s.gw(), "Bob@Example.com", Some("203.0.113.40"))
            .await
            .json(),
        wrong_password_v2()
    );
    assert_eq!(
        wrong_login(s.gw(), "bob@example.com", Some("203.0.113.41"))
            .await
            .json(),
        wrong_password_v2()
    );
    // A third client, any spelling, even the right password: the account needs a captcha.
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("BOB@EXAMPLE.COM", "right"),
        &[("x-forwarded-for", "203.0.113.42")],
    )
    .await;
    assert_eq!(r.json(), captcha_required_v2());
    assert_eq!(s.up.count(LOGIN), 2);
    // Another account, the same clients: unaffected.
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("carol@example.com", "right"),
        &[("x-forwarded-for", "203.0.113.40")],
    )
    .await;
    assert_eq!(r.json(), login_ok_v2());
    // The account is shared across API shapes: v3 sign-in by email is locked too.
    let r = post_json(
        s.gw(),
        SIGNIN,
        &json!({"connection": "PASSWORD", "passwordPayload": {"email": "bob@example.com", "password": "right"}}),
        &[("x-forwarded-for", "203.0.113.43")],
    )
    .await;
    assert_eq!(r.json()["apiCode"], 2000);
    // With a solved captcha the account may try again.
    let (cookie, token) = v2_captcha(&s, Some("203.0.113.44")).await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob@example.com", "right", &answer),
        &[("x-forwarded-for", "203.0.113.44"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.json(), login_ok_v2());
    assert_eq!(s.up.count(LOGIN), 4);
    assert_eq!(s.up.count(SIGNIN), 0);
    let m = metrics(s.admin()).await;
    assert!(sample(
        &m,
        r#"poolgate_guard_decisions_total{decision="reject",guard="password_fail",reason="captcha_required"}"#
    )
    .is_some_and(|v| v >= 2.0));
    s.shutdown().await;
}

#[tokio::test]
async fn wrong_passwords_via_graphql_and_v3_count_for_the_account() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(2, 60)}))
        .trusted()
        .start()
        .await;
    // One wrong password through GraphQL, one through v3: the v2 login is then locked.
    let gql = json!({
        "query": "mutation login($input: LoginByEmailInput!) { loginByEmail(input: $input) { id token } }",
        "variables": {"input": {"email": "Dana@Example.com", "password": "wrong"}}
    });
    let r = post_json(
        s.gw(),
        GRAPHQL,
        &gql,
        &[("x-forwarded-for", "203.0.113.50")],
    )
    .await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2333);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &json!({"connection": "PASSWORD", "passwordPayload": {"email": "dana@example.com", "password": "wrong"}}),
        &[("x-forwarded-for", "203.0.113.51")],
    )
    .await;
    assert_eq!(r.json()["apiCode"], 2333);
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("dana@example.com", "right"),
        &[("x-forwarded-for", "203.0.113.52")],
    )
    .await;
    assert_eq!(r.json(), captcha_required_v2());
    // GraphQL answers in its own shape.
    let r = post_json(
        s.gw(),
        GRAPHQL,
        &gql,
        &[("x-forwarded-for", "203.0.113.53")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"data": null, "errors": [{"message": {"code": 2000, "message": "账号异常，需要输入验证码"}, "extensions": {"code": 2000}}]})
    );
    assert_eq!(s.up.count(GRAPHQL), 1);
    assert_eq!(s.up.count(SIGNIN), 1);
    assert_eq!(s.up.count(LOGIN), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn block_account_strategy_locks_with_retry_after() {
    let s = Setup::new(json!({
        "loginPasswordFailCheck": check(2, 60),
        "loginFailStrategy": "block-account",
    }))
    .trusted()
    .start()
    .await;
    wrong_login(s.gw(), "Bob@Example.com", Some("203.0.113.60")).await;
    wrong_login(s.gw(), "bob@example.com", Some("203.0.113.61")).await;
    assert_eq!(s.up.count(LOGIN), 2);
    let locked = json!({"code": 2057, "message": "密码错误次数过多，账号已被锁定，请稍后再试", "apiCode": 2057, "data": null});
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("bob@example.com", "right"),
        &[("x-forwarded-for", "203.0.113.62")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), locked);
    let retry = r.retry_after().expect("Retry-After on a locked account");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // A captcha does not unlock a locked account.
    let (cookie, token) = v2_captcha(&s, Some("203.0.113.62")).await;
    let answer = answer_of(&s, &token);
    let r = post_json(
        s.gw(),
        LOGIN,
        &with_captcha("bob@example.com", "right", &answer),
        &[("x-forwarded-for", "203.0.113.62"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.json(), locked);
    assert_eq!(s.up.count(LOGIN), 2);
    // Another account is unaffected.
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("alice@example.com", "right"),
        &[("x-forwarded-for", "203.0.113.62")],
    )
    .await;
    assert_eq!(r.json(), login_ok_v2());
    assert_eq!(s.up.count(LOGIN), 3);
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
            .is_none_or(|e| e.inflight == 0)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_burst_on_one_account_from_many_clients_forwards_exactly_the_limit() {
    let s = Setup::new(json!({
        "loginPasswordFailCheck": check(4, 600),
        "loginFailStrategy": "block-account",
    }))
    .trusted()
    .start()
    .await;
    s.up.set_delay_ms(300);
    let gw = s.gw();
    let answers = join_all((0..24).map(|i| {
        tokio::spawn(async move {
            let ip = format!("198.51.100.{}", i + 1);
            // Spellings of one account, each from its own client.
            let account = if i % 2 == 0 {
                "Eve@Example.com"
            } else {
                "eve@example.COM"
            };
            wrong_login(gw, account, Some(&ip)).await
        })
    }))
    .await;
    let mut codes: Vec<i64> = answers
        .into_iter()
        .map(|a| a.expect("task").json()["code"].as_i64().unwrap())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes.iter().filter(|&&c| c == 2333).count(), 4, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|&&c| c == 2057).count(),
        20,
        "{codes:?}"
    );
    assert_eq!(s.up.count(LOGIN), 4);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_solved_captcha_lets_exactly_one_parallel_login_through() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 600)}))
        .start()
        .await;
    wrong_login(s.gw(), "bob", None).await;
    let (cookie, token) = v2_captcha(&s, None).await;
    let answer = answer_of(&s, &token);
    let gw = s.gw();
    let answers = join_all((0..10).map(|_| {
        let (cookie, answer) = (cookie.clone(), answer.clone());
        tokio::spawn(async move {
            post_json(
                gw,
                LOGIN,
                &with_captcha("bob", "right", &answer),
                &[("cookie", &cookie)],
            )
            .await
        })
    }))
    .await;
    let bodies: Vec<Value> = answers
        .into_iter()
        .map(|a| a.expect("task").json())
        .collect();
    assert_eq!(
        bodies.iter().filter(|b| **b == login_ok_v2()).count(),
        1,
        "{bodies:?}"
    );
    assert_eq!(
        bodies.iter().filter(|b| **b == captcha_failed_v2()).count(),
        9,
        "{bodies:?}"
    );
    assert_eq!(s.up.count(LOGIN), 2);
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
async fn a_full_account_counter_asks_for_a_captcha_and_never_locks_a_new_account() {
    // block-account would answer 2057 "locked" to an account over its limit;
    // an account the full table cannot count is not over anything.
    let s = Setup::new(json!({
        "loginPasswordFailCheck": check(3, 60),
        "loginFailStrategy": "block-account"
    }))
    .toml("[guards]\nmax_tracked_keys = 2")
    .start()
    .await;
    for a in ["one@x.com", "two@x.com"] {
        let r = wrong_login(s.gw(), a, None).await;
        assert_eq!(r.json(), wrong_password_v2(), "{a} is counted");
    }
    let r = wrong_login(s.gw(), "three@x.com", None).await;
    assert_eq!(
        r.json(),
        captcha_required_v2(),
        "a captcha, not a lockout: {}",
        r.text()
    );
    assert_eq!(s.up.count(LOGIN), 2);
    s.shutdown().await;
}
