//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/policy`.
//! Bind it to loopback or a pod-internal address: it is not meant for the internet.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::store::{Counter, Store, Subject};

/// What the admin endpoints read.
pub struct Admin {
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Set when shutdown starts, so load balancers stop sending traffic first.
    pub draining: Arc<AtomicBool>,
    /// The guards' counters, for inspection and unblocking.
    pub store: Arc<Store>,
    /// How account identifiers are normalised (as in requests).
    pub normalize: crate::extract::Normalize,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path();
        if path == "/counters" || path == "/unblock" {
            return Ok(self.counters(&req).await);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
        }
        Ok(match path {
            "/metrics" => {
                let mut r = text(StatusCode::OK, &self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.policy.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no policy in force yet\n")
                }
            }
            "/policy" => match self.policy.current() {
                // The compiled policy has no field for secrets or tokens.
                Some(p) => json(
                    StatusCode::OK,
                    serde_json::to_vec_pretty(&*p).unwrap_or_default(),
                ),
                None => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    br#"{"error":"no policy in force yet"}"#.to_vec(),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        })
    }
}

impl Admin {
    /// `GET /counters?ip=...|account=...` shows, `POST /unblock?...` clears.
    async fn counters(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let unblock = req.uri().path() == "/unblock";
        let want = if unblock { Method::POST } else { Method::GET };
        if req.method() != want {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let query = req.uri().query().unwrap_or("");
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                // A query is not a form: `+` stays `+` (`?account=+8613800138000`
                // names a phone number); a space is `%20`.
                (k == name)
                    .then(|| crate::classify::percent_decode(v).ok())
                    .flatten()
                    .and_then(|b| String::from_utf8(b).ok())
            })
        };
        let policy = self.policy.current();
        let window =
            |f: fn(&crate::policy::CompiledPolicy) -> Option<crate::policy::WindowLimit>| {
                policy
                    .as_ref()
                    .and_then(|p| f(p))
                    .map_or(std::time::Duration::from_secs(1), |l| l.window)
            };
        let store = &self.store;
        let (subject, body) = if let Some(ip) = param("ip") {
            let Ok(ip) = ip.trim().parse::<std::net::IpAddr>() else {
                return text(StatusCode::BAD_REQUEST, "ip is not an IP address\n");
            };
            let who = Subject::Client(store.local.client_key(crate::client_ip::canonical(ip)));
            if unblock {
                for c in [Counter::LoginIp, Counter::RegisterIp] {
                    if let Err(e) = store.clear(c, who).await {
                        return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
                    }
                }
            }
            (
                format!("ip {ip}"),
                serde_json::json!({
                    "ip": ip.to_string(),
                    "login_failures": store.show(Counter::LoginIp, who, window(|p| p.login_fail)).await,
                    "registrations": store.show(Counter::RegisterIp, who, window(|p| p.register_limit)).await,
                }),
            )
        } else if let Some(account) = param("account") {
            let id = crate::extract::identify_in(
                &account,
                crate::classify::IdKind::Auto,
                None,
                self.normalize,
            );
            let who = Subject::Account(&id.value);
            if unblock {
                if let Err(e) = store.clear(Counter::Account, who).await {
                    return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
                }
            }
            (
                format!("account {}", id.value),
                serde_json::json!({
                    "account": id.value,
                    "password_failures": store.show(Counter::Account, who, window(|p| p.password_fail)).await,
                }),
            )
        } else {
            return text(
                StatusCode::BAD_REQUEST,
                "give ?ip=ADDRESS or ?account=IDENTIFIER\n",
            );
        };
        if unblock {
            tracing::info!(%subject, "counters cleared by the admin API");
        }
        json(
            StatusCode::OK,
            serde_json::to_vec_pretty(&body).unwrap_or_default(),
        )
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
