//! What a gateway starts from: the fixture pool, test pools, configs for
//! the file and Authing sources, and [`Setup`], the builder that starts a
//! gateway in-process with its [`FakeUpstream`] (extra TOML such as a Redis
//! `[store]` goes in with [`Setup::toml`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use http::StatusCode;

use super::admin::version;
use super::authing::{FakeAuthing, SECRET};
use super::client::fresh;
use super::upstream::FakeUpstream;
use super::wait::{eventually, wait_for};

/// The shared fixture: Authing's pool-detail response (envelope), as text.
pub fn fixture_text() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pool-detail-response.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture's pool document (the envelope's `data`).
pub fn fixture_pool() -> Value {
    let v: Value = serde_json::from_str(&fixture_text()).expect("fixture is JSON");
    v["data"].clone()
}

/// The pool id in the fixture.
pub const FIXTURE_POOL_ID: &str = "59f86b4832eb28071bdd9214";
/// The fixture's `secret` field: must never be shown or stored by poolgate.
pub const FIXTURE_SECRET: &str = "eb512df21f41133ea02fdad4efeb296c";
/// The fixture's `jwtSecret` field: likewise.
pub const FIXTURE_JWT_SECRET: &str = "4ff2dc0761edd4df77c11ba32db89ca1";

/// Writes `pool` to `path` atomically (temporary file, then rename), so a
/// reader never sees half a document.
pub fn write_pool(path: &Path, pool: &Value) {
    write_atomic(path, &serde_json::to_vec_pretty(pool).unwrap());
}

/// Writes bytes to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    {
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

/// The `[server]` (ports 0, `server_extra` lines added) and `[upstream]`
/// sections every gateway under test starts with; the caller goes on in
/// `[upstream]` or opens the next table.
pub fn server_toml(upstream: &str, shutdown_grace: &str, server_extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "{shutdown_grace}"
{server_extra}

[upstream]
url = "http://{upstream}"
"#
    )
}

/// The `[policy]` and `[policy.file]` sections of a file source reading
/// `pool_path` and polling it every `poll`; the caller may go on in
/// `[policy.file]` (`whitelist_path`...).
pub fn file_source_toml(pool_path: &Path, poll: &str) -> String {
    format!(
        "[policy]\nsource = \"file\"\nrefresh_interval = \"60s\"\n\n[policy.file]\npath = {}\npoll_interval = \"{poll}\"\n",
        toml_str(pool_path)
    )
}

/// A config with the `file` source reading `pool_path`, proxying to `upstream`.
/// The pool file is only checked when the refresher is asked (`app.reload()`)
/// or every 60 s. `extra` is appended to the TOML (must not repeat a table).
pub fn file_config(pool_path: &Path, upstream: SocketAddr, extra: &str) -> poolgate::Config {
    let text = format!(
        r#"{head}request_timeout = "10s"

{policy}{extra}
"#,
        head = server_toml(&upstream.to_string(), "5s", ""),
        policy = file_source_toml(pool_path, "1h"),
    );
    let cfg = poolgate::Config::parse(&text).expect("test config parses");
    cfg.validate().expect("test config is valid");
    cfg
}

/// A config with the `authing` source at `api`, refreshing every second, with
/// a 2 s timeout per call (ample on loopback, even on a loaded machine).
/// `authing_extra` goes into `[policy.authing]`.
pub fn authing_config(
    api: SocketAddr,
    upstream: SocketAddr,
    snapshot: Option<&Path>,
    authing_extra: &str,
) -> poolgate::Config {
    let snapshot = snapshot
        .map(|p| format!("snapshot_path = {}", toml_str(p)))
        .unwrap_or_default();
    let head = server_toml(&upstream.to_string(), "5s", "");
    let text = format!(
        r#"{head}request_timeout = "10s"

[policy]
source = "authing"
refresh_interval = "1s"
{snapshot}

[policy.authing]
api_base = "http://{api}"
user_pool_id = "{FIXTURE_POOL_ID}"
timeout = "2s"
{authing_extra}
"#
    );
    let mut cfg = poolgate::Config::parse(&text).expect("test config parses");
    cfg.apply_env(|k| (k == poolgate::config::DEFAULT_SECRET_ENV).then(|| SECRET.to_string()))
        .expect("env applies");
    cfg.validate().expect("test config is valid");
    cfg
}

