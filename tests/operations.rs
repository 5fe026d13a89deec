//! Operations: what an operator sees and relies on. Metrics present from the
//! first scrape, the series each rejection leaves behind, the admin port's
//! authentication, the healthcheck subcommand, the snapshot's file mode and a
//! private CA for an `https` upstream. Real sockets on 127.0.0.1 throughout.

mod harness;

use std::time::Duration;

use harness::fresh::{post_json, post_raw};
use harness::*;
use serde_json::json;

/// Every series whose labels are known up front is exported at 0 before any
/// request, with the build info and the process metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_has_every_known_series_at_zero() {
    let (_up, app, _dir) = start_fixture(|_| {}).await;
    let text = metrics(app.admin_addr()).await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            metric(&text, name, labels),
            Some(0.0),
            "{name}{labels:?} not exported at 0:\n{text}"
        );
    };
    for outcome in poolgate::metrics::LOGIN_OUTCOMES {
        zero("poolgate_login_outcomes_total", &[("outcome", outcome)]);
    }
    for (guard, reason) in poolgate::metrics::guard_reasons() {
        zero(
            "poolgate_guard_decisions_total",
            &[
                ("guard", guard.as_str()),
                ("decision", "reject"),
                ("reason", reason),
            ],
        );
        zero("poolgate_rejections_total", &[("reason", reason)]);
    }
    for reason in poolgate::metrics::OTHER_REJECTION_REASONS {
        zero("poolgate_rejections_total", &[("reason", reason)]);
    }
    for reason in ["io", "parse"] {
        zero(
            "poolgate_policy_fetch_failures_total",
            &[("source", "file"), ("reason", reason)],
        );
    }
    assert_eq!(
        metric(
            &text,
            "poolgate_policy_fetch_failures_total",
            &[("source", "authing")]
        ),
        None,
        "only the configured source"
    );
    for (route, method, outcome) in poolgate::metrics::request_series() {
        zero(
            "poolgate_requests_total",
            &[("route", route), ("method", method), ("outcome", outcome)],
        );
    }
    zero(
        "poolgate_upstream_duration_seconds_count",
        &[("route", "login")],
    );
    zero(
        "poolgate_connections_rejected_total",
        &[("listener", "proxy")],
    );
    // No Redis configured: no store series.
    assert_eq!(metric(&text, "poolgate_store_errors_total", &[]), None);

    assert_eq!(
        metric(
            &text,
            "poolgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    let build = text
        .lines()
        .find(|l| l.starts_with("poolgate_build_info{"))
        .expect("build info");
    assert!(
        build.contains("commit=\"") && build.contains("rustc=\""),
        "{build}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(metric(&text, "process_open_fds", &[]).is_some());
    app.shutdown().await;
}

/// With a Redis store configured (not reachable: the series exist anyway),
/// the store's error and fallback series are there from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_store_exports_its_series_at_zero() {
    let nobody = unused_addr();
    let (_up, app, _dir) = start_fixture(|cfg| {
        cfg.store = poolgate::config::StoreConfig::Redis(poolgate::config::RedisConfig {
            url: poolgate::config::Secret::new(format!("redis://{nobody}/0")),
            connect_timeout: Duration::from_millis(200),
            ..Default::default()
        });
    })
    .await;
    let text = metrics(app.admin_addr()).await;
    for op in poolgate::metrics::STORE_OPS {
        for kind in poolgate::metrics::STORE_ERROR_KINDS {
            assert!(
                metric(
                    &text,
                    "poolgate_store_errors_total",
                    &[("op", op), ("kind", kind)]
                )
                .is_some(),
                "{op}/{kind}"
            );
        }
    }
    for op in poolgate::metrics::STORE_FALLBACK_OPS {
        assert!(metric(
            &text,
            "poolgate_store_fallbacks_total",
            &[("op", op), ("mode", "local")]
        )
        .is_some());
    }
    app.shutdown().await;
}

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// `method target` on the admin port, with `Authorization: Bearer token` when given.
async fn admin_call(
    admin: std::net::SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(build(method, admin, target, &headers, bytes::Bytes::new())).await
}

/// With a token: `/policy`, `/counters`, `/unblock` answer 401 (with
/// `WWW-Authenticate: Bearer`) without it or with a wrong one, and serve with
/// it; `/healthz`, `/readyz` and `/metrics` stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token_once_one_is_set() {
    let (_up, app, _dir) = start_fixture(|cfg| {
        cfg.admin.token = Some(poolgate::config::Secret::new(ADMIN_TOKEN));
    })
    .await;
    let admin = app.admin_addr();
    for (method, target) in [
        ("GET", "/policy"),
        ("GET", "/counters?ip=127.0.0.1"),
        ("POST", "/unblock?ip=127.0.0.1"),
    ] {
        let r = admin_call(admin, method, target, None).await;
        assert_eq!(r.status, 401, "{method} {target} without the token");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="poolgate-admin""#)
        );
        let r = admin_call(admin, method, target, Some("not-the-admin-token-at-all")).await;
        assert_eq!(r.status, 401, "{method} {target} with a wrong token");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer") && v.contains("invalid_token")));
        let r = admin_call(admin, method, target, Some(ADMIN_TOKEN)).await;
        assert_eq!(
            r.status,
            200,
            "{method} {target} with the token: {}",
            r.text()
        );
    }
    for target in ["/healthz", "/readyz", "/metrics"] {
        let r = admin_call(admin, "GET", target, None).await;
        assert_eq!(r.status, 200, "{target} stays open");
    }
    // Method checks still apply behind the token.
    let r = admin_call(admin, "GET", "/unblock?ip=127.0.0.1", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 405);
    app.shutdown().await;
}

