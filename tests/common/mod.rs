//! Harness for the gateway-core integration tests (proxy, policy sources,
//! binary): everything runs over real sockets on 127.0.0.1.
//!
//! - [`FakeUpstream`]: a login service that records every request it receives
//!   (method, path and query, headers in order, body bytes, whether the body
//!   arrived whole) and can be told to answer normally, late, not at all
//!   (close or reset the connection) or with bytes that are not HTTP.
//! - [`FakeAuthing`]: Authing's management API as poolgate calls it (GraphQL
//!   `accessToken` and `whitelist` on `/graphql/v2`, `GET /api/v2/userpools/detail`),
//!   checking the bearer token and the pool header, issuing tokens with a
//!   chosen lifetime, and switchable at runtime to 500, garbage, hang or 401.
//! - Config builders, HTTP/1 and h2c clients, admin-endpoint readers, bounded
//!   waits, and [`Proc`] to run the built binary and scrape its output.
//!
//! Every wait here has a deadline: a test fails, it never hangs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------
// Deadlines

/// Runs `fut`, failing the test if it is not done within `limit`.
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_for`], with an async condition (e.g. one that asks the admin port).
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(left.max(Duration::from_millis(50)), cond()).await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address nothing listens on (bound, then released).
pub fn unused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Fixture

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

// ---------------------------------------------------------------------------
// Fake login upstream

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, exactly as on the request line.
    pub target: String,
    /// HTTP version the upstream was spoken to with.
    pub version: Version,
    /// Every header line in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body bytes received (all of them, or what arrived before it broke off).
    pub body: Bytes,
    /// Whether the body arrived to its end (false: the stream broke off).
    pub complete: bool,
}

impl Recorded {
    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; fails if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// How the fake upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpMode {
    /// Answer (see [`FakeUpstream`] for what).
    Normal,
    /// Read the request, wait this long, then answer normally.
    Delay(Duration),
    /// Read the request, then close the connection without answering (FIN).
    Close,
    /// Read the request, then reset the connection (RST, zero linger).
    Reset,
    /// Read the request, then write bytes that are not HTTP and close.
    Garbage,
    /// Read the request, then write these bytes as the answer (a complete
    /// HTTP/1.1 response, with `Connection: close`) and close: for answers
    /// hyper would normalise, such as several `Connection` lines.
    Raw(&'static [u8]),
    /// Answer 200 with a chunked JSON body that breaks off after its first
    /// bytes (the connection is aborted; the body never ends cleanly).
    BreakBody,
    /// Answer 200 with the first bytes of a JSON body, then nothing for this
    /// long, then the rest (an upstream that trickles its answer).
    StallBody(Duration),
}

struct UpState {
    mode: Mutex<UpMode>,
    /// (method, target) of each request, when its head arrived.
    arrived: Mutex<Vec<(String, String)>>,
    /// Each request, once its body ended or broke off.
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

/// A fake login service on 127.0.0.1.
///
/// In [`UpMode::Normal`] it answers:
/// - paths with an `echo` segment (`/echo/...`): status 201, the request body echoed back,
///   the request's `content-type` (or `application/octet-stream`), plus
///   `x-up: 1`, `x-up: 2`, two `set-cookie` lines, `x-echo-method`, and the
///   hop-by-hop `keep-alive` and `connection: x-up-hop` with `x-up-hop`;
/// - anything else: `{"code":200,"message":"ok","data":{"target": ...}}`.
///
/// A request header `x-reply-status: N` sets the status of either answer.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpState>,
    accept: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpState {
            mode: Mutex::new(UpMode::Normal),
            arrived: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(upstream_conn(stream, st.clone()));
            }
        });
        FakeUpstream {
            addr,
            state,
            accept,
        }
    }

    pub fn set_mode(&self, m: UpMode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Requests whose body ended or broke off, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests to exactly `target` (path and query) whose body arrived whole.
    pub fn complete_to(&self, target: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target == target && r.complete)
            .collect()
    }

    /// The one request received for `target`; fails unless there is exactly one.
    pub fn only(&self, target: &str) -> Recorded {
        let all: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| r.target == target)
            .collect();
        assert_eq!(all.len(), 1, "requests the upstream saw for {target}");
        all.into_iter().next().unwrap()
    }

    /// How many request heads for `target` have arrived (body or not).
    pub fn arrived(&self, target: &str) -> usize {
        self.state
            .arrived
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t == target)
            .count()
    }

    /// How many request heads have arrived in all.
    pub fn arrived_total(&self) -> usize {
        self.state.arrived.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn upstream_conn(stream: TcpStream, state: Arc<UpState>) {
    // Keep a second descriptor of the socket so a handler can reset it or
    // write raw bytes on it while hyper owns the first.
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let Ok(raw) = std_stream.try_clone() else {
        return;
    };
    let Ok(stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let raw = Arc::new(Mutex::new(Some(raw)));
    let svc = hyper::service::service_fn(move |req| {
        let (state, raw) = (state.clone(), raw.clone());
        async move { upstream_answer(req, state, raw).await }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn upstream_answer(
    req: Request<Incoming>,
    state: Arc<UpState>,
    raw: Arc<Mutex<Option<std::net::TcpStream>>>,
) -> Result<Response<UpBody>, std::io::Error> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let version = req.version();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state
        .arrived
        .lock()
        .unwrap()
        .push((method.clone(), target.clone()));
    let content_type = req.headers().get("content-type").cloned();
    let reply_status = req
        .headers()
        .get("x-reply-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok());
    let mut body = BytesMut::new();
    let mut complete = true;
    let mut incoming = req.into_body();
    loop {
        match incoming.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    body.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => {
                complete = false;
                break;
            }
        }
    }
    let body = body.freeze();
    state.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        target: target.clone(),
        version,
        headers,
        body: body.clone(),
        complete,
    });
    if !complete {
        return Err(std::io::Error::other("request body broke off"));
    }
    let mode = *state.mode.lock().unwrap();
    match mode {
        UpMode::Normal => {}
        UpMode::Delay(d) => tokio::time::sleep(d).await,
        UpMode::Close => return Err(std::io::Error::other("fake upstream: close")),
        UpMode::Reset => {
            if let Some(raw) = raw.lock().unwrap().take() {
                // Zero linger on the shared socket: when hyper drops its
                // descriptor below, the kernel sends RST instead of FIN.
                if let Ok(t) = TcpStream::from_std(raw) {
                    let _ = t.set_zero_linger();
                }
            }
            return Err(std::io::Error::other("fake upstream: reset"));
        }
        UpMode::Garbage => {
            if let Some(mut raw) = raw.lock().unwrap().take() {
                let _ = raw.write_all(b"THIS IS NOT HTTP\x00\x01\x02\r\n\r\n");
            }
            return Err(std::io::Error::other("fake upstream: garbage"));
        }
        UpMode::Raw(bytes) => {
            if let Some(mut raw) = raw.lock().unwrap().take() {
                let _ = raw.write_all(bytes);
            }
            return Err(std::io::Error::other("fake upstream: raw answer sent"));
        }
        UpMode::BreakBody => {
            // The head and the first bytes go out (and are flushed while the
            // body waits), then the body fails and hyper aborts the connection.
            let frames = futures_util::stream::unfold(0u8, |step| async move {
                match step {
                    0 => {
                        let part = Bytes::from_static(b"{\"code\":200,\"message\":\"ok\",\"da");
                        Some((Ok(Frame::data(part)), 1))
                    }
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let e = std::io::Error::other("fake upstream: body broke off");
                        Some((Err(e), 2))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(StreamBody::new(Box::pin(frames)).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Ok(r);
        }
        UpMode::StallBody(pause) => {
            let frames = futures_util::stream::unfold(0u8, move |step| async move {
                match step {
                    0 => {
                        let part = Bytes::from_static(b"{\"code\":2333,\"message\":\"x\",");
                        Some((Ok::<_, std::io::Error>(Frame::data(part)), 1))
                    }
                    1 => {
                        tokio::time::sleep(pause).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"\"data\":null}"))), 2))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(StreamBody::new(Box::pin(frames)).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Ok(r);
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let mut resp = if path.split('/').any(|seg| seg == "echo") {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = StatusCode::CREATED;
        let h = r.headers_mut();
        h.insert(
            "content-type",
            content_type.unwrap_or_else(|| "application/octet-stream".parse().unwrap()),
        );
        h.append("x-up", "1".parse().unwrap());
        h.append("x-up", "2".parse().unwrap());
        h.append("set-cookie", "a=1; Path=/".parse().unwrap());
        h.append("set-cookie", "b=2; HttpOnly".parse().unwrap());
        h.insert("x-echo-method", method.parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("connection", "x-up-hop".parse().unwrap());
        h.insert("x-up-hop", "must not reach the client".parse().unwrap());
        r
    } else {
        let v = json!({"code": 200, "message": "ok", "data": {"target": target}});
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    if let Some(s) = reply_status {
        *resp.status_mut() = s;
    }
    Ok(resp.map(|b| b.map_err(|never| match never {}).boxed()))
}

/// The fake upstream's response body: whole, or one that breaks off.
type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

// ---------------------------------------------------------------------------
// Fake Authing management API

/// The pool secret the fake accepts (given to poolgate via its env variable).
pub const SECRET: &str = "pool-secret-9c1e77d2ab04f5e8";

/// How the fake Authing API answers every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Like Authing.
    Normal,
    /// HTTP 500 with an error envelope.
    Status500,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// Never answer (sleeps far past any configured timeout).
    Hang,
    /// HTTP 401 with Authing's "not logged in" envelope.
    Unauthorized,
}

struct AuthState {
    mode: Mutex<AuthMode>,
    pool: Mutex<Value>,
    whitelist: Mutex<BTreeMap<String, Vec<String>>>,
    token_ttl_secs: AtomicU64,
    /// Every token issued: (value, exp in unix seconds, still valid).
    tokens: Mutex<Vec<(String, u64, bool)>>,
    token_requests: AtomicUsize,
    detail_requests: AtomicUsize,
    detail_ok: AtomicUsize,
    whitelist_requests: AtomicUsize,
    /// Calls refused because of a missing, unknown, revoked or expired token
    /// or a wrong pool header (not because of the mode).
    refused: Mutex<Vec<String>>,
    /// For each accepted bearer token: seconds it had left when presented.
    remaining: Mutex<Vec<f64>>,
}

/// A fake Authing management API on 127.0.0.1.
pub struct FakeAuthing {
    pub addr: SocketAddr,
    state: Arc<AuthState>,
    accept: JoinHandle<()>,
}

impl Drop for FakeAuthing {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeAuthing {
    /// Serves `pool` (a pool document, the envelope's `data`) on a free port.
    pub async fn start(pool: Value) -> FakeAuthing {
        Self::start_on("127.0.0.1:0".parse().unwrap(), pool).await
    }

    /// Serves on a given address (to come up where poolgate already looks).
    pub async fn start_on(addr: SocketAddr, pool: Value) -> FakeAuthing {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the fake Authing API");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AuthState {
            mode: Mutex::new(AuthMode::Normal),
            pool: Mutex::new(pool),
            whitelist: Mutex::new(BTreeMap::new()),
            token_ttl_secs: AtomicU64::new(7200),
            tokens: Mutex::new(Vec::new()),
            token_requests: AtomicUsize::new(0),
            detail_requests: AtomicUsize::new(0),
            detail_ok: AtomicUsize::new(0),
            whitelist_requests: AtomicUsize::new(0),
            refused: Mutex::new(Vec::new()),
            remaining: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(authing_answer(req, st).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeAuthing {
            addr,
            state,
            accept,
        }
    }

    pub fn set_mode(&self, m: AuthMode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Serves a different pool document from now on.
    pub fn set_pool(&self, pool: Value) {
        *self.state.pool.lock().unwrap() = pool;
    }

    /// The whitelist entries served for `kind` (`USERNAME`, `EMAIL`, `PHONE`).
    pub fn set_whitelist(&self, kind: &str, values: &[&str]) {
        self.state.whitelist.lock().unwrap().insert(
            kind.to_string(),
            values.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Tokens issued from now on expire `secs` after issue.
    pub fn set_token_ttl(&self, secs: u64) {
        self.state.token_ttl_secs.store(secs, Ordering::SeqCst);
    }

    /// Invalidates every token issued so far (as if revoked server-side).
    pub fn revoke_tokens(&self) {
        for t in self.state.tokens.lock().unwrap().iter_mut() {
            t.2 = false;
        }
    }

    /// Access-token requests answered with a token.
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens.lock().unwrap().len()
    }

    /// Every token value issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state
            .tokens
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.0.clone())
            .collect()
    }

    /// Access-token requests received (answered or not).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Pool-detail requests received.
    pub fn detail_requests(&self) -> usize {
        self.state.detail_requests.load(Ordering::SeqCst)
    }

    /// Pool-detail requests answered with the pool.
    pub fn detail_ok(&self) -> usize {
        self.state.detail_ok.load(Ordering::SeqCst)
    }

    /// Whitelist requests received.
    pub fn whitelist_requests(&self) -> usize {
        self.state.whitelist_requests.load(Ordering::SeqCst)
    }

    /// Why each call was refused for its credentials (not for the mode).
    pub fn refused(&self) -> Vec<String> {
        self.state.refused.lock().unwrap().clone()
    }

    /// The least lifetime (seconds) any accepted token had left when presented.
    pub fn least_token_remaining(&self) -> Option<f64> {
        self.state
            .remaining
            .lock()
            .unwrap()
            .iter()
            .copied()
            .reduce(f64::min)
    }
}

fn reply_json(status: u16, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    r
}

fn not_logged_in() -> Response<Full<Bytes>> {
    reply_json(
        401,
        &json!({"code": 2020, "message": "尚未登录，无访问权限", "data": null}),
    )
}

async fn authing_answer(req: Request<Incoming>, st: Arc<AuthState>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pool_header = req
        .headers()
        .get("x-authing-userpool-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let gql: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let query = gql["query"].as_str().unwrap_or("").to_string();

    let endpoint = match (&method, path.as_str()) {
        (&Method::POST, "/graphql/v2") if query.contains("accessToken(") => "token",
        (&Method::POST, "/graphql/v2") if query.contains("whitelist(") => "whitelist",
        (&Method::GET, "/api/v2/userpools/detail") => "detail",
        _ => return reply_json(404, &json!({"code": 404, "message": "not found"})),
    };
    match endpoint {
        "token" => st.token_requests.fetch_add(1, Ordering::SeqCst),
        "detail" => st.detail_requests.fetch_add(1, Ordering::SeqCst),
        _ => st.whitelist_requests.fetch_add(1, Ordering::SeqCst),
    };

    let mode = *st.mode.lock().unwrap();
    match mode {
        AuthMode::Normal => {}
        AuthMode::Status500 => {
            return reply_json(500, &json!({"code": 500, "message": "服务器内部错误"}))
        }
        AuthMode::Garbage => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<html><body>502 Bad Gateway</body></html>",
            )));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        AuthMode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return reply_json(500, &json!({"code": 500, "message": "too late"}));
        }
        AuthMode::Unauthorized => return not_logged_in(),
    }

    if endpoint == "token" {
        let vars = &gql["variables"];
        if vars["userPoolId"] != FIXTURE_POOL_ID || vars["secret"] != SECRET {
            st.refused.lock().unwrap().push(format!(
                "token: wrong userPoolId or secret: {}",
                vars["userPoolId"]
            ));
            return reply_json(
                200,
                &json!({"data": null, "errors": [{"message": {"code": 2020, "message": "secret 错误"}, "extensions": {"code": 2020}}]}),
            );
        }
        let now = unix_now();
        let exp = now + st.token_ttl_secs.load(Ordering::SeqCst);
        let mut tokens = st.tokens.lock().unwrap();
        let value = format!(
            "mgmt-token-{}-{:x}",
            tokens.len() + 1,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        tokens.push((value.clone(), exp, true));
        return reply_json(
            200,
            &json!({"data": {"accessToken": {"accessToken": value, "exp": exp, "iat": now}}}),
        );
    }

    // Every other call needs a valid bearer token and the pool header.
    let refusal = {
        let tokens = st.tokens.lock().unwrap();
        let presented = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        let now = unix_now_f64();
        match presented.and_then(|p| tokens.iter().find(|t| t.0 == p)) {
            None => Some(format!("{endpoint}: unknown or missing token {auth:?}")),
            Some((_, _, false)) => Some(format!("{endpoint}: revoked token")),
            Some((_, exp, true)) if (*exp as f64) <= now => {
                Some(format!("{endpoint}: expired token (exp {exp})"))
            }
            Some(_) if pool_header.as_deref() != Some(FIXTURE_POOL_ID) => Some(format!(
                "{endpoint}: x-authing-userpool-id is {pool_header:?}"
            )),
            Some((_, exp, true)) => {
                st.remaining.lock().unwrap().push(*exp as f64 - now);
                None
            }
        }
    };
    if let Some(why) = refusal {
        st.refused.lock().unwrap().push(why);
        return not_logged_in();
    }
    if endpoint == "whitelist" {
        let kind = gql["variables"]["type"].as_str().unwrap_or("").to_string();
        let list: Vec<Value> = st
            .whitelist
            .lock()
            .unwrap()
            .get(&kind)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|v| json!({"createdAt": "2021-09-08T02:30:36.243Z", "updatedAt": "2021-09-08T02:30:36.243Z", "value": v}))
            .collect();
        return reply_json(200, &json!({"data": {"whitelist": list}}));
    }
    st.detail_ok.fetch_add(1, Ordering::SeqCst);
    let pool = st.pool.lock().unwrap().clone();
    reply_json(
        200,
        &json!({"code": 200, "message": "获取成功", "data": pool}),
    )
}

// ---------------------------------------------------------------------------
// Configurations

/// A config with the `file` source reading `pool_path`, proxying to `upstream`.
/// The pool file is only checked when the refresher is asked (`app.reload()`)
/// or every 60 s. `extra` is appended to the TOML (must not repeat a table).
pub fn file_config(pool_path: &Path, upstream: SocketAddr, extra: &str) -> poolgate::Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"

[upstream]
url = "http://{upstream}"
request_timeout = "10s"

[policy]
source = "file"
refresh_interval = "60s"

[policy.file]
path = {path}
poll_interval = "1h"
{extra}
"#,
        path = toml_str(pool_path),
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
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"

[upstream]
url = "http://{upstream}"
request_timeout = "10s"

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

// ---------------------------------------------------------------------------
// Clients

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c, no upgrade).
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Reads a response to its end (bounded).
pub async fn read_reply<B>(resp: Response<B>) -> Reply
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let body = bounded(
        "reading a response body",
        Duration::from_secs(30),
        body.collect(),
    )
    .await
    .expect("response body reads")
    .to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Sends `req` with `client` and reads the answer; fails on transport errors.
pub async fn send_with(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = bounded(&what, Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", poolgate::error_chain(&e)));
    read_reply(resp).await
}

/// Sends `req` with a fresh HTTP/1.1 client.
pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    send_with(&h1_client(), req).await
}

/// A request to `addr` with headers and a body.
pub fn build(
    method: &str,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// GET `target` on `addr`.
pub async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(build("GET", addr, target, &[], Bytes::new())).await
}

/// POST a JSON body to `target` on `addr`.
pub async fn post_json(addr: SocketAddr, target: &str, body: &str) -> Reply {
    send(build(
        "POST",
        addr,
        target,
        &[("content-type", "application/json")],
        body.to_string(),
    ))
    .await
}

/// Asserts poolgate's own v2 error envelope as docs/failure-behaviour.md's failure
/// table documents it: `status`, `application/json; charset=utf-8`, and
/// `{"code": status, "message": message, "apiCode": status, "data": null}`.
pub fn assert_envelope_exact(r: &Reply, status: u16, message: &str) {
    assert_eq!(r.status.as_u16(), status, "status; body {}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.json(),
        json!({"code": status, "message": message, "apiCode": status, "data": null})
    );
}

// ---------------------------------------------------------------------------
// Admin endpoints

/// `GET /readyz` status.
pub async fn readyz(admin: SocketAddr) -> StatusCode {
    get(admin, "/readyz").await.status
}

/// `GET /policy`: status and JSON.
pub async fn policy(admin: SocketAddr) -> (StatusCode, Value) {
    let r = get(admin, "/policy").await;
    (r.status, r.json())
}

/// `GET /metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// The value of the first sample of `name` whose labels include all of
/// `labels` (label order does not matter); `None` if there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

/// Sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((n, rest)) => {
            let rest = rest.strip_suffix('}')?;
            let mut map = BTreeMap::new();
            // Label values here never contain `",`; a simple split suffices.
            for pair in rest.split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (n.to_string(), map)
        }
    };
    Some((name, labels, value))
}

/// The version of the policy in force in `app`, if any.
pub fn version(app: &poolgate::App) -> Option<String> {
    app.policy.current().map(|p| p.version.clone())
}

// ---------------------------------------------------------------------------
// The binary

/// Environment variables that would change what the binary reads.
const POOLGATE_ENV: [&str; 11] = [
    "POOLGATE_CONFIG",
    "POOLGATE_LISTEN",
    "POOLGATE_ADMIN_LISTEN",
    "POOLGATE_UPSTREAM_URL",
    "POOLGATE_LOG_FORMAT",
    "POOLGATE_POOL_FILE",
    "POOLGATE_AUTHING_API_BASE",
    "POOLGATE_AUTHING_USER_POOL_ID",
    "POOLGATE_AUTHING_SECRET",
    "RUST_LOG",
    "NO_COLOR",
];

/// A run of the `poolgate` binary whose stdout and stderr are read into
/// memory as they come (so the pipes never fill); killed if dropped running.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `poolgate args...` with a clean environment plus `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolgate"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in POOLGATE_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the poolgate binary starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        Proc {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to this process only, by pid.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    /// Waits for the process to exit (and its output to be read); fails after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "poolgate did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The pipes close with the process; the readers finish right after.
        for r in self.readers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        self.status.unwrap()
    }

    /// Waits for a stderr line containing every one of `needles`; returns it.
    pub async fn wait_for_stderr(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "poolgate exited ({s}) before logging {needles:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "poolgate did not log {needles:?} within {limit:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the "poolgate listening" log line and returns the proxy and
    /// admin addresses it names (so configs can bind port 0).
    pub async fn listening(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self
            .wait_for_stderr(&["poolgate listening"], Duration::from_secs(30))
            .await;
        // JSON (`"proxy_addr":"127.0.0.1:1"`) or text (`proxy_addr=127.0.0.1:1`).
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let addr = |k: &str| -> SocketAddr {
            let found = match &json {
                Some(v) => v[k].as_str().map(str::to_string),
                None => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string)),
            };
            found
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        (addr("proxy_addr"), addr("admin_addr"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Runs `poolgate args...` to completion (bounded); returns exit code, stdout, stderr.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut p = Proc::spawn(args, env);
    let status = p.wait_exit(Duration::from_secs(60)).await;
    (status.code().unwrap_or(-1), p.stdout(), p.stderr())
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
    let dir = tempdir();
    let pool = dir.path().join("pool.json");
    write_pool(&pool, &fixture_pool());
    let mut cfg = file_config(&pool, up.addr, "");
    tweak(&mut cfg);
    cfg.validate().expect("tweaked config is valid");
    let app = poolgate::App::start(cfg).await.expect("poolgate starts");
    (up, app, dir)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
