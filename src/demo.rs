//! A tiny Authing-like login service for the quick start (`--demo-upstream`):
//! enough to `curl` through poolgate and watch it work. Not for production.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

/// The password the demo accepts for every account.
pub const DEMO_PASSWORD: &str = "demo-password";

/// Answers one request like Authing would.
pub async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let input: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |k: &str| input.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let out = match path.as_str() {
        "/api/v2/login/account" => {
            if field("password") == DEMO_PASSWORD {
                serde_json::json!({"code": 200, "message": "登录成功",
                    "data": {"username": field("account"), "token": "demo-token"}})
            } else {
                serde_json::json!({"code": 2333, "message": "账号或密码错误", "data": null})
            }
        }
        "/api/v3/signin" => {
            let pw = input
                .pointer("/passwordPayload/password")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if pw == DEMO_PASSWORD {
                serde_json::json!({"statusCode": 200, "message": "", "data": {"access_token": "demo-token"}})
            } else {
                serde_json::json!({"statusCode": 400, "apiCode": 2333, "message": "账号或密码错误"})
            }
        }
        p if p.starts_with("/api/v2/register") || p == "/api/v3/signup" => {
            serde_json::json!({"code": 200, "message": "注册成功", "data": {"id": "demo-user"}})
        }
        _ => serde_json::json!({"code": 200, "message": "demo upstream",
            "data": {"method": method, "path": path}}),
    };
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(resp)
}
