//! A pool can require a third-party challenge (`[captcha] provider`)
//! instead of poolgate's own image: a gated login passes only with a token
//! the provider's siteverify API accepts, and fails closed when the
//! provider says no or cannot be asked. Driven through the gateway against a
//! fake siteverify endpoint on 127.0.0.1.

mod harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use harness::fresh::{get, post_json};
use harness::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

const SECRET_ENV: &str = "POOLGATE_TEST_CHALLENGE_SECRET";
const SECRET: &str = "challenge-secret-0123456789";

/// A siteverify endpoint: `{"success": true}` for the response token
/// `good-token` sent with the right secret; it records each form it got.
async fn fake_siteverify() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (addr, _accept) = serve(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8_lossy(&body).to_string();
            let ok =
                form.contains(&format!("secret={SECRET}")) && form.contains("response=good-token");
            log.lock().unwrap().push(form);
            Response::new(Full::new(Bytes::from(json!({"success": ok}).to_string())))
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn a_gated_login_passes_only_with_a_token_the_provider_accepts() {
    // The only test in this binary: setting the variable races with nothing.
    std::env::set_var(SECRET_ENV, SECRET);
    let (verify, seen) = fake_siteverify().await;
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .toml(&format!(
            "[captcha]\nprovider = \"turnstile\"\nsecret_env = \"{SECRET_ENV}\"\nverify_url = \"http://{verify}/siteverify\"\ntimeout = \"2s\""
        ))
        .start()
        .await;
    assert_eq!(
        wrong_login(s.gw(), "bob@x.com", None).await.json(),
        wrong_password_v2()
    );
    // Gated: no token, a token the provider refuses, then a good one.
    let with = |token: Option<&str>| {
        let mut b = login_body("bob@x.com", "right");
        if let Some(t) = token {
            b["captchaCode"] = json!(t);
        }
        b
    };
    let r = post_json(s.gw(), LOGIN, &with(None), &[]).await;
    assert_eq!(r.json(), captcha_required_v2());
    let r = post_json(s.gw(), LOGIN, &with(Some("bad-token")), &[]).await;
    assert_eq!(r.json(), captcha_failed_v2());
    let r = post_json(s.gw(), LOGIN, &with(Some("good-token")), &[]).await;
    assert_eq!(r.json(), login_ok_v2(), "{}", r.text());
    assert_eq!(s.up.count(LOGIN), 2);
    let forms = seen.lock().unwrap().clone();
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert!(
        forms.iter().all(|f| f.contains("remoteip=127.0.0.1")),
        "{forms:?}"
    );
    // poolgate's own image is not served: the page renders the widget.
    let r = get(s.gw(), "/api/v2/security/captcha", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("turnstile"), "{}", r.text());
    s.shutdown().await;

    // A provider that cannot be asked solves nothing (fail closed).
    let s = Setup::new(json!({"loginFailCheck": check(1, 60)}))
        .toml(&format!(
            "[captcha]\nprovider = \"hcaptcha\"\nsecret_env = \"{SECRET_ENV}\"\nverify_url = \"http://127.0.0.1:1/siteverify\"\ntimeout = \"1s\""
        ))
        .start()
        .await;
    let _ = wrong_login(s.gw(), "bob@x.com", None).await;
    let r = post_json(s.gw(), LOGIN, &with(Some("good-token")), &[]).await;
    assert_eq!(r.json(), captcha_failed_v2());
    assert_eq!(s.up.count(LOGIN), 1);
    s.shutdown().await;
}
