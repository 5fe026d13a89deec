//! Every call an official Authing SDK makes is judged by its meaning (issue
//! "Real Authing clients"): the routes and GraphQL fields the SDKs really
//! send, their arguments however they are spelled, each call of a batch, the
//! account the operation names (not a decoy field), the end user a trusted
//! backend names, phone numbers in any spelling, one-time codes, and paths
//! that mean a guarded route only after a second decoding. Each test here
//! failed on the gateway before this rule set; each refused request is
//! checked not to have reached the fake login service.

mod harness;

use std::time::Duration;

use harness::fresh::{post_json, post_raw};
use harness::*;
use http::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

fn gql(query: &str, variables: Value) -> Value {
    json!({ "query": query, "variables": variables })
}

const SUB_ACCOUNT: &str = "mutation loginBySubAccount($account: String!, $password: String!, $captchaCode: String, $clientIp: String) { loginBySubAccount(account: $account, password: $password, captchaCode: $captchaCode, clientIp: $clientIp) { id token } }";
const LOGIN_BY_EMAIL: &str =
    "mutation loginByEmail($input: LoginByEmailInput!) { loginByEmail(input: $input) { id token } }";

fn v3_err(r: &Reply) -> i64 {
    r.json()["apiCode"].as_i64().unwrap_or_default()
}

fn gql_code(r: &Reply) -> i64 {
    r.json()["errors"][0]["message"]["code"]
        .as_i64()
        .unwrap_or_default()
}

async fn counters(s: &Stack, query: &str) -> Value {
    let (st, body) = admin_get(s.admin(), &format!("/counters?{query}")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("counters JSON")
}

/// Once a client is gated, every login route answers 2000: the sub-account
/// login, the LDAP/AD password checks and v3's LDAP sign-in included.
#[tokio::test]
async fn a_gated_client_is_gated_on_every_login_route() {
    let s = Setup::new(json!({"loginFailCheck": check(2, 60)}))
        .start()
        .await;
    for _ in 0..2 {
        let r = post_json(
            s.gw(),
            GRAPHQL,
            &gql(
                LOGIN_BY_EMAIL,
                json!({"input": {"email": "a@x.com", "password": "wrong"}}),
            ),
            &[],
        )
        .await;
        assert_eq!(gql_code(&r), 2333);
    }
    let before = s.up.total();
    let r = post_json(
        s.gw(),
        GRAPHQL,
        &gql(SUB_ACCOUNT, json!({"account": "sub1", "password": "wrong"})),
        &[],
    )
    .await;
    assert_eq!(gql_code(&r), 2000, "{}", r.text());
    for path in ["/api/v2/ldap/verify-user", "/api/v2/ad/verify-user"] {
        let r = post_json(
            s.gw(),
            path,
            &json!({"username": "dir", "password": "x"}),
            &[],
        )
        .await;
        assert_eq!(r.json()["code"], 2000, "{path}: {}", r.text());
    }
    let r = post_json(
        s.gw(),
        SIGNIN,
        &json!({"connection": "LDAP", "ldapPayload": {"sAMAccountName": "dir", "password": "x"}}),
        &[],
    )
    .await;
    assert_eq!(v3_err(&r), 2000, "{}", r.text());
    assert_eq!(s.up.total(), before, "nothing reached the login service");
    // GraphQL logins are labelled by what they are, not by their transport.
    let m = metrics(s.admin()).await;
    assert_eq!(
        sample(
            &m,
            r#"poolgate_requests_total{method="POST",outcome="forwarded",route="login"}"#
        ),
        Some(2.0),
        "{m}"
    );
    s.shutdown().await;
}

/// Wrong directory passwords count for the directory account, whichever
/// client sends them (v3 LDAP/AD payloads and v2 verify-user alike).
#[tokio::test]
async fn directory_logins_count_per_account() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(2, 60)}))
        .trusted()
        .start()
        .await;
    let ldap = |pw: &str| json!({"connection": "LDAP", "ldapPayload": {"sAMAccountName": "Dir-User", "password": pw}});
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let r = post_json(s.gw(), SIGNIN, &ldap("wrong"), &[("x-forwarded-for", ip)]).await;
        assert_eq!(v3_err(&r), 2333, "{}", r.text());
    }
    let c = counters(&s, "account=dir-user").await;
    assert_eq!(c["password_failures"]["count"], 2, "{c}");
    let r = post_json(
        s.gw(),
        SIGNIN,
        &ldap("wrong"),
        &[("x-forwarded-for", "203.0.113.3")],
    )
    .await;
    assert_eq!(v3_err(&r), 2000, "{}", r.text());
    // AD payloads are their own connection, read from adPayload.
    let ad = json!({"connection": "AD", "adPayload": {"sAMAccountName": "ad-user", "password": "wrong"}});
    let r = post_json(s.gw(), SIGNIN, &ad, &[]).await;
    assert_eq!(v3_err(&r), 2333);
    let c = counters(&s, "account=ad-user").await;
    assert_eq!(c["password_failures"]["count"], 1, "{c}");
    // v2's verify-user counts the same way.
    for _ in 0..2 {
        let r = post_json(
            s.gw(),
            "/api/v2/ldap/verify-user",
            &json!({"username": "v2-dir", "password": "wrong"}),
            &[],
        )
        .await;
        assert_eq!(r.json()["code"], 2333);
    }
    let r = post_json(
        s.gw(),
        "/api/v2/ldap/verify-user",
        &json!({"username": "v2-dir", "password": "wrong"}),
        &[],
    )
    .await;
    assert_eq!(r.json()["code"], 2000);
    assert_eq!(s.up.count_route("/api/v2/ldap/verify-user"), 2);
    s.shutdown().await;
}

