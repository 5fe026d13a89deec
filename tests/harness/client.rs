//! Clients of the gateway: a pooled HTTP/1.1 client and an h2c one
//! ([`send`], [`get`], [`post_json`]), the one-connection-per-request
//! flavour in [`fresh`], the [`Reply`] both read, and the login bodies and
//! answers the guard tests exchange.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::wait::bounded;
use super::LOGIN;

/// How long any one request may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback address nothing listens on (bound, then released).
pub fn unused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

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
    /// The body as JSON (fails with the status and body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
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

    /// The first value of header `name` (if it is UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
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

/// Reads a response to its end (bounded).
pub async fn read_reply<B>(resp: Response<B>) -> Reply
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let body = bounded("reading a response body", REQUEST_TIMEOUT, body.collect())
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
    let resp = bounded(&what, REQUEST_TIMEOUT, client.request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", poolgate::error_chain(&e)));
    read_reply(resp).await
}

/// Reads a raw connection until the peer closes (or `limit`); what arrived.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    out
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

/// Asserts poolgate's own v2 error envelope exactly as docs/failure-behaviour.md's
/// table documents it: `status`, `application/json; charset=utf-8`, and
/// `{"code": status, "message": message, "apiCode": status, "data": null}`.
pub fn assert_envelope_exact(r: &Reply, status: u16, message: &str) {
    assert_eq!(r.status.as_u16(), status, "status; body {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.json(),
        json!({"code": status, "message": message, "apiCode": status, "data": null})
    );
}

/// One connection per request: a connection the gateway closes (after
/// refusing an unread body, say) can never spoil the next request, and the
/// path is sent exactly as written.
pub mod fresh {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{Method, Request};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use serde_json::Value;
    use tokio::net::TcpStream;

    use super::{Reply, REQUEST_TIMEOUT};

    /// Sends one request on a fresh connection to `addr`. `Host` is set to
    /// `addr` unless the request carries one.
    pub async fn send(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> Reply {
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
            Reply {
                status: parts.status,
                version: parts.version,
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
    ) -> Reply {
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
    ) -> Reply {
        send(addr, request(Method::POST, path, headers, body)).await
    }

    /// GETs a path.
    pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(addr, request(Method::GET, path, headers, Bytes::new())).await
    }
}

// ---------------------------------------------------------------------------
// Logins and the answers they get

/// A v2 password login body.
pub fn login_body(account: &str, password: &str) -> Value {
    json!({"account": account, "password": password})
}

/// A wrong-password v2 login from the client named in `X-Forwarded-For`
/// (only believed when the gateway trusts loopback).
pub async fn wrong_login(addr: SocketAddr, account: &str, xff: Option<&str>) -> Reply {
    let h: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    fresh::post_json(addr, LOGIN, &login_body(account, "wrong"), &h).await
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

/// poolgate's own error envelope in the v2 shape.
pub fn v2_err(code: i64, message: &str) -> Value {
    json!({"code": code, "message": message, "apiCode": code, "data": null})
}