/// `protect_metrics = true` puts `/metrics` behind the token too; the probes
/// stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_metrics_puts_metrics_behind_the_token() {
    let (_up, app, _dir) = start_fixture(|cfg| {
        cfg.admin.token = Some(poolgate::config::Secret::new(ADMIN_TOKEN));
        cfg.admin.protect_metrics = true;
    })
    .await;
    let admin = app.admin_addr();
    let r = admin_call(admin, "GET", "/metrics", None).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let r = admin_call(admin, "GET", "/metrics", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("poolgate_build_info"));
    for target in ["/healthz", "/readyz"] {
        assert_eq!(admin_call(admin, "GET", target, None).await.status, 200);
    }
    app.shutdown().await;
}

/// Without a token, reading stays open and `/unblock` is served to loopback
/// callers (the default admin address); other hosts get 403 (unit-tested in
/// `admin::tests`, as a test cannot connect from a non-loopback address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_reads_are_open_and_unblock_is_loopback_only() {
    let (_up, app, _dir) = start_fixture(|_| {}).await;
    let admin = app.admin_addr();
    for (method, target) in [
        ("GET", "/policy"),
        ("GET", "/counters?ip=127.0.0.1"),
        ("POST", "/unblock?ip=127.0.0.1"),
        ("GET", "/metrics"),
    ] {
        let r = admin_call(admin, method, target, None).await;
        assert_eq!(r.status, 200, "{method} {target}");
    }
    app.shutdown().await;
}

/// The snapshot holds whitelist entries (personal data): owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_snapshot_is_written_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempdir();
    let snap = state.path().join("policy-snapshot.json");
    let path = snap.clone();
    let (_up, app, _dir) = start_fixture(move |cfg| cfg.policy.snapshot_path = Some(path)).await;
    wait_for("the snapshot is written", Duration::from_secs(10), || {
        snap.exists()
    })
    .await;
    let mode = std::fs::metadata(&snap).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    app.shutdown().await;
}

