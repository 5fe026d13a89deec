//! What a request is, end to end: every spelling of a guarded path is that
//! route, unreadable paths and wrong methods are refused, guarded bodies
//! that cannot be read are refused, form bodies and GraphQL documents are
//! judged like JSON whatever their spelling, a guarded field given twice is
//! refused, and a team's own routes (`[[routes]]`) are judged like the
//! built-in ones. Every refused request is checked not to have reached the
//! fake upstream.

mod harness;

use harness::fresh::{get, post_json, post_raw, request, send};
use harness::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const SPELLINGS: [&str; 6] = [
    "/api/v2/login/account/",
    "//api/v2/login/account",
    "/API/V2/LOGIN/ACCOUNT",
    "/api/v2/%6Cogin/account",
    "/api/v2/x/../login/account",
    "/api/v2/login/account;x=1",
];

#[tokio::test]
async fn every_spelling_of_the_login_path_is_a_login() {
    let s = Setup::new(json!({"loginFailCheck": check(7, 60)}))
        .start()
        .await;
    // Each spelling is forwarded as is and counted as a failed login.
    for p in SPELLINGS {
        let r = post_json(s.gw(), p, &login_body("a", "wrong"), &[]).await;
        assert_eq!(r.json(), wrong_password_v2(), "{p}");
        assert_eq!(s.up.count(p), 1, "{p} reaches the upstream as sent");
    }
    let r = wrong_login(s.gw(), "a", None).await;
    assert_eq!(r.json(), wrong_password_v2());
    // Seven failures: every spelling now needs a captcha.
    for p in SPELLINGS.iter().chain(&[LOGIN]) {
        let r = post_json(s.gw(), p, &login_body("a", "wrong"), &[]).await;
        assert_eq!(r.json(), captcha_required_v2(), "{p} is judged as a login");
    }
    assert_eq!(s.up.count_route(LOGIN), 7);
    assert_eq!(s.up.total(), 7);
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).unwrap();
    assert_eq!(c["login_failures"]["count"], 7);
    s.shutdown().await;
}

