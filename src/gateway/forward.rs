//! Phases "forward", "read outcome" and "settle": the upstream call, the
//! upstream's verdict on each guarded call, and the slots settled by it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use super::answer::UpstreamTime;
use super::guarded::{Call, Hold};
use super::{Answer, Ctx, Gateway, Observe};
use crate::guards::outcome::{self, Outcome, Place, Verdicts};
use crate::proxy::{ForwardError, PooledBody, Prepared, UpstreamBody};
use crate::response::{self, Replay, RespBody};
use crate::routes::RouteKind;
use crate::store::Slot;

impl Gateway {
    /// Forwards an unguarded request, streaming its body.
    ///
    /// Like [`Gateway::forward`], not an `async fn`: the future holds the
    /// upstream call, not the request beside it.
    pub(super) fn forward_stream<'a>(
        &'a self,
        req: Request<Incoming>,
        ctx: &'a Ctx,
    ) -> impl Future<Output = Answer> + Send + 'a {
        let limit = usize::try_from(ctx.rt.max_body_bytes).unwrap_or(usize::MAX);
        let req = req.map(|b| Either::Left(Limited::new(b, limit)));
        self.forward(req, ctx).map(|forwarded| match forwarded {
            Ok(resp) => Answer::new(resp.map(|b| Either::Left(Replay::new(b))), "forwarded"),
            Err(a) => a,
        })
    }

    /// Phase "forward": the upstream call, timed; a failure is answered here.
    ///
    /// The request goes to the upstream's head writer when this is called
    /// (`proxy::Upstream::prepare`), so the future does not hold it.
    pub(super) fn forward<'a>(
        &'a self,
        req: Request<UpstreamBody>,
        ctx: &'a Ctx,
    ) -> impl Future<Output = Result<Response<PooledBody>, Answer>> + Send + 'a {
        self.send(self.prepare(req, ctx), ctx)
    }

    /// The request's head written for the hop, from this request's client.
    fn prepare(&self, req: Request<UpstreamBody>, ctx: &Ctx) -> Prepared {
        let trusted = ctx.rt.client_ip.is_trusted(ctx.peer_ip);
        self.upstream.prepare(req, ctx.peer_ip, trusted)
    }

    /// Sends a prepared request (see [`Gateway::forward`]).
    fn send<'a>(
        &'a self,
        req: Prepared,
        ctx: &'a Ctx,
    ) -> impl Future<Output = Result<Response<PooledBody>, Answer>> + Send + 'a {
        let started = Instant::now();
        // A combinator, not an `async` block: a block would hold the call
        // twice (captured, then awaited).
        #[allow(clippy::result_large_err)] // as in `answer_of`
        self.upstream
            .send(req)
            .map(move |result| self.answer_of(result, started, ctx))
    }

    /// The upstream call's result as the request's: its time observed, a
    /// failure answered.
    // The answer is about as large as the response it stands for, and moved
    // once: boxing it would add an allocation to every failure for nothing.
    #[allow(clippy::result_large_err)]
    fn answer_of(
        &self,
        mut result: Result<Response<PooledBody>, ForwardError>,
        started: Instant,
        ctx: &Ctx,
    ) -> Result<Response<PooledBody>, Answer> {
        let took = started.elapsed();
        self.metrics.observe_upstream(ctx.label, took.as_secs_f64());
        // For the access log only: an extension costs a map allocation.
        if ctx.rt.settings.access_log.enabled() {
            if let Ok(r) = result.as_mut() {
                r.extensions_mut().insert(UpstreamTime(took));
            }
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
                target: "poolgate::gateway",
                client_ip = %ctx.client.ip, method = %ctx.method, path = ctx.uri.path(), route = ctx.label,
                reason = outcome, status = status.as_u16(), error = detail,
                "request failed"
            );
            self.metrics.rejections.with_label_values(&[outcome]).inc();
            Answer::new(
                response::envelope(status, i64::from(status.as_u16()), message),
                outcome,
            )
        })
    }

    /// Forwards a judged guarded request whose calls hold slots, reads each
    /// call's outcome and settles the slots. Once forwarded, the attempt
    /// counts whatever the client does: it runs in the request's own task
    /// and, if the client hangs up first, finishes in a task of its own
    /// ([`FinishOnDrop`]). Such tasks are bounded by the slots they hold (at
    /// most the limits in flight).
    pub(super) async fn forward_and_settle(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        calls: &[Call],
        holds: Vec<Hold>,
        ctx: &Ctx,
        obs: &Observe<'_>,
    ) -> Answer {
        // Inline for the usual one or two calls: no allocation per login.
        let places: Places = calls.iter().map(|c| c.place.clone()).collect();
        let kinds: Kinds = calls.iter().map(|c| c.kind).collect();
        let task = FinishOnDrop::new(settling(
            self.clone(),
            self.prepare(req, ctx),
            ctx.clone(),
            places,
            kinds,
            holds,
        ));
        obs.forwarded();
        task.await
    }

    /// Phase "settle": each held slot commits or is released by its call's
    /// verdict, as the plan said ([`crate::guards::plan::CommitOn`]).
    fn settle(&self, kinds: &[RouteKind], verdicts: &[Outcome], holds: Vec<Hold>) {
        for (kind, v) in kinds.iter().zip(verdicts) {
            if matches!(kind, RouteKind::Login) {
                self.metrics.count_login_outcome(v.as_str());
            }
        }
        Slot::settle_all(holds.into_iter().map(|h| {
            let commit = verdicts.get(h.call).is_some_and(|v| h.on.commits(*v));
            (h.slot, commit)
        }));
    }

    /// Phase "read outcome": reads the upstream's answer (up to the limit) to
    /// learn each call's outcome, and gives the client the same bytes.
    async fn read_outcome(
        &self,
        resp: Response<PooledBody>,
        places: &[Place],
        ctx: &Ctx,
    ) -> (Response<RespBody>, Verdicts) {
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
        // An answer that comes in one piece (the usual, short one) is kept
        // as it came; only one in several pieces is copied together.
        let mut first = Bytes::new();
        let mut buf = bytes::BytesMut::new();
        let mut ended = false;
        while first.len() + buf.len() <= ctx.rt.settings.inspect_response_bytes {
            match body.frame().await {
                // Login answers carry no trailers; any other frame is skipped.
                Some(Ok(frame)) => {
                    let Ok(d) = frame.into_data() else {
                        continue;
                    };
                    if first.is_empty() && buf.is_empty() {
                        first = d;
                    } else {
                        if !first.is_empty() {
                            buf.extend_from_slice(&std::mem::take(&mut first));
                        }
                        buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "poolgate::gateway", error = %e, "upstream answer broke off while being read");
                    return (
                        response::envelope(
                            StatusCode::BAD_GATEWAY,
                            502,
                            "upstream answer broke off",
                        ),
                        smallvec::smallvec![Outcome::Unknown; places.len()],
                    );
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let bytes: Bytes = if buf.is_empty() { first } else { buf.freeze() };
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

/// The places of a request's calls' verdicts in the answer.
pub(super) type Places = smallvec::SmallVec<[Place; 2]>;
/// The kinds of a request's calls.
pub(super) type Kinds = smallvec::SmallVec<[RouteKind; 2]>;

/// What a forwarded guarded request's task does: sends the prepared
/// request, reads each call's outcome from the answer (timed too, so a task
/// a client left behind cannot be held open by an upstream that trickles its
/// answer) and settles the slots.
///
/// It is given the prepared head and body, not the request (~270 bytes, kept
/// for the future's whole life), so the future stays within glibc's
/// per-thread cache limit (a test in `gateway` holds it there).
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(super) fn settling(
    gw: Arc<Gateway>,
    req: Prepared,
    ctx: Ctx,
    places: Places,
    kinds: Kinds,
    holds: Vec<Hold>,
) -> impl Future<Output = Answer> + Send + 'static {
    async move {
        let resp = match gw.send(req, &ctx).await {
            Ok(r) => r,
            Err(a) => return a,
        };
        let limit = gw.upstream.request_timeout();
        let (resp, verdicts) = match crate::coarse_timer::timeout(
            limit,
            gw.read_outcome(resp, &places, &ctx),
        )
        .await
        {
            Ok(read) => read,
            Err(_) => {
                tracing::warn!(target: "poolgate::gateway", path = ctx.uri.path(), "upstream answer not read within upstream.request_timeout");
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
                    smallvec::smallvec![Outcome::Unknown; places.len()],
                )
            }
        };
        gw.settle(&kinds, &verdicts, holds);
        Answer::new(resp, "forwarded")
    }
}

/// A future run in its caller's task which, if the caller drops it before it
/// is done (a client hanging up), is finished in a task of its own rather
/// than cancelled. Spawning only then spares a task per guarded request: its
/// allocation, scheduling and the join handle's wake-up.
pub(super) struct FinishOnDrop<T: Send + 'static> {
    /// `None` once done, or handed to a task.
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Wraps `fut`, to be awaited once.
    pub(super) fn new(fut: impl Future<Output = T> + Send + 'static) -> Self {
        FinishOnDrop {
            fut: Some(Box::pin(fut)),
        }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // Awaited once: after `Ready` nothing polls it again.
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        let out = ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            // Outside a runtime (it is shutting down) the future is dropped:
            // its slots are released, as for any request cut off by a stop.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = fut.await;
                });
            }
        }
    }
}
