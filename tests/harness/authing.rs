//! [`FakeAuthing`]: Authing's management API as poolgate calls it (GraphQL
//! `accessToken` and `whitelist` on `/graphql/v2`, `GET /api/v2/userpools/detail`),
//! checking the bearer token and the pool header, issuing tokens with a
//! chosen lifetime, and switchable at runtime to 500, garbage, hang or 401.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::fixture::FIXTURE_POOL_ID;
use super::upstream::serve_on;

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
        let (addr, accept) = serve_on(addr, move |req| authing_answer(req, st.clone())).await;
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
