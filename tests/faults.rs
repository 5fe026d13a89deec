//! Faulty dependencies the other suites leave out (see docs/failure-behaviour.md
//! for the whole table): the upstream failing on a *guarded* login
//! (the reservation must be released, the attempt counted as nothing), the
//! Authing API failing *at start* in ways other than a 500, and a snapshot
//! that cannot be written.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use http::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);
const LOGIN: &str = "/api/v2/login/account";

async fn login(gw: std::net::SocketAddr) -> Reply {
    post_json(gw, LOGIN, r#"{"account":"bob","password":"wrong-1"}"#).await
}

/// The per-IP login counter of 127.0.0.1 as the admin port shows it: (count, in flight).
async fn ip_counter(admin: std::net::SocketAddr) -> (i64, i64) {
    let r = get(admin, "/counters?ip=127.0.0.1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v: Value = r.json();
    let f = &v["login_failures"];
    (
        f["count"].as_i64().unwrap_or(0),
        f["inflight"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn an_upstream_that_hangs_on_a_login_gives_504_and_releases_the_reservation() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) =
            start_fixture(|c| c.upstream.request_timeout = Duration::from_millis(800)).await;
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());

        up.set_mode(UpMode::Delay(Duration::from_secs(30)));
        let started = Instant::now();
        let r = login(gw).await;
        assert_envelope_exact(&r, 504, "upstream timed out");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(up.arrived(LOGIN), 1, "the login was forwarded");
        // Released, not committed: an upstream fault is not the client's failure.
        assert_eq!(ip_counter(admin).await, (0, 0));

        let m = metrics(admin).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_rejections_total",
                &[("reason", "upstream_timeout")]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric_sum(&m, "poolgate_login_outcomes_total", &[]),
            0.0,
            "no verdict is recorded for a login the upstream never answered"
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_login_answer_in_several_chunks_is_judged_whole_and_passed_on_byte_exact() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|_| {}).await;
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        // Each chunk is a body frame of its own: the verdict needs them joined.
        up.set_mode(UpMode::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
              connection: close\r\n\r\n8\r\n{\"code\":\r\n6\r\n2333, \r\nf\r\n\"message\":\"no\"}\r\n0\r\n\r\n",
        ));
        let r = login(gw).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), r#"{"code":2333, "message":"no"}"#);
        assert_eq!(ip_counter(admin).await, (1, 0), "a wrong password counted");
        let m = metrics(admin).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_login_outcomes_total",
                &[("outcome", "wrong_password")]
            ),
            Some(1.0)
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_fails_a_login_counts_nothing_and_an_unreadable_answer_is_no_success() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|_| {}).await;
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());

        // Refused at the transport: 502, released.
        for mode in [UpMode::Reset, UpMode::Close, UpMode::Garbage] {
            up.set_mode(mode);
            let r = login(gw).await;
            assert_envelope_exact(&r, 502, "upstream unavailable");
            assert_eq!(ip_counter(admin).await, (0, 0), "{mode:?}");
        }
        // The answer breaks off while poolgate reads it to learn the outcome.
        up.set_mode(UpMode::BreakBody);
        let r = login(gw).await;
        assert_envelope_exact(&r, 502, "upstream answer broke off");
        assert_eq!(ip_counter(admin).await, (0, 0), "broken answer");

        // A 5xx is passed through; it has no verdict.
        up.set_mode(UpMode::Normal);
        let r = send(build(
            "POST",
            gw,
            LOGIN,
            &[("content-type", "application/json"), ("x-reply-status", "500")],
            r#"{"account":"bob","password":"wrong-1"}"#,
        ))
        .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ip_counter(admin).await, (0, 0), "5xx");

        // A 2xx that is not JSON says nothing readable about the login: never
        // a success, so it counts against the client (not against an account).
        up.set_mode(UpMode::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\nconnection: close\r\n\r\n<html>oops</>",
        ));
        let r = login(gw).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "<html>oops</>", "passed through as it came");
        assert_eq!(ip_counter(admin).await, (1, 0), "non-JSON 2xx");

        let m = metrics(admin).await;
        assert_eq!(
            metric(&m, "poolgate_rejections_total", &[("reason", "upstream_error")]),
            Some(3.0)
        );
        assert_eq!(
            metric(&m, "poolgate_login_outcomes_total", &[("outcome", "unknown")]),
            Some(2.0),
            "the broken answer and the 5xx"
        );
        assert_eq!(
            metric(&m, "poolgate_login_outcomes_total", &[("outcome", "unreadable")]),
            Some(1.0),
            "the non-JSON 2xx"
        );
        assert_eq!(
            metric(&m, "poolgate_login_outcomes_total", &[("outcome", "wrong_password")]),
            Some(0.0),
            "exported from the start, not counted"
        );

        // Healthy again: a real wrong password is counted as one more.
        up.set_mode(UpMode::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"code\":2333,\"message\":\"wrong\",\"data\":null}  ",
        ));
        let _ = login(gw).await;
        assert_eq!(ip_counter(admin).await, (2, 0));
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_api_failing_at_start_in_any_way_leaves_the_snapshot_in_force() {
    bounded("test", LIMIT, async {
        let AuthingStack {
            up: _up,
            api,
            app,
            cfg,
            snap: _snap,
            version: good,
            dir: _dir,
        } = start_authing_with_snapshot().await;
        app.shutdown().await;

        // (a_restart_during_an_outage_enforces_the_snapshot covers the 500.)
        for mode in [AuthMode::Hang, AuthMode::Unauthorized, AuthMode::Garbage] {
            api.set_mode(mode);
            let started = Instant::now();
            let app = poolgate::App::start(cfg.clone()).await.unwrap();
            let took = started.elapsed();
            // A hanging API costs the start one call's timeout (2 s here), not more.
            assert!(
                took < Duration::from_secs(8),
                "{mode:?}: start took {took:?}"
            );
            let admin = app.admin_addr();
            assert_eq!(readyz(admin).await, StatusCode::OK, "{mode:?}");
            let (_, shown) = policy(admin).await;
            assert_eq!(shown["version"], json!(good), "{mode:?}");
            assert_eq!(shown["source"], json!("snapshot"), "{mode:?}");
            assert_eq!(
                get(app.proxy_addr(), "/during").await.status,
                StatusCode::OK
            );
            app.shutdown().await;
        }
        api.set_mode(AuthMode::Normal);
    })
    .await;
}

