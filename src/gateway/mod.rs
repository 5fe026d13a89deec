//! The request path, as a short list of named phases over one per-request
//! context ([`Ctx`]), the way Pingora's `ProxyHttp` names its hooks:
//!
//! 1. **resolve client** — the client IP behind trusted proxies, and the end
//!    user a trusted backend names ([`Gateway::resolve_client`]);
//! 2. **policy** — the policy in force, or 503 ([`Gateway::load_policy`]);
//! 3. **classify** — what the request is: route, label, answer shape;
//! 4. **client check** — a trusted backend's `X-Real-IP` that is no address;
//! 5. **CORS** — `allowedOrigins`; preflights are answered here;
//! 6. **request checks** — path, method, declared body size;
//! 7. **rate limit** — the route class's limit (per call for GraphQL and
//!    trusted backends, once the body is read);
//! 8. then by route: the captcha endpoints (answered here), everything
//!    unguarded (streamed), or a guarded request ([`guarded`]): read the
//!    body → its calls → **guard plan** (rules, counters, captcha, dry run)
//!    → **forward** → **read outcome** → **settle** its slots;
//! 9. **observe** — the request's metrics and access line; it always runs
//!    ([`Observe`]: a request whose client hangs up is still counted out).
//!
//! Each phase returns [`ControlFlow`]: continue, or the answer. Decisions
//! (every rejection, every code) are made by the pure functions of
//! [`crate::guards`]; this module does the I/O around them and carries out
//! their plan.

mod answer;
mod captcha;
mod forward;
mod guarded;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::client_ip::{ClientIpResolver, Forwarding};
use crate::guards::{self, cors, rate_limit};
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyStore};
use crate::proxy::Upstream;
use crate::response::{self, RespBody};
use crate::routes::{Class, Flavor, RouteKind};
use crate::runtime::Runtime;
use crate::store::Store;

pub use captcha::CAPTCHA_COOKIE;

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
        // The request's future is `handle`'s own: boxing a wrapper around it
        // copied the whole (large) future once more per request.
        Box::pin(self.gw.clone().handle(req, self.peer))
    }
}

/// An answer a phase ends the request with, and its outcome label.
pub(crate) struct Answer {
    resp: Response<RespBody>,
    outcome: &'static str,
}

impl Answer {
    fn new(resp: Response<RespBody>, outcome: &'static str) -> Self {
        Answer { resp, outcome }
    }

    fn rejected(resp: Response<RespBody>) -> Self {
        Answer::new(resp, "rejected")
    }
}

/// What a phase returns: carry on with `T`, or answer now.
type Phase<T = ()> = ControlFlow<Answer, T>;

/// Runs a phase: its value, or returns its answer from the enclosing function.
macro_rules! phase {
    ($e:expr) => {
        match $e {
            ControlFlow::Continue(v) => v,
            ControlFlow::Break(answer) => return answer,
        }
    };
}
use phase;

/// [`phase!`] inside a labeled block: a phase's answer breaks out of it.
macro_rules! phase_in {
    ($label:lifetime, $e:expr) => {
        match $e {
            ControlFlow::Continue(v) => v,
            ControlFlow::Break(answer) => break $label answer,
        }
    };
}

/// Who a request (or one call of it) is about: an address and its counter key.
#[derive(Debug, Clone, Copy)]
struct Client {
    ip: IpAddr,
    key: u128,
}

/// The client as first resolved, before the policy and route are known.
struct Resolved {
    client: Client,
    peer_ip: IpAddr,
    /// The request came from `trusted_backends` on behalf of an end user.
    via_backend: bool,
    /// A trusted backend sent an `X-Real-IP` that is not one address.
    bad_real_ip: bool,
    /// The scheme the page used, as far as a trusted proxy tells it.
    proto: Option<cors::Scheme>,
}

