//! Test support: a fake login upstream and a fake Authing management API on
//! 127.0.0.1, and helpers to start poolgate in-process.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the fake upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }
}

/// How the fake upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Like Authing (see `answer`).
    Normal,
    /// Sleep this many ms, then answer normally.
    Delay(u64),
    /// Close the connection without answering.
    Reset,
}

/// A fake login service that records what it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub mode: Arc<Mutex<Mode>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (s, m) = (seen.clone(), mode.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, m) = (s.clone(), m.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, m) = (s.clone(), m.clone());
                        async move { upstream_answer(req, s, m).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, mode }
    }

    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.starts_with(path))
            .count()
    }

    pub fn total(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

async fn upstream_answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<Mode>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // A body that breaks off is not a complete request: do not record it.
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let m = *mode.lock().unwrap();
    match m {
        Mode::Reset => return Err(std::io::Error::other("reset")),
        Mode::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Mode::Normal => {}
    }
    seen.lock().unwrap().push(Seen {
        method,
        uri: uri.clone(),
        headers,
        body: body.clone(),
    });
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let pw = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    let out = if uri.starts_with("/api/v2/login/") {
        if pw("/password") == "right" {
            serde_json::json!({"code": 200, "message": "ok", "data": {}})
        } else {
            serde_json::json!({"code": 2333, "message": "账号或密码错误", "data": null})
        }
    } else if uri.starts_with("/api/v3/signin") {
        if pw("/passwordPayload/password") == "right" {
            serde_json::json!({"statusCode": 200, "message": "", "data": {}})
        } else {
            serde_json::json!({"statusCode": 400, "apiCode": 2333, "message": "x"})
        }
    } else if uri.starts_with("/graphql/v2") {
        if pw("/variables/input/password") == "right" {
            serde_json::json!({"data": {"loginByEmail": {"id": "1"}}})
        } else {
            serde_json::json!({"data": null, "errors": [{"message": {"code": 2333, "message": "x"}}]})
        }
    } else if uri.starts_with("/echo") {
        // Echo the body as is, with a few response headers to check fidelity.
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = StatusCode::CREATED;
        r.headers_mut().append("x-up", "1".parse().unwrap());
        r.headers_mut().append("x-up", "2".parse().unwrap());
        return Ok(r);
    } else {
        serde_json::json!({"code": 200, "message": "ok", "data": {}})
    };
    Ok(Response::new(Full::new(Bytes::from(out.to_string()))))
}

/// How the fake Authing API answers the pool-detail call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthingMode {
    Normal,
    Status500,
    Garbage,
    Hang,
    /// Answer 401 to the next detail call, then normal.
    Revoke,
}

/// A fake Authing management API.
pub struct Authing {
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<AuthingMode>>,
    pub pool: Arc<Mutex<serde_json::Value>>,
    pub tokens_issued: Arc<AtomicUsize>,
    pub token_ttl_secs: Arc<AtomicU64>,
    pub detail_calls: Arc<AtomicUsize>,
}

pub const SECRET: &str = "s3cret-pool-secret-value";

