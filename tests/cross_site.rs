//! What a browser on another origin may do: CORS matches scheme, host and
//! port (the request's own origin only when a trusted proxy reports the
//! scheme), and the v2 captcha cookie carries the attributes a cross-site
//! login page needs.

mod harness;

use harness::fresh::{get, post_json};
use harness::*;
use http::StatusCode;
use serde_json::json;

async fn register_from(s: &Stack, origin: &str, headers: &[(&str, &str)]) -> Reply {
    let mut h = vec![("origin", origin), ("host", "login.example.com")];
    h.extend_from_slice(headers);
    post_json(
        s.gw(),
        REGISTER,
        &json!({"email": "a@x.com", "password": "long-enough"}),
        &h,
    )
    .await
}

#[tokio::test]
async fn the_own_origin_shortcut_matches_scheme_host_and_port() {
    let pool = json!({"allowedOrigins": "https://app.sample.com"});
    // Behind a trusted TLS terminator that says the page was https.
    let s = Setup::new(pool.clone()).trusted().start().await;
    let https = [("x-forwarded-proto", "https")];
    let r = register_from(&s, "https://login.example.com", &https).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://login.example.com")
    );
    for other in [
        "http://login.example.com",
        "ftp://login.example.com",
        "https://login.example.com:8443",
        "https://login.example.com.evil",
    ] {
        let r = register_from(&s, other, &https).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{other}");
    }
    // The nearest proxy's value counts, not one the client put in front.
    let r = register_from(
        &s,
        "https://login.example.com",
        &[("x-forwarded-proto", "https, http")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(s.up.total(), 1);
    s.shutdown().await;

    // From an untrusted peer the scheme is unknown: no shortcut, whatever
    // the client claims.
    let s = Setup::new(pool).start().await;
    for origin in ["https://login.example.com", "http://login.example.com"] {
        let r = register_from(&s, origin, &[("x-forwarded-proto", "https")]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}");
    }
    // A listed origin is allowed as ever.
    let r = register_from(&s, "https://app.sample.com", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    s.shutdown().await;
}

fn set_cookie(r: &Reply) -> String {
    r.header("set-cookie").unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_captcha_cookie_fits_a_cross_site_login_page() {
    // Defaults: Lax, the captcha's lifetime, not Secure over plain HTTP.
    let s = Setup::new(json!({}))
        .toml("[guards]\ncaptcha_ttl = \"90s\"")
        .trusted()
        .start()
        .await;
    let r = get(s.gw(), "/api/v2/security/captcha", &[]).await;
    let c = set_cookie(&r);
    assert!(c.starts_with("poolgate_captcha="), "{c}");
    for part in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=90"] {
        assert!(c.contains(part), "{part} in {c}");
    }
    assert!(!c.contains("Secure"), "{c}");
    // Secure when a trusted proxy says the client came over TLS.
    let r = get(
        s.gw(),
        "/api/v2/security/captcha",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(set_cookie(&r).contains("; Secure"), "{}", set_cookie(&r));
    s.shutdown().await;

    // A login page on another site: SameSite=None, which implies Secure.
    let s = Setup::new(json!({}))
        .toml("[guards]\ncaptcha_cookie_samesite = \"none\"")
        .start()
        .await;
    let c = set_cookie(&get(s.gw(), "/api/v2/security/captcha", &[]).await);
    assert!(c.contains("SameSite=None") && c.contains("; Secure"), "{c}");
    assert!(c.contains("Max-Age=120"), "the default captcha_ttl: {c}");
    s.shutdown().await;

    // A value that is not one of the three is a configuration error.
    let bad = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[policy]\nsource = \"file\"\n[policy.file]\npath = \"p.json\"\n[guards]\ncaptcha_cookie_samesite = \"sometimes\"\n";
    let err = format!("{:#}", poolgate::Config::parse(bad).unwrap_err());
    assert!(err.contains("sometimes"), "{err}");
}