/// `poolgate healthcheck`: 0 when the admin `/readyz` says ready, 1 when it
/// cannot be reached, 2 when the configuration cannot be loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_asks_readyz_and_says_so_in_its_exit_status() {
    let (up, app, dir) = start_fixture(|_| {}).await;
    let pool = dir.path().join("pool.json");
    let config = |admin: std::net::SocketAddr| {
        write_file(
            dir.path(),
            &format!("hc-{}.toml", admin.port()),
            &format!(
                "[server]\nadmin_listen = \"{admin}\"\n[upstream]\nurl = \"http://{}\"\n[policy]\nsource = \"file\"\n[policy.file]\npath = {}\n",
                up.addr,
                toml_str(&pool)
            ),
        )
    };
    let ready = config(app.admin_addr());
    let (code, out, err) =
        run_binary(&["healthcheck", "--config", ready.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ready"), "{out}");

    let nobody = config(unused_addr());
    let (code, _, err) =
        run_binary(&["healthcheck", "--config", nobody.to_str().unwrap()], &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/readyz"), "{err}");

    let broken = write_file(dir.path(), "broken.toml", "[server]\nnot_a_key = 1\n");
    let (code, _, err) =
        run_binary(&["healthcheck", "--config", broken.to_str().unwrap()], &[]).await;
    assert_eq!(code, 2, "{err}");

    // Shut down: nothing answers, so not healthy.
    let admin = app.admin_addr();
    app.shutdown().await;
    let gone = config(admin);
    let (code, _, _) = run_binary(&["healthcheck", "--config", gone.to_str().unwrap()], &[]).await;
    assert_eq!(code, 1);
}

/// A private CA and an `https` upstream on loopback signed by it.
struct TlsUpstream {
    addr: std::net::SocketAddr,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn private_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "poolgate test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

/// An HTTPS server on 127.0.0.1 (certificate for the IP, signed by a fresh
/// private CA) that answers every request `200 tls-ok`.
async fn tls_upstream() -> TlsUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let (ca, ca_pem) = private_ca();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the client refuses ends here: nothing to answer.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\nconnection: close\r\n\r\ntls-ok")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsUpstream { addr, ca_pem, task }
}

/// `upstream.ca_file` makes poolgate trust a private CA for an `https`
/// upstream; without it (the public roots) or with another CA the upstream's
/// certificate is refused and the client gets 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_file_lets_poolgate_reach_an_https_upstream() {
    let up = tls_upstream().await;
    let certs = tempdir();
    let ca = write_file(certs.path(), "ca.pem", &up.ca_pem);
    let (_, other_pem) = private_ca();
    let other = write_file(certs.path(), "other-ca.pem", &other_pem);
    let url = format!("https://{}", up.addr);

    for (ca_file, want) in [(Some(&ca), 200), (None, 502), (Some(&other), 502)] {
        let (url, path) = (url.clone(), ca_file.cloned());
        let (_fake, app, _dir) = start_fixture(move |cfg| {
            cfg.upstream.url = url;
            cfg.upstream.ca_file = path;
        })
        .await;
        let r = get(app.proxy_addr(), "/some/unguarded/path").await;
        assert_eq!(r.status, want, "ca_file {ca_file:?}: {}", r.text());
        if want == 200 {
            assert_eq!(r.text(), "tls-ok");
        }
        app.shutdown().await;
    }
}

/// A `ca_file` that cannot be used is a configuration error naming the key.
#[test]
fn a_bad_ca_file_is_a_configuration_error() {
    let dir = tempdir();
    let pool = write_file(dir.path(), "pool.json", &fixture_text());
    let garbage = write_file(dir.path(), "garbage.pem", "not a certificate\n");
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (extra_url, ca, needle) in [
        ("https", dir.path().join("missing.pem"), "cannot read"),
        ("https", garbage.clone(), "no CERTIFICATE"),
        ("http", garbage, "not https"),
    ] {
        let mut cfg = file_config(&pool, up, "");
        cfg.upstream.url = format!("{extra_url}://{up}");
        cfg.upstream.ca_file = Some(ca);
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(
            err.contains("upstream.ca_file") && err.contains(needle),
            "{err}"
        );
    }
}

/// JSON log lines carry plain values: the token expiry as an RFC 3339 string
/// (not `Some(Rfc3339Timestamp(SystemTime {..}))`) and the source as `authing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_spell_times_and_the_source_plainly() {
    let api = FakeAuthing::start(fixture_pool()).await;
    let up = FakeUpstream::start().await;
    let dir = tempdir();
    let config = write_file(
        dir.path(),
        "authing.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[policy]\nsource = \"authing\"\n[policy.authing]\napi_base = \"http://{}\"\nuser_pool_id = \"{FIXTURE_POOL_ID}\"\n[log]\nformat = \"json\"\n",
            up.addr, api.addr
        ),
    );
    let mut p = Proc::spawn(
        &["--config", config.to_str().unwrap()],
        &[("POOLGATE_AUTHING_SECRET", SECRET)],
    );
    let token = p
        .wait_for_stderr(&["obtained a management token"], Duration::from_secs(30))
        .await;
    let v: serde_json::Value = serde_json::from_str(&token).expect("a JSON line");
    let expiry = v["expires_at"].as_str().expect("expires_at is a string");
    assert!(
        humantime::parse_rfc3339(expiry).is_ok(),
        "not RFC 3339: {token}"
    );
    let listening: serde_json::Value = serde_json::from_str(
        &p.wait_for_stderr(&["poolgate listening"], Duration::from_secs(30))
            .await,
    )
    .unwrap();
    assert_eq!(listening["source"], "authing");
    assert!(!p.stderr().contains("Rfc3339Timestamp") && !p.stderr().contains("\"Authing\""));
}

