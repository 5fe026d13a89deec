//! Harness for the `guards_*` end-to-end tests: a fake login service that
//! answers like Authing and counts what reaches it, a poolgate started
//! in-process from a pool file in a tempdir, and a one-connection-per-request
//! HTTP/1 client (so a connection the gateway closes after refusing an unread
//! body can never spoil the next request).
//!
//! Everything listens on 127.0.0.1 port 0; every wait is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// The v2 password login path.
pub const LOGIN: &str = "/api/v2/login/account";
/// The v3 sign-in path.
pub const SIGNIN: &str = "/api/v3/signin";
/// The v2 email registration path.
pub const REGISTER: &str = "/api/v2/register/email";
/// The v3 sign-up path.
pub const SIGNUP: &str = "/api/v3/signup";
/// The GraphQL endpoint.
pub const GRAPHQL: &str = "/graphql/v2";

/// Longest any single request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Fake login service
// ---------------------------------------------------------------------------

/// One request the fake upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path as it arrived (not normalised).
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// A fake Authing login service.
///
/// * `POST /api/v2/login/*`: password `right` -> `{"code":200,...}`, else 2333.
/// * `POST /api/v3/signin`: `passwordPayload.password` `right` -> statusCode 200, else 400/2333.
/// * `POST /graphql/v2`: a `login*` mutation with input password `right` -> data, else
///   `errors[0].message.code` 2333; a `register*` mutation -> data; anything else -> data.
/// * registrations (`/api/v2/register*`, `/api/v3/signup`) -> success.
/// * GraphQL batches (a JSON array) -> an array, each element answered as above;
///   a login's `data` key is the field name the query uses (`loginBySubAccount`...).
/// * any other route whose body holds a string starting with `wrong` (a wrong
///   password, code or token) -> 2333 in the route's shape (v3 for `/api/v3/`).
/// * anything else -> `{"code":200,"message":"ok","data":{}}`.
///
/// Paths are matched the way Authing routes them (case-insensitive, dot
/// segments resolved...), using poolgate's own canonical form, so that each
/// spelling of a login is answered as a login.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    delay_ms: Arc<AtomicU64>,
    always_wrong: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let up = FakeUpstream {
            addr,
            received: Arc::default(),
            delay_ms: Arc::default(),
            always_wrong: Arc::default(),
        };
        let state = (
            up.received.clone(),
            up.delay_ms.clone(),
            up.always_wrong.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::io::Error>(upstream_answer(req, state).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    /// Delays every answer by `ms` (after counting the request).
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers every login as a wrong password, whatever the password.
    pub fn set_always_wrong(&self, on: bool) {
        self.always_wrong.store(on, Ordering::SeqCst);
    }

    /// Requests received on exactly this (raw) path.
    pub fn count(&self, path: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Requests received whose path is this route in canonical form (any spelling).
    pub fn count_route(&self, canonical: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| canon(&r.path) == canonical)
            .count()
    }

    /// Every request received.
    pub fn total(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Requests received per raw path.
    pub fn by_path(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received.lock().unwrap().iter() {
            *m.entry(r.path.clone()).or_default() += 1;
        }
        m
    }

    /// The last request received.
    pub fn last(&self) -> Option<Received> {
        self.received.lock().unwrap().last().cloned()
    }
}

fn canon(path: &str) -> String {
    poolgate::routes::canonical_path(path)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| path.to_string())
}

type UpState = (Arc<Mutex<Vec<Received>>>, Arc<AtomicU64>, Arc<AtomicBool>);

async fn upstream_answer(
    req: Request<Incoming>,
    (received, delay, always_wrong): UpState,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        // A body that broke off is not a request that reached us.
        Err(_) => return Response::new(Full::new(Bytes::new())),
    };
    received.lock().unwrap().push(Received {
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let ms = delay.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let wrong_always = always_wrong.load(Ordering::SeqCst);
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let v: Value = if is_form {
        form_to_json(&body)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let right = |pointer: &str| !wrong_always && v.pointer(pointer) == Some(&json!("right"));
    let c = canon(&path);
    let out = if c.starts_with("/api/v2/login/") {
        if right("/password") {
            json!({"code": 200, "message": "ok", "data": {"id": "u1"}})
        } else {
            json!({"code": 2333, "message": "账号或密码错误", "data": null})
        }
    } else if c == "/api/v3/signin" {
        if right("/passwordPayload/password") {
            json!({"statusCode": 200, "message": "", "apiCode": 200, "data": {"access_token": "t"}})
        } else {
            json!({"statusCode": 400, "apiCode": 2333, "message": "账号或密码错误", "data": null})
        }
    } else if c == "/graphql/v2" {
        match &v {
            Value::Array(batch) => Value::Array(
                batch
                    .iter()
                    .map(|one| graphql_answer(one, wrong_always))
                    .collect(),
            ),
            one => graphql_answer(one, wrong_always),
        }
    } else if c == "/api/v3/signup" {
        json!({"statusCode": 200, "message": "", "apiCode": 200, "data": {"userId": "u2"}})
    } else if !c.contains("register") && has_wrong_secret(&v) {
        if c.starts_with("/api/v3/") {
            json!({"statusCode": 400, "apiCode": 2333, "message": "账号或密码错误", "data": null})
        } else {
            json!({"code": 2333, "message": "账号或密码错误", "data": null})
        }
    } else {
        // Registrations and everything else.
        json!({"code": 200, "message": "ok", "data": {}})
    };
    let mut r = Response::new(Full::new(Bytes::from(out.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A string value starting with `wrong` anywhere in the body.
fn has_wrong_secret(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("wrong"),
        Value::Array(a) => a.iter().any(has_wrong_secret),
        Value::Object(o) => o.values().any(has_wrong_secret),
        _ => false,
    }
}

/// One GraphQL request's answer: logins check their password (`right`),
/// other guarded fields fail when they carry a `wrong...` secret.
fn graphql_answer(v: &Value, wrong_always: bool) -> Value {
    let query = v["query"].as_str().unwrap_or("");
    // The login field the query names (its data key).
    let field = [
        "loginBySubAccount",
        "loginByUsername",
        "loginByPhonePassword",
        "loginByPhoneCode",
    ]
    .into_iter()
    .find(|f| query.contains(f))
    .unwrap_or("loginByEmail");
    if query.contains("login") {
        let pw_right = !wrong_always
            && (v["variables"]
                .as_object()
                .is_some_and(|vars| vars.values().any(|i| i["password"] == "right"))
                || v["variables"]["password"] == "right");
        if pw_right {
            json!({"data": {field: {"id": "u1"}}})
        } else {
            json!({"data": null, "errors": [{"message": {"code": 2333, "message": "x"}}]})
        }
    } else if query.contains("register") {
        json!({"data": {"registerByEmail": {"id": "u2"}}})
    } else if has_wrong_secret(&v["variables"]) || query.contains("\"wrong") {
        json!({"data": null, "errors": [{"message": {"code": 2333, "message": "x"}}]})
    } else {
        let fields = [
            "resetPasswordByFirstLoginToken",
            "resetPasswordByForceResetToken",
            "resetPassword",
            "updatePassword",
            "sendEmail",
            "bindPhone",
            "bindEmail",
            "updatePhone",
            "updateEmail",
        ];
        let mut data = serde_json::Map::new();
        for f in fields.into_iter().filter(|f| query.contains(f)) {
            data.insert(f.to_string(), json!({"code": 200, "message": "ok"}));
        }
        if data.is_empty() {
            data.insert("user".into(), Value::Null);
        }
        json!({ "data": data })
    }
}

fn form_to_json(body: &[u8]) -> Value {
    let mut m = serde_json::Map::new();
    for pair in String::from_utf8_lossy(body).split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            poolgate::routes::percent_decode(&s.replace('+', " "))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default()
        };
        m.insert(dec(k), Value::String(dec(v)));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

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

    pub fn whitelist(mut self, wl: Value) -> Setup {
        self.whitelist = Some(wl);
        self
    }

    pub async fn start(self) -> Stack {
        let up = FakeUpstream::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let pool_path = dir.path().join("pool.json");
        write_atomic(&pool_path, &self.pool);
        let wl_line = match &self.whitelist {
            Some(wl) => {
                let p = dir.path().join("whitelist.json");
                write_atomic(&p, wl);
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
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "1s"
{trusted}
{server_extra}

[upstream]
url = "http://{upstream}"
request_timeout = "10s"

[policy]
source = "file"
refresh_interval = "60s"

[policy.file]
path = {pool_path:?}
poll_interval = "100ms"
{wl_line}

{rate}
{extra}
"#,
            upstream = up.addr,
            pool_path = pool_path.display().to_string(),
            extra = self.extra_toml,
            server_extra = self.server_extra,
        );
        let cfg = poolgate::Config::parse(&text)
            .unwrap_or_else(|e| panic!("test config does not parse: {e:#}\n{text}"));
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

/// Writes JSON to `path` atomically (a poll never sees a half-written file).
pub fn write_atomic(path: &std::path::Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
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
        write_atomic(&self.pool_path, pool);
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

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// An answer from the gateway.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics with the body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// Whether `Vary` names `Origin`.
    pub fn varies_on_origin(&self) -> bool {
        self.header_all("vary").iter().any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin"))
        })
    }

    /// `Retry-After` in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }
}

/// Sends one request on a fresh connection to `addr`. `Host` is set to
/// `addr` unless the request carries one.
pub async fn send(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> Resp {
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", addr.to_string().parse().unwrap());
    }
    let fut = async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.expect("request succeeds");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("whole answer").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("the gateway answers in time")
}

/// Builds a request with a path (sent as is) and headers.
pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("valid request")
}

/// POSTs a JSON body.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(addr, request(Method::POST, path, &h, body.to_string())).await
}

/// POSTs raw bytes with the given headers (no content type added).
pub async fn post_raw(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Resp {
    send(addr, request(Method::POST, path, headers, body)).await
}

/// GETs a path.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, request(Method::GET, path, headers, Bytes::new())).await
}

/// A v2 password login body.
pub fn login_body(account: &str, password: &str) -> Value {
    json!({"account": account, "password": password})
}

/// A wrong-password v2 login from the client named in `X-Forwarded-For`
/// (only believed when the stack trusts loopback).
pub async fn wrong_login(addr: SocketAddr, account: &str, xff: Option<&str>) -> Resp {
    let h: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    post_json(addr, LOGIN, &login_body(account, "wrong"), &h).await
}

/// The exact 2000 answer in the v2 shape.
pub fn captcha_required_v2() -> Value {
    json!({"code": 2000, "message": "账号异常，需要输入验证码", "apiCode": 2000, "data": null})
}

/// The exact 2001 answer in the v2 shape.
pub fn captcha_failed_v2() -> Value {
    json!({"code": 2001, "message": "验证码验证失败(验证码错误)", "apiCode": 2001, "data": null})
}

/// The fake upstream's wrong-password answer (v2).
pub fn wrong_password_v2() -> Value {
    json!({"code": 2333, "message": "账号或密码错误", "data": null})
}

/// The fake upstream's success answer (v2 login).
pub fn login_ok_v2() -> Value {
    json!({"code": 200, "message": "ok", "data": {"id": "u1"}})
}

// ---------------------------------------------------------------------------
// Admin and waiting
// ---------------------------------------------------------------------------

/// GETs an admin path; returns status and text.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = get(admin, path, &[]).await;
    (r.status, r.text())
}

/// POSTs to an admin path; returns status and text.
pub async fn admin_post(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = post_raw(admin, path, Bytes::new(), &[]).await;
    (r.status, r.text())
}

/// The admin `/metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let (s, text) = admin_get(admin, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    text
}

/// The value of the sample whose name and labels are exactly `series`
/// (e.g. `poolgate_rejections_total{reason="x"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Polls `f` every 20ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
