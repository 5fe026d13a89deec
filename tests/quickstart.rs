//! The README's quick start works: the binary on the shipped sample config with
//! `--demo-upstream` proxies a login, enforces the sample pool's
//! `loginFailCheck`, and exits 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Gateway(Child);
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()
            && http(admin, "GET", "/readyz", "").0 == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("poolgate did not become ready on {admin}");
}

#[test]
fn sample_config_with_demo_upstream() {
    let (listen, admin, upstream) = (free_port(), free_port(), free_port());
    let proxy: SocketAddr = ([127, 0, 0, 1], listen).into();
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let child = Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["--config", "config/poolgate.toml", "--demo-upstream"])
        .env("POOLGATE_LISTEN", proxy.to_string())
        .env("POOLGATE_ADMIN_LISTEN", admin_addr.to_string())
        .env(
            "POOLGATE_UPSTREAM_URL",
            format!("http://127.0.0.1:{upstream}"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("poolgate starts");
    let mut gw = Gateway(child);
    wait_ready(admin_addr);

    let ok = r#"{"account":"bob@example.com","password":"demo-password"}"#;
    let (status, body) = http(proxy, "POST", "/api/v2/login/account", ok);
    assert_eq!(status, 200);
    assert!(body.contains(r#""code":200"#), "{body}");

    // The sample pool allows 5 failures per IP in 5 minutes.
    let bad = r#"{"account":"bob@example.com","password":"nope"}"#;
    for _ in 0..5 {
        let (_, body) = http(proxy, "POST", "/api/v2/login/account", bad);
        assert!(body.contains(r#""code":2333"#), "{body}");
    }
    let (status, body) = http(proxy, "POST", "/api/v2/login/account", bad);
    assert_eq!(status, 200);
    assert!(body.contains(r#""code":2000"#), "{body}");

    let (status, metrics) = http(admin_addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"poolgate_guard_decisions_total{decision="reject",guard="login_fail",reason="captcha_required"} 1"#), "{metrics}");

    // SIGTERM drains and exits 0.
    let pid = gw.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = gw.0.try_wait().unwrap() {
            assert!(code.success(), "exit status {code}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poolgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