#[tokio::test]
async fn unreadable_paths_and_wrong_methods_are_refused() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .start()
        .await;
    let r = post_json(s.gw(), "/api/v2/login/%zz", &login_body("a", "wrong"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json(),
        v2_err(400, "request path is ambiguous: invalid percent-encoding")
    );
    let r = post_json(
        s.gw(),
        "/api/v2/login/%2561ccount",
        &login_body("a", "wrong"),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "double encoding");
    let r = post_json(
        s.gw(),
        "/api/v2/login/%00account",
        &login_body("a", "wrong"),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "control character");
    let r = get(s.gw(), LOGIN, &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json(),
        v2_err(405, "/api/v2/login/account only accepts POST")
    );
    let r = send(
        s.gw(),
        request(Method::PUT, "/API/v2/login/account/", &[], "{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(s.up.total(), 0);
    // Each refusal is guard `route`'s, by reason, in the metrics.
    let m = metrics(s.admin()).await;
    for (reason, n) in [("ambiguous_path", 3.0), ("method_not_allowed", 2.0)] {
        let labels = [
            ("decision", "reject"),
            ("guard", "route"),
            ("reason", reason),
        ];
        assert_eq!(
            metric(&m, "poolgate_guard_decisions_total", &labels),
            Some(n),
            "{reason}"
        );
        assert_eq!(
            metric(&m, "poolgate_rejections_total", &[("reason", reason)]),
            Some(n),
            "{reason}"
        );
    }
    // None of that counted as a login failure.
    assert_eq!(
        wrong_login(s.gw(), "a", None).await.json(),
        wrong_password_v2()
    );
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn guarded_bodies_that_cannot_be_read_are_refused() {
    let s = Setup::new(json!({"loginFailCheck": check(5, 60), "passwordStrength": 3}))
        .toml("[guards]\ninspect_body_bytes = 1024")
        .start()
        .await;
    let json_ct = ("content-type", "application/json");
    for path in [LOGIN, REGISTER, SIGNIN] {
        let r = post_raw(s.gw(), path, "{\"account\": \"a\", ", &[json_ct]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.json()["apiCode"], 400, "{path}");
        let r = post_raw(s.gw(), path, "{}", &[json_ct, ("content-encoding", "gzip")]).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        let r = post_raw(
            s.gw(),
            path,
            "--x\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nabc\r\n--x--\r\n",
            &[("content-type", "multipart/form-data; boundary=x")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        let r = post_raw(s.gw(), path, "account=a", &[("content-type", "text/plain")]).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        let big = json!({"email": "a@x.com", "account": "a", "password": "x".repeat(1100)});
        let r = post_json(s.gw(), path, &big, &[]).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(r.json()["apiCode"], 413, "{path}");
    }
    // A repeated form field is ambiguous.
    let r = post_raw(
        s.gw(),
        LOGIN,
        "account=a&password=x&password=y",
        &[("content-type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.up.total(), 0, "nothing unjudged was forwarded");
    // A body just under the limit is read and judged.
    let ok = json!({"email": "a@x.com", "password": format!("a1!{}", "x".repeat(900))});
    let r = post_json(s.gw(), REGISTER, &ok, &[]).await;
    assert_eq!(r.json()["code"], 200);
    // Unguarded routes are not limited by inspect_body_bytes.
    let r = post_raw(s.gw(), "/api/v2/upload", vec![b'x'; 50_000], &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.up.total(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn form_encoded_logins_are_judged_like_json() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(2, 60)}))
        .start()
        .await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    // Two wrong passwords for Frank, sent as a form (the account is percent-encoded).
    for body in [
        "account=Frank%40Example.com&password=wrong",
        "password=nope&account=frank%40example.com",
    ] {
        let r = post_raw(s.gw(), LOGIN, body, &[form]).await;
        assert_eq!(r.json(), wrong_password_v2());
    }
    // Counted for the account: JSON and form logins for it now need a captcha.
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("frank@example.com", "right"),
        &[],
    )
    .await;
    assert_eq!(r.json(), captcha_required_v2());
    let r = post_raw(
        s.gw(),
        LOGIN,
        "account=frank%40example.com&password=right",
        &[form],
    )
    .await;
    assert_eq!(r.json(), captcha_required_v2());
    // A form login for someone else is fine.
    let r = post_raw(s.gw(), LOGIN, "account=gina&password=right", &[form]).await;
    assert_eq!(r.json(), login_ok_v2());
    assert_eq!(s.up.count(LOGIN), 3);
    s.shutdown().await;
}

/// GraphQL documents are judged by what a server would execute, whatever
/// their spelling: two aliased logins are two attempts, an inline literal is
/// read like a variable, a batch pays for each element. Only what cannot be
/// read unambiguously is refused.
#[tokio::test]
async fn graphql_documents_are_judged_whatever_their_spelling() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    let input = json!({"email": "a@x.com", "password": "wrong"});
    // Two aliased logins: one request, two attempts (the upstream's error
    // names no field, so it is both fields' verdict).
    let two = json!({
        "query": "mutation m($i: LoginByEmailInput!) { a: loginByEmail(input: $i) { id } b: loginByEmail(input: $i) { id } }",
        "variables": {"i": input}
    });
    let r = post_json(s.gw(), GRAPHQL, &two, &[]).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2333);
    // An inline literal is read like a variable: the third attempt.
    let inline = json!({"query": "mutation { loginByEmail(input: {email: \"a@x.com\", password: \"wrong\"}) { id } }"});
    let r = post_json(s.gw(), GRAPHQL, &inline, &[]).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2333);
    assert_eq!(s.up.count(GRAPHQL), 2);
    // Over the limit now, in any spelling, a batch included.
    let batch = json!([
        {"query": "query { user { id } }"},
        {"query": "mutation m($i: LoginByEmailInput!) { loginByEmail(input: $i) { id } }", "variables": {"i": input}}
    ]);
    for body in [&two, &inline, &batch] {
        let r = post_json(s.gw(), GRAPHQL, body, &[]).await;
        assert_eq!(r.json()["errors"][0]["message"]["code"], 2000, "{body}");
    }
    assert_eq!(s.up.count(GRAPHQL), 2);
    // What cannot be judged is refused in GraphQL's error shape: several
    // operations and no operationName, an unknown fragment, an argument
    // given twice.
    for query in [
        "mutation a { loginByEmail(input: {email: \"x\"}) { id } } mutation b { user { id } }",
        "mutation { ...F } fragment G on Mutation { loginByEmail(input: {email: \"x\"}) { id } }",
        "mutation { loginByEmail(input: {email: \"x\"}, input: {email: \"y\"}) { id } }",
    ] {
        let r = post_json(s.gw(), GRAPHQL, &json!({"query": query}), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let e = r.json();
        assert_eq!(e["data"], Value::Null);
        assert_eq!(e["errors"][0]["message"]["code"], 400);
    }
    assert_eq!(s.up.count(GRAPHQL), 2);
    // A plain query is forwarded unjudged.
    let r = post_json(
        s.gw(),
        GRAPHQL,
        &json!({"query": "query { user(id: \"1\") { id } }"}),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"data": {"user": null}}));
    assert_eq!(s.up.count(GRAPHQL), 3);
    // The name inside a string or a comment is not an operation.
    let decoy = json!({"query": "query { search(q: \"loginByEmail(input: $i)\") { id } } # loginByEmail(input: $i)\n"});
    let r = post_json(s.gw(), GRAPHQL, &decoy, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.up.count(GRAPHQL), 4);
    s.shutdown().await;
}

#[tokio::test]
async fn graphql_logins_count_toward_the_client_limit() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .start()
        .await;
    let gql = json!({
        "query": "mutation login($input: LoginByEmailInput!) { loginByEmail(input: $input) { id } }",
        "variables": {"input": {"email": "a@x.com", "password": "wrong"}}
    });
    let r = post_json(s.gw(), GRAPHQL, &gql, &[]).await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2333);
    let r = post_json(s.gw(), GRAPHQL, &gql, &[]).await;
    assert_eq!(
        r.json(),
        json!({"data": null, "errors": [{"message": {"code": 2000, "message": "账号异常，需要输入验证码"}, "extensions": {"code": 2000}}]})
    );
    // application/graphql bodies are read too (without variables, the input
    // is null): a login all the same, over the client's limit.
    let r = post_raw(
        s.gw(),
        GRAPHQL,
        "mutation { loginByEmail(input: $input) { id } }",
        &[("content-type", "application/graphql")],
    )
    .await;
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2000);
    // A v2 REST login from the same client is over the limit too.
    assert_eq!(
        wrong_login(s.gw(), "a@x.com", None).await.json(),
        captcha_required_v2()
    );
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}

