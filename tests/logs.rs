//! The logs, through the real binary (its stderr is the log): an attacker
//! cannot set their volume (rejection lines are written within
//! `log.rejections_per_second`, the rest tallied per guard in a summary
//! line, the metrics still count every rejection), and the access log says
//! what happened to each request.

mod harness;

use std::time::Duration;

use harness::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_rejections_write_a_few_hundred_lines() {
    bounded("test", Duration::from_secs(120), async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let path = file_setup(
            dir.path(),
            Some(br#"{"registerDisabled": true}"#),
            &up.addr.to_string(),
            "\n[rate_limit]\nregister = { per_second = 100000, burst = 100000 }\n\n[log]\nrejections_per_second = 50\n",
        );
        let mut proc = Proc::spawn(&["--config", &path.display().to_string()], &[]);
        let (gw, admin) = proc.listening().await;
        assert_eq!(readyz(admin).await, StatusCode::OK);

        // 5,000 refused registrations over a few keep-alive connections.
        let client = h1_client();
        let started = std::time::Instant::now();
        let total = 5_000;
        let per_task = total / 10;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let r = send_with(
                            &client,
                            build(
                                "POST",
                                gw,
                                "/api/v2/register/email",
                                &[("content-type", "application/json")],
                                r#"{"email":"a@x.com","password":"long-enough"}"#,
                            ),
                        )
                        .await;
                        assert_eq!(r.status, StatusCode::OK);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let m = metrics(admin).await;
        let counted = m
            .lines()
            .find(|l| {
                l.starts_with("poolgate_guard_decisions_total{")
                    && l.contains("guard=\"register_disabled\"")
                    && l.contains("decision=\"reject\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert_eq!(counted, Some(total as f64), "metrics count every rejection");

        // Shutdown writes the last summary.
        proc.signal("TERM");
        proc.wait_exit(Duration::from_secs(30)).await;
        let log = proc.stderr();
        let lines = log
            .lines()
            .filter(|l| l.contains("request rejected"))
            .count();
        assert!(lines > 0, "some lines are written");
        // The budget: a burst of 50, then 50 a second while the spray lasted
        // (however slow this machine is), and far fewer than the rejections.
        let budget = 50.0 + 50.0 * elapsed.ceil() + 5.0;
        assert!(
            (lines as f64) <= budget && lines < total / 5,
            "{lines} rejection lines for {total} rejections in {elapsed:.1}s (budget {budget})"
        );
        let suppressed: u64 = log
            .lines()
            .filter(|l| l.contains("rejection log lines suppressed"))
            .filter_map(|l| {
                let at = l.find("register_disabled=")? + "register_disabled=".len();
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        assert_eq!(
            suppressed + lines as u64,
            total as u64,
            "every line not written is in a summary"
        );
    })
    .await;
}

/// Starts the binary on a one-file pool with `extra` TOML appended.
async fn start(
    up: &FakeUpstream,
    pool: &str,
    extra: &str,
) -> (Proc, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempdir();
    let path = file_setup(
        dir.path(),
        Some(pool.as_bytes()),
        &up.addr.to_string(),
        &format!("\n{extra}\n"),
    );
    let mut proc = Proc::spawn(
        &[
            "--config",
            &path.display().to_string(),
            "--log-format",
            "json",
        ],
        &[],
    );
    let (gw, admin) = proc.listening().await;
    assert_eq!(readyz(admin).await, StatusCode::OK);
    (proc, gw, dir)
}

fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_what_happened_to_each_request() {
    bounded("test", Duration::from_secs(60), async {
        let up = FakeUpstream::start().await;
        let (mut proc, gw, _dir) = start(
            &up,
            r#"{"registerDisabled": true}"#,
            "[log]\naccess_log = true",
        )
        .await;
        let echoed = send(build("GET", gw, "/echo/hello", &[], "")).await;
        let r = send(build(
            "POST",
            gw,
            "/api/v2/register/email",
            &[("content-type", "application/json")],
            r#"{"email":"a@x.com","password":"long-enough"}"#,
        ))
        .await;
        assert_eq!(r.status, StatusCode::OK);
        proc.signal("TERM");
        proc.wait_exit(Duration::from_secs(30)).await;
        let lines = access_lines(&proc.stderr());
        assert_eq!(lines.len(), 2, "{lines:?}");
        let fwd = &lines[0];
        assert_eq!(fwd["path"], "/echo/hello");
        assert_eq!(fwd["route"], "other");
        assert_eq!(fwd["outcome"], "forwarded");
        assert_eq!(fwd["status"], echoed.status.as_u16());
        assert_eq!(fwd["client_ip"], "127.0.0.1");
        assert!(fwd["upstream_ms"].as_f64().is_some(), "{fwd}");
        assert_eq!(fwd["target"], "poolgate::access");
        let rej = &lines[1];
        assert_eq!(rej["route"], "register");
        assert_eq!(rej["outcome"], "rejected");
        assert_eq!(rej["guard"], "register_disabled");
        assert_eq!(rej["code"], 2031);
        assert!(rej["upstream_ms"].is_null(), "{rej}");

        // Off by default; sampled at 0 it writes nothing either.
        for extra in ["", "[log]\naccess_log = true\naccess_log_sample = 0.0"] {
            let (mut proc, gw, _dir) = start(&up, "{}", extra).await;
            let _ = send(build("GET", gw, "/echo/x", &[], "")).await;
            proc.signal("TERM");
            proc.wait_exit(Duration::from_secs(30)).await;
            assert!(access_lines(&proc.stderr()).is_empty(), "{extra:?}");
        }
    })
    .await;
}