impl Authing {
    pub async fn start(pool: serde_json::Value) -> Authing {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = Authing {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(AuthingMode::Normal)),
            pool: Arc::new(Mutex::new(pool)),
            tokens_issued: Arc::new(AtomicUsize::new(0)),
            token_ttl_secs: Arc::new(AtomicU64::new(7200)),
            detail_calls: Arc::new(AtomicUsize::new(0)),
        };
        let state = (
            a.mode.clone(),
            a.pool.clone(),
            a.tokens_issued.clone(),
            a.token_ttl_secs.clone(),
            a.detail_calls.clone(),
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
                        async move { Ok::<_, Infallible>(authing_answer(req, state).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        a
    }

    pub fn set_mode(&self, m: AuthingMode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn token(n: usize) -> String {
        format!("mgmt-token-{n}")
    }
}

type AuthingState = (
    Arc<Mutex<AuthingMode>>,
    Arc<Mutex<serde_json::Value>>,
    Arc<AtomicUsize>,
    Arc<AtomicU64>,
    Arc<AtomicUsize>,
);

async fn authing_answer(
    req: Request<Incoming>,
    (mode, pool, issued, ttl, calls): AuthingState,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let pool_header = req.headers().get("x-authing-userpool-id").cloned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |status: u16, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let current = Authing::token(issued.load(Ordering::SeqCst));
    if path == "/graphql/v2" {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let q = v["query"].as_str().unwrap_or("");
        if q.contains("accessToken") {
            if v["variables"]["secret"] != SECRET || v["variables"]["userPoolId"] != "pool1" {
                return json(
                    200,
                    serde_json::json!({"errors": [{"message": {"code": 2020, "message": "bad secret"}}], "data": null}),
                );
            }
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let exp = now + ttl.load(Ordering::SeqCst);
            return json(
                200,
                serde_json::json!({"data": {"accessToken": {"accessToken": Authing::token(n), "exp": exp, "iat": now}}}),
            );
        }
        if q.contains("whitelist") {
            if auth != format!("Bearer {current}") {
                return json(401, serde_json::json!({}));
            }
            let list = match v["variables"]["type"].as_str() {
                Some("EMAIL") => serde_json::json!([{"value": "ok@x.com", "createdAt": "t"}]),
                _ => serde_json::json!([]),
            };
            return json(200, serde_json::json!({"data": {"whitelist": list}}));
        }
        return json(400, serde_json::json!({}));
    }
    if path == "/api/v2/userpools/detail" {
        calls.fetch_add(1, Ordering::SeqCst);
        let m = *mode.lock().unwrap();
        match m {
            AuthingMode::Status500 => {
                return json(500, serde_json::json!({"code": 500, "message": "boom"}))
            }
            AuthingMode::Garbage => return json(200, serde_json::json!("<html>")),
            AuthingMode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            AuthingMode::Revoke => {
                *mode.lock().unwrap() = AuthingMode::Normal;
                return json(401, serde_json::json!({"code": 2020, "message": "revoked"}));
            }
            AuthingMode::Normal => {}
        }
        if auth != format!("Bearer {current}") || pool_header.is_none() {
            return json(
                401,
                serde_json::json!({"code": 2020, "message": "尚未登录"}),
            );
        }
        let p = pool.lock().unwrap().clone();
        return json(
            200,
            serde_json::json!({"code": 200, "message": "ok", "data": p}),
        );
    }
    json(404, serde_json::json!({}))
}

/// The shared fixture pool (the `data` of Authing's response), with `secret` and `jwtSecret`.
pub fn fixture_pool() -> serde_json::Value {
    let text = std::fs::read_to_string("tests/fixtures/pool-detail-response.json").unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["data"].clone()
}

/// A config for a file source in `dir`, proxying to `upstream`.
pub fn file_config(
    dir: &std::path::Path,
    pool: &serde_json::Value,
    upstream: SocketAddr,
    extra: &str,
) -> poolgate::Config {
    let pool_path = dir.join("pool.json");
    std::fs::write(&pool_path, serde_json::to_vec(pool).unwrap()).unwrap();
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        shutdown_grace = "2s"
        {extra_server}
        [upstream]
        url = "http://{upstream}"
        request_timeout = "2s"
        [policy]
        source = "file"
        refresh_interval = "60s"
        [policy.file]
        path = "{path}"
        poll_interval = "100ms"
        {extra}
        "#,
        extra_server = "",
        path = pool_path.display(),
    );
    let cfg = poolgate::Config::parse(&text).expect("test config parses");
    cfg.validate().expect("test config is valid");
    cfg
}

/// A pooled HTTP/1 client for tests.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; returns status, headers and body.
pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(15), client().request(req))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// POSTs JSON to the gateway.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let mut b =
        Request::post(format!("http://{addr}{path}")).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (s, h, body) = send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await;
    (
        s,
        h,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// GETs a path; returns status and body text.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let (s, _, b) = send(
        Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// Polls `f` until it is true or `secs` pass.
pub async fn eventually<F: FnMut() -> bool>(secs: u64, mut f: F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Reads a counter or gauge value from Prometheus text.
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
