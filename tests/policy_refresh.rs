//! Policy sources over real sockets: file hot swap under load, the Authing
//! management API (token renewal, revocation, outages), snapshots, redaction.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::*;

fn authing_config(
    api: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    snapshot: Option<&std::path::Path>,
    extra: &str,
) -> poolgate::Config {
    let snap = snapshot
        .map(|p| format!("snapshot_path = \"{}\"", p.display()))
        .unwrap_or_default();
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        shutdown_grace = "2s"
        [upstream]
        url = "http://{upstream}"
        [policy]
        source = "authing"
        refresh_interval = "1s"
        {snap}
        [policy.authing]
        api_base = "http://{api}"
        user_pool_id = "pool1"
        timeout = "500ms"
        {extra}
        "#
    );
    let mut cfg = poolgate::Config::parse(&text).unwrap();
    cfg.apply_env(|k| (k == "POOLGATE_AUTHING_SECRET").then(|| SECRET.to_string()))
        .unwrap();
    cfg.validate().unwrap();
    cfg
}

fn version(app: &poolgate::App) -> Option<String> {
    app.policy.current().map(|p| p.version.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_file_swaps_under_load_lose_no_request() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut pool = fixture_pool();
    let cfg = file_config(dir.path(), &pool, up.addr, "");
    let app = poolgate::App::start(cfg).await.unwrap();
    let gw = app.proxy_addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (s, _, _) = post(gw, "/api/other", "{}", &[]).await;
                if s == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    for i in 0..50 {
        let before = version(&app);
        pool["loginFailCheck"]["limit"] = serde_json::json!(100 + i);
        std::fs::write(
            dir.path().join("pool.json"),
            serde_json::to_vec(&pool).unwrap(),
        )
        .unwrap();
        app.reload();
        assert!(
            eventually(5, || version(&app) != before).await,
            "swap {i} took effect"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "requests flowed during the swaps"
    );
    assert_eq!(app.policy.current().unwrap().login_fail.unwrap().limit, 149);
    let (_, metrics) = get(app.admin_addr(), "/metrics").await;
    assert!(
        metric(
            &metrics,
            "poolgate_policy_reloads_total{result=\"applied\"}"
        )
        .unwrap()
            >= 51.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn invalid_file_keeps_the_last_good_policy() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = poolgate::App::start(file_config(dir.path(), &fixture_pool(), up.addr, ""))
        .await
        .unwrap();
    let good = version(&app);
    for bad in [&b"{not json"[..], br#"{"passwordStrength": 9}"#, b""] {
        std::fs::write(dir.path().join("pool.json"), bad).unwrap();
        app.reload();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(version(&app), good);
        assert_eq!(get(app.admin_addr(), "/readyz").await.0, StatusCode::OK);
    }
    let (_, metrics) = get(app.admin_addr(), "/metrics").await;
    assert!(
        metric(
            &metrics,
            "poolgate_policy_fetch_failures_total{reason=\"parse\",source=\"file\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "poolgate_policy_reloads_total{result=\"invalid\"}"
        )
        .unwrap()
            >= 1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn authing_source_tokens_outages_and_redaction() {
    let up = Upstream::start().await;
    let mut pool = fixture_pool();
    pool["whitelist"]["emailEnabled"] = serde_json::json!(true);
    let api = Authing::start(pool).await;
    api.token_ttl_secs.store(3, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.json");
    let app = poolgate::App::start(authing_config(
        api.addr,
        up.addr,
        Some(&snap),
        r#"token_renew_before = "2s""#,
    ))
    .await
    .unwrap();
    assert_eq!(get(app.admin_addr(), "/readyz").await.0, StatusCode::OK);
    let (status, policy) = get(app.admin_addr(), "/policy").await;
    assert_eq!(status, StatusCode::OK);
    assert!(policy.contains("59f86b4832eb28071bdd9214"), "{policy}");
    assert!(
        policy.contains(r#""entries": 1"#),
        "whitelist fetched: {policy}"
    );

    // Tokens live 3s and are renewed 2s before expiry: a new one every ~1s.
    assert!(eventually(10, || api.tokens_issued.load(Ordering::SeqCst) >= 3).await);
    let calls = api.detail_calls.load(Ordering::SeqCst);
    assert!(eventually(5, || api.detail_calls.load(Ordering::SeqCst) > calls + 1).await);

    // A revoked token: the next fetch gets a new token and succeeds.
    api.token_ttl_secs.store(7200, Ordering::SeqCst);
    let issued = api.tokens_issued.load(Ordering::SeqCst);
    api.set_mode(AuthingMode::Revoke);
    assert!(eventually(5, || api.tokens_issued.load(Ordering::SeqCst) > issued).await);

    // Outages keep the last good policy and are counted.
    let good = version(&app);
    for mode in [
        AuthingMode::Status500,
        AuthingMode::Garbage,
        AuthingMode::Hang,
    ] {
        api.set_mode(mode);
        let before = api.detail_calls.load(Ordering::SeqCst);
        assert!(eventually(10, || api.detail_calls.load(Ordering::SeqCst) > before).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(version(&app), good, "{mode:?}");
        assert_eq!(get(app.admin_addr(), "/readyz").await.0, StatusCode::OK);
    }
    let (_, metrics) = get(app.admin_addr(), "/metrics").await;
    for reason in ["http_status", "parse", "timeout"] {
        let line = format!(
            "poolgate_policy_fetch_failures_total{{reason=\"{reason}\",source=\"authing\"}}"
        );
        assert!(
            metric(&metrics, &line).unwrap_or(0.0) >= 1.0,
            "{line}\n{metrics}"
        );
    }

    // Secrets appear nowhere: not in /policy, /metrics, or the snapshot.
    let snapshot = std::fs::read_to_string(&snap).unwrap();
    let (_, policy) = get(app.admin_addr(), "/policy").await;
    for text in [&policy, &metrics, &snapshot] {
        for secret in [
            SECRET,
            "eb512df21f41133ea02fdad4efeb296c",
            "4ff2dc0761edd4df77c11ba32db89ca1",
            "mgmt-token-",
        ] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }
    app.shutdown().await;

    // Restart while the API is down: the snapshot is enforced.
    api.set_mode(AuthingMode::Status500);
    let app = poolgate::App::start(authing_config(api.addr, up.addr, Some(&snap), ""))
        .await
        .unwrap();
    assert_eq!(version(&app), good);
    assert_eq!(app.policy.current().unwrap().source, "snapshot");
    assert_eq!(get(app.admin_addr(), "/readyz").await.0, StatusCode::OK);
    app.shutdown().await;

    // A corrupt snapshot and the API down: unready, every request 503.
    std::fs::write(&snap, b"{corrupt").unwrap();
    let app = poolgate::App::start(authing_config(api.addr, up.addr, Some(&snap), ""))
        .await
        .unwrap();
    assert_eq!(
        get(app.admin_addr(), "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, _, body) = post(app.proxy_addr(), "/api/other", "{}", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], 503);
    assert_eq!(up.count("/api/other"), 0);
    // The API comes back: ready within a few backoff steps.
    api.set_mode(AuthingMode::Normal);
    assert!(eventually(10, || app.policy.is_ready()).await);
    assert_eq!(get(app.admin_addr(), "/readyz").await.0, StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn file_source_without_policy_is_a_start_error() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), &fixture_pool(), up.addr, "");
    std::fs::write(dir.path().join("pool.json"), b"[]").unwrap();
    let err = poolgate::App::start(cfg).await.err().expect("start fails");
    assert!(format!("{err:#}").contains("pool.json"), "{err:#}");
}
