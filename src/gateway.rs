//! The request path: classify, judge, forward, learn the outcome.
//!
//! `Gateway` holds what every request shares; `ConnService` is the
//! per-connection `tower::Service` hyper drives, carrying the socket peer.
//! Decisions are made by the pure functions of [`crate::guards`]; this module
//! does the I/O around them: reading bodies, consulting counters, forwarding.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use crate::client_ip::ClientIpResolver;
use crate::extract::{self, ExtractError, Facts, Password};
use crate::guards::outcome::{self, Outcome, Place};
use crate::guards::plan::{CommitOn, Role};
use crate::guards::{self, cors, Rejection};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyStore};
use crate::proxy::{ForwardError, Upstream, UpstreamBody};
use crate::response::{self, Replay, RespBody};
use crate::routes::{Class, Flavor, Route, RouteKind};
use crate::runtime::Runtime;
use crate::store::{Ask, Counter, Reservation, Slot, Store, Subject, Unavailable};

/// Cookie that binds a v2 captcha to the browser that fetched it.
pub const CAPTCHA_COOKIE: &str = "poolgate_captcha";

/// Shared state of the request path.
pub struct Gateway {
    /// The upstream client.
    pub upstream: Upstream,
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Metrics,
    /// What a reload can change in place: loaded once per request.
    pub runtime: arc_swap::ArcSwap<Runtime>,
    /// Counters, captchas, rate limits.
    pub store: Arc<Store>,
    /// The budget on rejection log lines.
    pub rejection_log: Arc<crate::rejection_log::RejectionLog>,
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

/// What a request is about, for logs and answers.
#[derive(Clone)]
struct Ctx {
    /// The client (the end user, when a trusted backend names one).
    client_ip: IpAddr,
    /// Its counter key.
    key: u128,
    /// The request came from `trusted_backends` on behalf of an end user.
    via_backend: bool,
    /// A trusted proxy says the client reached it over TLS.
    tls: bool,
    method: Method,
    path: String,
    flavor: Flavor,
    allow_origin: Option<HeaderValue>,
    /// The run-time settings this request started with.
    rt: Arc<Runtime>,
}

impl Ctx {
    /// The same request, about another end user (a call of a batch sent by
    /// a trusted backend on behalf of several).
    fn for_client(&self, (client_ip, key): (IpAddr, u128)) -> Ctx {
        Ctx {
            client_ip,
            key,
            ..self.clone()
        }
    }
}

/// The result of the request path: the answer, its route label and outcome label.
type Handled = (Response<RespBody>, &'static str, &'static str);

impl Gateway {
    /// Handles one request end to end.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<RespBody> {
        self.metrics.inflight.inc();
        let _inflight = InflightGuard(&self.metrics.inflight);
        let method = crate::server::method_label(req.method());
        // One snapshot of the run-time settings for the whole request.
        let rt = self.runtime.load_full();
        let access_log = rt.settings.access_log;
        let (resp, route, outcome) = self.handle_inner(req, peer, rt).await;
        self.metrics
            .requests
            .with_label_values(&[route, method, outcome])
            .inc();
        if access_log.sampled() {
            access_line(&resp, method, route, outcome);
        }
        resp
    }

