//! Configuration reload (SIGHUP) on the real binary: what can change at run
//! time is applied in place with every counter kept; a change that needs a
//! restart, or an invalid file, is refused as a whole (log line, metric) and
//! the old configuration keeps serving. Real sockets on 127.0.0.1; every wait
//! polls a condition (the reload metric) with a deadline.

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::fresh::post_json;
use harness::{
    captcha_required_v2, check, metrics, pool, sample, wrong_login, wrong_password_v2, FakeUpstream,
};
use http::StatusCode;
use serde_json::json;

const PASSWORD_RESET: &str = "/api/v2/password/reset/email";

/// The config file: `server_extra` goes into `[server]`, `rest` after the
/// policy sections.
fn config_text(up: SocketAddr, listen: &str, server_extra: &str, rest: &str) -> String {
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "127.0.0.1:0"
shutdown_grace = "1s"
workers = 1
{server_extra}

[upstream]
url = "http://{up}"

[policy]
source = "file"

[policy.file]
path = "pool.json"
poll_interval = "1h"

{rest}
"#
    )
}

struct Running {
    proc: harness::Proc,
    gw: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    _up: FakeUpstream,
    _dir: tempfile::TempDir,
}

/// Starts the binary on a pool with `loginFailCheck` 3 per 10 min; `first`
/// builds the first config from the upstream's address.
async fn start(first: impl Fn(SocketAddr) -> String) -> Running {
    let up = FakeUpstream::start().await;
    let dir = harness::tempdir();
    harness::write_pool(
        &dir.path().join("pool.json"),
        &pool(json!({"loginFailCheck": check(3, 600)})),
    );
    let config = dir.path().join("poolgate.toml");
    std::fs::write(&config, first(up.addr)).unwrap();
    let mut proc = harness::Proc::spawn(&["--config", config.to_str().unwrap()], &[]);
    let (gw, admin) = proc.listening().await;
    Running {
        proc,
        gw,
        admin,
        config,
        _up: up,
        _dir: dir,
    }
}

/// Rewrites the config file, sends SIGHUP and waits for the reload metric of
/// `result` to reach `n`.
async fn reload(r: &Running, text: &str, result: &str, n: f64) {
    write_file_atomically(&r.config, text);
    r.proc.signal("HUP");
    let series = format!("poolgate_config_reloads_total{{result=\"{result}\"}}");
    let admin = r.admin;
    harness::wait_for_async(&format!("{series} = {n}"), Duration::from_secs(30), || {
        let series = series.clone();
        async move { sample(&metrics(admin).await, &series) == Some(n) }
    })
    .await;
}

fn write_file_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Quick password resets from `client`; how many got 429.
async fn resets_limited(gw: SocketAddr, client: &str, n: usize) -> usize {
    let body = json!({"email": "a@example.com", "code": "1234", "newPassword": "Str0ng-Passw0rd!"});
    let mut limited = 0;
    for _ in 0..n {
        let r = post_json(gw, PASSWORD_RESET, &body, &[("x-forwarded-for", client)]).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    limited
}

/// A client over its login-failure limit before the reload stays over it; the
/// lowered rate limit and the new trusted proxy apply at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_rate_limits_and_trusted_proxies_in_place_keeping_counters() {
    let generous = "[rate_limit]\npassword = { per_second = 100, burst = 100 }\n";
    let r = start(|up| config_text(up, "127.0.0.1:0", "", generous)).await;
    let text = metrics(r.admin).await;
    for result in ["applied", "refused", "invalid"] {
        let series = format!("poolgate_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(
            sample(&text, &series),
            Some(0.0),
            "{series} at 0 from start"
        );
    }

    // No trusted proxy yet: X-Forwarded-For is ignored, the client is 127.0.0.1.
    for i in 0..3 {
        let resp = wrong_login(r.gw, "bob", Some("203.0.113.7")).await;
        assert_eq!(resp.json(), wrong_password_v2(), "attempt {i} is forwarded");
    }
    let resp = wrong_login(r.gw, "bob", Some("203.0.113.7")).await;
    assert_eq!(
        resp.json(),
        captcha_required_v2(),
        "127.0.0.1 is over the limit"
    );
    assert_eq!(resets_limited(r.gw, "198.51.100.1", 5).await, 0);

    let up = r._up.addr;
    reload(
        &r,
        &config_text(
            up,
            "127.0.0.1:0",
            "trusted_proxies = [\"127.0.0.0/8\"]",
            "[rate_limit]\npassword = { per_second = 1, burst = 1 }\n",
        ),
        "applied",
        1.0,
    )
    .await;
    let line = r.proc.stderr_line("configuration reloaded in place");
    assert!(
        line.contains("server.trusted_proxies") && line.contains("rate_limit.password"),
        "{line}"
    );

    // Counters kept: 127.0.0.1 (no X-Forwarded-For) is still over its limit.
    let resp = wrong_login(r.gw, "bob", None).await;
    assert_eq!(resp.json(), captcha_required_v2(), "the counter survived");
    // The new trusted proxy: the forwarded address is the client now, a fresh one.
    let resp = wrong_login(r.gw, "bob", Some("203.0.113.7")).await;
    assert_eq!(
        resp.json(),
        wrong_password_v2(),
        "203.0.113.7 is a new client"
    );
    // The lowered rate: a burst of 1 a second.
    assert!(resets_limited(r.gw, "198.51.100.2", 3).await >= 1);
    let text = metrics(r.admin).await;
    assert_eq!(
        sample(&text, "poolgate_config_reloads_total{result=\"refused\"}"),
        Some(0.0)
    );
}

