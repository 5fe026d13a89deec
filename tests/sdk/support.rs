//! Harness of the SDK conformance suite (`tests/sdk_conformance.rs`): finds
//! the SDKs `tests/sdk/setup.sh` installed, runs the Authing-like fake
//! (`tests/sdk/fake_authing.py`) and poolgate in front of it, drives the real
//! SDKs through poolgate (`tests/sdk/drive_*`), and checks each row: the code
//! the SDK surfaced, and whether the call reached the fake (and by which
//! path / GraphQL field).
//!
//! Every wait has a deadline; every child process is killed when its guard
//! drops, also when an assertion fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SKIP_MSG: &str =
    "SKIPPED: SDK conformance suite needs tests/sdk/setup.sh (python venvs + node_modules)";

/// Longest a driver run may take (one run is one SDK doing a handful of calls).
const DRIVER_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Environment

/// Where the installed SDKs are.
pub struct Env {
    pub dir: PathBuf,
    pub py_v2: PathBuf,
    pub py_v3: PathBuf,
    pub node: PathBuf,
}

/// The SDK environment, or `None` (after printing [`SKIP_MSG`]) when
/// `tests/sdk/setup.sh` has not been run. With `POOLGATE_REQUIRE_SDK=1` a
/// missing environment fails the test instead.
pub fn env() -> Option<Env> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let py_v2 = dir.join(".venv-v2/bin/python");
    let py_v3 = dir.join(".venv-v3/bin/python");
    let js = dir.join("node_modules/authing-js-sdk/package.json");
    let mut missing = Vec::new();
    for (what, p) in [
        (".venv-v2", &py_v2),
        (".venv-v3", &py_v3),
        ("node_modules/authing-js-sdk", &js),
    ] {
        if !p.exists() {
            missing.push(what.to_string());
        }
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node_ok {
        missing.push("node on PATH".to_string());
    }
    if !missing.is_empty() {
        let msg = format!("{SKIP_MSG}; missing: {}", missing.join(", "));
        if std::env::var("POOLGATE_REQUIRE_SDK").as_deref() == Ok("1") {
            panic!("{msg} (POOLGATE_REQUIRE_SDK=1)");
        }
        // Straight to the stderr descriptor: libtest captures `eprintln!`
        // of a passing test, and this line must be seen. Once per run.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            let _ = writeln!(std::io::stderr(), "{msg}");
        });
        return None;
    }
    Some(Env {
        dir,
        py_v2,
        py_v3,
        node: PathBuf::from("node"),
    })
}

// ---------------------------------------------------------------------------
// Child processes