/// The v2 SDKs' password calls put their arguments at the top level of the
/// mutation: they are read, judged and forwarded, not refused.
#[tokio::test]
async fn v2_password_calls_with_top_level_arguments_are_judged() {
    let s = Setup::new(json!({"passwordStrength": 1})).start().await;
    let reset = "mutation resetPassword($phone: String, $phoneCountryCode: String, $email: String, $code: String!, $newPassword: String!) { resetPassword(phone: $phone, phoneCountryCode: $phoneCountryCode, email: $email, code: $code, newPassword: $newPassword) { message code } }";
    let update = "mutation updatePassword($newPassword: String!, $oldPassword: String) { updatePassword(newPassword: $newPassword, oldPassword: $oldPassword) { id } }";
    let first = "mutation resetPasswordByFirstLoginToken($token: String!, $password: String!) { resetPasswordByFirstLoginToken(token: $token, password: $password) { message code } }";
    let force = "mutation resetPasswordByForceResetToken($token: String!, $oldPassword: String!, $newPassword: String!) { resetPasswordByForceResetToken(token: $token, oldPassword: $oldPassword, newPassword: $newPassword) { message code } }";
    // Each call with a new password `pw` (and an old one where it takes one).
    let calls = |pw: &str| {
        [
            gql(
                reset,
                json!({"phone": "13800138000", "code": "1234", "newPassword": pw}),
            ),
            gql(update, json!({"newPassword": pw, "oldPassword": "old-one"})),
            gql(first, json!({"token": "t", "password": pw})),
            gql(
                force,
                json!({"token": "t", "oldPassword": "old-one", "newPassword": pw}),
            ),
        ]
    };
    let ok = calls("long-enough");
    for body in &ok {
        let r = post_json(s.gw(), GRAPHQL, body, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.json()["errors"].is_null(), "{}", r.text());
    }
    assert_eq!(s.up.count(GRAPHQL), ok.len());
    // Their new passwords are judged like any other.
    let weak = calls("123");
    for body in &weak {
        let r = post_json(s.gw(), GRAPHQL, body, &[]).await;
        assert_eq!(gql_code(&r), 2029, "{}", r.text());
    }
    assert_eq!(s.up.count(GRAPHQL), ok.len());
    // A reset naming two different accounts cannot be judged.
    let two = gql(
        reset,
        json!({"phone": "13800138000", "email": "a@x.com", "code": "1", "newPassword": "long-enough"}),
    );
    let r = post_json(s.gw(), GRAPHQL, &two, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(s.up.count(GRAPHQL), ok.len());
    s.shutdown().await;
}

/// A batch's answer is an array: each login in it is read from its own
/// element and counted, so batching buys no free guesses.
#[tokio::test]
async fn each_login_of_a_batch_is_counted() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    let one = gql(
        LOGIN_BY_EMAIL,
        json!({"input": {"email": "a@x.com", "password": "wrong"}}),
    );
    for _ in 0..3 {
        let r = post_json(s.gw(), GRAPHQL, &json!([one.clone()]), &[]).await;
        assert_eq!(
            r.json()[0]["errors"][0]["message"]["code"],
            2333,
            "{}",
            r.text()
        );
    }
    let c = counters(&s, "ip=127.0.0.1").await;
    assert_eq!(c["login_failures"]["count"], 3, "{c}");
    let r = post_json(s.gw(), GRAPHQL, &json!([one.clone()]), &[]).await;
    assert_eq!(gql_code(&r), 2000, "{}", r.text());
    assert_eq!(s.up.count(GRAPHQL), 3);
    s.shutdown().await;

    // A batch holding more attempts than the limit leaves is refused whole.
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    let five = json!([one.clone(), one.clone(), one.clone(), one.clone(), one]);
    let r = post_json(s.gw(), GRAPHQL, &five, &[]).await;
    assert_eq!(gql_code(&r), 2000, "{}", r.text());
    assert_eq!(s.up.total(), 0);
    s.shutdown().await;
}

