//! Registration guards end to end: `registerDisabled` in the v2, v3 and
//! GraphQL answer shapes, `frequentRegisterCheck`, the whitelist, and
//! `passwordStrength` (levels 1-4, encrypted passwords). Every refused
//! registration is checked not to have reached the fake upstream.

mod harness;

use harness::fresh::post_json;
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

fn reg(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

fn v3_signup(email: &str, password: &str) -> Value {
    json!({"connection": "PASSWORD", "passwordPayload": {"email": email, "password": password}})
}

fn gql_register(email: &str, password: &str) -> Value {
    json!({
        "query": "mutation registerByEmail($input: RegisterByEmailInput!) { registerByEmail(input: $input) { id email } }",
        "variables": {"input": {"email": email, "password": password}}
    })
}

/// The fake upstream's answer to a v2 registration.
fn reg_ok() -> Value {
    json!({"code": 200, "message": "ok", "data": {}})
}

#[tokio::test]
async fn register_disabled_in_every_api_shape() {
    let s = Setup::new(json!({"registerDisabled": true})).start().await;
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "abc12!"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), v2_err(2031, "应用已禁止注册用户"));
    // Other v2 registration routes too.
    let r = post_json(
        s.gw(),
        "/api/v2/register/username",
        &json!({"username": "alice", "password": "abc12!"}),
        &[],
    )
    .await;
    assert_eq!(r.json()["code"], 2031);
    let r = post_json(s.gw(), SIGNUP, &v3_signup("a@x.com", "abc12!"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "message": "应用已禁止注册用户", "apiCode": 2031, "data": null})
    );
    let r = post_json(s.gw(), GRAPHQL, &gql_register("a@x.com", "abc12!"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"data": null, "errors": [{"message": {"code": 2031, "message": "应用已禁止注册用户"}, "extensions": {"code": 2031}}]})
    );
    assert_eq!(s.up.total(), 0, "no registration reached the upstream");
    // Logins are not registrations.
    let r = post_json(s.gw(), LOGIN, &login_body("a@x.com", "right"), &[]).await;
    assert_eq!(r.json(), login_ok_v2());
    assert_eq!(s.up.total(), 1);
    let m = metrics(s.admin()).await;
    assert_eq!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="reject",guard="register_disabled",reason="register_disabled"}"#
        ),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"poolgate_rejections_total{reason="register_disabled"}"#
        ),
        Some(4.0)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn frequent_register_check_limits_registrations_per_client() {
    let s = Setup::new(json!({"frequentRegisterCheck": check(2, 60)}))
        .trusted()
        .start()
        .await;
    let me = [("x-forwarded-for", "203.0.113.70")];
    for i in 0..2 {
        let r = post_json(
            s.gw(),
            REGISTER,
            &reg(&format!("u{i}@x.com"), "abc12!"),
            &me,
        )
        .await;
        assert_eq!(r.json(), reg_ok());
    }
    let r = post_json(s.gw(), REGISTER, &reg("u2@x.com", "abc12!"), &me).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), v2_err(2100, "注册过于频繁，请稍候再试"));
    let retry = r.retry_after().expect("Retry-After");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // v3 and GraphQL registrations from the same client are counted together.
    let r = post_json(s.gw(), SIGNUP, &v3_signup("u3@x.com", "abc12!"), &me).await;
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "message": "注册过于频繁，请稍候再试", "apiCode": 2100, "data": null})
    );
    let r = post_json(s.gw(), GRAPHQL, &gql_register("u4@x.com", "abc12!"), &me).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2100);
    assert_eq!(s.up.count(REGISTER), 2);
    assert_eq!(s.up.total(), 2);
    // Another client may still register.
    let r = post_json(
        s.gw(),
        SIGNUP,
        &v3_signup("u5@x.com", "abc12!"),
        &[("x-forwarded-for", "203.0.113.71")],
    )
    .await;
    assert_eq!(r.json()["statusCode"], 200);
    assert_eq!(s.up.total(), 3);
    let (_, c) = admin_get(s.admin(), "/counters?ip=203.0.113.70").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["registrations"]["count"], 2, "{c}");
    s.shutdown().await;
}

