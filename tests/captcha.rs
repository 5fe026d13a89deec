//! poolgate's own captcha, end to end: the v2 image with its cookie and the
//! v3 token in the body; required, wrong, single use and bound to the client
//! that fetched it; the endpoints answered by the gateway; one solved
//! captcha lets exactly one of many parallel logins through.

mod harness;

use futures_util::future::join_all;
use harness::fresh::{get, post_json};
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

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
    let r = v2_login_with_captcha(&s, xff[0].1, &cookie, ("bob", "right", wrong_answer)).await;
    assert_eq!(r.json(), captcha_failed_v2());
    // (c) Any check burns it: the right answer afterwards is refused too.
    let r = v2_login_with_captcha(&s, xff[0].1, &cookie, ("bob", "right", &answer)).await;
    assert_eq!(r.json(), captcha_failed_v2(), "a captcha is single use");
    assert_eq!(s.up.count(LOGIN), 1);

    // Solved: forwarded (answers are case-insensitive; other cookies may come first).
    let (cookie, token) = v2_captcha(&s, me).await;
    let answer = answer_of(&s, &token).to_lowercase();
    let cookies = format!("session=abc; {cookie}; theme=dark");
    let r = v2_login_with_captcha(&s, xff[0].1, &cookies, ("bob", "right", &answer)).await;
    assert_eq!(
        r.json(),
        login_ok_v2(),
        "a solved captcha lets the login through"
    );
    assert_eq!(s.up.count(LOGIN), 2);
    // (c) Reusing the solved token: 2001.
    let r = v2_login_with_captcha(&s, xff[0].1, &cookies, ("bob", "right", &answer)).await;
    assert_eq!(r.json(), captcha_failed_v2());
    assert_eq!(s.up.count(LOGIN), 2);

    // (d) A token fetched by another client is refused, even with the right answer.
    let (cookie, token) = v2_captcha(&s, Some("203.0.113.21")).await;
    let answer = answer_of(&s, &token);
    let r = v2_login_with_captcha(&s, xff[0].1, &cookie, ("bob", "right", &answer)).await;
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

/// A login a solved captcha lets past a limit is still an attempt: a wrong
/// password sent with it counts on every counter the limit is made of (the
/// slots are reserved over the limit, not skipped), so solving captchas buys
/// an attacker no attempt the count does not see.
#[tokio::test]
async fn a_wrong_password_sent_with_a_solved_captcha_still_counts() {
    let s = Setup::new(json!({
        "loginFailCheck": check(1, 60),
        "loginPasswordFailCheck": check(1, 60),
    }))
    .trusted()
    .start()
    .await;
    let me = Some("203.0.113.30");
    let xff = [("x-forwarded-for", "203.0.113.30")];
    wrong_login(s.gw(), "carol", me).await;
    assert_eq!(
        wrong_login(s.gw(), "carol", me).await.json(),
        captcha_required_v2()
    );
    let (cookie, token) = v2_captcha(&s, me).await;
    let answer = answer_of(&s, &token);
    let r = v2_login_with_captcha(&s, xff[0].1, &cookie, ("carol", "wrong", &answer)).await;
    assert_eq!(r.json(), wrong_password_v2(), "forwarded, and wrong");
    assert_eq!(s.up.count(LOGIN), 2);

    let (_, c) = admin_get(s.admin(), "/counters?ip=203.0.113.30").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 2, "{c}");
    let (_, c) = admin_get(s.admin(), "/counters?account=carol").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["password_failures"]["count"], 2, "{c}");
    s.shutdown().await;
}
