//! CORS from the pool's `allowedOrigins`, end to end: preflights answered by
//! the gateway, other origins and look-alikes refused, the headers on
//! forwarded answers and on rejections, and an empty list allowing any
//! origin. Every refused request is checked not to have reached the fake
//! upstream.

mod harness;

use bytes::Bytes;
use harness::fresh::{get, post_json, post_raw, request, send};
use harness::*;
use http::{Method, StatusCode};
use serde_json::json;

const ORIGINS: &str = "https://app.sample.com\nhttps://*.sample.com";

async fn preflight(addr: std::net::SocketAddr, path: &str, origin: &str) -> Reply {
    send(
        addr,
        request(
            Method::OPTIONS,
            path,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            Bytes::new(),
        ),
    )
    .await
}

#[tokio::test]
async fn cors_preflights_are_answered_here() {
    let s = Setup::new(json!({"allowedOrigins": ORIGINS})).start().await;
    for (path, origin) in [
        (LOGIN, "https://x.sample.com"),
        (LOGIN, "https://app.sample.com"),
        ("/api/v2/users/me", "https://x.sample.com"),
    ] {
        let r = preflight(s.gw(), path, origin).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{path} {origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type")
        );
        assert!(r
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")));
        assert!(r.varies_on_origin(), "{:?}", r.headers);
        assert!(r.body.is_empty());
    }
    // A preflight from a refused origin is refused, with no CORS headers.
    let r = preflight(s.gw(), LOGIN, "https://evil.com").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(s.up.total(), 0, "preflights never reach the upstream");
    s.shutdown().await;
}

#[tokio::test]
async fn cors_refuses_other_origins_and_look_alikes() {
    let s = Setup::new(json!({"allowedOrigins": ORIGINS})).start().await;
    let forbidden = v2_err(403, "origin not allowed");
    for evil in [
        "https://evil.com",
        "https://sample.com.evil.com",
        "http://app.sample.com",
        "https://app.sample.com:444",
        "https://a.b.sample.com",
        "https://sample.com",
        "https://xsample.com",
        "null",
        "https://app.sample.com.",
    ] {
        for path in [LOGIN, "/api/v2/users/me"] {
            let r = post_json(s.gw(), path, &login_body("a", "right"), &[("origin", evil)]).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{evil} on {path}");
            assert_eq!(r.json(), forbidden, "{evil} on {path}");
            assert!(r.header("access-control-allow-origin").is_none());
        }
    }
    // A GET is refused too, and v3 gets its own shape.
    let r = get(
        s.gw(),
        "/api/v2/users/me",
        &[("origin", "https://evil.com")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post_json(
        s.gw(),
        SIGNIN,
        &json!({"passwordPayload": {"email": "a@x.com", "password": "right"}}),
        &[("origin", "https://evil.com")],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"statusCode": 403, "message": "origin not allowed", "apiCode": 403, "data": null})
    );
    assert_eq!(s.up.total(), 0, "refused origins never reach the upstream");
    s.shutdown().await;
}

#[tokio::test]
async fn cors_headers_on_forwarded_answers_and_on_rejections() {
    let s = Setup::new(json!({"allowedOrigins": ORIGINS, "loginFailCheck": check(1, 60)}))
        .start()
        .await;
    let origin = [("origin", "https://app.sample.com")];
    // Forwarded (guarded and unguarded).
    let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &origin).await;
    assert_eq!(r.json(), wrong_password_v2());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.sample.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.varies_on_origin());
    let r = get(
        s.gw(),
        "/api/v2/users/me",
        &[("origin", "https://eu.sample.com")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://eu.sample.com")
    );
    assert!(r.varies_on_origin());
    assert_eq!(s.up.total(), 2);
    // A rejection carries them too.
    let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &origin).await;
    assert_eq!(r.json(), captcha_required_v2());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.sample.com")
    );
    assert!(r.varies_on_origin());
    assert_eq!(
        r.header_all("vary")
            .iter()
            .filter(|v| v.contains("Origin"))
            .count(),
        1
    );
    // And a body rejection.
    let r = post_raw(
        s.gw(),
        REGISTER,
        "{oops",
        &[("content-type", "application/json"), origin[0]],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.sample.com")
    );
    // No Origin: no CORS headers.
    let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &[]).await;
    assert_eq!(r.json(), captcha_required_v2());
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(s.up.total(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn empty_allowed_origins_allow_any_origin() {
    let s = Setup::new(json!({"allowedOrigins": ""})).start().await;
    let r = post_json(
        s.gw(),
        LOGIN,
        &login_body("a", "right"),
        &[("origin", "https://evil.com")],
    )
    .await;
    assert_eq!(r.json(), login_ok_v2());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://evil.com")
    );
    let r = preflight(s.gw(), LOGIN, "https://anything.example").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://anything.example")
    );
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;
}