/// What a request is about, for its phases, logs and answers.
#[derive(Clone)]
struct Ctx {
    /// The client (the end user, when a trusted backend names one).
    client: Client,
    /// The socket peer (canonical).
    peer_ip: IpAddr,
    /// The request came from `trusted_backends` on behalf of an end user.
    via_backend: bool,
    /// A trusted proxy says the client reached it over TLS.
    tls: bool,
    method: Method,
    /// The request's URI, for its path in logs: a clone shares hyper's
    /// buffer where the path as a `String` was an allocation per request.
    uri: http::Uri,
    flavor: Flavor,
    /// The route label of metrics: the route class, or for GraphQL the kind
    /// of its first guarded call once known.
    label: &'static str,
    /// The `Origin` CORS allowed, echoed on the answer.
    allow_origin: Option<HeaderValue>,
    /// The policy this request is judged by, to its end (across the
    /// upstream call): an `Arc`, since arc-swap's borrowed guards are meant
    /// to be short-lived.
    policy: Arc<CompiledPolicy>,
    /// The run-time settings this request started with.
    rt: Arc<Runtime>,
}

/// The observe phase: counts the request out however it ends, even when the
/// client goes away and its future is dropped (then without a
/// `requests_total` line, as no answer was given; a guarded request already
/// forwarded counts as an abandoned attempt, its slots settled by its task).
struct Observe<'a> {
    metrics: &'a Metrics,
    state: AtomicU8,
}

const OBSERVING: u8 = 0;
const FORWARDED: u8 = 1;
const ANSWERED: u8 = 2;

impl<'a> Observe<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.inflight.inc();
        Observe {
            metrics,
            state: AtomicU8::new(OBSERVING),
        }
    }

    /// A guarded attempt was handed to its settling task.
    fn forwarded(&self) {
        self.state.store(FORWARDED, Ordering::Relaxed);
    }

    /// The request was answered: its metrics and access line.
    fn answered(
        &self,
        resp: &Response<RespBody>,
        method: &'static str,
        route: &str,
        outcome: &str,
        rt: &Runtime,
    ) {
        self.state.store(ANSWERED, Ordering::Relaxed);
        self.metrics.count_request(route, method, outcome);
        if rt.settings.access_log.sampled() {
            answer::access_line(resp, method, route, outcome);
        }
    }
}

impl Drop for Observe<'_> {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
        if self.state.load(Ordering::Relaxed) == FORWARDED {
            self.metrics.abandoned_attempts.inc();
        }
    }
}

