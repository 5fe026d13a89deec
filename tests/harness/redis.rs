//! `redis-server` processes for the shared-store tests (TLS, cluster, shared
//! rate limits): each on a free 127.0.0.1 port, in a tempdir of its own,
//! killed when its guard drops (an assertion that fails kills it too).
//!
//! `redis-server` and `redis-cli` come from Debian's `redis-server` and
//! `redis-tools` (`.ci/run` installs them). Where they are missing the tests
//! say so and pass, unless `POOLGATE_REQUIRE_REDIS=1` (set by CI), which
//! makes their absence a failure.

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poolgate::config::{GuardsConfig, RateLimitConfig, RedisConfig, StoreConfig};
use poolgate::metrics::Metrics;
use poolgate::policy::WindowLimit;
use poolgate::store::{Ask, Counter, Store, Subject};

/// Whether `bin` runs; when not, panics under `POOLGATE_REQUIRE_REDIS=1`
/// and otherwise says the test is skipped.
pub fn have(bin: &str) -> bool {
    let ok = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("POOLGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "{bin} is not installed (apt-get install redis-server redis-tools)"
        );
        eprintln!("skipped: {bin} is not installed (apt-get install redis-server redis-tools)");
    }
    ok
}

/// A replica's store as the gateway builds it: `redis` behind the breaker
/// and the fallback, default guards, the `rate` limits, unsettled slots held
/// 30 s; with the metrics it reports to.
pub fn replica_store(redis: RedisConfig, rate: &RateLimitConfig) -> (Arc<Store>, Metrics) {
    let metrics = Metrics::new();
    let s = Store::new(
        &StoreConfig::Redis(redis),
        &GuardsConfig::default(),
        rate,
        Duration::from_secs(30),
        metrics.clone(),
    )
    .expect("a store: Redis need not be up to build one");
    (Arc::new(s), metrics)
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits (bounded) until `what` holds, polling every 20 ms.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CA, and a server and a client certificate it signed, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes them in a tempdir of their own.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = make_ca("poolgate test CA");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.crt", ca.pem());
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string()]),
            ("client", vec![]),
        ] {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(sans).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("poolgate test {name}"));
            let cert = params.signed_by(&key, &ca).expect("signed");
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        // Another CA, which signed nothing here.
        write("other-ca.crt", make_ca("some other CA").pem());
        Pki { dir }
    }

    /// `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`, `other-ca.crt`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

impl Pki {
    /// `redis-server` arguments for a TLS-only server on `port` (client
    /// certificates: `auth_clients`, `yes` or `no`).
    pub fn server_args(&self, port: u16, auth_clients: &str) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        [
            "--port".to_string(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p("server.crt"),
            "--tls-key-file".into(),
            p("server.key"),
            "--tls-ca-cert-file".into(),
            p("ca.crt"),
            "--tls-auth-clients".into(),
            auth_clients.into(),
        ]
        .into()
    }

    /// `redis-cli` arguments to talk TLS to such a server.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.path("ca.crt").display().to_string(),
        ]
    }
}

/// One `redis-server`, killed on drop.
pub struct RedisProc {
    /// The port it listens on (the TLS port for a TLS server).
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProc {
    /// Starts `redis-server --bind 127.0.0.1 --dir <dir>` with `args`
    /// (which must name the port), nothing persisted, and waits until the
    /// port accepts connections.
    pub fn start(port: u16, dir: &Path, args: &[String]) -> RedisProc {
        let mut p = RedisProc {
            port,
            args: args.to_vec(),
            dir: dir.to_path_buf(),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts it (again) with the same arguments, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.join(format!("redis-{}.log", self.port)))
            .expect("a log file");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        let child = self.child.as_mut().expect("just set");
        wait_until(
            &format!("redis-server on port {port} accepting"),
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("redis-server on port {port} exited: {status}");
                }
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
    }

    /// Kills it (SIGKILL: a crash, nothing flushed) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log, for a failing assertion's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("redis-{}.log", self.port)))
            .unwrap_or_default()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli` with `args`, killed if it takes over 30 s; returns its
/// standard output, or panics with its error output.
pub fn cli(args: &[&str]) -> String {
    try_cli(args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`cli`] for a condition polled until it holds: a failed run (a node
/// still starting) is an `Err` to retry, not a panic.
pub fn try_cli(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("redis-cli does not run: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-cli {args:?} took over 30 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("redis-cli's output: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A plain `redis-server` on a free port in a tempdir of its own, with a
/// client to look inside it: what the shared-store tests start from.
pub struct RedisServer {
    proc: RedisProc,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, or `None` (after saying why) when the binary is missing
    /// and CI did not ask for it (see [`have`]).
    pub async fn start() -> Option<RedisServer> {
        if !have("redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let proc = RedisProc::start(port, dir.path(), &["--port".into(), port.to_string()]);
        Some(RedisServer { proc, _dir: dir })
    }

    /// Starts it again on the same port, with nothing persisted.
    pub async fn restart(&mut self) {
        self.proc.restart();
    }

    /// Kills it (a crash, nothing flushed).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Its URL, database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.proc.port)
    }

    /// A connection, or `None` if it does not answer within a second.
    pub async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    /// Whether it answers `PING`.
    pub async fn ping(&self) -> bool {
        match self.conn().await {
            Some(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            None => false,
        }
    }

    /// The answer of the captcha `token` stored under `prefix`, read raw from
    /// Redis (the tests read it the way a human reads the image).
    pub async fn captcha_answer(&self, prefix: &str, token: &str) -> String {
        let mut c = self.conn().await.expect("redis answers");
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:cap:{token}"))
            .query_async(&mut c)
            .await
            .expect("GET works");
        let value = value.expect("the answer is in Redis");
        value.rsplit(':').next().unwrap_or_default().to_string()
    }

    /// Keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let Some(mut c) = self.conn().await else {
            return Vec::new();
        };
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap_or_default()
    }
}

/// A login-IP ask for `client` with `limit` tries a minute: what the store
/// tests reserve.
pub fn login_ip_ask(client: u128, limit: u32) -> Ask {
    Ask {
        counter: Counter::LoginIp,
        subject: Subject::Client(client),
        limit: WindowLimit {
            limit,
            window: Duration::from_secs(60),
        },
    }
}