#[tokio::test]
async fn an_api_that_hangs_at_start_without_snapshot_leaves_the_gateway_unready_then_recovers() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let api = FakeAuthing::start(fixture_pool()).await;
        api.set_mode(AuthMode::Hang);
        let started = Instant::now();
        let app = poolgate::App::start(authing_config(api.addr, up.addr, None, ""))
            .await
            .expect("a hanging API is not a start error");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        assert_eq!(readyz(admin).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_envelope_exact(
            &get(gw, "/api/other").await,
            503,
            "poolgate has no policy in force yet",
        );
        assert_eq!(
            up.arrived_total(),
            0,
            "fail closed: nothing forwarded unjudged"
        );
        let m = metrics(admin).await;
        assert!(
            metric(
                &m,
                "poolgate_policy_fetch_failures_total",
                &[("source", "authing"), ("reason", "timeout")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{m}"
        );
        api.set_mode(AuthMode::Normal);
        wait_for_async(
            "ready once the API answers",
            Duration::from_secs(30),
            || async { readyz(admin).await == StatusCode::OK },
        )
        .await;
        assert_eq!(get(gw, "/api/other").await.status, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_written_is_counted_and_the_gateway_keeps_serving() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let pool = dir.path().join("pool.json");
        write_pool(&pool, &fixture_pool());
        // A path under a regular file: no write can succeed, even as root.
        let blocker = write_file(dir.path(), "not-a-dir", "x");
        let snap = blocker.join("snapshot.json");
        let mut cfg = file_config(&pool, up.addr, "");
        cfg.policy.snapshot_path = Some(snap.clone());
        let app = poolgate::App::start(cfg)
            .await
            .expect("starts without a snapshot");
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        assert_eq!(readyz(admin).await, StatusCode::OK);
        assert_eq!(get(gw, "/served").await.status, StatusCode::OK);
        let failed = || async {
            let m = metrics(admin).await;
            metric(
                &m,
                "poolgate_policy_snapshot_writes_total",
                &[("result", "failed")],
            )
            .unwrap_or(0.0)
        };
        wait_for_async(
            "the failed write counted",
            Duration::from_secs(10),
            || async { failed().await >= 1.0 },
        )
        .await;

        // A new policy is still applied (and its snapshot write fails again).
        let before = failed().await;
        let mut changed = fixture_pool();
        changed["loginFailCheck"]["limit"] = json!(7);
        write_pool(&pool, &changed);
        app.reload();
        wait_for("the new policy applied", Duration::from_secs(10), || {
            app.policy
                .current()
                .is_some_and(|p| p.login_fail.map(|l| l.limit) == Some(7))
        })
        .await;
        wait_for_async(
            "the second failure counted",
            Duration::from_secs(10),
            || async { failed().await > before },
        )
        .await;
        assert!(!snap.exists());
        assert_eq!(get(gw, "/still/served").await.status, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

/// An upstream that sends its headers in time but trickles the body of a
/// login's answer: the read is timed like the headers
/// (`upstream.request_timeout`), so neither the client nor a task left
/// behind by a client that hung up waits for it forever. No verdict: the
/// attempt counts as neither.
#[tokio::test]
async fn an_upstream_trickling_a_login_answer_times_out() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|c| {
            c.upstream.request_timeout = Duration::from_millis(500);
        })
        .await;
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        up.set_mode(UpMode::StallBody(Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let r = login(gw).await;
        assert_envelope_exact(&r, 504, "upstream answer too slow");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(ip_counter(admin).await, (0, 0));
        app.shutdown().await;
    })
    .await;
}