impl Gateway {
    /// Handles one request end to end (as the connection's service: it
    /// never fails, every failure is an answer). The phases run in order,
    /// inside one labeled block (`'phases`): a phase that answers breaks
    /// out of it with its answer; `label` is the route label as far as it
    /// is known when the request is answered.
    ///
    /// One `async` block, not an `async fn` nor a block awaiting another
    /// that takes the request: a future keeps what it captures for its
    /// whole life, so the request (264 bytes) was held twice, and every
    /// request's future crossed glibc's per-thread cache limit (1,032
    /// bytes), to the slower allocation path.
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Response<RespBody>, Infallible>> + Send {
        async move {
            let obs = Observe::start(&self.metrics);
            let method = crate::server::method_label(req.method());
            // One snapshot of the run-time settings for the whole request.
            let rt = self.runtime.load_full();
            let mut label = "other";
            let answer = 'phases: {
                let who = self.resolve_client(&req, peer, &rt);
                let policy = phase_in!('phases, self.load_policy(&req, who.client.ip));
                let class = rt.routes.classify(req.method(), req.uri().path());
                let (route, flavor) = match class {
                    Class::Route(r) | Class::WrongMethod(r) => (Some(r), r.flavor),
                    _ => (None, Flavor::V2),
                };
                label = route.map_or("other", |r| r.kind.as_str());
                let mut ctx = Ctx {
                    client: who.client,
                    peer_ip: who.peer_ip,
                    via_backend: who.via_backend,
                    tls: false,
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    flavor,
                    label,
                    allow_origin: None,
                    policy,
                    // `class` borrows the route table from `rt`, so the context holds
                    // a second reference to the same snapshot.
                    rt: rt.clone(),
                };
                if who.bad_real_ip {
                    let rej = guards::body::bad_client_ip(
                        "X-Real-IP from a trusted backend is not one IP address",
                    );
                    phase_in!('phases, self.enforce(rej, &ctx));
                }
                phase_in!('phases, self.cors(&req, who.proto, &mut ctx));
                phase_in!('phases, self.request_checks(&req, &class, &ctx));
                let kind = match class {
                    Class::Route(r) => r.kind,
                    _ => RouteKind::Other,
                };
                if rate_limit::up_front(kind, ctx.via_backend) {
                    phase_in!('phases, self.rate_limit(kind, ctx.client, &ctx).await);
                }
                let answer = match class {
                    Class::Route(_)
                        if matches!(kind, RouteKind::CaptchaV2 | RouteKind::CaptchaV3) =>
                    {
                        self.captcha(kind, &ctx).await
                    }
                    Class::Route(r) if rate_limit::guarded(kind) => {
                        // Boxed: the guarded path's future is the largest (~1
                        // KB); inline, every request's future would be that
                        // much larger, and is copied whole as it is built and
                        // boxed.
                        let (parts, body) = req.into_parts();
                        let answer = Box::pin(self.guarded(parts, body, r, &mut ctx, &obs)).await;
                        label = ctx.label;
                        answer
                    }
                    // Boxed too: inline, the upstream call's future (~570
                    // bytes) would take every request's over glibc's
                    // per-thread cache limit; two small allocations from
                    // the cache cost less than one large one.
                    _ => Box::pin(self.forward_stream(req, &ctx)).await,
                };
                Answer::new(self.with_cors(answer.resp, &ctx), answer.outcome)
            };
            obs.answered(&answer.resp, method, label, answer.outcome, &rt);
            Ok(answer.resp)
        }
    }

    /// Phase "resolve client": the client IP (the socket peer, or what
    /// trusted proxies say), and the end user a trusted backend names in
    /// `X-Real-IP` (and in the body's `clientIp`, read with the body).
    fn resolve_client(&self, req: &Request<Incoming>, peer: SocketAddr, rt: &Runtime) -> Resolved {
        let peer_ip = crate::client_ip::canonical(peer.ip());
        // The forwarding headers, read only from a trusted proxy, in one
        // pass for the client IP and the CORS scheme.
        let trusted = rt.client_ip.is_trusted(peer_ip);
        let fwd = if trusted {
            Forwarding::scan(req.headers())
        } else {
            Forwarding::none(req.headers())
        };
        let mut ip = rt.client_ip.resolve_forwarded(peer_ip, &fwd);
        let proto = if trusted {
            cors::forwarded_proto_of(fwd.last_proto(), fwd.last_forwarded())
        } else {
            None
        };
        let via_backend = rt.client_ip.is_backend(ip);
        let mut bad_real_ip = false;
        if via_backend {
            match ClientIpResolver::real_ip_header(req.headers()) {
                Some(Ok(real)) => ip = real,
                Some(Err(())) => bad_real_ip = true,
                None => {}
            }
        }
        Resolved {
            client: Client {
                ip,
                key: rt.client_ip.key(ip),
            },
            peer_ip,
            via_backend,
            bad_real_ip,
            proto,
        }
    }

    /// Phase "policy": the policy in force; without one nothing can be
    /// judged, so the request is refused (fail closed).
    fn load_policy(
        &self,
        req: &Request<Incoming>,
        client_ip: IpAddr,
    ) -> Phase<Arc<CompiledPolicy>> {
        if let Some(p) = self.policy.current() {
            return ControlFlow::Continue(p);
        }
        let (status, code, message, reason) = guards::store::NO_POLICY;
        if self.rejection_log.allow("policy") {
            tracing::warn!(%client_ip, method = %req.method(), path = req.uri().path(), reason, "request rejected");
        }
        self.metrics.rejections.with_label_values(&[reason]).inc();
        ControlFlow::Break(Answer::rejected(response::envelope(status, code, message)))
    }

    /// Phase "CORS": a refused `Origin` is answered (unless `cors` is in dry
    /// run, then nothing is echoed); an allowed one is echoed on the answer;
    /// a preflight is answered here and never reaches a limit or the upstream.
    /// `proto` is the scheme a trusted proxy reported ([`Gateway::resolve_client`]).
    fn cors(&self, req: &Request<Incoming>, proto: Option<cors::Scheme>, ctx: &mut Ctx) -> Phase {
        ctx.tls = proto == Some(cors::Scheme::Https);
        match cors::check(&ctx.policy, req.headers(), proto) {
            cors::Cors::Denied(rej) => self.enforce(rej, ctx)?,
            cors::Cors::Allowed(origin) => ctx.allow_origin = Some(origin),
            cors::Cors::NoOrigin => {}
        }
        if cors::is_preflight(req.method(), req.headers()) {
            let mut resp = response::json(StatusCode::NO_CONTENT, &serde_json::Value::Null);
            *resp.body_mut() = Either::Right(Full::new(Bytes::new()));
            resp.headers_mut().remove(header::CONTENT_TYPE);
            if let Some(o) = &ctx.allow_origin {
                cors::preflight_headers(o, req.headers(), resp.headers_mut());
            }
            return ControlFlow::Break(Answer::new(resp, "preflight"));
        }
        ControlFlow::Continue(())
    }

    /// Phase "request checks": the path and method of a guarded route, and
    /// the declared body size (never shadowed: the upstream would get a body
    /// over the limit).
    fn request_checks(&self, req: &Request<Incoming>, class: &Class<'_>, ctx: &Ctx) -> Phase {
        if let Some(rej) = guards::route::check(class) {
            self.enforce(rej, ctx)?;
        }
        if let Err(rej) = guards::body::declared_length(content_length(req), ctx.rt.max_body_bytes)
        {
            return ControlFlow::Break(Answer::rejected(self.refuse(rej, ctx, ctx.client.ip)));
        }
        ControlFlow::Continue(())
    }

    /// Phase "rate limit": the per-client limit of `kind` for `client`.
    async fn rate_limit(&self, kind: RouteKind, client: Client, ctx: &Ctx) -> Phase {
        match self.store.check_rate(kind, client.key).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(wait) => self.enforce_as(rate_limit::limited(kind, wait), ctx, client.ip),
        }
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::guarded::Hold;
    use super::*;
    use crate::proxy::Prepared;
    use crate::routes::Route;

    /// glibc's largest request served from its per-thread cache (tcache): a
    /// larger one takes malloc's slower path, and its free the slower path
    /// too. Each request allocates these futures once.
    const TCACHE_MAX: usize = 1032;

    #[test]
    fn a_requests_futures_fit_the_allocators_per_thread_cache() {
        fn three<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        fn six<A, B, C, D, E, F, R>(_: fn(A, B, C, D, E, F) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        // Any lifetime will do for a size: 'static names one.
        let guarded: fn(
            &'static Arc<Gateway>,
            http::request::Parts,
            Incoming,
            &'static Route,
            &'static mut Ctx,
            &'static Observe<'static>,
        ) -> _ = Gateway::guarded;
        let handle: fn(Arc<Gateway>, Request<Incoming>, SocketAddr) -> _ = Gateway::handle;
        let settling: fn(
            Arc<Gateway>,
            Prepared,
            Ctx,
            forward::Places,
            forward::Kinds,
            Vec<Hold>,
        ) -> _ = forward::settling;
        for (name, size) in [
            ("handle", three(handle)),
            ("guarded", six(guarded)),
            ("settling", six(settling)),
        ] {
            assert!(
                size <= TCACHE_MAX,
                "{name}'s future is {size} bytes, over {TCACHE_MAX}"
            );
        }
    }
}