/// v3 reads the payload its `connection` names: a decoy username beside a
/// pass-code sign-up does not get the e-mail past the whitelist.
#[tokio::test]
async fn v3_identity_comes_from_the_connection() {
    let s = Setup::new(json!({"whitelist": {"emailEnabled": true}}))
        .whitelist(json!({"email": ["ok@x.com"]}))
        .start()
        .await;
    let decoy = json!({
        "connection": "PASSCODE",
        "passCodePayload": {"email": "intruder@x.com", "passCode": "123456"},
        "passwordPayload": {"username": "decoy", "password": "whatever"}
    });
    let r = post_json(s.gw(), SIGNUP, &decoy, &[]).await;
    assert_eq!(v3_err(&r), 2040, "{}", r.text());
    let allowed = json!({
        "connection": "PASSCODE",
        "passCodePayload": {"email": "OK@x.com", "passCode": "123456"},
        "passwordPayload": {"email": "intruder@x.com"}
    });
    let r = post_json(s.gw(), SIGNUP, &allowed, &[]).await;
    assert_eq!(r.json()["statusCode"], 200, "{}", r.text());
    // A connection poolgate does not know, or none, cannot be judged.
    for body in [
        json!({"connection": "SOMETHING_NEW", "passwordPayload": {"email": "ok@x.com"}}),
        json!({"passwordPayload": {"email": "ok@x.com", "password": "p"}}),
    ] {
        let r = post_json(s.gw(), SIGNUP, &body, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["statusCode"], 400);
    }
    // A form body nesting the payload the `qs` way hides it from a flat
    // reading: refused.
    let r = post_raw(
        s.gw(),
        SIGNIN,
        "connection=PASSWORD&passwordPayload[email]=victim%40x.com&passwordPayload[password]=x",
        &[("content-type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Two different accounts in the named payload: refused, not guessed.
    let two = json!({"connection": "PASSWORD", "passwordPayload": {"email": "ok@x.com", "username": "other", "password": "p"}});
    let r = post_json(s.gw(), SIGNIN, &two, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}

/// From `trusted_backends`, the end user is the one the backend names
/// (`X-Real-IP`, or the body's `clientIp`): one attacker behind the backend
/// gates only themselves. From any other peer those fields change nothing.
#[tokio::test]
async fn a_trusted_backend_names_its_end_users() {
    let s = Setup::new(json!({"loginFailCheck": check(2, 60)}))
        .server("trusted_backends = [\"127.0.0.1/32\"]")
        .start()
        .await;
    let signin = |pw: &str| json!({"connection": "PASSWORD", "passwordPayload": {"email": "a@x.com", "password": pw}});
    for _ in 0..2 {
        let r = post_json(
            s.gw(),
            SIGNIN,
            &signin("wrong"),
            &[("x-real-ip", "203.0.113.1")],
        )
        .await;
        assert_eq!(v3_err(&r), 2333);
    }
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("wrong"),
        &[("x-real-ip", "203.0.113.1")],
    )
    .await;
    assert_eq!(v3_err(&r), 2000, "the attacker is gated");
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right"),
        &[("x-real-ip", "203.0.113.2")],
    )
    .await;
    assert_eq!(
        r.json()["statusCode"],
        200,
        "another end user is not: {}",
        r.text()
    );
    // The body's clientIp (v2 GraphQL inputs) wins over the header.
    let by_body = gql(
        LOGIN_BY_EMAIL,
        json!({"input": {"email": "a@x.com", "password": "right", "clientIp": "203.0.113.3"}}),
    );
    let r = post_json(s.gw(), GRAPHQL, &by_body, &[("x-real-ip", "203.0.113.1")]).await;
    assert!(r.json()["errors"].is_null(), "{}", r.text());
    let c = counters(&s, "ip=203.0.113.1").await;
    assert_eq!(c["login_failures"]["count"], 2, "{c}");
    let c = counters(&s, "ip=127.0.0.1").await;
    assert!(
        c["login_failures"].is_null(),
        "the backend itself counts nothing: {c}"
    );
    // A backend naming no address, or garbage.
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("wrong"),
        &[("x-real-ip", "not-an-ip")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    s.shutdown().await;

    // Without trusted_backends, the header and the body name nobody.
    let s = Setup::new(json!({"loginFailCheck": check(2, 60)}))
        .start()
        .await;
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let r = post_json(s.gw(), SIGNIN, &signin("wrong"), &[("x-real-ip", ip)]).await;
        assert_eq!(v3_err(&r), 2333);
    }
    let r = post_json(
        s.gw(),
        SIGNIN,
        &signin("right"),
        &[("x-real-ip", "203.0.113.9")],
    )
    .await;
    assert_eq!(v3_err(&r), 2000, "counted under the peer: {}", r.text());
    s.shutdown().await;
}

/// A phone number is one account however it is spelled.
#[tokio::test]
async fn a_phone_number_is_one_account_in_any_spelling() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(3, 60)}))
        .trusted()
        .start()
        .await;
    let spellings = ["+86 138-0013-8000", "13800138000", "(+86) 138 0013 8000"];
    for (i, phone) in spellings.iter().enumerate() {
        let ip = format!("203.0.113.{}", i + 1);
        let r = wrong_login(s.gw(), phone, Some(&ip)).await;
        assert_eq!(r.json(), wrong_password_v2(), "{phone}");
    }
    let c = counters(&s, "account=%2B8613800138000").await;
    assert_eq!(c["password_failures"]["count"], 3, "{c}");
    let r = wrong_login(s.gw(), "8613800138000", Some("203.0.113.9")).await;
    assert_eq!(r.json(), captcha_required_v2());
    s.shutdown().await;
}

