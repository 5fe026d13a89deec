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

/// What the admin endpoints read.
pub struct Admin {
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Set when shutdown starts, so load balancers stop sending traffic first.
    pub draining: Arc<AtomicBool>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
        }
        Ok(match req.uri().path() {
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
