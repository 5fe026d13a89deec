//! The binary: `check` exit codes and messages, start-up errors, SIGTERM
//! drain with a request in flight, and no secret in the logs.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn poolgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(args)
        .env_remove("POOLGATE_AUTHING_SECRET")
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Writes a config and its pool file into a fresh folder under `root`.
fn write_config(root: &std::path::Path, pool: &[u8], toml_extra: &str) -> String {
    let dir = tempfile::tempdir_in(root).unwrap().keep();
    let dir = dir.as_path();
    std::fs::write(dir.join("pool.json"), pool).unwrap();
    let cfg = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[policy]\nsource = \"file\"\n[policy.file]\npath = \"pool.json\"\n{toml_extra}"
    );
    let p = dir.join("poolgate.toml");
    std::fs::write(&p, cfg).unwrap();
    p.display().to_string()
}

#[test]
fn check_accepts_the_sample_and_names_each_problem() {
    let (code, out) = poolgate(&["check", "--config", "config/poolgate.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("version") && out.contains("loginFailCheck          5 per 5m"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read("tests/fixtures/pool-detail-response.json").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            write_config(dir.path(), &good, "[log]\nfromat = 1\n"),
            "fromat",
        ),
        (
            write_config(dir.path(), &good, "[server\n"),
            "invalid config file",
        ),
        (write_config(dir.path(), b"{not json", ""), "pool.json"),
        (
            write_config(dir.path(), br#"{"passwordStrength": 4}"#, ""),
            "customPasswordStrength.regex",
        ),
        (
            "/nonexistent/poolgate.toml".to_string(),
            "cannot read config file",
        ),
    ];
    for (path, needle) in cases {
        let (code, out) = poolgate(&["check", "--config", &path]);
        assert_ne!(code, 0, "{needle}: {out}");
        assert!(out.contains(needle), "expected {needle:?} in: {out}");
    }
    let missing = write_config(dir.path(), &good, "");
    std::fs::remove_file(std::path::Path::new(&missing).with_file_name("pool.json")).unwrap();
    let (code, out) = poolgate(&["check", "--config", &missing]);
    assert_ne!(code, 0);
    assert!(
        out.contains("cannot read") && out.contains("pool.json"),
        "{out}"
    );
    // The authing source without its secret.
    let authing = dir.path().join("authing.toml");
    std::fs::write(&authing, "[upstream]\nurl = \"http://127.0.0.1:9\"\n[policy]\nsource = \"authing\"\n[policy.authing]\nuser_pool_id = \"p\"\n").unwrap();
    let (code, out) = poolgate(&["check", "--config", authing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("POOLGATE_AUTHING_SECRET"), "{out}");
}

#[test]
fn a_broken_pool_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        b"{\"loginFailCheck\": 5}",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    let (code, out) = poolgate(&["--config", &cfg]);
    assert_ne!(code, 0);
    assert!(
        out.contains("no policy could be loaded") && out.contains("pool.json"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_and_logs_hold_no_secret() {
    let up = Upstream::start().await;
    let api = Authing::start(fixture_pool()).await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free(), free());
    let cfg = dir.path().join("poolgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_grace = \"5s\"\n[upstream]\nurl = \"http://{}\"\n[policy]\nsource = \"authing\"\n[policy.authing]\napi_base = \"http://{}\"\nuser_pool_id = \"pool1\"\n[log]\nlevel = \"debug\"\n",
            up.addr, api.addr
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["--config", cfg.to_str().unwrap(), "--log-format", "json"])
        .env("POOLGATE_AUTHING_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(20, || std::net::TcpStream::connect(admin).is_ok()).await);
    assert!(
        eventually(10, || api
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0)
        .await
    );
    up.set_mode(Mode::Delay(1000));
    let inflight = tokio::spawn(async move { post(listen, "/slow", "{}", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (status, _, body) = inflight.await.unwrap();
    assert_eq!(
        status,
        http::StatusCode::OK,
        "the in-flight request finished: {body}"
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(started.elapsed() < Duration::from_secs(5));
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("obtained a management token"), "{logs}");
    for secret in [
        SECRET,
        "mgmt-token-",
        "eb512df21f41133ea02fdad4efeb296c",
        "4ff2dc0761edd4df77c11ba32db89ca1",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

fn free() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