/// Wrong one-time codes count like wrong passwords, per client and per
/// recipient; code pre-checks (which leave the code valid) too.
#[tokio::test]
async fn wrong_one_time_codes_count_like_wrong_passwords() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(2, 60)}))
        .trusted()
        .start()
        .await;
    let code_login = |code: &str| json!({"phone": "13800138000", "code": code});
    let r = post_json(
        s.gw(),
        "/api/v2/login/phone-code",
        &code_login("wrong-1"),
        &[("x-forwarded-for", "203.0.113.1")],
    )
    .await;
    assert_eq!(r.json()["code"], 2333);
    let pre_check = json!({"codeType": "SMS", "smsCodePayload": {"phone": "+86 13800138000", "passCode": "wrong-2"}});
    let r = post_json(
        s.gw(),
        "/api/v3/pre-check-code",
        &pre_check,
        &[("x-forwarded-for", "203.0.113.2")],
    )
    .await;
    assert_eq!(v3_err(&r), 2333);
    let r = post_json(
        s.gw(),
        "/api/v2/login/phone-code",
        &code_login("123456"),
        &[("x-forwarded-for", "203.0.113.3")],
    )
    .await;
    assert_eq!(r.json()["code"], 2000, "{}", r.text());
    // MFA checks behind a token count for that token.
    let s2 = Setup::new(json!({"loginPasswordFailCheck": check(1, 60)}))
        .start()
        .await;
    let mfa = |h: &'static str| [("authorization", h)];
    let r = post_json(
        s2.gw(),
        "/api/v2/mfa/totp/verify",
        &json!({"totp": "wrong-9"}),
        &mfa("Bearer mfa-token-a"),
    )
    .await;
    assert_eq!(r.json()["code"], 2333);
    let r = post_json(
        s2.gw(),
        "/api/v2/mfa/totp/verify",
        &json!({"totp": "123456"}),
        &mfa("Bearer mfa-token-a"),
    )
    .await;
    assert_eq!(r.json()["code"], 2000, "{}", r.text());
    let r = post_json(
        s2.gw(),
        "/api/v2/mfa/totp/verify",
        &json!({"totp": "123456"}),
        &mfa("Bearer mfa-token-b"),
    )
    .await;
    assert_eq!(
        r.json()["code"],
        200,
        "another login's token is its own: {}",
        r.text()
    );
    s2.shutdown().await;
    s.shutdown().await;
}

