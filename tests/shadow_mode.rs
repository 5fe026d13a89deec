//! Shadow mode is exact: every guard decides on its own, the request is
//! refused by the first violated guard that is not in dry run, and each
//! shadowed violation is logged and counted under its own guard. One test per
//! pair of guards that can meet on one request: shadowing one never lets the
//! other's verdict through. And dry run as a whole (`dry_run = true`, or a
//! list of guards): what it would refuse is forwarded and counted.

mod harness;

use harness::fresh::post_json;
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

/// `guard` rejected (`decision`) `reason` this many times, per the metrics.
fn decisions(m: &str, guard: &str, decision: &str) -> f64 {
    metric_sum(
        m,
        "poolgate_guard_decisions_total",
        &[("guard", guard), ("decision", decision)],
    )
}

fn shadowing(guards: &[&str]) -> String {
    let list: Vec<String> = guards.iter().map(|g| format!("{g:?}")).collect();
    format!("[guards]\ndry_run_guards = [{}]", list.join(", "))
}

/// Both counters of a login over their limits: client (`login_fail`) and
/// account (`password_fail`).
#[tokio::test]
async fn login_fail_and_password_fail() {
    let pool = json!({
        "loginFailCheck": check(1, 60),
        "loginPasswordFailCheck": check(1, 60),
        "loginFailStrategy": "captcha"
    });
    for (shadowed, refused_by) in [
        (vec!["login_fail"], Some("password_fail")),
        (vec!["password_fail"], Some("login_fail")),
        (vec!["login_fail", "password_fail"], None),
    ] {
        let s = Setup::new(pool.clone())
            .toml(&shadowing(&shadowed))
            .start()
            .await;
        assert_eq!(
            wrong_login(s.gw(), "bob@x.com", None).await.json(),
            wrong_password_v2()
        );
        let r = wrong_login(s.gw(), "bob@x.com", None).await;
        let m = metrics(s.admin()).await;
        match refused_by {
            Some(g) => {
                assert_eq!(r.json(), captcha_required_v2(), "{shadowed:?}");
                assert_eq!(decisions(&m, g, "reject"), 1.0, "{shadowed:?}\n{m}");
                assert_eq!(s.up.count(LOGIN), 1);
            }
            None => {
                assert_eq!(r.json(), wrong_password_v2(), "{shadowed:?}");
                assert_eq!(s.up.count(LOGIN), 2);
            }
        }
        for g in &shadowed {
            assert_eq!(decisions(&m, g, "shadow_reject"), 1.0, "{g}\n{m}");
        }
        s.shutdown().await;
    }
}

/// A locked account (`block-account`) and a client over its limit.
#[tokio::test]
async fn locked_account_and_login_fail() {
    let pool = json!({
        "loginFailCheck": check(1, 60),
        "loginPasswordFailCheck": check(1, 60),
        "loginFailStrategy": "block-account"
    });
    let s = Setup::new(pool.clone())
        .toml(&shadowing(&["password_fail"]))
        .start()
        .await;
    let _ = wrong_login(s.gw(), "bob@x.com", None).await;
    let r = wrong_login(s.gw(), "bob@x.com", None).await;
    assert_eq!(r.json(), captcha_required_v2(), "login_fail still refuses");
    s.shutdown().await;
    let s = Setup::new(pool)
        .toml(&shadowing(&["login_fail"]))
        .start()
        .await;
    let _ = wrong_login(s.gw(), "bob@x.com", None).await;
    let r = wrong_login(s.gw(), "bob@x.com", None).await;
    assert_eq!(r.json()["code"], 2057, "the lock still holds: {}", r.text());
    s.shutdown().await;
}

/// A client over its limit sending a wrong captcha: the captcha's verdict is
/// its own (2001); shadowing the limit does not shadow the captcha.
#[tokio::test]
async fn login_fail_and_captcha() {
    let pool = json!({"loginFailCheck": check(1, 60)});
    let body = json!({"account": "bob@x.com", "password": "wrong", "captchaCode": "ZZZZ"});
    let s = Setup::new(pool.clone())
        .toml(&shadowing(&["login_fail"]))
        .start()
        .await;
    let _ = wrong_login(s.gw(), "bob@x.com", None).await;
    let r = post_json(s.gw(), LOGIN, &body, &[]).await;
    assert_eq!(r.json(), captcha_failed_v2());
    assert_eq!(s.up.count(LOGIN), 1);
    s.shutdown().await;
    let s = Setup::new(pool)
        .toml(&shadowing(&["captcha"]))
        .start()
        .await;
    let _ = wrong_login(s.gw(), "bob@x.com", None).await;
    let r = post_json(s.gw(), LOGIN, &body, &[]).await;
    assert_eq!(
        r.json(),
        wrong_password_v2(),
        "the wrong captcha is shadowed"
    );
    let m = metrics(s.admin()).await;
    assert_eq!(decisions(&m, "captcha", "shadow_reject"), 1.0, "{m}");
    s.shutdown().await;
}

