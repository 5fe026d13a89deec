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

use crate::classify::{Class, Flavor, Route, RouteKind, RouteTable};
use crate::client_ip::ClientIpResolver;
use crate::extract::{self, ExtractError, Facts, Password};
use crate::guards::outcome::{self, Outcome};
use crate::guards::{self, cors, LoginGate, Rejection};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyStore};
use crate::proxy::{ForwardError, Upstream, UpstreamBody};
use crate::response::{self, Replay, RespBody};
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
    /// Client IP resolution.
    pub client_ip: ClientIpResolver,
    /// Largest request body forwarded.
    pub max_body_bytes: u64,
    /// The route table.
    pub routes: RouteTable,
    /// Counters, captchas, rate limits.
    pub store: Arc<Store>,
    /// Dry-run settings and body limits.
    pub settings: GuardSettings,
}

/// Guard settings from the configuration.
#[derive(Debug, Clone, Default)]
pub struct GuardSettings {
    /// Shadow mode for every guard.
    pub dry_run_all: bool,
    /// Shadow mode for these guards.
    pub dry_run: Vec<String>,
    /// Largest guarded request body read.
    pub inspect_body_bytes: usize,
    /// Largest upstream answer read to judge a login or registration.
    pub inspect_response_bytes: usize,
    /// Time a client has to send a guarded body (`None`: no limit).
    pub body_read_timeout: Option<std::time::Duration>,
}

impl GuardSettings {
    fn shadow(&self, guard: &str) -> bool {
        self.dry_run_all || self.dry_run.iter().any(|g| g == guard)
    }
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

/// What a request is about, for logs.
struct Ctx<'a> {
    client_ip: IpAddr,
    key: u128,
    method: &'a Method,
    path: &'a str,
    flavor: Flavor,
    allow_origin: Option<HeaderValue>,
}

/// The result of the request path: the answer, its route label and outcome label.
type Handled = (Response<RespBody>, &'static str, &'static str);

