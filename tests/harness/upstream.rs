//! [`FakeUpstream`]: the login service behind the gateway.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
    /// The path, without the query, as it was spelled.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

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
    /// Judge every login as a wrong password, whatever the password.
    always_wrong: AtomicBool,
    /// (method, target) of each request, when its head arrived.
    arrived: Mutex<Vec<(String, String)>>,
    /// Each request, once its body ended or broke off.
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

/// A fake login service on 127.0.0.1.
///
/// In [`UpMode::Normal`] it answers like Authing (see [`authing_like`]):
/// a login with password `right` succeeds, any other fails with 2333, in
/// the route's shape (v2, v3, GraphQL, form bodies too); registrations
/// succeed. Besides:
/// - paths with an `echo` segment (`/echo/...`): status 201, the request body echoed back,
///   the request's `content-type` (or `application/octet-stream`), plus
///   `x-up: 1`, `x-up: 2`, two `set-cookie` lines, `x-echo-method`, and the
///   hop-by-hop `keep-alive` and `connection: x-up-hop` with `x-up-hop`;
/// - any other route: `{"code":200,"message":"ok","data":{"target": ...}}`.
///
/// A request header `x-reply-status: N` sets the status of the answer.
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
            always_wrong: AtomicBool::new(false),
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

    /// Delays every answer by `ms` (after recording the request); 0 undoes it.
    pub fn set_delay_ms(&self, ms: u64) {
        self.set_mode(match ms {
            0 => UpMode::Normal,
            ms => UpMode::Delay(Duration::from_millis(ms)),
        });
    }

    /// Answers every login as a wrong password, whatever the password.
    pub fn set_always_wrong(&self, on: bool) {
        self.state.always_wrong.store(on, Ordering::SeqCst);
    }

    /// Requests whose body arrived whole, to exactly this path (query ignored, spelling kept).
    pub fn count(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.complete && r.path() == path)
            .count()
    }

    /// Requests whose body arrived whole, to this route in canonical form (any spelling).
    pub fn count_route(&self, canonical: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.complete && canon(r.path()) == canonical)
            .count()
    }

    /// Requests whose body arrived whole, in all.
    pub fn total(&self) -> usize {
        self.requests().iter().filter(|r| r.complete).count()
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
    let always_wrong = state.always_wrong.load(Ordering::SeqCst);
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
        let v = authing_like(path, content_type.as_ref(), &body, always_wrong)
            .unwrap_or_else(|| json!({"code": 200, "message": "ok", "data": {"target": target}}));
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

/// The answer Authing's login service gives on `path` (matched the way
/// Authing routes it, in poolgate's canonical form, so every spelling of a
/// login is answered as one), or `None` for a route it does not judge:
/// * `/api/v2/login/*`: password `right` -> `{"code":200,...}`, else 2333.
/// * `/api/v3/signin`: `passwordPayload.password` `right` -> statusCode 200, else 400/2333.
/// * `/graphql/v2`: a `login*` mutation with input password `right` -> data, else
///   `errors[0].message.code` 2333; a `register*` mutation -> data; batches (a JSON
///   array) -> an array answered element by element; a login's `data` key is the
///   field name the query uses (`loginBySubAccount`...).
/// * registrations (`/api/v2/register*`, `/api/v3/signup`) -> success.
/// * any other route whose body holds a string starting with `wrong` (a wrong
///   password, code or token) -> 2333 in the route's shape (v3 for `/api/v3/`).
///
/// Form bodies (`application/x-www-form-urlencoded`) are read like JSON.
fn authing_like(
    path: &str,
    content_type: Option<&http::HeaderValue>,
    body: &[u8],
    wrong_always: bool,
) -> Option<Value> {
    let is_form = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let v: Value = if is_form {
        form_to_json(body)
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let right = |pointer: &str| !wrong_always && v.pointer(pointer) == Some(&json!("right"));
    let c = canon(path);
    Some(if c.starts_with("/api/v2/login/") {
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
    } else if c.contains("register") {
        json!({"code": 200, "message": "ok", "data": {}})
    } else if has_wrong_secret(&v) {
        if c.starts_with("/api/v3/") {
            json!({"statusCode": 400, "apiCode": 2333, "message": "账号或密码错误", "data": null})
        } else {
            json!({"code": 2333, "message": "账号或密码错误", "data": null})
        }
    } else {
        return None;
    })
}

/// `path` in poolgate's canonical form (itself if it has none).
fn canon(path: &str) -> String {
    poolgate::routes::canonical_path(path)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| path.to_string())
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

/// Serves `answer` for every request on a fresh 127.0.0.1 port (HTTP/1 and
/// h2c): the accept loop of a small fake service (a siteverify endpoint,
/// the Authing API). Abort the handle to stop accepting.
pub async fn serve<F, Fut>(answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_on("127.0.0.1:0".parse().unwrap(), answer).await
}

/// [`serve`] on a given address (to come up where poolgate already looks).
pub async fn serve_on<F, Fut>(addr: SocketAddr, answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.expect("bind a fake service");
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = answer.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accept)
}

/// What a [`raw_upstream`] does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Reads the next request.
    KeepAlive,
    /// Closes the connection.
    Close,
    /// Holds the connection open and reads nothing more.
    Hold,
}

/// A raw HTTP/1 upstream for what [`FakeUpstream`] cannot send: it answers
/// each bodiless request with the exact bytes `answer(method, path)` gives,
/// then does what it says. Also the number of connections it accepted.
pub async fn raw_upstream(
    answer: impl Fn(&str, &str) -> (Vec<u8>, Then) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let mut line = head.split(' ');
                        let method = line.next().unwrap_or("");
                        let path = line.next().unwrap_or("");
                        let (bytes, then) = answer(method, path);
                        if s.write_all(&bytes).await.is_err() || then == Then::Close {
                            return;
                        }
                        if then == Then::Hold {
                            std::future::pending::<()>().await;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}