/// A registration breaking every rule: disabled, not on the whitelist, a
/// weak password, too frequent. Each shadowed rule hands the refusal to the
/// next one in order.
#[tokio::test]
async fn registration_rules_in_pairs() {
    let pool = json!({
        "registerDisabled": true,
        "whitelist": {"emailEnabled": true},
        "passwordStrength": 1,
        "frequentRegisterCheck": check(1, 60)
    });
    let reg = |email: &str| json!({"email": email, "password": "123"});
    let cases: Vec<(Vec<&str>, Option<i64>)> = vec![
        (vec!["register_disabled"], Some(2040)),
        (vec!["whitelist"], Some(2031)),
        (vec!["password_strength"], Some(2031)),
        (vec!["register_disabled", "whitelist"], Some(2029)),
        (
            vec!["register_disabled", "whitelist", "password_strength"],
            None,
        ),
    ];
    for (shadowed, code) in cases {
        let s = Setup::new(pool.clone())
            .whitelist(json!({"email": ["ok@x.com"]}))
            .toml(&shadowing(&shadowed))
            .start()
            .await;
        let r = post_json(s.gw(), REGISTER, &reg("no@x.com"), &[]).await;
        match code {
            Some(c) => {
                assert_eq!(r.json()["code"], c, "{shadowed:?}: {}", r.text());
                assert_eq!(s.up.total(), 0);
            }
            None => {
                assert_eq!(r.json()["code"], 200, "{shadowed:?}: {}", r.text());
                // The next one is over frequentRegisterCheck, which is not shadowed.
                let r = post_json(s.gw(), REGISTER, &reg("no2@x.com"), &[]).await;
                assert_eq!(r.json()["code"], 2100, "{shadowed:?}: {}", r.text());
                assert_eq!(s.up.total(), 1);
            }
        }
        let m = metrics(s.admin()).await;
        for g in &shadowed {
            assert!(decisions(&m, g, "shadow_reject") >= 1.0, "{g}\n{m}");
        }
        s.shutdown().await;
    }
}

/// CORS and the rate limit meet every other guard before it: shadowing them
/// leaves the policy's rules in force.
#[tokio::test]
async fn cors_and_rate_limit_before_the_rules() {
    let pool = json!({
        "registerDisabled": true,
        "allowedOrigins": "https://app.sample.com"
    });
    let s = Setup::new(pool)
        .toml(&format!(
            "{}\n[rate_limit]\nregister = {{ per_second = 1, burst = 1 }}",
            shadowing(&["cors", "rate_limit"])
        ))
        .start()
        .await;
    let body = json!({"email": "a@x.com", "password": "long-enough"});
    for _ in 0..2 {
        let r = post_json(
            s.gw(),
            REGISTER,
            &body,
            &[("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(r.json()["code"], 2031, "{}", r.text());
    }
    let m = metrics(s.admin()).await;
    assert!(decisions(&m, "cors", "shadow_reject") >= 2.0, "{m}");
    assert!(decisions(&m, "rate_limit", "shadow_reject") >= 1.0, "{m}");
    assert_eq!(decisions(&m, "register_disabled", "reject"), 2.0, "{m}");
    assert_eq!(s.up.total(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn dry_run_forwards_what_it_would_reject_and_counts_it() {
    let s = Setup::new(json!({
        "loginFailCheck": check(1, 60),
        "allowedOrigins": "https://app.sample.com",
        "registerDisabled": true,
    }))
    .toml("[guards]\ndry_run = true")
    .start()
    .await;
    for _ in 0..3 {
        assert_eq!(
            wrong_login(s.gw(), "a", None).await.json(),
            wrong_password_v2()
        );
    }
    assert_eq!(s.up.count(LOGIN), 3);
    let r = post_json(
        s.gw(),
        REGISTER,
        &json!({"email": "a@x.com", "password": "abc12!"}),
        &[],
    )
    .await;
    assert_eq!(r.json()["code"], 200);
    let r = post_json(
        s.gw(),
        "/api/v2/users/me",
        &json!({}),
        &[("origin", "https://evil.com")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(s.up.total(), 5);
    // Over-limit logins still count (the counter shows every forwarded failure).
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 3, "{c}");
    let m = metrics(s.admin()).await;
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="shadow_reject",guard="login_fail",reason="captcha_required"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="shadow_reject",guard="register_disabled",reason="register_disabled"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="shadow_reject",guard="cors",reason="origin_not_allowed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "poolgate_guard_decisions_total",
            &[("decision", "reject")]
        ),
        None,
        "nothing is rejected in dry run:\n{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn dry_run_of_cors_only_still_enforces_login_limits() {
    let s = Setup::new(json!({
        "loginFailCheck": check(1, 60),
        "allowedOrigins": "https://app.sample.com",
    }))
    .toml("[guards]\ndry_run_guards = [\"cors\"]")
    .start()
    .await;
    let evil = [("origin", "https://evil.com")];
    let r = post_json(s.gw(), "/api/v2/users/me", &json!({}), &evil).await;
    assert_eq!(r.status, StatusCode::OK, "cors is in dry run");
    assert!(r.header("access-control-allow-origin").is_none());
    let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &evil).await;
    assert_eq!(r.json(), wrong_password_v2());
    let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &evil).await;
    assert_eq!(r.json(), captcha_required_v2(), "login_fail is enforced");
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(s.up.total(), 2);
    let m = metrics(s.admin()).await;
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="shadow_reject",guard="cors",reason="origin_not_allowed"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="reject",guard="login_fail",reason="captcha_required"}"#
        ),
        Some(1.0)
    );
    s.shutdown().await;
}