impl Gateway {
    /// Handles one request end to end.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<RespBody> {
        self.metrics.inflight.inc();
        let _inflight = InflightGuard(&self.metrics.inflight);
        let method = method_label(req.method());
        let (resp, route, outcome) = self.handle_inner(req, peer).await;
        self.metrics
            .requests
            .with_label_values(&[route, method, outcome])
            .inc();
        resp
    }

    async fn handle_inner(&self, req: Request<Incoming>, peer: SocketAddr) -> Handled {
        let peer_ip = crate::client_ip::canonical(peer.ip());
        let client_ip = self.client_ip.resolve(peer_ip, req.headers());
        let policy = match self.policy.current() {
            Some(p) => p,
            None => {
                // Fail closed: without a policy nothing can be judged.
                tracing::warn!(%client_ip, method = %req.method(), path = req.uri().path(), reason = "policy_not_ready", "request rejected");
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
        let key = self.store.local.client_key(client_ip);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let class = self.routes.classify(&method, &path);
        let (route, flavor) = match class {
            Class::Route(r) | Class::WrongMethod(r) => (Some(r), r.flavor),
            _ => (None, Flavor::V2),
        };
        let mut ctx = Ctx {
            client_ip,
            key,
            method: &method,
            path: &path,
            flavor,
            allow_origin: None,
        };
        let label = route.map_or("other", |r| r.kind.as_str());

        // CORS first: preflights never reach a limit or the upstream.
        match cors::check(&policy, req.headers()) {
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
            if len > self.max_body_bytes {
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
        // GraphQL is limited by the operation it turns out to be (see `guarded`).
        if kind != RouteKind::Graphql {
            if let Some(r) = self.rate_limit(kind, &ctx) {
                return (r, label, "rejected");
            }
        }

        let (resp, outcome) = match (class, kind) {
            (Class::Route(_), RouteKind::CaptchaV2 | RouteKind::CaptchaV3) => {
                self.captcha(kind, &ctx).await
            }
            (
                Class::Route(r),
                RouteKind::Login | RouteKind::Register | RouteKind::Password | RouteKind::Graphql,
            ) => self.guarded(req, r, &policy, peer_ip, &ctx).await,
            _ => self.forward_stream(req, peer_ip, label, &ctx).await,
        };
        (self.with_cors(resp, &ctx), label, outcome)
    }

    /// The per-client rate limit of `kind`: the 429 answer when over it.
    fn rate_limit(&self, kind: RouteKind, ctx: &Ctx<'_>) -> Option<Response<RespBody>> {
        let wait = self.store.local.rate.check(kind, ctx.key).err()?;
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
    fn reject(&self, rej: Rejection, ctx: &Ctx<'_>) -> Option<Response<RespBody>> {
        if self.settings.shadow(rej.guard) {
            tracing::info!(
                client_ip = %ctx.client_ip, method = %ctx.method, path = ctx.path,
                guard = rej.guard, reason = rej.reason, code = rej.code,
                "dry run: would reject"
            );
            self.metrics
                .guard_decisions
                .with_label_values(&[rej.guard, "shadow_reject", rej.reason])
                .inc();
            return None;
        }
        Some(self.refuse(rej, ctx))
    }

    /// Logs, counts and answers a rejection (no dry run).
    fn refuse(&self, rej: Rejection, ctx: &Ctx<'_>) -> Response<RespBody> {
        tracing::warn!(
            client_ip = %ctx.client_ip, method = %ctx.method, path = ctx.path,
            guard = rej.guard, reason = rej.reason, code = rej.code, status = rej.status.as_u16(),
            "request rejected"
        );
        self.metrics
            .guard_decisions
            .with_label_values(&[rej.guard, "reject", rej.reason])
            .inc();
        self.metrics
            .rejections
            .with_label_values(&[rej.reason])
            .inc();
        let mut resp = response::error(ctx.flavor, rej.status, rej.code, &rej.message);
        if let Some(wait) = rej.retry_after {
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        self.with_cors(resp, ctx)
    }

    fn with_cors(&self, mut resp: Response<RespBody>, ctx: &Ctx<'_>) -> Response<RespBody> {
        if let Some(o) = &ctx.allow_origin {
            cors::add_allow_origin(o, resp.headers_mut());
        }
        resp
    }

    /// Issues a captcha (v2: SVG image + cookie; v3: JSON with token).
    async fn captcha(&self, kind: RouteKind, ctx: &Ctx<'_>) -> (Response<RespBody>, &'static str) {
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
            let cookie =
                format!("{CAPTCHA_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600");
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
        ctx: &Ctx<'_>,
    ) -> (Response<RespBody>, &'static str) {
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
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
        ctx: &Ctx<'_>,
    ) -> Result<Response<Incoming>, (Response<RespBody>, &'static str)> {
        let started = Instant::now();
        let trusted = self.client_ip.is_trusted(peer);
        let result = self.upstream.forward(req, peer, trusted).await;
        self.metrics
            .upstream_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
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

    /// A login, registration, password or GraphQL request: read, judge, forward, learn.
    async fn guarded(
        &self,
        req: Request<Incoming>,
        route: &Route,
        policy: &CompiledPolicy,
        peer: IpAddr,
        ctx: &Ctx<'_>,
    ) -> (Response<RespBody>, &'static str) {
        let label = route.kind.as_str();
        let (mut parts, body) = req.into_parts();
        let body_kind = extract::body_kind(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            parts
                .headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        );
        let collect = Limited::new(body, self.settings.inspect_body_bytes).collect();
        // A body that trickles in would hold the connection (and its slot)
        // for as long as the client likes: bound the read.
        let read = match self.settings.body_read_timeout {
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
            return (r, "rejected");
        };
        let bytes = match read {
            Ok(b) => b.to_bytes(),
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
                return (self.refuse(rej, ctx), "rejected");
            }
        };
        let judged = body_kind.and_then(|k| {
            if route.kind == RouteKind::Graphql {
                let v = extract::parse_body(k, &bytes)?;
                extract::graphql(&v, self.routes.graphql_ops())
                    .map(|c| c.map(|c| (c.op.kind, c.facts)))
            } else {
                extract::body_facts(k, &bytes, &route.fields).map(|f| Some((route.kind, f)))
            }
        });
        let (kind, facts) = match judged {
            Ok(Some(kf)) => kf,
            Ok(None) => (RouteKind::Other, Facts::default()),
            Err(e) => {
                let (status, reason) = match e {
                    ExtractError::ContentType(_) => (
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_content_type",
                    ),
                    ExtractError::Compressed => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "compressed_body")
                    }
                    ExtractError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
                    ExtractError::Graphql(_) => (StatusCode::BAD_REQUEST, "ambiguous_graphql"),
                };
                if let Some(r) =
                    self.reject(Rejection::http("body", reason, status, e.to_string()), ctx)
                {
                    return (r, "rejected");
                }
                (RouteKind::Other, Facts::default())
            }
        };
        if route.kind == RouteKind::Graphql {
            if let Some(r) = self.rate_limit(kind, ctx) {
                return (r, "rejected");
            }
        }
        if matches!(facts.password, Some(Password::Encrypted)) {
            self.metrics.encrypted_passwords.inc();
        }

        // Judge. Permits are held until the upstream answers.
        let mut ip_permit: Option<Slot> = None;
        let mut account_permit: Option<Slot> = None;
        let mut register_permit: Option<Slot> = None;
        match kind {
            RouteKind::Login => match self.login(policy, &parts.headers, &facts, ctx).await {
                Ok((ip, acct)) => {
                    ip_permit = ip;
                    account_permit = acct;
                }
                Err(r) => return (*r, "rejected"),
            },
            RouteKind::Register => {
                if let Err(rej) = guards::registration(policy, &facts) {
                    if let Some(r) = self.reject(rej, ctx) {
                        return (r, "rejected");
                    }
                }
                if let Some(limit) = policy.register_limit {
                    match self.register_slot(limit, ctx).await {
                        Ok(slot) => register_permit = slot,
                        Err(r) => return (*r, "rejected"),
                    }
                }
            }
            RouteKind::Password => {
                if let Err(rej) =
                    guards::password_strength(&policy.password_rule, facts.password.as_ref())
                {
                    if let Some(r) = self.reject(rej, ctx) {
                        return (r, "rejected");
                    }
                }
            }
            _ => {}
        }

        // Forward the body we read. Outcomes are read from an uncompressed answer.
        let learn = ip_permit.is_some() || account_permit.is_some() || register_permit.is_some();
        if learn {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
        let resp = match self.forward(req, peer, label, ctx).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        if !learn {
            return (resp.map(|b| Either::Left(Replay::new(b))), "forwarded");
        }
        let (resp, verdict) = self.read_outcome(resp).await;
        if kind == RouteKind::Login {
            self.metrics
                .login_outcomes
                .with_label_values(&[verdict.as_str()])
                .inc();
        }
        Slot::settle_all([
            (
                ip_permit,
                matches!(verdict, Outcome::WrongPassword | Outcome::Failed),
            ),
            (account_permit, verdict == Outcome::WrongPassword),
            (register_permit, verdict == Outcome::Success),
        ]);
        (resp, "forwarded")
    }

    /// The `frequentRegisterCheck` slot of a registration.
    async fn register_slot(
        &self,
        limit: crate::policy::WindowLimit,
        ctx: &Ctx<'_>,
    ) -> Result<Option<Slot>, Box<Response<RespBody>>> {
        let ask = Ask {
            counter: Counter::RegisterIp,
            subject: Subject::Client(ctx.key),
            limit,
        };
        let too_frequent = |reason| {
            Rejection::business("register_limit", reason, 2100, "注册过于频繁，请稍候再试")
        };
        let [r] = self
            .store
            .reserve([Some(ask)], false)
            .await
            .map_err(|_| self.refuse_boxed(store_unavailable(), ctx))?;
        let rej = match r {
            Some(Reservation::Held(slot)) => return Ok(Some(slot)),
            None => return Ok(None),
            Some(Reservation::Denied(wait)) => too_frequent("too_frequent").retry_after(wait),
            // Fail closed: a registration we cannot count is refused.
            Some(Reservation::Full) => {
                too_frequent("store_full").retry_after(std::time::Duration::from_secs(10))
            }
        };
        if let Some(r) = self.reject(rej, ctx) {
            return Err(Box::new(r));
        }
        // Dry run: forward, and count it all the same.
        let [r] = self
            .store
            .reserve([Some(ask)], true)
            .await
            .unwrap_or([None]);
        Ok(match r {
            Some(Reservation::Held(slot)) => Some(slot),
            _ => None,
        })
    }

    fn refuse_boxed(&self, rej: Rejection, ctx: &Ctx<'_>) -> Box<Response<RespBody>> {
        Box::new(self.refuse(rej, ctx))
    }

    /// The login checks: per-IP failures, per-account wrong passwords, captcha.
    async fn login(
        &self,
        policy: &CompiledPolicy,
        headers: &http::HeaderMap,
        facts: &Facts,
        ctx: &Ctx<'_>,
    ) -> Result<LoginPermits, Box<Response<RespBody>>> {
        let account = facts
            .identifier
            .as_ref()
            .filter(|_| facts.password.is_some())
            .map(|id| id.value.as_str());
        let ip_ask = policy.login_fail.map(|limit| Ask {
            counter: Counter::LoginIp,
            subject: Subject::Client(ctx.key),
            limit,
        });
        let acct_ask = match (policy.password_fail, account) {
            (Some(limit), Some(a)) => Some(Ask {
                counter: Counter::Account,
                subject: Subject::Account(a),
                limit,
            }),
            _ => None,
        };
        // One call (one round trip to a shared store) for both counters.
        let [ip_r, acct_r] = self
            .store
            .reserve([ip_ask, acct_ask], false)
            .await
            .map_err(|_| self.refuse_boxed(store_unavailable(), ctx))?;
        // A client or account we cannot count (its counter is full) must solve
        // a captcha: fail safe, but never a lockout, whatever the strategy,
        // or anyone able to fill the table could lock every new account.
        let full = std::time::Duration::from_secs(1);
        let acct_full = matches!(acct_r, Some(Reservation::Full));
        let split = |r: Option<Reservation>| match r {
            Some(Reservation::Held(s)) => (Some(s), None),
            Some(Reservation::Denied(wait)) => (None, Some(wait)),
            Some(Reservation::Full) => (None, Some(full)),
            None => (None, None),
        };
        let (mut ip_permit, ip_over) = split(ip_r);
        let (mut acct_permit, acct_over) = split(acct_r);
        let (ip_over, acct_over) = if acct_full {
            (ip_over.or(Some(full)), None)
        } else {
            (ip_over, acct_over)
        };
        let token = facts
            .captcha_token
            .clone()
            .or_else(|| captcha_cookie(headers));
        let sent = facts.captcha_code.is_some();
        let force = match guards::login_gate(policy, ip_over, acct_over, sent) {
            LoginGate::Forward => false,
            LoginGate::VerifyCaptcha => {
                let code = facts.captcha_code.as_deref().unwrap_or("");
                let checked = match token.as_deref() {
                    Some(t) => self
                        .store
                        .verify_captcha(t, ctx.key, code)
                        .await
                        .map_err(|_| self.refuse_boxed(store_unavailable(), ctx))?,
                    None => Err(crate::captcha::Rejected::Unknown),
                };
                match checked {
                    Ok(()) => {
                        let guard = if ip_over.is_some() {
                            "login_fail"
                        } else {
                            "password_fail"
                        };
                        self.metrics
                            .guard_decisions
                            .with_label_values(&[guard, "allow_captcha", "captcha_solved"])
                            .inc();
                        true
                    }
                    Err(why) => {
                        if let Some(r) = self.reject(guards::captcha_failed(why.as_str()), ctx) {
                            return Err(Box::new(r));
                        }
                        true
                    }
                }
            }
            LoginGate::Reject(rej) => {
                if let Some(r) = self.reject(rej, ctx) {
                    return Err(Box::new(r));
                }
                true
            }
        };
        if force {
            // A solved captcha (or a dry run) lets the attempt through; it still counts.
            let ip_again = ip_ask.filter(|_| ip_permit.is_none());
            let acct_again = acct_ask.filter(|_| acct_permit.is_none());
            if ip_again.is_some() || acct_again.is_some() {
                if let Ok([ip_r, acct_r]) = self.store.reserve([ip_again, acct_again], true).await {
                    if let Some(Reservation::Held(s)) = ip_r {
                        ip_permit = Some(s);
                    }
                    if let Some(Reservation::Held(s)) = acct_r {
                        acct_permit = Some(s);
                    }
                }
            }
        }
        Ok((ip_permit, acct_permit))
    }

    /// Reads the upstream's answer (up to the limit) to learn the outcome, and
    /// gives the client the same bytes.
    async fn read_outcome(&self, resp: Response<Incoming>) -> (Response<RespBody>, Outcome) {
        let (parts, mut body) = resp.into_parts();
        let compressed = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if compressed {
            let verdict = outcome::judge(parts.status, None);
            return (
                Response::from_parts(parts, Either::Left(Replay::new(body))),
                verdict,
            );
        }
        let mut buf = bytes::BytesMut::new();
        let mut ended = false;
        while buf.len() <= self.settings.inspect_response_bytes {
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
                        Outcome::Unknown,
                    );
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let bytes = buf.freeze();
        let verdict = outcome::judge(parts.status, ended.then_some(&bytes[..]));
        let body = if ended {
            Either::Right(Full::new(bytes))
        } else {
            // Larger than we read: replay what we read, stream the rest.
            Either::Left(Replay::with_prefix(bytes, Some(body)))
        };
        (Response::from_parts(parts, body), verdict)
    }
}

/// The per-IP and per-account slots a forwarded login holds.
type LoginPermits = (Option<Slot>, Option<Slot>);

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
