//! The `poolgate` binary as a process: `check` exit codes and messages, a
//! broken pool stopping the start, SIGTERM draining an in-flight request,
//! SIGHUP reloading, and logs (debug, text and JSON) free of secrets and tokens.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::*;
use http::StatusCode;

const LIMIT: Duration = Duration::from_secs(120);

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Asserts a failed `check`: exit `code`, nothing on stdout, every needle on stderr.
fn assert_failed(out: &(i32, String, String), code: i32, needles: &[&str]) {
    let (got, stdout, stderr) = out;
    assert_eq!(*got, code, "exit code; stderr:\n{stderr}");
    assert_eq!(stdout, "", "nothing printed on stdout when check fails");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in stderr:\n{stderr}");
    }
}

#[tokio::test]
async fn check_accepts_a_good_config_and_prints_the_policy_version() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            "127.0.0.1:9",
            "",
        );
        // The version the running gateway computes for the same pool file.
        let app = poolgate::App::start(file_config(
            &dir.path().join("pool.json"),
            unused_addr(),
            "",
        ))
        .await
        .unwrap();
        let expected = version(&app).unwrap();
        app.shutdown().await;

        let (code, stdout, stderr) = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        for want in [
            "config      ok".to_string(),
            "source      file".to_string(),
            format!("version     {expected}"),
            format!("pool        测试 ({FIXTURE_POOL_ID})"),
            "loginFailCheck          50 per 50m".to_string(),
            "frequentRegisterCheck   off".to_string(),
            "registerDisabled        false".to_string(),
        ] {
            assert!(lines.contains(&want.as_str()), "{want:?} not in:\n{stdout}");
        }
        for secret in [FIXTURE_SECRET, FIXTURE_JWT_SECRET] {
            assert!(!stdout.contains(secret) && !stderr.contains(secret));
        }

        // The shipped sample configuration passes too.
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/poolgate.toml");
        let (code, stdout, stderr) = run_binary(&["check", "--config", &s(&sample)], &[]).await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.lines().any(|l| l == "config      ok"), "{stdout}");
    })
    .await;
}

#[tokio::test]
async fn check_rejects_malformed_toml() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            "127.0.0.1:9",
            "[server\n",
        );
        let out = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        assert_failed(
            &out,
            2,
            &["invalid config file", &s(&cfg), "TOML parse error"],
        );
    })
    .await;
}

#[tokio::test]
async fn check_rejects_an_unknown_key_by_name() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            "127.0.0.1:9",
            "[log]\nfromat = \"json\"\n",
        );
        let out = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        assert_failed(&out, 2, &["invalid config file", "unknown field `fromat`"]);
    })
    .await;
}

#[tokio::test]
async fn check_rejects_a_missing_pool_file() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(dir.path(), None, "127.0.0.1:9", "");
        let out = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        let pool = s(&dir.path().join("pool.json"));
        assert_failed(&out, 1, &["the file source failed", "cannot read", &pool]);
    })
    .await;
}

#[tokio::test]
async fn check_rejects_a_pool_file_that_is_not_json() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(b"{\"loginFailCheck\": {,}"),
            "127.0.0.1:9",
            "",
        );
        let out = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        let pool = s(&dir.path().join("pool.json"));
        assert_failed(&out, 1, &[&pool, "not a pool-detail document", "line 1"]);
    })
    .await;
}

#[tokio::test]
async fn check_rejects_a_pool_that_is_not_a_valid_policy_and_a_missing_secret() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(dir.path(), Some(br#"{"passwordStrength": 4}"#), "127.0.0.1:9", "");
        let out = run_binary(&["check", "--config", &s(&cfg)], &[]).await;
        assert_failed(&out, 1, &["not a valid policy", "customPasswordStrength.regex"]);

        let authing = write_file(
            dir.path(),
            "authing.toml",
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[policy]\nsource = \"authing\"\n[policy.authing]\nuser_pool_id = \"p\"\n",
        );
        let out = run_binary(&["check", "--config", &s(&authing)], &[]).await;
        assert_failed(&out, 2, &["POOLGATE_AUTHING_SECRET"]);
    })
    .await;
}