#[tokio::test]
async fn rejections_leave_metrics() {
    let s = Setup::new(json!({
        "loginFailCheck": check(1, 60),
        "allowedOrigins": "https://app.sample.com",
        "frequentRegisterCheck": check(1, 60),
        "passwordStrength": 1,
    }))
    .start()
    .await;
    wrong_login(s.gw(), "a", None).await;
    wrong_login(s.gw(), "a", None).await;
    post_json(
        s.gw(),
        "/api/x",
        &json!({}),
        &[("origin", "https://evil.com")],
    )
    .await;
    post_raw(
        s.gw(),
        REGISTER,
        "{",
        &[("content-type", "application/json")],
    )
    .await;
    post_json(
        s.gw(),
        REGISTER,
        &json!({"email": "a@x.com", "password": "123"}),
        &[],
    )
    .await;
    post_json(
        s.gw(),
        REGISTER,
        &json!({"email": "a@x.com", "password": "123456"}),
        &[],
    )
    .await;
    let r = post_json(
        s.gw(),
        REGISTER,
        &json!({"email": "b@x.com", "password": "123456"}),
        &[],
    )
    .await;
    assert_eq!(r.json()["code"], 2100);
    assert_eq!(s.up.total(), 2);
    let m = metrics(s.admin()).await;
    for (guard, reason) in [
        ("login_fail", "captcha_required"),
        ("cors", "origin_not_allowed"),
        ("body", "malformed_body"),
        ("password_strength", "too_short"),
        ("register_limit", "too_frequent"),
    ] {
        let d = format!(
            r#"poolgate_guard_decisions_total{{decision="reject",guard="{guard}",reason="{reason}"}}"#
        );
        assert_eq!(sample(&m, &d), Some(1.0), "{d}\n{m}");
        let r = format!(r#"poolgate_rejections_total{{reason="{reason}"}}"#);
        assert_eq!(sample(&m, &r), Some(1.0), "{r}\n{m}");
    }
    assert!(sample(
        &m,
        r#"poolgate_login_outcomes_total{outcome="wrong_password"}"#
    )
    .is_some_and(|v| v == 1.0));
    s.shutdown().await;
}
