//! The `file` policy source over the real stack: hot swaps under load,
//! broken files keep the last good policy, polling, and the snapshot at start.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use http::StatusCode;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

/// One client loop: sends requests until `stop`, counting successes and
/// recording every failure (status or transport error).
fn load_task(
    gw: std::net::SocketAddr,
    h2: bool,
    id: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = if h2 { h2_client() } else { h1_client() };
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let (method, target, body) = if n % 2 == 0 {
                ("GET", format!("/load/{id}/{n}?x=1"), String::new())
            } else {
                (
                    "POST",
                    format!("/echo/load/{id}/{n}"),
                    format!("payload {id} {n}"),
                )
            };
            let req = build(method, gw, &target, &[], body.clone());
            let res = tokio::time::timeout(Duration::from_secs(20), client.request(req)).await;
            let outcome = match res {
                Err(_) => Err("timed out".to_string()),
                Ok(Err(e)) => Err(poolgate::error_chain(&e)),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let reply = read_reply(resp).await;
                    let want = if method == "POST" {
                        (StatusCode::CREATED, body)
                    } else {
                        (
                            StatusCode::OK,
                            json!({"code": 200, "message": "ok", "data": {"target": target}})
                                .to_string(),
                        )
                    };
                    if (status, reply.text()) == want {
                        Ok(())
                    } else {
                        Err(format!("{status} {}", reply.text()))
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failures
                    .lock()
                    .unwrap()
                    .push(format!("{method} {target}: {e}")),
            }
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_hot_swaps_under_concurrent_load_fail_no_request() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        let mut pool = fixture_pool();
        write_pool(&path, &pool);
        // poll_interval is an hour: only app.reload() makes these swaps happen.
        let app = poolgate::App::start(file_config(&path, up.addr, ""))
            .await
            .unwrap();
        let gw = app.proxy_addr();
        let first = version(&app).expect("a policy at start");

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..4)
            .map(|id| load_task(gw, id == 3, id, stop.clone(), ok.clone(), failures.clone()))
            .collect();

        let mut versions = vec![first];
        const SWAPS: usize = 60;
        for i in 0..SWAPS {
            let register_disabled = i % 2 == 0;
            let limit = 100 + i as i64;
            pool["registerDisabled"] = json!(register_disabled);
            pool["loginFailCheck"]["limit"] = json!(limit);
            write_pool(&path, &pool);
            let before = version(&app);
            let served = ok.load(Ordering::Relaxed);
            app.reload();
            wait_for(
                &format!("swap {i} in force"),
                Duration::from_secs(10),
                || version(&app) != before,
            )
            .await;
            let p = app.policy.current().unwrap();
            assert_eq!(p.register_disabled, register_disabled, "swap {i}");
            assert_eq!(
                p.login_fail.map(|l| l.limit),
                Some(limit as u32),
                "swap {i}"
            );
            assert_eq!(p.source, "file");
            versions.push(p.version.clone());
            // Requests keep being served between swaps.
            wait_for(
                &format!("a request served after swap {i}"),
                Duration::from_secs(10),
                || ok.load(Ordering::Relaxed) > served,
            )
            .await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut per_task = Vec::new();
        for t in tasks {
            per_task.push(t.await.unwrap());
        }
        let failures = failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failed requests: {failures:?}",
            failures.len()
        );
        assert!(
            per_task.iter().all(|&n| n > 0),
            "every client sent requests: {per_task:?}"
        );
        assert!(ok.load(Ordering::Relaxed) >= SWAPS);

        // Each swap produced a distinct version; the last one is what /policy shows.
        let mut distinct = versions.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), SWAPS + 1);
        let (status, shown) = policy(app.admin_addr()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["version"], json!(versions.last().unwrap()));
        assert_eq!(shown["register_disabled"], json!(false));
        assert_eq!(shown["source"], json!("file"));
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_policy_reloads_total",
                &[("result", "applied")]
            ),
            Some((SWAPS + 1) as f64),
            "the first load and each swap"
        );
        assert_eq!(
            metric(
                &m,
                "poolgate_policy_info",
                &[("version", versions.last().unwrap()), ("source", "file")]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric_sum(&m, "poolgate_policy_info", &[]),
            1.0,
            "one policy in force"
        );
        assert_eq!(
            metric_sum(&m, "poolgate_policy_fetch_failures_total", &[]),
            0.0
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_pool_file_keeps_the_last_good_policy() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        write_pool(&path, &fixture_pool());
        let app = poolgate::App::start(file_config(&path, up.addr, ""))
            .await
            .unwrap();
        let (gw, admin) = (app.proxy_addr(), app.admin_addr());
        let good = version(&app).unwrap();

        let mut bad_strength = fixture_pool();
        bad_strength["passwordStrength"] = json!(4); // needs customPasswordStrength.regex
        let cases: Vec<(&str, Option<Vec<u8>>, &str, &str)> = vec![
            (
                "not JSON",
                Some(b"{not json".to_vec()),
                "poolgate_policy_fetch_failures_total",
                "parse",
            ),
            (
                "a JSON array",
                Some(b"[]".to_vec()),
                "poolgate_policy_fetch_failures_total",
                "parse",
            ),
            (
                "empty",
                Some(Vec::new()),
                "poolgate_policy_fetch_failures_total",
                "parse",
            ),
            (
                "missing",
                None,
                "poolgate_policy_fetch_failures_total",
                "io",
            ),
            (
                "not a valid policy",
                Some(serde_json::to_vec(&bad_strength).unwrap()),
                "poolgate_policy_reloads_total",
                "invalid",
            ),
        ];
        for (what, bytes, counter, label) in cases {
            let labels: Vec<(&str, &str)> = if counter == "poolgate_policy_reloads_total" {
                vec![("result", label)]
            } else {
                vec![("source", "file"), ("reason", label)]
            };
            let before = metric(&metrics(admin).await, counter, &labels).unwrap_or(0.0);
            match bytes {
                Some(b) => write_atomic(&path, &b),
                None => std::fs::remove_file(&path).unwrap(),
            }
            app.reload();
            wait_for_async(
                &format!("{what}: counted in {counter}{labels:?}"),
                Duration::from_secs(10),
                || async {
                    metric(&metrics(admin).await, counter, &labels).unwrap_or(0.0) >= before + 1.0
                },
            )
            .await;
            assert_eq!(version(&app).as_deref(), Some(good.as_str()), "{what}");
            assert_eq!(readyz(admin).await, StatusCode::OK, "{what}");
            let (status, shown) = policy(admin).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(shown["version"], json!(good), "{what}");
            assert_eq!(
                get(gw, "/still/served").await.status,
                StatusCode::OK,
                "{what}"
            );
        }

        // Fixed: the new document is applied.
        let mut fixed = fixture_pool();
        fixed["registerDisabled"] = json!(true);
        write_pool(&path, &fixed);
        app.reload();
        wait_for("the fixed file applied", Duration::from_secs(10), || {
            version(&app).is_some_and(|v| v != good)
        })
        .await;
        assert!(app.policy.current().unwrap().register_disabled);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn pool_file_changes_are_picked_up_by_polling() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        let mut pool = fixture_pool();
        write_pool(&path, &pool);
        let mut cfg = file_config(&path, up.addr, "");
        cfg.policy.file_mut().unwrap().poll_interval = Duration::from_millis(100);
        let app = poolgate::App::start(cfg).await.unwrap();
        let before = version(&app);
        pool["loginPasswordFailCheck"]["limit"] = json!(7);
        write_pool(&path, &pool);
        wait_for("the change polled in", Duration::from_secs(10), || {
            version(&app) != before
        })
        .await;
        assert_eq!(
            app.policy.current().unwrap().password_fail.map(|l| l.limit),
            Some(7)
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_pool_file_at_start_falls_back_to_the_snapshot() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        let snap = dir.path().join("state").join("snapshot.json");
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        write_pool(&path, &fixture_pool());
        let mut cfg = file_config(&path, up.addr, "");
        cfg.policy.snapshot_path = Some(snap.clone());
        let app = poolgate::App::start(cfg.clone()).await.unwrap();
        let good = version(&app).unwrap();
        wait_for("the snapshot written", Duration::from_secs(10), || {
            snap.exists()
        })
        .await;
        app.shutdown().await;

        write_atomic(&path, b"{broken");
        let app = poolgate::App::start(cfg)
            .await
            .expect("starts from the snapshot");
        let p = app.policy.current().unwrap();
        assert_eq!(p.version, good);
        assert_eq!(p.source, "snapshot");
        assert_eq!(readyz(app.admin_addr()).await, StatusCode::OK);
        assert_eq!(get(app.proxy_addr(), "/x").await.status, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_snapshot_and_a_broken_pool_file_stop_the_start() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        let snap = dir.path().join("snapshot.json");
        write_atomic(&path, b"{broken");
        write_atomic(&snap, b"{\"format\": 1, \"pool\": ");
        let mut cfg = file_config(&path, up.addr, "");
        cfg.policy.snapshot_path = Some(snap.clone());
        let err = match poolgate::App::start(cfg).await {
            Ok(_) => panic!("started without a policy"),
            Err(e) => format!("{e:#}"),
        };
        for needle in [
            "no policy could be loaded",
            &path.display().to_string(),
            &snap.display().to_string(),
            "corrupt snapshot",
        ] {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }

        // No snapshot configured: the start error names the pool file.
        let cfg = file_config(&path, up.addr, "");
        let err = match poolgate::App::start(cfg).await {
            Ok(_) => panic!("started without a policy"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("no snapshot_path is configured"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn the_whitelist_file_is_part_of_the_policy_and_is_watched_too() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = dir.path().join("pool.json");
        let wl = dir.path().join("whitelist.json");
        let mut pool = fixture_pool();
        pool["whitelist"]["emailEnabled"] = json!(true);
        write_pool(&path, &pool);
        write_atomic(
            &wl,
            br#"{"email": ["Alice@Example.com", {"value": "bob@example.com"}]}"#,
        );
        let mut cfg = file_config(&path, up.addr, "");
        let f = cfg.policy.file_mut().unwrap();
        f.whitelist_path = Some(wl.clone());
        f.poll_interval = Duration::from_millis(100);
        let app = poolgate::App::start(cfg).await.unwrap();
        let admin = app.admin_addr();
        let (_, shown) = policy(admin).await;
        assert_eq!(shown["whitelist"]["email"], json!({"entries": 2}));
        let first = version(&app).unwrap();
        let email = app
            .policy
            .current()
            .unwrap()
            .whitelist
            .email
            .clone()
            .unwrap();
        assert!(email.contains("alice@example.com") && email.contains("bob@example.com"));

        // Only the whitelist file changes: polled in, new version.
        write_atomic(&wl, br#"{"email": ["carol@example.com"]}"#);
        wait_for(
            "the whitelist change polled in",
            Duration::from_secs(10),
            || version(&app).is_some_and(|v| v != first),
        )
        .await;
        let (_, shown) = policy(admin).await;
        assert_eq!(shown["whitelist"]["email"], json!({"entries": 1}));
        let second = version(&app).unwrap();

        // A broken whitelist file keeps the last good policy.
        write_atomic(&wl, b"{\"email\": 5}");
        wait_for_async(
            "the broken whitelist counted",
            Duration::from_secs(10),
            || async {
                metric(
                    &metrics(admin).await,
                    "poolgate_policy_fetch_failures_total",
                    &[("source", "file"), ("reason", "parse")],
                )
                .unwrap_or(0.0)
                    >= 1.0
            },
        )
        .await;
        assert_eq!(version(&app), Some(second));
        assert_eq!(readyz(admin).await, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}
