//! The third-party captcha verifier (`poolgate::captcha::provider`) against a
//! fake siteverify endpoint on 127.0.0.1: what it sends, and that every
//! failure (status, garbage, hang) is an error, i.e. not solved (fail closed).

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use poolgate::captcha::provider::{CaptchaConfig, Provider, SiteVerify, VerifyError};

/// What the fake endpoint answers.
#[derive(Clone, Copy)]
enum Reply {
    Json(&'static str),
    Status(u16),
    Garbage,
    Hang,
}

/// One request as the fake endpoint saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    form: Vec<(String, String)>,
}

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(reply: Reply) -> Fake {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (addr, _accept) = harness::serve(move |req: Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                s.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    form: form_urlencoded::parse(&body).into_owned().collect(),
                });
                let resp = match reply {
                    Reply::Json(j) => Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(j.as_bytes()))),
                    Reply::Status(code) => Response::builder()
                        .status(code)
                        .body(Full::new(Bytes::from_static(b"{\"success\":true}"))),
                    Reply::Garbage => Response::builder()
                        .header("content-type", "text/html")
                        .body(Full::new(Bytes::from_static(b"<html>oops</html>"))),
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Response::builder().body(Full::new(Bytes::new()))
                    }
                };
                resp.unwrap()
            }
        })
        .await;
        Fake { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/siteverify", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn verifier(fake: &Fake, timeout: Duration) -> SiteVerify {
    SiteVerify::new(Provider::Turnstile, &fake.url(), "s3cret&key=1", timeout).unwrap()
}

fn field<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.form
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn success_posts_the_form_and_says_solved() {
    let fake = Fake::start(Reply::Json(
        r#"{"success":true,"challenge_ts":"2026-12-01T00:00:00Z","hostname":"example.com","error-codes":[]}"#,
    ))
    .await;
    let v = verifier(&fake, Duration::from_secs(3));
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    assert!(v.verify("tok+en/=", Some(ip)).await.unwrap());
    assert!(v.is_solved("tok+en/=", Some(ip)).await);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, "/siteverify");
    assert_eq!(s.content_type, "application/x-www-form-urlencoded");
    // Encoded and decoded intact, reserved characters included.
    assert_eq!(field(s, "secret"), Some("s3cret&key=1"));
    assert_eq!(field(s, "response"), Some("tok+en/="));
    assert_eq!(field(s, "remoteip"), Some("203.0.113.7"));
}

#[tokio::test]
async fn no_remote_ip_sends_no_remoteip_field() {
    let fake = Fake::start(Reply::Json(r#"{"success":true}"#)).await;
    let v = verifier(&fake, Duration::from_secs(3));
    assert!(v.verify("t", None).await.unwrap());
    assert_eq!(field(&fake.seen()[0], "remoteip"), None);
}

#[tokio::test]
async fn failure_is_not_solved() {
    let fake = Fake::start(Reply::Json(
        r#"{"success":false,"error-codes":["invalid-input-response"]}"#,
    ))
    .await;
    let v = verifier(&fake, Duration::from_secs(3));
    assert!(!v.verify("forged", None).await.unwrap());
    assert!(!v.is_solved("forged", None).await);
}

#[tokio::test]
async fn empty_or_oversized_token_is_not_solved_and_costs_no_call() {
    let fake = Fake::start(Reply::Json(r#"{"success":true}"#)).await;
    let v = verifier(&fake, Duration::from_secs(3));
    assert!(!v.verify("", None).await.unwrap());
    assert!(!v.verify("   ", None).await.unwrap());
    assert!(!v.verify(&"x".repeat(9000), None).await.unwrap());
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn server_error_is_an_error() {
    let fake = Fake::start(Reply::Status(500)).await;
    let v = verifier(&fake, Duration::from_secs(3));
    // The body says success, but a 500 is not an answer.
    assert!(matches!(
        v.verify("t", None).await,
        Err(VerifyError::Status(500))
    ));
    assert!(!v.is_solved("t", None).await);
}

#[tokio::test]
async fn garbage_is_an_error() {
    let fake = Fake::start(Reply::Garbage).await;
    let v = verifier(&fake, Duration::from_secs(3));
    assert!(matches!(
        v.verify("t", None).await,
        Err(VerifyError::Body(_))
    ));
    assert!(!v.is_solved("t", None).await);
    // Valid JSON without `success` is no answer either.
    let fake = Fake::start(Reply::Json(r#"{"ok":true}"#)).await;
    let v = verifier(&fake, Duration::from_secs(3));
    assert!(matches!(
        v.verify("t", None).await,
        Err(VerifyError::Body(_))
    ));
}

#[tokio::test]
async fn hang_times_out_and_is_not_solved() {
    let fake = Fake::start(Reply::Hang).await;
    let v = verifier(&fake, Duration::from_millis(300));
    let t = Instant::now();
    let r = v.verify("t", None).await;
    assert!(
        matches!(r, Err(VerifyError::Timeout(d)) if d == Duration::from_millis(300)),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!v.is_solved("t", None).await);
}

#[tokio::test]
async fn unreachable_provider_is_an_error_without_the_secret() {
    let addr = harness::unused_addr();
    let v = SiteVerify::new(
        Provider::Hcaptcha,
        &format!("http://{addr}/siteverify"),
        "do-not-print-me",
        Duration::from_secs(2),
    )
    .unwrap();
    let e = v.verify("t", None).await.unwrap_err();
    assert!(matches!(e, VerifyError::Connect(_)), "{e:?}");
    assert!(!e.to_string().contains("do-not-print-me"), "{e}");
    assert!(!format!("{e:?}").contains("do-not-print-me"));
    assert!(!v.is_solved("t", None).await);
}

#[tokio::test]
async fn from_config_reads_the_secret_from_the_environment() {
    let fake = Fake::start(Reply::Json(r#"{"success":true}"#)).await;
    let env = "POOLGATE_TEST_CAPTCHA_PROVIDER_SECRET";
    std::env::set_var(env, "from-env");
    let cfg: CaptchaConfig = toml::from_str(&format!(
        "provider = \"recaptcha\"\nsecret_env = \"{env}\"\nverify_url = \"{}\"\ntimeout = \"2s\"",
        fake.url()
    ))
    .unwrap();
    let v = SiteVerify::from_config(&cfg).unwrap().expect("a verifier");
    assert_eq!(v.provider(), Provider::Recaptcha);
    assert!(v.verify("t", None).await.unwrap());
    assert_eq!(field(&fake.seen()[0], "secret"), Some("from-env"));
}