    async fn handle_inner(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        rt: Arc<Runtime>,
    ) -> Handled {
        let peer_ip = crate::client_ip::canonical(peer.ip());
        let mut client_ip = rt.client_ip.resolve(peer_ip, req.headers());
        // A trusted backend calling on behalf of its end users names them in
        // `X-Real-IP` (and in the body's `clientIp`, read with the body).
        let via_backend = rt.client_ip.is_backend(client_ip);
        let mut bad_real_ip = false;
        if via_backend {
            match ClientIpResolver::real_ip_header(req.headers()) {
                Some(Ok(ip)) => client_ip = ip,
                Some(Err(())) => bad_real_ip = true,
                None => {}
            }
        }
        // The request keeps this policy to its end (across the upstream call),
        // so it holds an `Arc`: arc-swap's borrowed guards are meant to be
        // short-lived, and a proxy's many in-flight requests would exhaust
        // their fast path anyway.
        let policy = match self.policy.current() {
            Some(p) => p,
            None => {
                // Fail closed: without a policy nothing can be judged.
                if self.rejection_log.allow("policy") {
                    tracing::warn!(%client_ip, method = %req.method(), path = req.uri().path(), reason = "policy_not_ready", "request rejected");
                }
                self.metrics
                    .rejections
                    .with_label_values(&["policy_not_ready"])
                    .inc();
                let r = response::envelope(
                    StatusCode::SERVICE_UNAVAILABLE,
                    503,
                    "poolgate has no policy in force yet",
                );
                return (r, "other", "rejected");
            }
        };
        let key = rt.client_ip.key(client_ip);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let class = rt.routes.classify(&method, &path);
        let (route, flavor) = match class {
            Class::Route(r) | Class::WrongMethod(r) => (Some(r), r.flavor),
            _ => (None, Flavor::V2),
        };
        let mut ctx = Ctx {
            client_ip,
            key,
            via_backend,
            tls: false,
            method,
            path,
            flavor,
            allow_origin: None,
            // `class` borrows the route table from `rt`, so the context holds
            // a second reference to the same snapshot.
            rt: rt.clone(),
        };
        let method = ctx.method.clone();
        let label = route.map_or("other", |r| r.kind.as_str());
        if bad_real_ip {
            let rej = bad_client_ip("X-Real-IP from a trusted backend is not one IP address");
            if let Some(r) = self.reject(rej, &ctx) {
                return (r, label, "rejected");
            }
        }

        // CORS first: preflights never reach a limit or the upstream.
        // The scheme the page used, as far as a trusted proxy tells it.
        let proto = ctx
            .rt
            .client_ip
            .is_trusted(peer_ip)
            .then(|| cors::forwarded_proto(req.headers()))
            .flatten();
        ctx.tls = proto.as_deref() == Some("https");
        match cors::check(&policy, req.headers(), proto.as_deref()) {
            cors::Cors::Denied(rej) => {
                if let Some(r) = self.reject(rej, &ctx) {
                    return (r, label, "rejected");
                }
                // Dry run: carry on as if allowed, but echo nothing.
            }
            cors::Cors::Allowed(origin) => ctx.allow_origin = Some(origin),
            cors::Cors::NoOrigin => {}
        }
        if cors::is_preflight(&method, req.headers()) {
            let mut resp = response::json(StatusCode::NO_CONTENT, &serde_json::Value::Null);
            *resp.body_mut() = Either::Right(Full::new(Bytes::new()));
            resp.headers_mut().remove(header::CONTENT_TYPE);
            if let Some(o) = &ctx.allow_origin {
                cors::preflight_headers(o, req.headers(), resp.headers_mut());
            }
            return (resp, label, "preflight");
        }

        match class {
            Class::Ambiguous(why) => {
                let rej = Rejection::http(
                    "body",
                    "ambiguous_path",
                    StatusCode::BAD_REQUEST,
                    format!("request path is ambiguous: {why}"),
                );
                if let Some(r) = self.reject(rej, &ctx) {
                    return (r, label, "rejected");
                }
            }
            Class::WrongMethod(r) => {
                let rej = Rejection::http(
                    "body",
                    "method_not_allowed",
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} only accepts {}", r.path, r.method),
                );
                if let Some(resp) = self.reject(rej, &ctx) {
                    return (resp, label, "rejected");
                }
            }
            _ => {}
        }
        if let Some(len) = content_length(&req) {
            if len > ctx.rt.max_body_bytes {
                let rej = Rejection::http(
                    "body",
                    "body_too_large",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                );
                // Not shadowable: the upstream would get a body over the limit.
                return (self.refuse(rej, &ctx), label, "rejected");
            }
        }

        let kind = match class {
            Class::Route(r) => r.kind,
            _ => RouteKind::Other,
        };
        // GraphQL is limited by the calls it turns out to make, and a trusted
        // backend's guarded request by the end users it names (see `guarded`).
        let guarded = matches!(
            kind,
            RouteKind::Login
                | RouteKind::Register
                | RouteKind::Password
                | RouteKind::SendCode
                | RouteKind::Verify
                | RouteKind::Graphql
        );
        if kind != RouteKind::Graphql && !(guarded && via_backend) {
            if let Some(r) = self.rate_limit(kind, &ctx).await {
                return (r, label, "rejected");
            }
        }

