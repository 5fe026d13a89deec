//! The request path: classify, (guards), forward, account.
//!
//! `Gateway` holds what every request shares; `ConnService` is the per
//! connection `tower::Service` hyper drives, carrying the socket peer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;

use crate::classify::{classify_path, RouteClass};
use crate::client_ip::ClientIpResolver;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::proxy::{ForwardError, Upstream};
use crate::response::{envelope, RespBody};

/// Shared state of the request path.
pub struct Gateway {
    /// The upstream client.
    pub upstream: Upstream,
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// Client IP resolution.
    pub client_ip: ClientIpResolver,
    /// Largest request body forwarded.
    pub max_body_bytes: u64,
}

/// The per-connection service.
#[derive(Clone)]
pub struct ConnService {
    gw: Arc<Gateway>,
    peer: SocketAddr,
}

impl ConnService {
    /// A service for one client connection from `peer`.
    pub fn new(gw: Arc<Gateway>, peer: SocketAddr) -> Self {
        ConnService { gw, peer }
    }
}

impl tower::Service<Request<Incoming>> for ConnService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let gw = self.gw.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(gw.handle(req, peer).await) })
    }
}

/// Decrements the in-flight gauge however the request ends (even if the
/// client goes away and the future is dropped).
struct InflightGuard<'a>(&'a prometheus::IntGauge);
impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Method label with bounded cardinality.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl Gateway {
    /// Handles one request end to end.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<RespBody> {
        self.metrics.inflight.inc();
        let _inflight = InflightGuard(&self.metrics.inflight);
        let route = classify_path(req.uri().path());
        let method = method_label(req.method());
        let (resp, outcome) = self.handle_inner(req, peer, route).await;
        self.metrics
            .requests
            .with_label_values(&[route.as_str(), method, outcome])
            .inc();
        resp
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        route: RouteClass,
    ) -> (Response<RespBody>, &'static str) {
        let peer_ip = crate::client_ip::canonical(peer.ip());
        if !self.policy.is_ready() {
            // Fail closed: without a policy nothing can be judged.
            return self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "poolgate has no policy in force yet",
                "policy_not_ready",
                &req,
                peer_ip,
            );
        }
        if let Some(len) = content_length(&req) {
            if len > self.max_body_bytes {
                return self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    413,
                    "request body too large",
                    "body_too_large",
                    &req,
                    peer_ip,
                );
            }
        }
        let client_ip = self.client_ip.resolve(peer_ip, req.headers());
        let trusted = self.client_ip.is_trusted(peer_ip);
        let (parts, body) = req.into_parts();
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let up_req = Request::from_parts(parts, Either::Left(Limited::new(body, limit)));
        let started = Instant::now();
        let method = up_req.method().clone();
        let path = up_req.uri().path().to_string();
        let result = self.upstream.forward(up_req, peer_ip, trusted).await;
        self.metrics
            .upstream_duration
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(resp) => (resp.map(Either::Left), "forwarded"),
            Err(e) => {
                let (status, code, message, outcome) = match &e {
                    ForwardError::Timeout => (
                        StatusCode::GATEWAY_TIMEOUT,
                        504,
                        "upstream timed out",
                        "upstream_timeout",
                    ),
                    ForwardError::Unavailable(_) => (
                        StatusCode::BAD_GATEWAY,
                        502,
                        "upstream unavailable",
                        "upstream_error",
                    ),
                    ForwardError::BodyTooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        413,
                        "request body too large",
                        "body_too_large",
                    ),
                    ForwardError::ClientBody(_) => (
                        StatusCode::BAD_REQUEST,
                        400,
                        "request body could not be read",
                        "client_body_error",
                    ),
                };
                let detail = match &e {
                    ForwardError::Unavailable(d) | ForwardError::ClientBody(d) => d.as_str(),
                    _ => "",
                };
                tracing::warn!(
                    %client_ip, %method, %path, route = route.as_str(),
                    reason = outcome, status = status.as_u16(), error = detail,
                    "request failed"
                );
                self.metrics.rejections.with_label_values(&[outcome]).inc();
                (envelope(status, code, message), outcome)
            }
        }
    }

    fn reject(
        &self,
        status: StatusCode,
        code: i64,
        message: &str,
        reason: &'static str,
        req: &Request<Incoming>,
        peer: std::net::IpAddr,
    ) -> (Response<RespBody>, &'static str) {
        tracing::warn!(
            client_ip = %self.client_ip.resolve(peer, req.headers()),
            method = %req.method(), path = req.uri().path(),
            reason, status = status.as_u16(), "request rejected"
        );
        self.metrics.rejections.with_label_values(&[reason]).inc();
        (envelope(status, code, message), "rejected")
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}