#[tokio::test]
async fn check_fetches_through_the_authing_api() {
    bounded("test", LIMIT, async {
        let api = FakeAuthing::start(fixture_pool()).await;
        let dir = tempdir();
        let cfg = authing_setup(dir.path(), api.addr, unused_addr());
        let (code, stdout, stderr) = run_binary(
            &["check", "--config", &s(&cfg)],
            &[("POOLGATE_AUTHING_SECRET", SECRET)],
        )
        .await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.lines().any(|l| l == "source      authing"),
            "{stdout}"
        );
        assert_eq!(api.tokens_issued(), 1);
        assert_eq!(api.detail_ok(), 1);
        let mut secrets = vec![
            SECRET.to_string(),
            FIXTURE_SECRET.into(),
            FIXTURE_JWT_SECRET.into(),
        ];
        secrets.extend(api.issued_tokens());
        for secret in &secrets {
            assert!(!stdout.contains(secret.as_str()), "{secret} on stdout");
            assert!(!stderr.contains(secret.as_str()), "{secret} on stderr");
        }
    })
    .await;
}

/// With a Redis store, the account key secret: `check` refuses a short one
/// by its variable's name, without printing it; a start without one warns
/// that account counters are keyed by an unkeyed hash, a start with one
/// does not (`poolgate_account_keys_keyed` says the same), and the secret
/// is never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_key_secret_is_checked_and_its_absence_warned() {
    bounded("test", LIMIT, async {
        const VAR: &str = "POOLGATE_ACCOUNT_KEY_SECRET";
        let dir = tempdir();
        let up = FakeUpstream::start().await;
        // Nothing listens there: the local fallback counts meanwhile.
        let store = format!(
            "\n[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://{}/0\"\n",
            unused_addr()
        );
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            &up.addr.to_string(),
            &store,
        );
        let out = run_binary(&["check", "--config", &s(&cfg)], &[(VAR, "too-short")]).await;
        assert_failed(&out, 2, &[VAR, "at least 16 (e.g. `openssl rand -hex 32`)"]);
        assert!(!out.2.contains("too-short"), "{}", out.2);

        let secret = "0123456789abcdef0123456789abcdef";
        for (env, warned) in [(vec![], true), (vec![(VAR, secret)], false)] {
            let mut proc = Proc::spawn(&["--config", &s(&cfg)], &env);
            let (_, admin) = proc.listening().await;
            // The posture is a metric too, for the alert.
            let keyed = metric_sum(&metrics(admin).await, "poolgate_account_keys_keyed", &[]);
            assert_eq!(keyed, if warned { 0.0 } else { 1.0 }, "{env:?}");
            proc.signal("TERM");
            let status = proc.wait_exit(Duration::from_secs(20)).await;
            let logs = proc.stderr();
            assert_eq!(status.code(), Some(0), "{logs}");
            assert_eq!(
                logs.contains(
                    "account counters in redis are keyed by the identifier's unkeyed SHA-256"
                ),
                warned,
                "{env:?}:\n{logs}"
            );
            assert_eq!(logs.contains(VAR), warned, "the warning names the variable");
            assert!(!logs.contains(secret), "{logs}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_malformed_pool_file_stops_the_start() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(dir.path(), Some(b"{not json"), "127.0.0.1:9", "");
        let (code, _, stderr) = run_binary(&["--config", &s(&cfg)], &[]).await;
        assert_eq!(code, 1, "{stderr}");
        let pool = s(&dir.path().join("pool.json"));
        for needle in [
            "no policy could be loaded",
            pool.as_str(),
            "not a pool-detail document",
        ] {
            assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
        }
        assert!(!stderr.contains("poolgate listening"), "{stderr}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_0() {
    bounded("test", LIMIT, async {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            &up.addr.to_string(),
            "",
        );
        let mut proc = Proc::spawn(&["--config", &s(&cfg), "--log-format", "json"], &[]);
        let (gw, admin) = proc.listening().await;
        assert_eq!(readyz(admin).await, StatusCode::OK);
        assert_eq!(get(gw, "/before").await.status, StatusCode::OK);

        up.set_mode(UpMode::Delay(Duration::from_secs(1)));
        let in_flight =
            tokio::spawn(
                async move { send(build("POST", gw, "/echo/slow", &[], "in flight")).await },
            );
        wait_for(
            "the slow request at the upstream",
            Duration::from_secs(10),
            || up.arrived("/echo/slow") == 1,
        )
        .await;
        proc.signal("TERM");
        let signalled = Instant::now();
        let reply = bounded("the in-flight request", Duration::from_secs(20), in_flight)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body, "in flight");
        let status = proc.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
        let took = signalled.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "exited {took:?} after SIGTERM: drained, not cut off by the 15s grace"
        );
        let logs = proc.stderr();
        assert!(logs.contains("SIGTERM: draining"), "{logs}");
        assert!(logs.contains("\"stopped\""), "{logs}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_secret_or_token_in_text_or_json() {
    bounded("test", LIMIT, async {
        for format in ["text", "json"] {
            let up = FakeUpstream::start().await;
            let api = FakeAuthing::start(fixture_pool()).await;
            let dir = tempdir();
            let cfg = authing_setup(dir.path(), api.addr, up.addr);
            let mut proc = Proc::spawn(
                &["--config", &s(&cfg), "--log-format", format],
                &[("POOLGATE_AUTHING_SECRET", SECRET)],
            );
            let (gw, admin) = proc.listening().await;
            assert_eq!(readyz(admin).await, StatusCode::OK, "{format}");
            let reply = send(build(
                "POST",
                gw,
                "/api/v2/login/account",
                &[("content-type", "application/json")],
                r#"{"account":"a@example.com","password":"hunter2"}"#,
            ))
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{format}: {}", reply.text());

            // SIGHUP fetches now (the interval is a minute).
            let detail = api.detail_requests();
            proc.signal("HUP");
            wait_for("SIGHUP fetched the pool", Duration::from_secs(15), || {
                api.detail_requests() > detail
            })
            .await;
            // A revoked token is refused, replaced, and logged about.
            let ok = api.detail_ok();
            api.revoke_tokens();
            proc.signal("HUP");
            wait_for(
                "a second token and a fetch with it",
                Duration::from_secs(15),
                || api.tokens_issued() == 2 && api.detail_ok() > ok,
            )
            .await;
            assert_eq!(api.refused(), ["detail: revoked token"], "{format}");

            proc.signal("TERM");
            let status = proc.wait_exit(Duration::from_secs(20)).await;
            assert_eq!(status.code(), Some(0), "{format}");
            let logs = format!("{}\n{}", proc.stdout(), proc.stderr());
            let debug = if format == "json" {
                "\"level\":\"DEBUG\""
            } else {
                " DEBUG "
            };
            for needle in [
                debug,
                "obtained a management token",
                "reload requested",
                "management token refused",
            ] {
                assert!(
                    logs.contains(needle),
                    "{format}: {needle:?} not logged:\n{logs}"
                );
            }
            let mut secrets = vec![
                SECRET.to_string(),
                FIXTURE_SECRET.to_string(),
                FIXTURE_JWT_SECRET.to_string(),
            ];
            let tokens = api.issued_tokens();
            assert_eq!(tokens.len(), 2);
            secrets.extend(tokens);
            for secret in &secrets {
                assert!(
                    !logs.contains(secret.as_str()),
                    "{format}: {secret} in the logs"
                );
            }
        }
    })
    .await;
}

/// Every key can come from the environment, `POOLGATE_<SECTION>__<KEY>`
/// with its value written as in TOML; a bad override is named.
#[tokio::test]
async fn any_key_can_come_from_the_environment() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let cfg = file_setup(
            dir.path(),
            Some(fixture_text().as_bytes()),
            "127.0.0.1:9",
            "",
        );
        let (code, stdout, stderr) = run_binary(
            &["check", "--config", &s(&cfg)],
            &[
                (
                    "POOLGATE_GUARDS__DRY_RUN_GUARDS",
                    r#"["cors", "whitelist"]"#,
                ),
                ("POOLGATE_SERVER__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#),
            ],
        )
        .await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.lines().any(|l| l == "dry run     cors, whitelist"),
            "{stdout}"
        );
        let out = run_binary(
            &["check", "--config", &s(&cfg)],
            &[("POOLGATE_SERVER__WORKERS", "many")],
        )
        .await;
        assert_failed(
            &out,
            2,
            &["POOLGATE_<SECTION>__<KEY>", "SERVER.WORKERS", "many"],
        );
    })
    .await;
}
