//! `loginPasswordFailCheck`, wrong passwords per account, end to end:
//! accounts compared case-insensitively across clients and API shapes, both
//! strategies (`captcha`, `block-account` with `Retry-After`), parallel
//! bursts on one account from many clients, a full counter, and switching
//! strategy without losing the count.

mod harness;

use futures_util::future::join_all;
use harness::fresh::post_json;
use harness::*;
use http::StatusCode;
use serde_json::json;

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
    let r = v2_login_with_captcha(
        &s,
        "203.0.113.44",
        &cookie,
        ("bob@example.com", "right", &answer),
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
    let r = v2_login_with_captcha(
        &s,
        "203.0.113.62",
        &cookie,
        ("bob@example.com", "right", &answer),
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

/// Switching `loginFailStrategy` from captcha to block-account keeps the
/// account's count: the next login of that account is locked at once.
#[tokio::test]
async fn switching_to_block_account_keeps_the_accounts_count() {
    let mut p = pool(json!({
        "loginPasswordFailCheck": check(2, 60),
        "loginFailStrategy": "captcha",
    }));
    let s = Setup::new(p.clone()).start().await;
    wrong_login(s.gw(), "Bob@Example.com", None).await;
    wrong_login(s.gw(), "bob@example.com", None).await;
    let r = wrong_login(s.gw(), "BOB@example.com", None).await;
    assert_eq!(r.json(), captcha_required_v2());
    assert_eq!(s.up.count(LOGIN), 2);
    p["loginFailStrategy"] = json!("block-account");
    s.swap_pool(&p, |c| {
        c.fail_strategy == poolgate::policy::FailStrategy::BlockAccount
    })
    .await;
    let body = json!({"account": "bob@example.com", "password": "right", "captchaCode": "x"});
    let r = post_json(s.gw(), LOGIN, &body, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["code"], 2057, "{}", r.text());
    let retry = r.retry_after().expect("Retry-After on a locked account");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(s.up.count(LOGIN), 2);
    s.shutdown().await;
}
