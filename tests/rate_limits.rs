//! Per-client rate limits (`[rate_limit]`), end to end: a 429 with
//! `Retry-After` past the burst, and preflights not counted.

mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::fresh::{get, post_json, request, send};
use harness::*;
use http::{Method, StatusCode};
use serde_json::json;

const ORIGINS: &str = "https://app.sample.com\nhttps://*.sample.com";

#[tokio::test]
async fn rate_limit_answers_429_and_does_not_count_preflights() {
    let s = Setup::new(json!({"allowedOrigins": ORIGINS}))
        .trusted()
        .toml("[rate_limit]\nlogin = { per_second = 1, burst = 3 }")
        .start()
        .await;
    // The 4th login is refused only if all four arrive within a second (the
    // bucket refills one per second): a run that was too slow on a loaded
    // machine is retried as a new client.
    let mut checked = false;
    for attempt in 0..6 {
        let ip = format!("203.0.113.{}", 100 + attempt);
        let h = [("x-forwarded-for", ip.as_str())];
        // Preflights first: they must not use up the burst.
        for _ in 0..6 {
            let r = send(
                s.gw(),
                request(
                    Method::OPTIONS,
                    LOGIN,
                    &[
                        ("origin", "https://app.sample.com"),
                        ("access-control-request-method", "POST"),
                        h[0],
                    ],
                    Bytes::new(),
                ),
            )
            .await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
        }
        let before = s.up.count(LOGIN);
        let started = Instant::now();
        for i in 0..3 {
            let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &h).await;
            assert_eq!(
                r.json(),
                wrong_password_v2(),
                "login {i} is within the burst"
            );
        }
        let r = post_json(s.gw(), LOGIN, &login_body("a", "wrong"), &h).await;
        if started.elapsed() >= Duration::from_millis(900) {
            continue;
        }
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.json(), v2_err(429, "too many requests"));
        let retry = r.retry_after().expect("Retry-After");
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        assert_eq!(s.up.count(LOGIN), before + 3, "the 429 was not forwarded");
        checked = true;
        break;
    }
    assert!(checked, "no attempt ran 4 logins within 900ms");
    // Other route classes have their own buckets.
    let r = get(
        s.gw(),
        "/api/v2/users/me",
        &[("x-forwarded-for", "203.0.113.100")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let m = metrics(s.admin()).await;
    assert!(
        sample(
            &m,
            r#"poolgate_guard_decisions_total{decision="reject",guard="rate_limit",reason="login"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    s.shutdown().await;
}