/// GraphQL ends a `#` comment at a line terminator, which is `\n` *or* `\r`
/// (GraphQL spec, "Comments" / "LineTerminator"; graphql-js `readComment`
/// stops at 0x000A and 0x000D). A login placed after `#...\r` is a real
/// operation for the upstream and must be judged like any other.
#[tokio::test]
async fn graphql_comment_ended_by_carriage_return_does_not_hide_a_login() {
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .start()
        .await;
    assert_eq!(
        wrong_login(s.gw(), "a@x.com", None).await.json(),
        wrong_password_v2()
    );
    let hidden = json!({
        "query": "mutation m($input: LoginByEmailInput!) { # note\rloginByEmail(input: $input) { id } }",
        "variables": {"input": {"email": "a@x.com", "password": "wrong"}}
    });
    let r = post_json(s.gw(), GRAPHQL, &hidden, &[]).await;
    assert_eq!(
        s.up.count(GRAPHQL),
        0,
        "a login mutation after a CR-terminated comment reached the upstream unjudged: {}",
        r.text()
    );
    assert_eq!(r.json()["errors"][0]["message"]["code"], 2000);
    s.shutdown().await;
}

/// A JSON body that names a field the guards read twice is ambiguous: the
/// guard would count one account while the login service may check the other.
#[tokio::test]
async fn a_guarded_field_given_twice_is_refused() {
    let s = Setup::new(json!({"loginFailCheck": check(5, 60)}))
        .start()
        .await;
    let r = post_raw(
        s.gw(),
        LOGIN,
        r#"{"account":"victim@x.com","password":"p","account":"other@x.com"}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(s.up.total(), 0);
    // A repeated field no guard reads is the upstream's business.
    let r = post_raw(
        s.gw(),
        LOGIN,
        r#"{"account":"a@x.com","password":"p","extra":1,"extra":2}"#,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.json(), wrong_password_v2());
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn an_account_sent_as_a_number_counts_once_whatever_its_spelling() {
    // 13800138000, 13800138000.0 and 1.3800138e10 are one number: were each
    // read as its text, each would be an account with tries of its own.
    let s = Setup::new(json!({"loginPasswordFailCheck": check(2, 60)}))
        .start()
        .await;
    let login = |account: &str| format!(r#"{{"account":{account},"password":"wrong"}}"#);
    let json = [("content-type", "application/json")];
    for _ in 0..2 {
        let r = post_raw(s.gw(), LOGIN, login("13800138000"), &json).await;
        assert_eq!(r.json(), wrong_password_v2());
    }
    let r = post_raw(s.gw(), LOGIN, login("13800138000"), &json).await;
    assert_eq!(r.json(), captcha_required_v2(), "the integer is counted");
    for other in ["13800138000.0", "1.3800138e10"] {
        let r = post_raw(s.gw(), LOGIN, login(other), &json).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{other}: {}", r.text());
    }
    // A GraphQL variable is read the same way.
    let gql = json!({"query": "mutation($input: LoginByPhonePasswordInput!) { loginByPhonePassword(input: $input) { id } }",
                     "variables": {"input": {"phone": 1.3800138e10, "password": "wrong"}}});
    let r = post_json(s.gw(), GRAPHQL, &gql, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("plain integer"), "{}", r.text());
    assert_eq!(
        s.up.total(),
        2,
        "only the two counted attempts reached the upstream"
    );
    s.shutdown().await;
}

/// A team's own login service declared in `[[routes]]`: matched in any
/// spelling, its account read from the configured pointer, and counted
/// together with the built-in routes' failures for the same account.
#[tokio::test]
async fn custom_routes_for_a_teams_own_service() {
    let s = Setup::new(json!({"loginPasswordFailCheck": check(1, 60)}))
        .toml(
            r#"
[[routes]]
path = "/auth/Login/"
kind = "login"
identifier = [{ pointer = "/user/email", kind = "email" }]
password = "/user/password"
captcha_code = "/captcha"
"#,
        )
        .start()
        .await;
    let body = json!({"user": {"email": "Dev@Team.io", "password": "nope"}});
    let r = post_json(s.gw(), "/auth/login", &body, &[]).await;
    assert_eq!(
        r.json()["code"],
        200,
        "the fake answers 200 on unknown paths: a success, not counted"
    );
    // The fake upstream answers success on /auth/login, so count via a wrong
    // password on the built-in route for the same account: both share the account key.
    wrong_login(s.gw(), "dev@team.io", None).await;
    let r = post_json(s.gw(), "/AUTH/LOGIN", &body, &[]).await;
    assert_eq!(
        r.json()["code"],
        2000,
        "the custom route is judged with the account's count"
    );
    assert_eq!(s.up.count("/auth/login") + s.up.count("/AUTH/LOGIN"), 1);
    s.shutdown().await;
}