/// A reload that changes `listen` is refused whole (the trusted proxy of the
/// same file is not applied either); so is an invalid file. The old
/// configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_listen_change_and_an_invalid_file_keeping_the_old_config() {
    let r = start(|up| config_text(up, "127.0.0.1:0", "", "")).await;
    let up = r._up.addr;
    let other = harness::unused_addr();
    reload(
        &r,
        &config_text(
            up,
            &other.to_string(),
            "trusted_proxies = [\"127.0.0.0/8\"]",
            "",
        ),
        "refused",
        1.0,
    )
    .await;
    let line = r.proc.stderr_line("configuration reload refused");
    assert!(
        line.contains("server.listen") && line.contains("restart"),
        "{line}"
    );
    assert!(
        !line.contains("trusted_proxies"),
        "only the keys that need a restart are named: {line}"
    );
    // Still served on the old address, with the old (untrusting) settings:
    // all four failures below count for 127.0.0.1 whatever they claim.
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        let resp = wrong_login(r.gw, "bob", Some(&xff)).await;
        assert_eq!(resp.json(), wrong_password_v2(), "attempt {i}");
    }
    let resp = wrong_login(r.gw, "bob", Some("203.0.113.9")).await;
    assert_eq!(
        resp.json(),
        captcha_required_v2(),
        "X-Forwarded-For still ignored"
    );
    assert!(
        std::net::TcpStream::connect(other).is_err(),
        "nothing listens on the refused address"
    );

    // An invalid file: refused the same way.
    reload(
        &r,
        &config_text(up, "127.0.0.1:0", "wrokers = 2", ""),
        "invalid",
        1.0,
    )
    .await;
    let line = r.proc.stderr_line("the new configuration is invalid");
    assert!(line.contains("wrokers"), "{line}");
    let resp = wrong_login(r.gw, "bob", None).await;
    assert_eq!(
        resp.json(),
        captcha_required_v2(),
        "still served, counters kept"
    );
    let text = metrics(r.admin).await;
    assert_eq!(
        sample(&text, "poolgate_config_reloads_total{result=\"applied\"}"),
        Some(0.0)
    );
}

/// `poolgate check` lists the reload classes, and `--against OLD` gives the
/// verdict of a reload from OLD: exit 0 when applied in place, 1 when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_tells_whether_a_reload_would_be_applied() {
    let up = FakeUpstream::start().await;
    let dir = harness::tempdir();
    harness::write_pool(&dir.path().join("pool.json"), &pool(json!({})));
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let old = write("old.toml", config_text(up.addr, "127.0.0.1:0", "", ""));
    let soft = write(
        "soft.toml",
        config_text(
            up.addr,
            "127.0.0.1:0",
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "",
        ),
    );
    let hard = write("hard.toml", config_text(up.addr, "127.0.0.1:1", "", ""));

    let (code, out, err) =
        harness::run_binary(&["check", "--config", &soft, "--against", &old], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reload      in place on SIGHUP:"), "{out}");
    assert!(
        out.contains("restart     needed for: server.{listen"),
        "{out}"
    );
    assert!(
        out.contains("a reload applies server.trusted_proxies"),
        "{out}"
    );

    let (code, out, err) =
        harness::run_binary(&["check", "--config", &hard, "--against", &old], &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("server.listen") && err.contains("restart"),
        "{err}"
    );
}
