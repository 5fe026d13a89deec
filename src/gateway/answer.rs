//! Carrying out a rejection: dry run or refusal, its log line (within the
//! budget), its metrics, and the answer in the client's API shape; and what
//! every answer carries for the access log.

use std::net::IpAddr;
use std::ops::ControlFlow;

use http::header::{self, HeaderValue};
use http::Response;

use super::{Answer, Ctx, Gateway, Phase};
use crate::guards::{cors, Guard, Rejection};
use crate::response::{self, RespBody};

impl Gateway {
    /// Enforces a rejection about the request's client: the answer, or (its
    /// guard in dry run) logged and counted, and the request carries on.
    pub(super) fn enforce(&self, rej: Rejection, ctx: &Ctx) -> Phase {
        self.enforce_as(rej, ctx, ctx.client.ip)
    }

    /// [`Gateway::enforce`] about `client_ip` (an end user of a call).
    pub(super) fn enforce_as(&self, rej: Rejection, ctx: &Ctx, client_ip: IpAddr) -> Phase {
        if ctx.rt.settings.shadow(rej.guard) {
            self.shadow(&rej, ctx, client_ip);
            return ControlFlow::Continue(());
        }
        ControlFlow::Break(Answer::rejected(self.refuse(rej, ctx, client_ip)))
    }

    /// Logs and counts a rejection its guard's dry run lets through.
    pub(super) fn shadow(&self, rej: &Rejection, ctx: &Ctx, client_ip: IpAddr) {
        if self.rejection_log.allow(rej.guard.as_str()) {
            tracing::info!(
                target: "poolgate::gateway",
                %client_ip, method = %ctx.method, path = ctx.uri.path(),
                guard = rej.guard.as_str(), reason = rej.reason, code = rej.code,
                "dry run: would reject"
            );
        }
        self.metrics
            .guard_decisions
            .with_label_values(&[rej.guard.as_str(), "shadow_reject", rej.reason])
            .inc();
    }

    /// Logs, counts and answers a rejection (no dry run).
    pub(super) fn refuse(
        &self,
        rej: Rejection,
        ctx: &Ctx,
        client_ip: IpAddr,
    ) -> Response<RespBody> {
        if self.rejection_log.allow(rej.guard.as_str()) {
            tracing::warn!(
                target: "poolgate::gateway",
                %client_ip, method = %ctx.method, path = ctx.uri.path(),
                guard = rej.guard.as_str(), reason = rej.reason, code = rej.code, status = rej.status.as_u16(),
                "request rejected"
            );
        }
        self.metrics
            .guard_decisions
            .with_label_values(&[rej.guard.as_str(), "reject", rej.reason])
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
        with_cors_as(resp, ctx, client_ip)
    }

    /// The allowed origin echoed on an answer, and who it is about (for the
    /// access log).
    pub(super) fn with_cors(&self, resp: Response<RespBody>, ctx: &Ctx) -> Response<RespBody> {
        with_cors_as(resp, ctx, ctx.client.ip)
    }
}

fn with_cors_as(mut resp: Response<RespBody>, ctx: &Ctx, client_ip: IpAddr) -> Response<RespBody> {
    if let Some(o) = &ctx.allow_origin {
        cors::add_allow_origin(o, resp.headers_mut());
    }
    if ctx.rt.settings.access_log.enabled() {
        resp.extensions_mut().insert(Seen {
            client_ip,
            path: ctx.uri.path().to_string(),
        });
    }
    resp
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
    guard: Guard,
    reason: &'static str,
    code: i64,
}

/// How long the upstream took to send its answer's head.
#[derive(Debug, Clone, Copy)]
pub(super) struct UpstreamTime(pub(super) std::time::Duration);

/// One access log line (target `poolgate::access`, INFO), in the log's format.
pub(super) fn access_line(resp: &Response<RespBody>, method: &str, route: &str, outcome: &str) {
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
        guard = decided.map_or("", |d| d.guard.as_str()),
        reason = decided.map_or("", |d| d.reason),
        code = decided.map(|d| d.code),
        upstream_ms,
        "access"
    );
}
