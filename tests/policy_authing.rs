//! The `authing` policy source against a fake management API over loopback:
//! readiness, token renewal and revocation, outages that keep the last good
//! policy, an API that is down at start, the snapshot across restarts, and
//! secrets that never leave the process.

mod harness;

use std::time::Duration;

use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

async fn fetch_failures(admin: std::net::SocketAddr, reason: &str) -> f64 {
    metric(
        &metrics(admin).await,
        "poolgate_policy_fetch_failures_total",
        &[("source", "authing"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn the_authing_source_makes_the_gateway_ready_with_the_pool_and_its_whitelist() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let mut pool = fixture_pool();
        pool["whitelist"]["emailEnabled"] = json!(true);
        let api = FakeAuthing::start(pool).await;
        api.set_whitelist("EMAIL", &["Alice@Example.com", "bob@example.com"]);
        let app = poolgate::App::start(authing_config(api.addr, up.addr, None, ""))
            .await
            .unwrap();
        let admin = app.admin_addr();
        assert_eq!(readyz(admin).await, StatusCode::OK);
        let (status, shown) = policy(admin).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["source"], json!("authing"));
        assert_eq!(shown["pool_id"], json!(FIXTURE_POOL_ID));
        assert_eq!(shown["pool_name"], json!("测试"));
        assert_eq!(shown["whitelist"]["email"], json!({"entries": 2}));
        assert_eq!(shown["whitelist"]["username"], Value::Null);
        assert_eq!(shown["version"], json!(version(&app).unwrap()));
        let p = app.policy.current().unwrap();
        assert_eq!(p.login_fail.map(|l| l.limit), Some(50));
        assert_eq!(p.password_fail.map(|l| l.limit), Some(55));
        assert!(p
            .whitelist
            .email
            .as_ref()
            .unwrap()
            .contains("alice@example.com"));

        assert_eq!(api.tokens_issued(), 1);
        assert!(api.whitelist_requests() >= 1);
        assert_eq!(api.refused(), Vec::<String>::new());
        let m = metrics(admin).await;
        assert_eq!(metric(&m, "poolgate_policy_ready", &[]), Some(1.0));
        assert_eq!(
            metric(
                &m,
                "poolgate_policy_info",
                &[("source", "authing"), ("version", &p.version)]
            ),
            Some(1.0)
        );
        let reply = get(app.proxy_addr(), "/through").await;
        assert_eq!(reply.status, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_management_token_is_renewed_before_it_expires() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api = FakeAuthing::start(fixture_pool()).await;
        // Tokens live 3 s and are renewed when under 2 s remain; fetches every 1 s.
        api.set_token_ttl(3);
        let app = poolgate::App::start(authing_config(
            api.addr,
            up.addr,
            None,
            r#"token_renew_before = "2s""#,
        ))
        .await
        .unwrap();
        let admin = app.admin_addr();
        let good = version(&app).unwrap();
        let ok_at_start = api.detail_ok();
        wait_for("three tokens issued", Duration::from_secs(30), || {
            api.tokens_issued() >= 3
        })
        .await;
        wait_for("fetches keep succeeding", Duration::from_secs(30), || {
            api.detail_ok() >= ok_at_start + 3
        })
        .await;
        // Renewed ahead of time: the API never saw an expired (or any bad)
        // token, nor one with much less than the 2 s margin left (a second is
        // allowed for the call itself on a loaded machine; a gateway that
        // ignores the margin uses tokens down to their last fraction of a second).
        assert_eq!(api.refused(), Vec::<String>::new());
        let least = api.least_token_remaining().unwrap();
        assert!(least > 1.0, "a token was used with only {least:.3}s left");
        let m = metrics(admin).await;
        assert_eq!(
            metric_sum(&m, "poolgate_policy_fetch_failures_total", &[]),
            0.0,
            "{m}"
        );
        assert!(
            metric(
                &m,
                "poolgate_management_token_renewals_total",
                &[("result", "ok")]
            )
            .unwrap_or(0.0)
                >= 3.0
        );
        assert!(
            metric(
                &m,
                "poolgate_policy_reloads_total",
                &[("result", "unchanged")]
            )
            .unwrap_or(0.0)
                >= 2.0
        );
        assert_eq!(version(&app), Some(good));
        assert_eq!(readyz(admin).await, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_fetch_still_succeeds() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api = FakeAuthing::start(fixture_pool()).await;
        let app = poolgate::App::start(authing_config(api.addr, up.addr, None, ""))
            .await
            .unwrap();
        let admin = app.admin_addr();
        let good = version(&app).unwrap();
        wait_for("a second fetch", Duration::from_secs(15), || {
            api.detail_ok() >= 2
        })
        .await;
        assert_eq!(
            api.tokens_issued(),
            1,
            "the token is cached between fetches"
        );

        api.revoke_tokens();
        let ok = api.detail_ok();
        wait_for(
            "two fetches after the revocation",
            Duration::from_secs(15),
            || api.detail_ok() >= ok + 2,
        )
        .await;
        assert_eq!(
            api.refused(),
            ["detail: revoked token"],
            "one 401, then a new token"
        );
        assert_eq!(api.tokens_issued(), 2);
        assert_eq!(
            metric_sum(
                &metrics(admin).await,
                "poolgate_policy_fetch_failures_total",
                &[]
            ),
            0.0,
            "the retry with a new token made the fetch succeed"
        );
        assert_eq!(version(&app), Some(good));
        assert_eq!(readyz(admin).await, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn api_outages_keep_the_last_good_policy_and_are_counted() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api = FakeAuthing::start(fixture_pool()).await;
        // A small call timeout, so a hanging API is given up on quickly.
        let mut cfg = authing_config(api.addr, up.addr, None, "");
        cfg.policy.authing_mut().unwrap().timeout = Duration::from_millis(500);
        let app = poolgate::App::start(cfg).await.unwrap();
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        let good = version(&app).unwrap();
        let mut total_before = 0.0;
        for (mode, reason) in [
            (AuthMode::Status500, "http_status"),
            (AuthMode::Garbage, "parse"),
            (AuthMode::Hang, "timeout"),
            (AuthMode::Unauthorized, "unauthorized"),
        ] {
            let before = fetch_failures(admin, reason).await;
            api.set_mode(mode);
            wait_for_async(
                &format!("{mode:?} counted as {reason}"),
                Duration::from_secs(20),
                || async { fetch_failures(admin, reason).await >= before + 1.0 },
            )
            .await;
            assert_eq!(version(&app).as_deref(), Some(good.as_str()), "{mode:?}");
            let (status, shown) = policy(admin).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(shown["version"], json!(good), "{mode:?}");
            assert_eq!(shown["source"], json!("authing"), "{mode:?}");
            assert_eq!(readyz(admin).await, StatusCode::OK, "{mode:?}");
            assert_eq!(get(gw, "/during/outage").await.status, StatusCode::OK);
            let m = metrics(admin).await;
            let total = metric_sum(&m, "poolgate_policy_fetch_failures_total", &[]);
            assert!(
                total > total_before,
                "{mode:?}: {total} after {total_before}"
            );
            total_before = total;
            assert_eq!(metric(&m, "poolgate_policy_ready", &[]), Some(1.0));
        }

        // Back to normal, with a different pool document: it is applied.
        let mut changed = fixture_pool();
        changed["registerDisabled"] = json!(true);
        changed["loginFailCheck"]["limit"] = json!(3);
        api.set_pool(changed);
        api.set_mode(AuthMode::Normal);
        wait_for("the changed pool applied", Duration::from_secs(20), || {
            version(&app).is_some_and(|v| v != good)
        })
        .await;
        let p = app.policy.current().unwrap();
        assert!(p.register_disabled);
        assert_eq!(p.login_fail.map(|l| l.limit), Some(3));
        assert_eq!(p.source, "authing");
        let (_, shown) = policy(admin).await;
        assert_eq!(shown["version"], json!(p.version));
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_api_down_at_start_without_snapshot_leaves_the_gateway_unready_until_it_answers() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api_addr = unused_addr();
        let app = poolgate::App::start(authing_config(api_addr, up.addr, None, ""))
            .await
            .expect("an unreachable API is not a start error");
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        assert_eq!(readyz(admin).await, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = policy(admin).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Fail closed: nothing is forwarded without a policy.
        assert_envelope_exact(
            &get(gw, "/api/other").await,
            503,
            "poolgate has no policy in force yet",
        );
        assert_envelope_exact(
            &post_json(
                gw,
                "/api/v2/login/account",
                r#"{"account":"a","password":"b"}"#,
            )
            .await,
            503,
            "poolgate has no policy in force yet",
        );
        assert_eq!(up.arrived_total(), 0);
        let m = metrics(admin).await;
        assert_eq!(metric(&m, "poolgate_policy_ready", &[]), Some(0.0));
        assert!(fetch_failures(admin, "connect").await >= 1.0);

        // The API comes up where poolgate looks: ready within a few retries.
        let api = FakeAuthing::start_on(api_addr, fixture_pool()).await;
        wait_for_async(
            "ready once the API answers",
            Duration::from_secs(20),
            || async { readyz(admin).await == StatusCode::OK },
        )
        .await;
        assert_eq!(app.policy.current().unwrap().source, "authing");
        assert_eq!(get(gw, "/api/other").await.status, StatusCode::OK);
        assert_eq!(up.arrived("/api/other"), 1);
        assert!(api.detail_ok() >= 1);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_restart_during_an_outage_enforces_the_snapshot() {
    bounded("test", LIMIT, async {
        let AuthingStack {
            up: _up,
            api,
            app,
            cfg,
            snap,
            version: good,
            dir: _dir,
        } = start_authing_with_snapshot().await;
        let saved: Value = serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap();
        assert_eq!(saved["source"], json!("authing"));
        assert_eq!(saved["format"], json!(1));
        app.shutdown().await;

        api.set_mode(AuthMode::Status500);
        let app = poolgate::App::start(cfg.clone()).await.unwrap();
        let admin = app.admin_addr();
        assert_eq!(readyz(admin).await, StatusCode::OK);
        let (status, shown) = policy(admin).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["version"], json!(good));
        assert_eq!(shown["source"], json!("snapshot"));
        let m = metrics(admin).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_policy_info",
                &[("source", "snapshot"), ("version", &good)]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(app.proxy_addr(), "/from/snapshot").await.status,
            StatusCode::OK
        );

        // The API recovers: the same version, now from the source itself.
        api.set_mode(AuthMode::Normal);
        wait_for(
            "the source takes over from the snapshot",
            Duration::from_secs(20),
            || app.policy.current().is_some_and(|p| p.source == "authing"),
        )
        .await;
        assert_eq!(version(&app), Some(good));
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_snapshot_and_an_api_outage_leave_the_gateway_unready() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api = FakeAuthing::start(fixture_pool()).await;
        api.set_mode(AuthMode::Status500);
        let dir = tempdir();
        let snap = dir.path().join("snapshot.json");
        write_atomic(&snap, b"{\"format\": 1, \"saved_at\": ");
        let app = poolgate::App::start(authing_config(api.addr, up.addr, Some(&snap), ""))
            .await
            .expect("an outage is not a start error");
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        assert_eq!(readyz(admin).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_envelope_exact(
            &get(gw, "/blocked").await,
            503,
            "poolgate has no policy in force yet",
        );
        assert_eq!(up.arrived_total(), 0);

        api.set_mode(AuthMode::Normal);
        wait_for_async(
            "ready once the API answers",
            Duration::from_secs(20),
            || async { readyz(admin).await == StatusCode::OK },
        )
        .await;
        // The corrupt snapshot is replaced by a good one.
        wait_for("the snapshot rewritten", Duration::from_secs(10), || {
            std::fs::read(&snap)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["source"] == "authing")
        })
        .await;
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn secrets_and_tokens_appear_in_no_admin_page_and_not_in_the_snapshot() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let mut pool = fixture_pool();
        pool["whitelist"]["phoneEnabled"] = json!(true);
        assert_eq!(pool["secret"], json!(FIXTURE_SECRET));
        assert_eq!(pool["jwtSecret"], json!(FIXTURE_JWT_SECRET));
        let api = FakeAuthing::start(pool).await;
        api.set_whitelist("PHONE", &["+86 13800000000"]);
        api.set_token_ttl(3);
        let dir = tempdir();
        let snap = dir.path().join("snapshot.json");
        let app = poolgate::App::start(authing_config(
            api.addr,
            up.addr,
            Some(&snap),
            r#"token_renew_before = "2s""#,
        ))
        .await
        .unwrap();
        let admin = app.admin_addr();
        wait_for("a renewed token", Duration::from_secs(20), || {
            api.tokens_issued() >= 2
        })
        .await;
        wait_for("the snapshot written", Duration::from_secs(10), || {
            snap.exists()
        })
        .await;
        // Something in every page, so an empty page cannot pass.
        let pages = [
            ("/policy", get(admin, "/policy").await.text()),
            ("/metrics", metrics(admin).await),
            (
                "/counters",
                get(admin, "/counters?ip=127.0.0.1").await.text(),
            ),
            ("snapshot", std::fs::read_to_string(&snap).unwrap()),
        ];
        assert!(pages[0].1.contains(FIXTURE_POOL_ID));
        assert!(pages[1].1.contains("poolgate_policy_ready 1"));
        let saved: Value = serde_json::from_str(&pages[3].1).unwrap();
        assert_eq!(saved["pool"]["id"], json!(FIXTURE_POOL_ID), "{saved}");
        assert_eq!(
            saved["pool"]["loginFailCheck"]["limit"],
            json!(50),
            "{saved}"
        );
        assert_eq!(
            saved["whitelist"]["phone"],
            json!(["+86 13800000000"]),
            "{saved}"
        );
        let mut secrets = vec![
            SECRET.to_string(),
            FIXTURE_SECRET.to_string(),
            FIXTURE_JWT_SECRET.to_string(),
        ];
        secrets.extend(api.issued_tokens());
        assert!(secrets.len() >= 5);
        for (name, text) in &pages {
            for s in &secrets {
                assert!(!text.contains(s.as_str()), "{s} appears in {name}:\n{text}");
            }
        }
        // And not in the configuration's debug form either (logged by some setups).
        let cfg = authing_config(api.addr, up.addr, Some(&snap), "");
        assert!(!format!("{cfg:?}").contains(SECRET));
        app.shutdown().await;
    })
    .await;
}