/// A child process that is killed (and reaped) when dropped. Its stdout
/// lines go to a channel, its stderr into a buffer (for failure messages).
pub struct ChildGuard {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command, stdin: Option<Vec<u8>>) -> ChildGuard {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ChildGuard {
            name: name.to_string(),
            child,
            lines,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, waiting at most until `deadline`.
    pub async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.lines.try_recv() {
                Ok(l) => return Some(l),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every stdout line until the process closes stdout, or `None` when
    /// that does not happen by `deadline` (the process is then killed).
    pub async fn all_lines(&mut self, deadline: Instant) -> Option<Vec<String>> {
        let mut out = Vec::new();
        loop {
            match self.lines.try_recv() {
                Ok(l) => out.push(l),
                Err(mpsc::TryRecvError::Disconnected) => return Some(out),
                Err(mpsc::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        self.kill();
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Loopback HTTP (the fake's control endpoints, poolgate's admin port)

/// One HTTP/1.0 exchange (the server closes the connection after it):
/// status and body. Fails the test after 10 s.
pub async fn http(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => panic!("{method} http://{addr}{target}: {e}"),
        Err(_) => panic!("{method} http://{addr}{target}: no answer within 10 s"),
    };
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} http://{addr}{target}: not HTTP: {head}"));
    (status, body.to_string())
}

// ---------------------------------------------------------------------------
// The fake Authing

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Rec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub json: Value,
    /// Strings of the body that decrypt with the fake's key (v2 passwords).
    pub decrypted: Vec<String>,
    /// GraphQL operation and root field.
    pub graphql: Option<(String, String)>,
}

impl Rec {
    /// Whether this request carries `marker` as a string value of its JSON
    /// body (at any depth) or as a password encrypted with the fake's key.
    pub fn carries(&self, marker: &str) -> bool {
        fn walk(v: &Value, m: &str) -> bool {
            match v {
                Value::String(s) => s == m,
                Value::Array(a) => a.iter().any(|x| walk(x, m)),
                Value::Object(o) => o.values().any(|x| walk(x, m)),
                _ => false,
            }
        }
        self.decrypted.iter().any(|d| d == marker) || walk(&self.json, marker)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `path` or `path field` (GraphQL), for messages.
    pub fn describe(&self) -> String {
        match &self.graphql {
            Some((op, f)) => format!("{} {} {op} {f}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

pub struct Fake {
    pub addr: SocketAddr,
    /// The RSA public key (PEM) whose private half the fake holds.
    pub pubkey: String,
    proc: ChildGuard,
}

impl Fake {
    pub async fn start(env: &Env) -> Fake {
        let mut cmd = Command::new(&env.py_v2);
        cmd.arg("-u").arg(env.dir.join("fake_authing.py")).arg("0");
        let mut proc = ChildGuard::spawn("fake_authing.py", cmd, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = match proc.next_line(deadline).await {
            Some(l) => l
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("fake_authing.py: first line is not a port: {l}")),
            None => panic!(
                "fake_authing.py printed no port within 30 s; stderr:\n{}",
                proc.stderr()
            ),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (status, body) = http(addr, "GET", "/__pubkey").await;
        assert_eq!(status, 200, "fake /__pubkey: {body}");
        let v: Value = serde_json::from_str(&body).expect("fake /__pubkey is JSON");
        let skipped = v["skippedDocuments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !skipped.is_empty() {
            eprintln!("note: the fake's schema leaves out SDK documents {skipped:?}");
        }
        Fake {
            addr,
            pubkey: v["publicKey"].as_str().expect("publicKey").to_string(),
            proc,
        }
    }

    pub async fn recorded(&self) -> Vec<Rec> {
        let (status, body) = http(self.addr, "GET", "/__recorded").await;
        assert_eq!(status, 200, "fake /__recorded");
        let v: Value = serde_json::from_str(&body).expect("fake /__recorded is JSON");
        v.as_array()
            .expect("a list")
            .iter()
            .map(|r| Rec {
                method: r["method"].as_str().unwrap_or("").to_string(),
                path: r["path"].as_str().unwrap_or("").to_string(),
                headers: r["headers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|h| {
                                (
                                    h[0].as_str().unwrap_or("").to_string(),
                                    h[1].as_str().unwrap_or("").to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body: r["body"].as_str().unwrap_or("").to_string(),
                json: r["json"].clone(),
                decrypted: r["decrypted"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                graphql: r["graphql"].as_array().map(|a| {
                    (
                        a[0].as_str().unwrap_or("").to_string(),
                        a[1].as_str().unwrap_or("").to_string(),
                    )
                }),
            })
            .collect()
    }

    pub async fn reset(&self) {
        let (status, _) = http(self.addr, "POST", "/__reset").await;
        assert_eq!(status, 200, "fake /__reset");
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

// ---------------------------------------------------------------------------
// poolgate

/// The fixture pool with the suite's limits: 5 failed logins per client and
/// 5 wrong passwords per account in 300 s (strategy captcha), 10
/// registrations per client in 300 s, every origin allowed, no whitelist, no
/// password rule; `patch` is merged on top (top-level keys).
pub fn pool(patch: Value) -> Value {
    let mut p = crate::harness::fixture_pool();
    let base = json!({
        "loginFailCheck": {"enabled": true, "limit": 5, "timeInterval": 300},
        "loginPasswordFailCheck": {"enabled": true, "limit": 5, "timeInterval": 300},
        "loginFailStrategy": "captcha",
        "frequentRegisterCheck": {"enabled": true, "limit": 10, "timeInterval": 300},
        "registerDisabled": false,
        "allowedOrigins": "",
        "passwordStrength": 0,
    });
    for src in [base, patch] {
        for (k, val) in src.as_object().unwrap() {
            p[k] = val.clone();
        }
    }
    p
}

pub struct Gateway {
    pub app: poolgate::App,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// poolgate in this process, in front of `upstream`, with `pool` and
    /// `server_extra` added to `[server]`. Rate limits are high enough to
    /// stay out of the way. An `Err` when the configuration is refused or
    /// poolgate does not start.
    pub async fn start(
        upstream: SocketAddr,
        pool: &Value,
        server_extra: &str,
    ) -> anyhow::Result<Gateway> {
        Gateway::start_with(upstream, pool, server_extra, None).await
    }

    /// [`Gateway::start`] with a whitelist file (`{"email": [...], ...}`).
    pub async fn start_with(
        upstream: SocketAddr,
        pool: &Value,
        server_extra: &str,
        whitelist: Option<&Value>,
    ) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let pool_path = dir.path().join("pool.json");
        std::fs::write(&pool_path, serde_json::to_vec_pretty(pool)?)?;
        let whitelist_line = match whitelist {
            Some(wl) => {
                let p = dir.path().join("whitelist.json");
                std::fs::write(&p, serde_json::to_vec_pretty(wl)?)?;
                format!("whitelist_path = {:?}", p.display().to_string())
            }
            None => String::new(),
        };
        let text = format!(
            r#"{head}request_timeout = "10s"

{policy}{whitelist_line}

[rate_limit]
login = {{ per_second = 1000, burst = 1000 }}
register = {{ per_second = 1000, burst = 1000 }}
password = {{ per_second = 1000, burst = 1000 }}
captcha = {{ per_second = 1000, burst = 1000 }}
# Rate limits refill with time: generous, so no row depends on how fast the
# rows before it ran (the send limits per window are what the suite checks).
send_code = {{ per_second = 1000, burst = 1000 }}
"#,
            head = crate::harness::server_toml(&upstream.to_string(), "1s", server_extra),
            policy = crate::harness::file_source_toml(&pool_path, "1h"),
        );
        let cfg = poolgate::Config::parse(&text)?;
        cfg.validate()?;
        let app = tokio::time::timeout(Duration::from_secs(20), poolgate::App::start(cfg))
            .await
            .map_err(|_| anyhow::anyhow!("poolgate did not start within 20 s"))??;
        let gw = Gateway { app, _dir: dir };
        // Ready: a policy in force.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = http(gw.app.admin_addr(), "GET", "/readyz").await;
            if status == 200 {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("poolgate not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(gw)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.app.proxy_addr())
    }

    /// Clears the counters of 127.0.0.1 (every driver's address) and of
    /// these accounts, so a group of rows starts from zero.
    pub async fn unblock(&self, accounts: &[&str]) {
        let admin = self.app.admin_addr();
        let (s, b) = http(admin, "POST", "/unblock?ip=127.0.0.1").await;
        assert_eq!(s, 200, "unblock ip: {b}");
        for a in accounts {
            let (s, b) = http(admin, "POST", &format!("/unblock?account={}", enc(a))).await;
            assert_eq!(s, 200, "unblock account {a}: {b}");
        }
    }

    /// `GET /counters?account=ID` as JSON.
    pub async fn account_counters(&self, account: &str) -> Value {
        let (s, b) = http(
            self.app.admin_addr(),
            "GET",
            &format!("/counters?account={}", enc(account)),
        )
        .await;
        assert_eq!(s, 200, "counters {account}: {b}");
        serde_json::from_str(&b).unwrap_or(Value::Null)
    }

    pub async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.app.shutdown()).await;
    }
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Rows

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    PyV2,
    PyV3,
    JsV2,
}

impl Sdk {
    pub fn name(self) -> &'static str {
        match self {
            Sdk::PyV2 => "py-v2",
            Sdk::PyV3 => "py-v3",
            Sdk::JsV2 => "js-v2",
        }
    }
}

/// What code the SDK must surface.
#[derive(Debug, Clone)]
pub enum Want {
    Code(i64),
    /// Any code but 200 (a refusal whose code the spec leaves open).
    Refused,
    /// Not checked.
    Any,
}

/// One SDK call and what must come of it.
#[derive(Debug, Clone)]
pub struct Call {
    pub row: String,
    pub method: String,
    pub args: Value,
    pub kwargs: Value,
    pub client: Value,
    pub want: Want,
    /// A string the request carries (a password, encrypted or not, or
    /// another field value) and whether the fake must have seen it.
    pub reach: Option<(String, bool)>,
    /// For a call that must reach the fake: the path, and the GraphQL root
    /// field if any, it must arrive on.
    pub via: Option<(String, Option<String>)>,
    /// A path the fake must not have seen at all (calls poolgate answers).
    pub never_path: Option<String>,
    /// Keys `raw.data` must have (py-v3 answers).
    pub data_keys: Vec<String>,
    /// Instead of a marker: the request is the one on `via` whose body has
    /// this value at this JSON pointer.
    pub at: Option<(String, Value)>,
    /// JSON pointers the request that reached the fake must have (the
    /// inventory's field list; a null value counts as present).
    pub fields: Vec<String>,
    /// Known to fail on today's poolgate (reported, still a failure).
    pub new: bool,
}

pub fn call(row: &str, method: &str, args: Value) -> Call {
    Call {
        row: row.to_string(),
        method: method.to_string(),
        args,
        kwargs: json!({}),
        client: json!({}),
        want: Want::Any,
        reach: None,
        via: None,
        never_path: None,
        data_keys: Vec::new(),
        at: None,
        fields: Vec::new(),
        new: false,
    }
}

impl Call {
    pub fn code(mut self, c: i64) -> Call {
        self.want = Want::Code(c);
        self
    }
    pub fn refused(mut self) -> Call {
        self.want = Want::Refused;
        self
    }
    pub fn kwargs(mut self, k: Value) -> Call {
        self.kwargs = k;
        self
    }
    pub fn client(mut self, c: Value) -> Call {
        self.client = c;
        self
    }
    /// Must reach the fake, carrying `marker`, on `path` (GraphQL: `field`).
    pub fn reaches(mut self, marker: &str, path: &str, field: Option<&str>) -> Call {
        self.reach = Some((marker.to_string(), true));
        self.via = Some((path.to_string(), field.map(str::to_string)));
        self
    }
    /// Must reach the fake on `path` (GraphQL: `field`), as a request whose
    /// body has `value` at `pointer`.
    pub fn reaches_at(
        mut self,
        path: &str,
        field: Option<&str>,
        pointer: &str,
        value: Value,
    ) -> Call {
        self.reach = Some((format!("{pointer}={value}"), true));
        self.via = Some((path.to_string(), field.map(str::to_string)));
        self.at = Some((pointer.to_string(), value));
        self
    }
    /// JSON pointers the request must carry.
    pub fn fields(mut self, pointers: &[&str]) -> Call {
        self.fields = pointers.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Must not reach the fake: no request carrying `marker`.
    pub fn stopped(mut self, marker: &str) -> Call {
        self.reach = Some((marker.to_string(), false));
        self
    }
    pub fn never_path(mut self, p: &str) -> Call {
        self.never_path = Some(p.to_string());
        self
    }
    pub fn data_keys(mut self, keys: &[&str]) -> Call {
        self.data_keys = keys.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Marks the row as one today's poolgate is known to fail.
    pub fn new_today(mut self) -> Call {
        self.new = true;
        self
    }
}

/// What a driver printed for one call.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub row: String,
    pub ok: bool,
    pub code: Value,
    pub message: Value,
    pub raw: Value,
}

/// Runs `calls` through `sdk` against `base` (poolgate), in order.
pub async fn drive(env: &Env, sdk: Sdk, base: &str, pubkey: &str, calls: &[Call]) -> Vec<Outcome> {
    let scenario: Vec<Value> = calls
        .iter()
        .map(|c| {
            json!({"row": c.row, "call": c.method, "args": c.args, "kwargs": c.kwargs, "client": c.client})
        })
        .collect();
    let input = serde_json::to_vec(&scenario).unwrap();
    let mut cmd = match sdk {
        Sdk::PyV2 => {
            let mut c = Command::new(&env.py_v2);
            c.arg(env.dir.join("drive_py_v2.py"));
            c
        }
        Sdk::PyV3 => {
            let mut c = Command::new(&env.py_v3);
            c.arg(env.dir.join("drive_py_v3.py"));
            c
        }
        Sdk::JsV2 => {
            let mut c = Command::new(&env.node);
            c.arg(env.dir.join("drive_js_v2.js"));
            c
        }
    };
    cmd.arg(base)
        .current_dir(&env.dir)
        .env("SDK_PUBKEY", pubkey)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let mut proc = ChildGuard::spawn(sdk.name(), cmd, Some(input));
    let lines = proc
        .all_lines(Instant::now() + DRIVER_DEADLINE)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} driver did not finish within {DRIVER_DEADLINE:?}; stderr:\n{}",
                sdk.name(),
                proc.stderr()
            )
        });
    let mut by_row = std::collections::HashMap::new();
    for l in &lines {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            if let Some(r) = v["row"].as_str() {
                by_row.insert(r.to_string(), v);
            }
        }
    }
    calls
        .iter()
        .map(|c| match by_row.get(&c.row) {
            Some(v) => Outcome {
                row: c.row.clone(),
                ok: v["ok"].as_bool().unwrap_or(false),
                code: v["code"].clone(),
                message: v["message"].clone(),
                raw: v["raw"].clone(),
            },
            None => Outcome {
                row: c.row.clone(),
                ok: false,
                code: Value::Null,
                message: json!(format!(
                    "the driver printed nothing for this row; stderr: {}",
                    proc.stderr()
                )),
                raw: Value::Null,
            },
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Report

/// Row results of one test function: printed as a table at the end, and
/// the test fails listing every failed row (not only the first).
pub struct Report {
    test: String,
    lines: Vec<String>,
    failures: Vec<String>,
    started: Instant,
}

impl Report {
    pub fn new(test: &str) -> Report {
        Report {
            test: test.to_string(),
            lines: Vec::new(),
            failures: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Records a row check.
    pub fn check(&mut self, sdk: &str, row: &str, new: bool, pass: bool, detail: String) {
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        let tag = match (pass, new) {
            (true, _) => "PASS",
            (false, true) => "FAIL (new)",
            (false, false) => "FAIL",
        };
        let line = format!("{tag:<10} {sdk:<6} {row:<44} {detail}");
        if !pass {
            self.failures.push(line.clone());
        }
        self.lines.push(line);
    }

    /// Runs `calls` through `sdk` and checks each row against the fake's
    /// records. Returns the outcomes for further checks.
    pub async fn run(
        &mut self,
        env: &Env,
        sdk: Sdk,
        gw: &Gateway,
        fake: &Fake,
        calls: &[Call],
    ) -> Vec<Outcome> {
        let outcomes = drive(env, sdk, &gw.base(), &fake.pubkey, calls).await;
        let recs = fake.recorded().await;
        for (c, o) in calls.iter().zip(&outcomes) {
            let mut problems = Vec::new();
            let code_i = o.code.as_i64();
            match &c.want {
                Want::Code(w) if code_i != Some(*w) => problems.push(format!("code {w} expected")),
                Want::Refused if o.ok || code_i == Some(200) => {
                    problems.push("a refusal expected".to_string())
                }
                _ => {}
            }
            // poolgate's own refusals: the SDK must surface its message too.
            if let (Want::Code(w), Some((_, false))) = (&c.want, &c.reach) {
                if let Some(m) = poolgate_message(*w) {
                    if code_i == Some(*w) && o.message.as_str() != Some(m) {
                        problems.push(format!("message {m:?} expected"));
                    }
                }
            }
            let hits = hits(c, &recs);
            if let Some((_, must)) = &c.reach {
                match (must, hits.is_empty()) {
                    (true, true) => problems.push("did not reach the fake".to_string()),
                    (false, false) => problems.push(format!(
                        "reached the fake ({}) though it must not",
                        hits[0].describe()
                    )),
                    (true, false) => {
                        let missing: Vec<&String> = c
                            .fields
                            .iter()
                            .filter(|p| hits.iter().all(|r| r.json.pointer(p).is_none()))
                            .collect();
                        if !missing.is_empty() {
                            problems.push(format!("reached without {missing:?}: {}", hits[0].body));
                        }
                        if let Some((path, field)) = &c.via {
                            let on = hits.iter().any(|r| {
                                r.path.split('?').next() == Some(path.as_str())
                                    && (field.is_none()
                                        || r.graphql.as_ref().map(|g| &g.1) == field.as_ref())
                            });
                            if !on {
                                problems.push(format!(
                                    "reached the fake as {} instead of {path} {}",
                                    hits[0].describe(),
                                    field.clone().unwrap_or_default()
                                ));
                            }
                        }
                    }
                    (false, true) => {}
                }
            }
            if let Some(p) = &c.never_path {
                if recs
                    .iter()
                    .any(|r| r.path.split('?').next() == Some(p.as_str()))
                {
                    problems.push(format!("the fake saw {p}"));
                }
            }
            for k in &c.data_keys {
                if o.raw["data"][k].is_null() {
                    problems.push(format!("no data.{k} in the answer"));
                }
            }
            let reached = match &c.reach {
                Some(_) => {
                    if !hits.is_empty() {
                        " reached"
                    } else {
                        " not-reached"
                    }
                }
                None => "",
            };
            let got = format!("got code {} {}{reached}", o.code, short(&o.message));
            let detail = if problems.is_empty() {
                got
            } else {
                format!("{}; {got}", problems.join("; "))
            };
            self.check(sdk.name(), &c.row, c.new, problems.is_empty(), detail);
        }
        outcomes
    }

    /// Prints the table; fails the test when a row failed.
    pub fn finish(self) {
        eprintln!(
            "\n== SDK conformance: {} ({} rows, {:.1} s)",
            self.test,
            self.lines.len(),
            self.started.elapsed().as_secs_f64()
        );
        for l in &self.lines {
            eprintln!("{l}");
        }
        if !self.failures.is_empty() {
            panic!(
                "{}: {} of {} rows failed:\n{}",
                self.test,
                self.failures.len(),
                self.lines.len(),
                self.failures.join("\n")
            );
        }
    }
}

/// The message poolgate answers with a code, where Authing's wording is
/// documented (AUTHING-FACTS.md); 2057's is not, so its text is not checked.
fn poolgate_message(code: i64) -> Option<&'static str> {
    match code {
        2000 => Some("账号异常，需要输入验证码"),
        2031 => Some("应用已禁止注册用户"),
        2100 => Some("注册过于频繁，请稍候再试"),
        _ => None,
    }
}

/// The recorded requests that are this call's.
fn hits<'a>(c: &Call, recs: &'a [Rec]) -> Vec<&'a Rec> {
    match (&c.at, &c.reach, &c.via) {
        (Some((ptr, val)), _, Some((path, field))) => recs
            .iter()
            .filter(|r| {
                r.path.split('?').next() == Some(path.as_str())
                    && (field.is_none() || r.graphql.as_ref().map(|g| &g.1) == field.as_ref())
                    && r.json.pointer(ptr) == Some(val)
            })
            .collect(),
        (_, Some((marker, _)), _) => recs.iter().filter(|r| r.carries(marker)).collect(),
        _ => Vec::new(),
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let s: String = s.chars().take(90).collect();
    if s.is_empty() {
        s
    } else {
        format!("({s})")
    }
}