/// A path as a TOML string literal.
pub fn toml_str(p: &Path) -> String {
    toml_quote(&p.display().to_string())
}

/// A string as a TOML basic string.
pub fn toml_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A fresh directory under the system temp dir, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// A fake upstream, the fixture pool in a fresh temporary directory, and
/// poolgate started on them with `tweak` applied to the config (which must
/// stay valid). Keep the directory alive as long as the gateway.
pub async fn start_fixture(
    tweak: impl FnOnce(&mut poolgate::Config),
) -> (FakeUpstream, poolgate::App, tempfile::TempDir) {
    let up = FakeUpstream::start().await;
    let (app, dir) = start_before(up.addr, tweak).await;
    (up, app, dir)
}

/// [`start_fixture`] in front of an upstream of the caller's (a
/// [`raw_upstream`], say) at `upstream`.
pub async fn start_before(
    upstream: SocketAddr,
    tweak: impl FnOnce(&mut poolgate::Config),
) -> (poolgate::App, tempfile::TempDir) {
    let dir = tempdir();
    let pool = dir.path().join("pool.json");
    write_pool(&pool, &fixture_pool());
    let mut cfg = file_config(&pool, upstream, "");
    tweak(&mut cfg);
    cfg.validate().expect("tweaked config is valid");
    let app = poolgate::App::start(cfg).await.expect("poolgate starts");
    (app, dir)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `{enabled: true, limit, timeInterval}`.
pub fn check(limit: u32, secs: u32) -> Value {
    json!({"enabled": true, "limit": limit, "timeInterval": secs})
}

/// A pool with every check off, with `patch`'s top-level keys applied.
pub fn pool(patch: Value) -> Value {
    let mut p = json!({
        "id": "pool1",
        "name": "guards-test",
        "loginFailCheck": {"enabled": false, "limit": 0, "timeInterval": 0},
        "loginPasswordFailCheck": {"enabled": false, "limit": 0, "timeInterval": 0},
        "loginFailStrategy": "captcha",
        "frequentRegisterCheck": {"enabled": false, "limit": 0, "timeInterval": 0},
        "allowedOrigins": "",
        "registerDisabled": false,
        "whitelist": {"phoneEnabled": false, "emailEnabled": false, "usernameEnabled": false},
        "passwordStrength": 0,
    });
    if let (Some(p), Some(patch)) = (p.as_object_mut(), patch.as_object()) {
        for (k, v) in patch {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// What to start.
pub struct Setup {
    /// The pool document.
    pub pool: Value,
    /// Whitelist file contents, if any.
    pub whitelist: Option<Value>,
    /// Trust 127.0.0.1 as a proxy (X-Forwarded-For picks the client).
    pub trust_loopback: bool,
    /// Extra TOML sections (`[guards]`, `[rate_limit]`...), appended.
    pub extra_toml: String,
    /// Extra lines for the `[server]` section.
    pub server_extra: String,
    /// `[rate_limit] login` when `extra_toml` does not set a `[rate_limit]`:
    /// generous, so that only the tests about rate limits meet them.
    pub generous_rate_limits: bool,
    /// Environment variables the configuration reads, as this replica sees
    /// them (the process's own environment is left alone).
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(pool_patch: Value) -> Setup {
        Setup {
            pool: pool(pool_patch),
            whitelist: None,
            trust_loopback: false,
            extra_toml: String::new(),
            server_extra: String::new(),
            generous_rate_limits: true,
            env: Vec::new(),
        }
    }

    /// Adds a line to the `[server]` section.
    pub fn server(mut self, line: &str) -> Setup {
        self.server_extra.push_str(line);
        self.server_extra.push('\n');
        self
    }

    pub fn trusted(mut self) -> Setup {
        self.trust_loopback = true;
        self
    }

    pub fn toml(mut self, extra: &str) -> Setup {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(extra);
        self.extra_toml.push('\n');
        self
    }

    /// Sets an environment variable for this replica's configuration.
    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Keeps the counters in Redis at `url` (see [`redis_store_toml`]).
    pub fn redis(self, url: &str, extra: &str) -> Setup {
        self.toml(&redis_store_toml(url, extra))
    }

    pub fn whitelist(mut self, wl: Value) -> Setup {
        self.whitelist = Some(wl);
        self
    }

    pub async fn start(self) -> Stack {
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let pool_path = dir.path().join("pool.json");
        write_pool(&pool_path, &self.pool);
        let wl_line = match &self.whitelist {
            Some(wl) => {
                let p = dir.path().join("whitelist.json");
                write_pool(&p, wl);
                format!("whitelist_path = {:?}", p.display().to_string())
            }
            None => String::new(),
        };
        let trusted = if self.trust_loopback {
            r#"trusted_proxies = ["127.0.0.1/32"]"#
        } else {
            ""
        };
        let rate = if self.generous_rate_limits && !self.extra_toml.contains("[rate_limit]") {
            "[rate_limit]\nlogin = { per_second = 1000, burst = 1000 }\nregister = { per_second = 1000, burst = 1000 }\npassword = { per_second = 1000, burst = 1000 }\ncaptcha = { per_second = 1000, burst = 1000 }\n"
        } else {
            ""
        };
        let text = format!(
            r#"{head}request_timeout = "10s"

{policy}{wl_line}

{rate}
{extra}
"#,
            head = server_toml(
                &up.addr.to_string(),
                "1s",
                &format!("{trusted}\n{}", self.server_extra)
            ),
            policy = file_source_toml(&pool_path, "100ms"),
            extra = self.extra_toml,
        );
        let mut cfg = poolgate::Config::parse(&text)
            .unwrap_or_else(|e| panic!("test config does not parse: {e:#}\n{text}"));
        if !self.env.is_empty() {
            cfg.apply_env(|k| {
                self.env
                    .iter()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.clone())
            })
            .expect("test environment applies");
        }
        cfg.validate()
            .unwrap_or_else(|e| panic!("test config is invalid: {e:#}\n{text}"));
        let app = tokio::time::timeout(Duration::from_secs(20), poolgate::App::start(cfg))
            .await
            .expect("poolgate starts in time")
            .expect("poolgate starts");
        Stack {
            up,
            app,
            pool_path,
            _dir: dir,
        }
    }
}

/// A running gateway, its fake upstream and its pool file.
pub struct Stack {
    pub up: FakeUpstream,
    pub app: poolgate::App,
    pub pool_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Stack {
    pub fn gw(&self) -> SocketAddr {
        self.app.proxy_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.app.admin_addr()
    }

    /// Rewrites the pool file, asks for a reload and waits until the policy
    /// in force satisfies `applied`.
    pub async fn swap_pool(
        &self,
        pool: &Value,
        applied: impl Fn(&poolgate::policy::CompiledPolicy) -> bool,
    ) {
        write_pool(&self.pool_path, pool);
        self.app.reload();
        let ok = eventually(Duration::from_secs(10), || {
            self.app.policy.current().is_some_and(|p| applied(&p))
        })
        .await;
        assert!(ok, "the rewritten pool file was not applied within 10s");
    }

    pub async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(20), self.app.shutdown())
            .await
            .expect("poolgate shuts down in time");
    }
}

/// The `[store]` section that keeps the counters in Redis at `url`;
/// `extra` lines go into `[store.redis]` (`key_prefix`, `timeout`...).
pub fn redis_store_toml(url: &str, extra: &str) -> String {
    format!("[store]\nkind = \"redis\"\n[store.redis]\nurl = {url:?}\n{extra}\n")
}

/// A gateway on the Authing source ([`authing_config`], with a snapshot
/// file), its fake upstream and fake API serving the fixture pool.
pub struct AuthingStack {
    pub up: FakeUpstream,
    pub api: FakeAuthing,
    pub app: poolgate::App,
    /// The config it started from (to start it again).
    pub cfg: poolgate::Config,
    /// Where the snapshot is written.
    pub snap: PathBuf,
    /// The policy version in force after the start.
    pub version: String,
    pub dir: tempfile::TempDir,
}

/// Starts an [`AuthingStack`] and waits until its snapshot is written.
pub async fn start_authing_with_snapshot() -> AuthingStack {
    let up = FakeUpstream::start().await;
    let api = FakeAuthing::start(fixture_pool()).await;
    let dir = tempdir();
    let snap = dir.path().join("snapshot.json");
    let cfg = authing_config(api.addr, up.addr, Some(&snap), "");
    let app = poolgate::App::start(cfg.clone())
        .await
        .expect("poolgate starts");
    let version = version(&app).expect("a policy in force");
    wait_for("the snapshot written", Duration::from_secs(10), || {
        snap.exists()
    })
    .await;
    AuthingStack {
        up,
        api,
        app,
        cfg,
        snap,
        version,
        dir,
    }
}

// ---------------------------------------------------------------------------
// Captchas, fetched and solved as a client would (the answer read server-side)

/// Fetches a v2 captcha as the client `xff` (if given); returns (cookie pair, token).
pub async fn v2_captcha(stack: &Stack, xff: Option<&str>) -> (String, String) {
    let h: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    let r = fresh::get(stack.gw(), "/api/v2/security/captcha", &h).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.text().starts_with("<svg"), "an SVG image: {}", r.text());
    let set_cookie = r
        .header("set-cookie")
        .expect("a captcha cookie")
        .to_string();
    let pair = set_cookie.split(';').next().unwrap().trim().to_string();
    let token = pair
        .strip_prefix("poolgate_captcha=")
        .unwrap_or_else(|| panic!("cookie is poolgate_captcha: {set_cookie}"))
        .to_string();
    assert_eq!(token.len(), 32, "a 16-byte hex token: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    (pair, token)
}

/// Fetches a v3 captcha as client `ip`; returns its token.
pub async fn v3_captcha(stack: &Stack, ip: &str) -> String {
    let r = fresh::get(
        stack.gw(),
        "/api/v3/get-captcha-code",
        &[("x-forwarded-for", ip)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["statusCode"], 200);
    assert!(v["data"]["captchaCodeSvg"]
        .as_str()
        .is_some_and(|s| s.starts_with("<svg")));
    v["data"]["captchaToken"].as_str().unwrap().to_string()
}

/// The answer of the outstanding captcha `token`, read server-side.
pub fn answer_of(stack: &Stack, token: &str) -> String {
    stack
        .app
        .guard_state
        .captcha
        .peek_answer(token)
        .expect("the captcha is outstanding")
}

/// A v2 login body with a captcha answer.
pub fn with_captcha(account: &str, password: &str, code: &str) -> Value {
    json!({"account": account, "password": password, "captchaCode": code})
}

/// A v2 password login by client `ip` with a captcha answer `code`, its
/// `cookie` header (the captcha's pair, maybe among others) sent.
pub async fn v2_login_with_captcha(
    stack: &Stack,
    ip: &str,
    cookie: &str,
    (account, password, code): (&str, &str, &str),
) -> super::client::Reply {
    fresh::post_json(
        stack.gw(),
        super::LOGIN,
        &with_captcha(account, password, code),
        &[("x-forwarded-for", ip), ("cookie", cookie)],
    )
    .await
}