        let (resp, outcome, label) = match (class, kind) {
            (Class::Route(_), RouteKind::CaptchaV2 | RouteKind::CaptchaV3) => {
                let (r, o) = self.captcha(kind, &ctx).await;
                (r, o, label)
            }
            (Class::Route(r), _) if guarded => self.guarded(req, r, &policy, peer_ip, &ctx).await,
            _ => {
                let (r, o) = self.forward_stream(req, peer_ip, label, &ctx).await;
                (r, o, label)
            }
        };
        (self.with_cors(resp, &ctx), label, outcome)
    }

    /// The per-client rate limit of `kind`: the 429 answer when over it.
    async fn rate_limit(&self, kind: RouteKind, ctx: &Ctx) -> Option<Response<RespBody>> {
        let wait = self.store.check_rate(kind, ctx.key).await.err()?;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let rej = Rejection::http(
            "rate_limit",
            kind.as_str(),
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
        )
        .retry_after(std::time::Duration::from_secs(secs.max(1)));
        self.reject(rej, ctx)
    }

    /// Logs and counts a rejection; returns the answer, or `None` in dry run.
    fn reject(&self, rej: Rejection, ctx: &Ctx) -> Option<Response<RespBody>> {
        if ctx.rt.settings.shadow(rej.guard) {
            self.shadow(&rej, ctx);
            return None;
        }
        Some(self.refuse(rej, ctx))
    }

    /// Logs and counts a rejection its guard's dry run lets through.
    fn shadow(&self, rej: &Rejection, ctx: &Ctx) {
        if self.rejection_log.allow(rej.guard) {
            tracing::info!(
                client_ip = %ctx.client_ip, method = %ctx.method, path = %ctx.path,
                guard = rej.guard, reason = rej.reason, code = rej.code,
                "dry run: would reject"
            );
        }
        self.metrics
            .guard_decisions
            .with_label_values(&[rej.guard, "shadow_reject", rej.reason])
            .inc();
    }

    /// Logs, counts and answers a rejection (no dry run).
    fn refuse(&self, rej: Rejection, ctx: &Ctx) -> Response<RespBody> {
        if self.rejection_log.allow(rej.guard) {
            tracing::warn!(
                client_ip = %ctx.client_ip, method = %ctx.method, path = %ctx.path,
                guard = rej.guard, reason = rej.reason, code = rej.code, status = rej.status.as_u16(),
                "request rejected"
            );
        }
        self.metrics
            .guard_decisions
            .with_label_values(&[rej.guard, "reject", rej.reason])
            .inc();
        self.metrics
            .rejections
            .with_label_values(&[rej.reason])
            .inc();
        let mut resp = response::error(ctx.flavor, rej.status, rej.code, &rej.message);
        resp.extensions_mut().insert(Decided {
            guard: rej.guard,
            reason: rej.reason,
            code: rej.code,
        });
        if let Some(wait) = rej.retry_after {
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        self.with_cors(resp, ctx)
    }

    fn with_cors(&self, mut resp: Response<RespBody>, ctx: &Ctx) -> Response<RespBody> {
        if let Some(o) = &ctx.allow_origin {
            cors::add_allow_origin(o, resp.headers_mut());
        }
        if ctx.rt.settings.access_log.enabled() {
            resp.extensions_mut().insert(Seen {
                client_ip: ctx.client_ip,
                path: ctx.path.clone(),
            });
        }
        resp
    }

    /// Issues a captcha (v2: SVG image + cookie; v3: JSON with token).
    async fn captcha(&self, kind: RouteKind, ctx: &Ctx) -> (Response<RespBody>, &'static str) {
        if let Some(p) = &ctx.rt.captcha_provider {
            // The login page renders the provider's widget; there is no image.
            let msg = format!(
                "this pool's captcha is a {} challenge: no image is served here",
                p.provider().as_str()
            );
            let mut r = response::error(ctx.flavor, StatusCode::NOT_FOUND, 404, &msg);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return (r, "rejected");
        }
        let issued = match self.store.issue_captcha(ctx.key).await {
            Ok(i) => i,
            Err(Unavailable) => return (self.refuse(store_unavailable(), ctx), "rejected"),
        };
        let Some((token, svg)) = issued else {
            let rej = Rejection::http(
                "captcha",
                "captcha_store_full",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many captchas outstanding, try again later",
            )
            .retry_after(std::time::Duration::from_secs(5));
            return (self.refuse(rej, ctx), "rejected");
        };
        self.metrics.captchas_issued.inc();
        let resp = if kind == RouteKind::CaptchaV3 {
            response::json(
                StatusCode::OK,
                &serde_json::json!({"statusCode": 200, "message": "", "apiCode": 200,
                    "data": {"captchaCodeSvg": svg, "captchaToken": token}}),
            )
        } else {
            let mut r = Response::new(Either::Right(Full::new(Bytes::from(svg))));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let cookie = captcha_set_cookie(
                &token,
                ctx.rt.settings.captcha_ttl,
                ctx.rt.settings.captcha_cookie_samesite,
                ctx.tls,
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            r
        };
        (resp, "captcha_issued")
    }

    /// Forwards an unguarded request, streaming its body.
    async fn forward_stream(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        label: &'static str,
        ctx: &Ctx,
    ) -> (Response<RespBody>, &'static str) {
        let limit = usize::try_from(ctx.rt.max_body_bytes).unwrap_or(usize::MAX);
        let req = req.map(|b| Either::Left(Limited::new(b, limit)));
        match self.forward(req, peer, label, ctx).await {
            Ok(resp) => (resp.map(|b| Either::Left(Replay::new(b))), "forwarded"),
            Err(r) => r,
        }
    }

    async fn forward(
        &self,
        req: Request<UpstreamBody>,
        peer: IpAddr,
        label: &'static str,
        ctx: &Ctx,
    ) -> Result<Response<Incoming>, (Response<RespBody>, &'static str)> {
        let started = Instant::now();
        let trusted = ctx.rt.client_ip.is_trusted(peer);
        let mut result = self.upstream.forward(req, peer, trusted).await;
        let took = started.elapsed();
        self.metrics
            .upstream_duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        if let Ok(r) = result.as_mut() {
            r.extensions_mut().insert(UpstreamTime(took));
        }
        result.map_err(|e| {
            let (status, message, outcome) = match &e {
                ForwardError::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out",
                    "upstream_timeout",
                ),
                ForwardError::Unavailable(_) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream unavailable",
                    "upstream_error",
                ),
                ForwardError::BodyTooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                    "body_too_large",
                ),
                ForwardError::ClientBody(_) => (
                    StatusCode::BAD_REQUEST,
                    "request body could not be read",
                    "client_body_error",
                ),
            };
            let detail = match &e {
                ForwardError::Unavailable(d) | ForwardError::ClientBody(d) => d.as_str(),
                _ => "",
            };
            tracing::warn!(
                client_ip = %ctx.client_ip, method = %ctx.method, path = ctx.path, route = label,
                reason = outcome, status = status.as_u16(), error = detail,
                "request failed"
            );
            self.metrics.rejections.with_label_values(&[outcome]).inc();
            (
                response::envelope(status, i64::from(status.as_u16()), message),
                outcome,
            )
        })
    }

    /// A guarded request (login, registration, password, code, GraphQL):
    /// read its body, judge every call it makes, forward, learn each
    /// call's outcome. Also returns the request's route label: what its
    /// (first) call is, so a GraphQL login counts as `login`.
    async fn guarded(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: &Route,
        policy: &CompiledPolicy,
        peer: IpAddr,
        ctx: &Ctx,
    ) -> (Response<RespBody>, &'static str, &'static str) {
        let label = route.kind.as_str();
        let (parts, body) = req.into_parts();
        let bytes = match self.read_guarded_body(body, ctx).await {
            Ok(b) => b,
            Err(r) => return (r, "rejected", label),
        };
        let calls = match self.calls(route, &parts.headers, &bytes, ctx) {
            Ok(c) => c,
            Err(r) => return (*r, "rejected", label),
        };
        let label = calls.first().map_or(label, |c| c.kind.as_str());
        let (resp, outcome) = self
            .judge_and_forward(parts, bytes, calls, route, policy, peer, label, ctx)
            .await;
        (resp, outcome, label)
    }

    /// Judges the calls of a guarded request, forwards it, and settles what
    /// its calls hold from the answer.
    #[allow(clippy::too_many_arguments)]
    async fn judge_and_forward(
        self: &Arc<Self>,
        mut parts: http::request::Parts,
        bytes: Bytes,
        calls: Vec<Call>,
        route: &Route,
        policy: &CompiledPolicy,
        peer: IpAddr,
        label: &'static str,
        ctx: &Ctx,
    ) -> (Response<RespBody>, &'static str) {
        // Rate limits the request could not pass before its calls were known
        // (GraphQL, and end users named by a trusted backend): one token per
        // call, so a batch pays for every attempt in it.
        if route.kind == RouteKind::Graphql || ctx.via_backend {
            if calls.is_empty() {
                if let Some(r) = self.rate_limit(RouteKind::Other, ctx).await {
                    return (r, "rejected");
                }
            }
            for call in &calls {
                let c = ctx.for_client(call.client);
                if let Some(r) = self.rate_limit(call.kind, &c).await {
                    return (r, "rejected");
                }
            }
        }
        let holds = match self.judge(policy, &calls, &parts.headers, ctx).await {
            Ok(h) => h,
            Err(r) => return (*r, "rejected"),
        };

        // Forward the body we read. Outcomes are read from an uncompressed answer.
        if holds.is_empty() {
            let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
            return match self.forward(req, peer, label, ctx).await {
                Ok(resp) => (resp.map(|b| Either::Left(Replay::new(b))), "forwarded"),
                Err(r) => r,
            };
        }
        parts.headers.remove(header::ACCEPT_ENCODING);
        let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
        // Once forwarded, the attempt counts whatever the client does: the
        // upstream's answer is read and the slots settled in a task of their
        // own, which a client hanging up does not cancel. Such tasks are
        // bounded by the slots they hold (at most the limits in flight).
        let gw = self.clone();
        let task_ctx = ctx.clone();
        let places: Vec<Place> = calls.iter().map(|c| c.place.clone()).collect();
        let kinds: Vec<RouteKind> = calls.iter().map(|c| c.kind).collect();
        let task = tokio::spawn(async move {
            let resp = match gw.forward(req, peer, label, &task_ctx).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            // The answer's body is timed too, so a task a client left behind
            // cannot be held open by an upstream that trickles its answer.
            let limit = gw.upstream.request_timeout();
            let (resp, verdicts) = match tokio::time::timeout(
                limit,
                gw.read_outcome(resp, &places, &task_ctx),
            )
            .await
            {
                Ok(read) => read,
                Err(_) => {
                    tracing::warn!(path = %task_ctx.path, "upstream answer not read within upstream.request_timeout");
                    gw.metrics
                        .rejections
                        .with_label_values(&["upstream_timeout"])
                        .inc();
                    (
                        response::envelope(
                            StatusCode::GATEWAY_TIMEOUT,
                            504,
                            "upstream answer too slow",
                        ),
                        vec![Outcome::Unknown; places.len()],
                    )
                }
            };
            for (kind, v) in kinds.iter().zip(&verdicts) {
                if matches!(kind, RouteKind::Login) {
                    gw.metrics
                        .login_outcomes
                        .with_label_values(&[v.as_str()])
                        .inc();
                }
            }
            Slot::settle_all(holds.into_iter().map(|h| {
                let commit = verdicts.get(h.call).is_some_and(|v| h.on.commits(*v));
                (h.slot, commit)
            }));
            (resp, "forwarded")
        });
        let mut watch = Abandoned {
            done: false,
            counter: &self.metrics.abandoned_attempts,
        };
        let out = match task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the forwarding task failed");
                (
                    response::envelope(StatusCode::BAD_GATEWAY, 502, "upstream request failed"),
                    "upstream_error",
                )
            }
        };
        watch.done = true;
        out
    }

    /// Reads a guarded request's whole body (up to `inspect_body_bytes`, within
    /// `body_read_timeout`).
    async fn read_guarded_body(
        &self,
        body: Incoming,
        ctx: &Ctx,
    ) -> Result<Bytes, Response<RespBody>> {
        let collect = Limited::new(body, ctx.rt.settings.inspect_body_bytes).collect();
        // A body that trickles in would hold the connection (and its slot)
        // for as long as the client likes: bound the read.
        let read = match ctx.rt.settings.body_read_timeout {
            Some(t) => tokio::time::timeout(t, collect).await,
            None => Ok(collect.await),
        };
        let Ok(read) = read else {
            let rej = Rejection::http(
                "body",
                "body_timeout",
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            );
            let mut r = self.refuse(rej, ctx);
            // The rest of the body may still come: it must not be read as a request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        };
        match read {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) => {
                let rej = if e.is::<http_body_util::LengthLimitError>() {
                    Rejection::http(
                        "body",
                        "body_too_large",
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large for a guarded route",
                    )
                } else {
                    Rejection::http(
                        "body",
                        "client_body_error",
                        StatusCode::BAD_REQUEST,
                        "request body could not be read",
                    )
                };
                // The body is gone: even in dry run there is nothing left to forward.
                Err(self.refuse(rej, ctx))
            }
        }
    }

    /// The guarded calls a request makes: one for a REST route, one per
    /// guarded field for GraphQL (none: forwarded as "other"). A body that
    /// cannot be judged is refused (in dry run: forwarded unjudged).
    fn calls(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
        bytes: &[u8],
        ctx: &Ctx,
    ) -> Result<Vec<Call>, Box<Response<RespBody>>> {
        let norm = ctx.rt.settings.normalize;
        let kind = extract::body_kind(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        );
        let with_token = |mut facts: Facts, fields: &crate::routes::Fields| {
            if facts.identifier.is_none() {
                if let Some(h) = &fields.token_header {
                    facts.identifier = extract::token_identifier(headers, h);
                }
            }
            facts
        };
        let read: Result<Vec<(RouteKind, Facts, Place)>, ExtractError> = kind.and_then(|k| {
            if route.kind == RouteKind::Graphql {
                let found = extract::graphql::calls(k, bytes, ctx.rt.routes.graphql_ops())?;
                // Errors without a `path` belong to every field of their
                // request: a field alone in its request owns them.
                let mut per_request: std::collections::HashMap<Option<usize>, usize> =
                    std::collections::HashMap::new();
                for c in &found {
                    *per_request.entry(c.batch_index).or_default() += 1;
                }
                let alone = |i: Option<usize>| per_request.get(&i) == Some(&1);
                found
                    .iter()
                    .map(|c| {
                        let facts = extract::facts(&c.args, &c.op.fields, norm)?;
                        Ok((
                            c.op.kind,
                            with_token(facts, &c.op.fields),
                            Place::Graphql {
                                batch: c.batch_index,
                                key: c.response_key.clone(),
                                alone: alone(c.batch_index),
                            },
                        ))
                    })
                    .collect()
            } else {
                let facts = extract::body_facts(k, bytes, &route.fields, norm)?;
                Ok(vec![(
                    route.kind,
                    with_token(facts, &route.fields),
                    Place::Whole,
                )])
            }
        });
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                let (status, reason) = e.status_reason();
                let rej = Rejection::http("body", reason, status, e.to_string());
                return match self.reject(rej, ctx) {
                    Some(r) => Err(Box::new(r)),
                    // Dry run: forwarded unjudged.
                    None => Ok(Vec::new()),
                };
            }
        };
        let mut calls = Vec::with_capacity(read.len());
        for (kind, facts, place) in read {
            let client = match self.end_user(&facts, ctx) {
                Ok(c) => c,
                Err(rej) => match self.reject(rej, ctx) {
                    Some(r) => return Err(Box::new(r)),
                    None => (ctx.client_ip, ctx.key),
                },
            };
            calls.push(Call {
                kind,
                facts,
                place,
                client,
            });
        }
        Ok(calls)
    }

    /// The end user of a call: the body's `clientIp` when a trusted backend
    /// sent it, else the request's client.
    fn end_user(&self, facts: &Facts, ctx: &Ctx) -> Result<(IpAddr, u128), Rejection> {
        match (&facts.client_ip, ctx.via_backend) {
            (Some(raw), true) => match crate::client_ip::parse_client_ip(raw) {
                Some(ip) => Ok((ip, ctx.rt.client_ip.key(ip))),
                None => Err(bad_client_ip("the body's clientIp is not an IP address")),
            },
            _ => Ok((ctx.client_ip, ctx.key)),
        }
    }

    /// Judges every call of a request against the policy and the counters:
    /// the slots to hold while it is forwarded, or the answer refusing it.
    /// Every guard decides on its own; the request is refused by the first
    /// violation whose guard is not in dry run, and each shadowed violation
    /// is logged and counted under its own guard.
    async fn judge(
        &self,
        policy: &CompiledPolicy,
        calls: &[Call],
        headers: &http::HeaderMap,
        ctx: &Ctx,
    ) -> Result<Vec<Hold>, Box<Response<RespBody>>> {
        let mut violations: Vec<(usize, Rejection)> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let rules = match call.kind {
                RouteKind::Register => guards::registration_violations(policy, &call.facts),
                RouteKind::Password => {
                    guards::password_strength(&policy.password_rule, call.facts.password.as_ref())
                        .err()
                        .into_iter()
                        .collect()
                }
                _ => Vec::new(),
            };
            if matches!(call.kind, RouteKind::Register | RouteKind::Password)
                && matches!(call.facts.password, Some(Password::Encrypted))
                && !matches!(policy.password_rule, crate::policy::PasswordRule::None)
            {
                self.metrics.encrypted_passwords.inc();
            }
            violations.extend(rules.into_iter().map(|r| (i, r)));
        }

        // Every counter of every call, in one round trip to a shared store.
        let planned: Vec<Planned> = calls
            .iter()
            .enumerate()
            .flat_map(|(i, c)| plan(i, c, policy, &ctx.rt.settings.send_code))
            .collect();
        let asks: Vec<Ask> = planned.iter().map(|p| p.ask(calls)).collect();
        let answers = self
            .store
            .reserve(&asks, false)
            .await
            .map_err(|_| Box::new(self.refuse(store_unavailable(), ctx)))?;

        let mut holds = Vec::new();
        let mut denied: Vec<usize> = Vec::new();
        let mut over = vec![guards::Over::default(); calls.len()];
        for (n, (p, answer)) in planned.iter().zip(answers).enumerate() {
            let wait = match answer {
                Reservation::Held(slot) => {
                    holds.push(Hold {
                        slot,
                        call: p.call,
                        on: p.on,
                    });
                    continue;
                }
                Reservation::Denied(wait) => Some(wait),
                Reservation::Full => None,
            };
            denied.push(n);
            let full = std::time::Duration::from_secs(1);
            let o = &mut over[p.call];
            match p.role {
                Role::FailClient => o.client = Some(wait.unwrap_or(full)),
                Role::FailAccount => {
                    o.account = Some(wait.unwrap_or(full));
                    o.account_full = wait.is_none();
                }
                // Fail closed: a registration we cannot count is refused.
                Role::Register => violations.push((
                    p.call,
                    match wait {
                        Some(w) => guards::register_too_frequent("too_frequent", w),
                        None => guards::register_too_frequent(
                            "store_full",
                            std::time::Duration::from_secs(10),
                        ),
                    },
                )),
                Role::SendClient | Role::SendRecipient => violations.push((
                    p.call,
                    guards::send_code_limited(
                        if p.role == Role::SendClient {
                            "client_limit"
                        } else {
                            "recipient_limit"
                        },
                        wait.unwrap_or(std::time::Duration::from_secs(10)),
                    ),
                )),
            }
        }

        // Calls over a failure limit: a captcha sent with them may let them through.
        let cookie = captcha_cookie(headers);
        for (i, call) in calls.iter().enumerate() {
            let o = &over[i];
            if !o.any() {
                continue;
            }
            let captcha =
                if guards::captcha_can_help(policy, o) && call.facts.captcha_code.is_some() {
                    let code = call.facts.captcha_code.as_deref().unwrap_or("");
                    let token = call.facts.captcha_token.as_deref().or(cookie.as_deref());
                    let checked = match (&ctx.rt.captcha_provider, token) {
                        // A third-party challenge: the answer field carries
                        // the provider's response token; fail closed when
                        // the provider cannot say yes.
                        (Some(p), _) => {
                            if p.is_solved(code, Some(call.client.0)).await {
                                Ok(())
                            } else {
                                Err(crate::captcha::Rejected::Wrong)
                            }
                        }
                        (None, Some(t)) => self
                            .store
                            .verify_captcha(t, call.client.1, code)
                            .await
                            .map_err(|_| Box::new(self.refuse(store_unavailable(), ctx)))?,
                        (None, None) => Err(crate::captcha::Rejected::Unknown),
                    };
                    match checked {
                        Ok(()) => {
                            let guard = if o.client.is_some() {
                                "login_fail"
                            } else {
                                "password_fail"
                            };
                            self.metrics
                                .guard_decisions
                                .with_label_values(&[guard, "allow_captcha", "captcha_solved"])
                                .inc();
                            guards::CaptchaCheck::Solved
                        }
                        Err(why) => guards::CaptchaCheck::Failed(why.as_str()),
                    }
                } else {
                    guards::CaptchaCheck::NotSent
                };
            violations.extend(
                guards::failure_violations(policy, o, captcha)
                    .into_iter()
                    .map(|r| (i, r)),
            );
        }

        // Every shadowed violation is logged and counted under its own guard;
        // the first one not in dry run refuses the request.
        violations.sort_by_key(|(i, _)| *i);
        let mut refusal = None;
        for (i, rej) in violations {
            let c = ctx.for_client(calls[i].client);
            if ctx.rt.settings.shadow(rej.guard) {
                self.shadow(&rej, &c);
            } else if refusal.is_none() {
                refusal = Some((rej, c));
            }
        }
        if let Some((rej, c)) = refusal {
            return Err(Box::new(self.refuse(rej, &c)));
        }

        // What passed over a limit (a solved captcha, a dry run) still counts.
        if !denied.is_empty() {
            let again: Vec<Ask> = denied.iter().map(|&n| asks[n]).collect();
            if let Ok(answers) = self.store.reserve(&again, true).await {
                for (&n, answer) in denied.iter().zip(answers) {
                    if let Reservation::Held(slot) = answer {
                        holds.push(Hold {
                            slot,
                            call: planned[n].call,
                            on: planned[n].on,
                        });
                    }
                }
            }
        }
        Ok(holds)
    }

    /// Reads the upstream's answer (up to the limit) to learn each call's
    /// outcome, and gives the client the same bytes.
    async fn read_outcome(
        &self,
        resp: Response<Incoming>,
        places: &[Place],
        ctx: &Ctx,
    ) -> (Response<RespBody>, Vec<Outcome>) {
        let (parts, mut body) = resp.into_parts();
        let compressed = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if compressed {
            let verdicts = outcome::judge_calls(parts.status, None, places);
            return (
                Response::from_parts(parts, Either::Left(Replay::new(body))),
                verdicts,
            );
        }
        let mut buf = bytes::BytesMut::new();
        let mut ended = false;
        while buf.len() <= ctx.rt.settings.inspect_response_bytes {
            match body.frame().await {
                // Login answers carry no trailers; any other frame is skipped.
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream answer broke off while being read");
                    return (
                        response::envelope(
                            StatusCode::BAD_GATEWAY,
                            502,
                            "upstream answer broke off",
                        ),
                        vec![Outcome::Unknown; places.len()],
                    );
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let bytes = buf.freeze();
        let verdicts = outcome::judge_calls(parts.status, ended.then_some(&bytes[..]), places);
        let body = if ended {
            Either::Right(Full::new(bytes))
        } else {
            // Larger than we read: replay what we read, stream the rest.
            Either::Left(Replay::with_prefix(bytes, Some(body)))
        };
        (Response::from_parts(parts, body), verdicts)
    }
}

/// One guarded operation of a request: the request itself (REST), or one
/// guarded field of a GraphQL request or batch.
struct Call {
    kind: RouteKind,
    facts: Facts,
    /// Where its verdict is in the answer.
    place: Place,
    /// Its end user: address and counter key.
    client: (IpAddr, u128),
}

/// One counter a call asks for, with the call it belongs to.
struct Planned {
    call: usize,
    role: Role,
    on: CommitOn,
    limit: crate::policy::WindowLimit,
}

impl Planned {
    fn ask(&self, calls: &[Call]) -> Ask {
        let call = &calls[self.call];
        let account = || {
            Subject::Account(
                call.facts
                    .identifier
                    .as_ref()
                    .map_or_else(|| crate::store::AccountKey::of(""), |id| id.account_key()),
            )
        };
        let (counter, subject) = match self.role {
            Role::FailClient => (Counter::LoginIp, Subject::Client(call.client.1)),
            Role::FailAccount => (Counter::Account, account()),
            Role::Register => (Counter::RegisterIp, Subject::Client(call.client.1)),
            Role::SendClient => (Counter::SendClient, Subject::Client(call.client.1)),
            Role::SendRecipient => (Counter::SendRecipient, account()),
        };
        Ask {
            counter,
            subject,
            limit: self.limit,
        }
    }
}

/// The counters call `i` asks for.
fn plan(
    i: usize,
    call: &Call,
    policy: &CompiledPolicy,
    send: &crate::config::SendCodeConfig,
) -> Vec<Planned> {
    guards::plan::counters(call.kind, &call.facts, policy, send)
        .into_iter()
        .map(|c| Planned {
            call: i,
            role: c.role,
            on: c.on,
            limit: c.limit,
        })
        .collect()
}

/// A slot a forwarded call holds until its outcome is known.
struct Hold {
    slot: Slot,
    call: usize,
    on: CommitOn,
}

/// Counts a guarded request whose client went away after it was forwarded.
struct Abandoned<'a> {
    done: bool,
    counter: &'a prometheus::IntCounter,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.counter.inc();
        }
    }
}