/// Sending codes is limited per client and per recipient (SMS pumping).
#[tokio::test]
async fn sending_codes_is_limited_per_client_and_per_recipient() {
    let s = Setup::new(json!({}))
        .toml("[guards.send_code]\nper_client = 3\nper_recipient = 2\nwindow = \"1h\"\n[rate_limit]\nsend_code = { per_second = 1000, burst = 1000 }")
        .start()
        .await;
    let sms = |phone: &str| json!({"phone": phone});
    for _ in 0..2 {
        let r = post_json(s.gw(), "/api/v2/sms/send", &sms("13800138000"), &[]).await;
        assert_eq!(r.json()["code"], 200);
    }
    // The same number in another spelling, and through v3: its third code.
    let r = post_json(
        s.gw(),
        "/api/v3/send-sms",
        &json!({"phoneNumber": "+86 138 0013 8000", "channel": "CHANNEL_LOGIN"}),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.retry_after().is_some());
    let r = post_json(s.gw(), "/api/v2/sms/send", &sms("13900139000"), &[]).await;
    assert_eq!(r.json()["code"], 200);
    // The client's third code went out: a fourth recipient is refused too.
    let r = post_json(
        s.gw(),
        GRAPHQL,
        &gql(
            "mutation sendEmail($email: String!, $scene: EmailScene!) { sendEmail(email: $email, scene: $scene) { message code } }",
            json!({"email": "c@x.com", "scene": "LOGIN_VERIFY_CODE"}),
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(s.up.total(), 3);

    // The admin API shows both counters and unblock clears them.
    let shown = |(st, body): (StatusCode, String)| {
        assert_eq!(st, StatusCode::OK, "{body}");
        serde_json::from_str::<Value>(&body).expect("JSON")["codes_sent"]["count"].clone()
    };
    let by_ip = "/counters?ip=127.0.0.1";
    let by_phone = "/counters?account=%2B8613800138000";
    assert_eq!(shown(admin_get(s.admin(), by_ip).await), 3);
    assert_eq!(shown(admin_get(s.admin(), by_phone).await), 2);
    let (st, _) = admin_post(s.admin(), "/unblock?account=%2B8613800138000").await;
    assert_eq!(st, StatusCode::OK);
    assert!(shown(admin_get(s.admin(), by_phone).await).is_null());
    // The recipient is free again, the client still is not.
    let r = post_json(s.gw(), "/api/v2/sms/send", &sms("13800138000"), &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    let (st, _) = admin_post(s.admin(), "/unblock?ip=127.0.0.1").await;
    assert_eq!(st, StatusCode::OK);
    assert!(shown(admin_get(s.admin(), by_ip).await).is_null());
    let r = post_json(s.gw(), "/api/v2/sms/send", &sms("13800138000"), &[]).await;
    assert_eq!(r.json()["code"], 200, "{}", r.text());
    assert_eq!(s.up.total(), 4);
    s.shutdown().await;
}

/// A path that means a guarded route only after a second decoding, or whose
/// second decoding fails, is refused, never forwarded as "other".
#[tokio::test]
async fn paths_that_need_a_second_decoding_are_refused() {
    let s = Setup::new(json!({})).start().await;
    for path in [
        "/api/v2/login/account%2520",
        "/api/v2/%252e%252e/v2/login/account",
        "/api/v2/users/%2500",
        "/api/v2/login/%2520account",
    ] {
        let r = post_json(s.gw(), path, &login_body("a", "b"), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
    }
    assert_eq!(s.up.total(), 0);
    s.shutdown().await;
}

/// Hanging up does not make an attempt free: once forwarded, a login holds
/// its slot until the login service answers, and its answer is counted.
#[tokio::test]
async fn hanging_up_does_not_free_an_attempt() {
    let s = Setup::new(json!({"loginFailCheck": check(5, 300)}))
        .start()
        .await;
    s.up.set_delay_ms(300);
    let body = login_body("victim@x.com", "wrong").to_string();
    let raw = format!(
        "POST {LOGIN} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..30 {
        let mut c = tokio::net::TcpStream::connect(s.gw())
            .await
            .expect("connect");
        c.write_all(raw.as_bytes()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(c);
    }
    // Every forwarded attempt settles once its (slow) answer is read, and
    // counts. (On a loaded machine a hang-up can come before the gateway has
    // forwarded; such an attempt never reached the login service and its
    // slot is released, so the invariant is "counted == forwarded", not 5.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let counted = loop {
        let c = counters(&s, "ip=127.0.0.1").await;
        let forwarded = s.up.count(LOGIN);
        let abandoned = sample(
            &metrics(s.admin()).await,
            "poolgate_abandoned_attempts_total",
        );
        // Settled, every forwarded attempt counted, and each of them outlived
        // its client (the answer came 300 ms after the hang-up).
        if c["login_failures"]["inflight"] == 0
            && c["login_failures"]["count"] == forwarded as u64
            && abandoned == Some(forwarded as f64)
        {
            break forwarded;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {c}, forwarded {forwarded}, abandoned {abandoned:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (1..=5).contains(&counted),
        "at most the limit reached the login service: {counted}"
    );
    s.shutdown().await;
}