#[tokio::test]
async fn refused_registrations_do_not_count_toward_the_frequency_limit() {
    let s = Setup::new(json!({"frequentRegisterCheck": check(1, 60), "passwordStrength": 1}))
        .start()
        .await;
    for _ in 0..3 {
        let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "12345"), &[]).await;
        assert_eq!(r.json()["code"], 2029);
    }
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "123456"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn whitelist_restricts_email_registrations() {
    let s = Setup::new(json!({"whitelist": {"emailEnabled": true, "phoneEnabled": false, "usernameEnabled": false}}))
        .whitelist(json!({"email": ["ok@x.com"]}))
        .start()
        .await;
    let r = post_json(s.gw(), REGISTER, &reg("ok@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    let r = post_json(s.gw(), REGISTER, &reg("OK@X.com", "abc12!"), &[]).await;
    assert_eq!(r.json(), reg_ok(), "emails compare case-insensitively");
    let r = post_json(s.gw(), REGISTER, &reg(" ok@x.com ", "abc12!"), &[]).await;
    assert_eq!(
        r.json(),
        reg_ok(),
        "surrounding space is not part of an email"
    );
    assert_eq!(s.up.count(REGISTER), 3);
    let r = post_json(s.gw(), REGISTER, &reg("other@x.com", "abc12!"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), v2_err(2040, "该账号不在注册白名单中"));
    // Without an identifier there is nothing to whitelist.
    let r = post_json(s.gw(), REGISTER, &json!({"password": "abc12!"}), &[]).await;
    assert_eq!(r.json()["code"], 2040);
    // v3 and GraphQL.
    let r = post_json(s.gw(), SIGNUP, &v3_signup("other@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json()["apiCode"], 2040);
    let r = post_json(s.gw(), SIGNUP, &v3_signup("Ok@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json()["statusCode"], 200);
    let r = post_json(s.gw(), GRAPHQL, &gql_register("other@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2040);
    assert_eq!(s.up.count(REGISTER), 3);
    assert_eq!(s.up.total(), 4);
    // Usernames are not restricted by the email whitelist.
    let r = post_json(
        s.gw(),
        "/api/v2/register/username",
        &json!({"username": "zed", "password": "abc12!"}),
        &[],
    )
    .await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.total(), 5);
    s.shutdown().await;
}

#[tokio::test]
async fn whitelist_file_changes_apply_on_reload() {
    let s = Setup::new(json!({"whitelist": {"emailEnabled": true}}))
        .whitelist(json!({"email": ["ok@x.com"]}))
        .start()
        .await;
    let r = post_json(s.gw(), REGISTER, &reg("new@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json()["code"], 2040);
    let wl = s.pool_path.with_file_name("whitelist.json");
    let before = s.app.policy.current().unwrap().version.clone();
    write_pool(&wl, &json!({"email": ["ok@x.com", "new@x.com"]}));
    s.app.reload();
    let applied = eventually(std::time::Duration::from_secs(10), || {
        s.app.policy.current().is_some_and(|p| p.version != before)
    })
    .await;
    assert!(applied, "a whitelist change is a new policy");
    let r = post_json(s.gw(), REGISTER, &reg("new@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn password_strength_levels() {
    let mut p = pool(json!({"passwordStrength": 3}));
    let s = Setup::new(p.clone()).start().await;
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "abc123"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), v2_err(2061, "密码强度不符合要求"));
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "ab1!x"), &[]).await;
    assert_eq!(r.json(), v2_err(2029, "密码长度不能少于 6 位"));
    assert_eq!(s.up.total(), 0);
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.count(REGISTER), 1);
    // Same rule on v3 sign-up and GraphQL.
    let r = post_json(s.gw(), SIGNUP, &v3_signup("a@x.com", "abc123"), &[]).await;
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "message": "密码强度不符合要求", "apiCode": 2061, "data": null})
    );
    let r = post_json(s.gw(), GRAPHQL, &gql_register("a@x.com", "abc123"), &[]).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2061);
    // Password set/reset routes are judged too.
    let r = post_json(
        s.gw(),
        "/api/v2/password/reset/email",
        &json!({"email": "a@x.com", "code": "1234", "newPassword": "abc123"}),
        &[],
    )
    .await;
    assert_eq!(r.json(), v2_err(2061, "密码强度不符合要求"));
    assert_eq!(s.up.total(), 1);

    // An RSA-encrypted password (base64 of 128 bytes: 172 characters) cannot be judged: forwarded.
    let rsa = format!("{}==", "Qk".repeat(85));
    assert_eq!(rsa.len(), 172);
    let r = post_json(s.gw(), REGISTER, &reg("b@x.com", &rsa), &[]).await;
    assert_eq!(r.json(), reg_ok());
    // v3 says so explicitly: a weak-looking password marked RSA is forwarded.
    let mut body = v3_signup("c@x.com", "abc");
    body["options"] = json!({"passwordEncryptType": "rsa"});
    let r = post_json(s.gw(), SIGNUP, &body, &[]).await;
    assert_eq!(r.json()["statusCode"], 200);
    // ...but "none" is a clear password.
    body["options"] = json!({"passwordEncryptType": "none"});
    let r = post_json(s.gw(), SIGNUP, &body, &[]).await;
    assert_eq!(r.json()["apiCode"], 2029);
    assert_eq!(s.up.total(), 3);
    let m = metrics(s.admin()).await;
    assert!(sample(&m, "poolgate_encrypted_passwords_total").is_some_and(|v| v >= 2.0));

    // Level 4: the pool's own regex and message.
    p["passwordStrength"] = json!(4);
    p["customPasswordStrength"] = json!({"enabled": true, "regex": "^[A-Z][a-zA-Z0-9!]{7,}$", "message": "至少 8 位且以大写字母开头"});
    s.swap_pool(&p, |c| {
        matches!(
            c.password_rule,
            poolgate::policy::PasswordRule::Custom { .. }
        )
    })
    .await;
    let r = post_json(s.gw(), REGISTER, &reg("d@x.com", "abc12!"), &[]).await;
    assert_eq!(r.json(), v2_err(2061, "至少 8 位且以大写字母开头"));
    let r = post_json(s.gw(), REGISTER, &reg("d@x.com", "Abcdefgh1"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.total(), 4);

    // JavaScript patterns with look-ahead, as Authing's console suggests them,
    // are enforced too (not refused as an invalid policy).
    p["customPasswordStrength"] = json!({"enabled": true, "regex": "^(?=.*[A-Z])(?=.*\\d).{8,}$", "message": "需要大写字母和数字"});
    s.swap_pool(&p, |c| {
        matches!(&c.password_rule, poolgate::policy::PasswordRule::Custom { regex, .. } if regex.as_str().contains("(?="))
    })
    .await;
    let r = post_json(s.gw(), REGISTER, &reg("e@x.com", "abcdefgh1"), &[]).await;
    assert_eq!(r.json(), v2_err(2061, "需要大写字母和数字"));
    let r = post_json(s.gw(), REGISTER, &reg("e@x.com", "abcdEfgh1"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.total(), 5);
    s.shutdown().await;
}

#[tokio::test]
async fn password_strength_levels_1_and_2() {
    let mut p = pool(json!({"passwordStrength": 1}));
    let s = Setup::new(p.clone()).start().await;
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "12345"), &[]).await;
    assert_eq!(r.json()["code"], 2029);
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "123456"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    p["passwordStrength"] = json!(2);
    s.swap_pool(&p, |c| {
        matches!(c.password_rule, poolgate::policy::PasswordRule::TwoClasses)
    })
    .await;
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "123456"), &[]).await;
    assert_eq!(r.json()["code"], 2061);
    let r = post_json(s.gw(), REGISTER, &reg("a@x.com", "abc123"), &[]).await;
    assert_eq!(r.json(), reg_ok());
    assert_eq!(s.up.total(), 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_registrations_never_exceed_the_limit() {
    let s = Setup::new(json!({"frequentRegisterCheck": check(2, 600)}))
        .start()
        .await;
    s.up.set_delay_ms(300);
    let gw = s.gw();
    let answers = futures_util::future::join_all((0..12).map(|i| {
        tokio::spawn(async move {
            post_json(gw, REGISTER, &reg(&format!("p{i}@x.com"), "abc12!"), &[]).await
        })
    }))
    .await;
    let codes: Vec<i64> = answers
        .into_iter()
        .map(|a| a.expect("task").json()["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 2, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|&&c| c == 2100).count(),
        10,
        "{codes:?}"
    );
    assert_eq!(s.up.count(REGISTER), 2);
    s.shutdown().await;
}