fn bad_client_ip(message: &'static str) -> Rejection {
    Rejection::http("body", "bad_client_ip", StatusCode::BAD_REQUEST, message)
}

/// Who asked for what, stamped on the answer for the access log.
#[derive(Debug, Clone)]
struct Seen {
    client_ip: IpAddr,
    path: String,
}

/// The rejection that answered a request, for the access log.
#[derive(Debug, Clone, Copy)]
struct Decided {
    guard: &'static str,
    reason: &'static str,
    code: i64,
}

/// How long the upstream took to send its answer's head.
#[derive(Debug, Clone, Copy)]
struct UpstreamTime(std::time::Duration);

/// One access log line (target `poolgate::access`, INFO), in the log's format.
fn access_line(resp: &Response<RespBody>, method: &str, route: &str, outcome: &str) {
    let seen = resp.extensions().get::<Seen>();
    let decided = resp.extensions().get::<Decided>();
    let upstream_ms = resp
        .extensions()
        .get::<UpstreamTime>()
        .map(|t| t.0.as_secs_f64() * 1000.0);
    tracing::info!(
        target: "poolgate::access",
        method,
        path = seen.map_or("", |s| s.path.as_str()),
        route,
        outcome,
        status = resp.status().as_u16(),
        client_ip = %seen.map_or_else(|| "-".to_string(), |s| s.client_ip.to_string()),
        guard = decided.map_or("", |d| d.guard),
        reason = decided.map_or("", |d| d.reason),
        code = decided.map(|d| d.code),
        upstream_ms,
        "access"
    );
}

/// The answer when the shared store is down and its fallback is `closed`.
fn store_unavailable() -> Rejection {
    Rejection::http(
        "store",
        "store_unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        "the counter store is unavailable, try again later",
    )
    .retry_after(std::time::Duration::from_secs(5))
}

/// The v2 captcha cookie: `HttpOnly`, living as long as the captcha,
/// `Secure` when the client came over TLS (as a trusted proxy reports) or
/// when `SameSite=None` (browsers drop a cross-site cookie that is not).
fn captcha_set_cookie(
    token: &str,
    ttl: std::time::Duration,
    same_site: crate::config::SameSite,
    tls: bool,
) -> String {
    let secure = tls || same_site == crate::config::SameSite::None;
    format!(
        "{CAPTCHA_COOKIE}={token}; Path=/; HttpOnly; SameSite={}; Max-Age={}{}",
        same_site.as_str(),
        ttl.as_secs().max(1),
        if secure { "; Secure" } else { "" }
    )
}

fn captcha_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == CAPTCHA_COOKIE).then(|| v.trim().to_string())
        })
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}
