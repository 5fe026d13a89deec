//! A guarded request (login, registration, password, code, GraphQL): read
//! its body, turn it into calls, rate-limit them, carry out the guard plan
//! (rules, counters, captcha, dry run), then forward and settle.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::Request;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use smallvec::SmallVec;

use super::{captcha, phase, Answer, Client, Ctx, Gateway, Observe, Phase};
use crate::extract::{self, ExtractError, Facts};
use crate::guards::outcome::Place;
use crate::guards::plan::{self, CommitOn, Counted, Role};
use crate::guards::{self, body, rate_limit, CaptchaCheck, Over, Rejection};
use crate::response::Replay;
use crate::routes::{Route, RouteKind};
use crate::store::{AccountKeyer, Ask, Counter, Reservation, Slot, Subject};

/// One guarded operation of a request: the request itself (REST), or one
/// guarded field of a GraphQL request or batch.
pub(super) struct Call {
    pub(super) kind: RouteKind,
    facts: Facts,
    /// Where its verdict is in the answer.
    pub(super) place: Place,
    /// Its end user.
    client: Client,
}

/// A request's calls: inline for a REST request's one call, so a login
/// does not allocate for them.
pub(super) type Calls = SmallVec<[Call; 1]>;

/// Why a guarded body could not be read whole.
enum BodyRead {
    /// Longer than `inspect_body_bytes`.
    TooLarge,
    /// The connection failed or the framing was broken mid-body.
    Broken,
}

/// Reads a body whole, up to `limit` bytes (trailers are not kept). A body
/// in one frame, the usual login, is kept as that frame's `Bytes`: no copy
/// and no list of frames (`http_body_util`'s `Collect` allocated one per
/// request); later frames are copied into one buffer.
async fn read_whole(mut body: Incoming, limit: usize) -> Result<Bytes, BodyRead> {
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyRead::Broken)?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(BodyRead::TooLarge);
        }
        match &mut more {
            Some(buf) => buf.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                more = Some(buf);
            }
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

/// A slot a forwarded call holds until its outcome is known.
pub(super) struct Hold {
    pub(super) slot: Slot,
    pub(super) call: usize,
    pub(super) on: CommitOn,
}

impl Gateway {
    /// The guarded request path. Sets the request's route label to what its
    /// (first) call is, so a GraphQL login counts as `login`.
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    pub(super) fn guarded<'a>(
        self: &'a Arc<Self>,
        mut parts: http::request::Parts,
        body: Incoming,
        route: &'a Route,
        ctx: &'a mut Ctx,
        obs: &'a Observe<'a>,
    ) -> impl std::future::Future<Output = Answer> + Send + 'a {
        // An `async` block taking the request's parts: see `Gateway::handle`.
        async move {
            let bytes = phase!(self.read_body(body, ctx).await);
            let calls = phase!(self.calls(route, &parts.headers, &bytes, ctx));
            if let Some(first) = calls.first() {
                ctx.label = first.kind.as_str();
            }
            let ctx = &*ctx;
            // Rate limits the request could not pass before its calls were known
            // (GraphQL, and end users named by a trusted backend): one token per
            // call, so a batch pays for every attempt in it.
            if rate_limit::per_call(route.kind, ctx.via_backend) {
                if calls.is_empty() {
                    phase!(self.rate_limit(RouteKind::Other, ctx.client, ctx).await);
                }
                for call in &calls {
                    phase!(self.rate_limit(call.kind, call.client, ctx).await);
                }
            }
            // Boxed, as is the rare forward below: inline, either would
            // take this future (which every guarded request holds) over
            // glibc's per-thread cache limit (1,032 bytes), and one large
            // allocation costs more than a small one more.
            let holds = phase!(Box::pin(self.guard_plan(&calls, &parts.headers, ctx)).await);

            // Forward the body we read. Outcomes are read from an uncompressed answer.
            if holds.is_empty() {
                let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
                return match Box::pin(self.forward(req, ctx)).await {
                    Ok(resp) => {
                        Answer::new(resp.map(|b| Either::Left(Replay::new(b))), "forwarded")
                    }
                    Err(a) => a,
                };
            }
            parts.headers.remove(header::ACCEPT_ENCODING);
            let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
            self.forward_and_settle(req, &calls, holds, ctx, obs).await
        }
    }

    /// Reads a guarded request's whole body (up to `inspect_body_bytes`, within
    /// `body_read_timeout`). Its refusals are not shadowable: the body is gone.
    async fn read_body(&self, body: Incoming, ctx: &Ctx) -> Phase<Bytes> {
        let collect = read_whole(body, ctx.rt.settings.inspect_body_bytes);
        // A body that trickles in would hold the connection (and its slot)
        // for as long as the client likes: bound the read.
        let read = match ctx.rt.settings.body_read_timeout {
            Some(t) => crate::coarse_timer::timeout(t, collect).await,
            None => Ok(collect.await),
        };
        let Ok(read) = read else {
            let mut r = self.refuse(body::timeout(), ctx, ctx.client.ip);
            // The rest of the body may still come: it must not be read as a request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return ControlFlow::Break(Answer::rejected(r));
        };
        match read {
            Ok(b) => ControlFlow::Continue(b),
            Err(e) => {
                let rej = match e {
                    BodyRead::TooLarge => body::too_large_to_inspect(),
                    BodyRead::Broken => body::broken(),
                };
                ControlFlow::Break(Answer::rejected(self.refuse(rej, ctx, ctx.client.ip)))
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
    ) -> Phase<Calls> {
        let mut calls = match read_calls(route, headers, bytes, ctx) {
            Ok(c) => c,
            Err(e) => {
                self.enforce(body::unreadable(&e), ctx)?;
                // Dry run: forwarded unjudged.
                return ControlFlow::Continue(Calls::new());
            }
        };
        // Each call's end user, in place (a call is ~270 bytes: not moved
        // into a second list).
        for call in &mut calls {
            match self.end_user(&call.facts, ctx) {
                Ok(c) => call.client = c,
                Err(rej) => self.enforce(rej, ctx)?,
            }
        }
        ControlFlow::Continue(calls)
    }

    /// The end user of a call: the body's `clientIp` when a trusted backend
    /// sent it, else the request's client.
    fn end_user(&self, facts: &Facts, ctx: &Ctx) -> Result<Client, Rejection> {
        match (&facts.client_ip, ctx.via_backend) {
            (Some(raw), true) => match crate::client_ip::parse_client_ip(raw) {
                Some(ip) => Ok(Client {
                    ip,
                    key: ctx.rt.client_ip.key(ip),
                }),
                None => Err(body::bad_client_ip(
                    "the body's clientIp is not an IP address",
                )),
            },
            _ => Ok(ctx.client),
        }
    }

    /// Phase "guard plan": carries out what the guards decide for every
    /// call — its rules, its counters (reserved in one store round trip),
    /// what a refused counter means, the captcha sent with a call over its
    /// limits — and answers with the first violation whose guard is not in
    /// dry run ([`guards::enforced`]; every shadowed one is logged and
    /// counted under its own guard). Otherwise the slots to hold while the
    /// request is forwarded.
    async fn guard_plan(
        &self,
        calls: &[Call],
        headers: &http::HeaderMap,
        ctx: &Ctx,
    ) -> Phase<Vec<Hold>> {
        let policy = &*ctx.policy;
        let mut violations: Vec<(usize, Rejection)> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let rules = guards::registration::call_rules(policy, call.kind, &call.facts);
            if guards::registration::encrypted_unchecked(policy, call.kind, &call.facts) {
                self.metrics.encrypted_passwords.inc();
            }
            violations.extend(rules.into_iter().map(|r| (i, r)));
        }

        // Every counter of every call, in one round trip to a shared store.
        let counted = plan::request_counters(
            calls.iter().map(|c| (c.kind, &c.facts)),
            policy,
            &ctx.rt.settings.send_code,
        );
        let keyer = self.store.account_keyer();
        let mut asks: SmallVec<[Ask; 4]> = counted.iter().map(|c| ask(c, calls, keyer)).collect();
        let Ok(answers) = self.store.reserve(&asks, false).await else {
            return self.store_unavailable(ctx);
        };

        let mut holds = Vec::with_capacity(counted.len());
        let mut denied: SmallVec<[usize; 4]> = SmallVec::new();
        let mut over: SmallVec<[Over; 1]> = smallvec::smallvec![Over::default(); calls.len()];
        for (n, (c, answer)) in counted.iter().zip(answers).enumerate() {
            let wait = match answer {
                Reservation::Held(slot) => {
                    holds.push(Hold {
                        slot,
                        call: c.call,
                        on: c.on,
                    });
                    continue;
                }
                Reservation::Denied(wait) => Some(wait),
                Reservation::Full => None,
            };
            denied.push(n);
            if let Some(rej) = plan::over_limit(c, wait, &mut over[c.call]) {
                violations.push((c.call, rej));
            }
        }

        // Calls over a failure limit: a captcha sent with them may let them through.
        let cookie = captcha::cookie(headers);
        for (i, call) in calls.iter().enumerate() {
            let o = &over[i];
            if !o.any() {
                continue;
            }
            let sent = call.facts.captcha_code.as_deref();
            let check = match sent {
                Some(code) if guards::failures::captcha_worth_checking(policy, o, true) => {
                    let token = call.facts.captcha_token.as_deref().or(cookie.as_deref());
                    // Boxed: a provider's HTTPS call is a large future, and
                    // inline it would grow every guarded request's.
                    let check = Box::pin(self.check_captcha(code, token, call.client, ctx)).await?;
                    if check == CaptchaCheck::Solved {
                        self.metrics
                            .guard_decisions
                            .with_label_values(&[
                                o.blamed().as_str(),
                                "allow_captcha",
                                "captcha_solved",
                            ])
                            .inc();
                    }
                    check
                }
                _ => CaptchaCheck::NotSent,
            };
            violations.extend(
                guards::failure_violations(policy, o, check)
                    .into_iter()
                    .map(|r| (i, r)),
            );
        }

        let refusal = guards::enforced(&mut violations, |g| ctx.rt.settings.shadow(g));
        for (n, (i, rej)) in violations.iter().enumerate() {
            if Some(n) != refusal && ctx.rt.settings.shadow(rej.guard) {
                self.shadow(rej, ctx, calls[*i].client.ip);
            }
        }
        if let Some(n) = refusal {
            let (i, rej) = violations.swap_remove(n);
            let resp = self.refuse(rej, ctx, calls[i].client.ip);
            return ControlFlow::Break(Answer::rejected(resp));
        }

        // What passed over a limit (a solved captcha, a dry run) still counts.
        if !denied.is_empty() {
            // The denied asks, moved to the front of `asks` (ascending, so
            // none is overwritten before it is moved): a second list would
            // add its size to this future, which every guarded request holds.
            for (k, &n) in denied.iter().enumerate() {
                asks[k] = asks[n];
            }
            asks.truncate(denied.len());
            if let Ok(answers) = self.store.reserve(&asks, true).await {
                for (&n, answer) in denied.iter().zip(answers) {
                    if let Reservation::Held(slot) = answer {
                        holds.push(Hold {
                            slot,
                            call: counted[n].call,
                            on: counted[n].on,
                        });
                    }
                }
            }
        }
        ControlFlow::Continue(holds)
    }

    /// Whether the captcha sent with a call is solved: by the third-party
    /// provider when one is configured (fail closed when it cannot say yes),
    /// else by poolgate's own store, bound to the client it was issued to.
    async fn check_captcha(
        &self,
        code: &str,
        token: Option<&str>,
        client: Client,
        ctx: &Ctx,
    ) -> Phase<CaptchaCheck> {
        let checked = match (&ctx.rt.captcha_provider, token) {
            (Some(p), _) => {
                if p.is_solved(code, Some(client.ip)).await {
                    Ok(())
                } else {
                    Err(crate::captcha::Rejected::Wrong)
                }
            }
            (None, Some(t)) => match self.store.verify_captcha(t, client.key, code).await {
                Ok(c) => c,
                Err(_) => return self.store_unavailable(ctx),
            },
            (None, None) => Err(crate::captcha::Rejected::Unknown),
        };
        ControlFlow::Continue(CaptchaCheck::from(checked))
    }

    /// The answer when the shared store is down and its fallback is `closed`.
    fn store_unavailable<T>(&self, ctx: &Ctx) -> Phase<T> {
        let resp = self.refuse(guards::store::unavailable(), ctx, ctx.client.ip);
        ControlFlow::Break(Answer::rejected(resp))
    }
}

/// What a request's body says: each call's kind, facts and the place of its
/// verdict in the answer; its end user is the request's client until
/// [`Gateway::calls`] has read the body's `clientIp`.
fn read_calls(
    route: &Route,
    headers: &http::HeaderMap,
    bytes: &[u8],
    ctx: &Ctx,
) -> Result<Calls, ExtractError> {
    let norm = ctx.rt.settings.normalize;
    let kind = extract::body_kind(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    )?;
    let with_token = |mut facts: Facts, fields: &crate::routes::Fields| {
        if facts.identifier.is_none() {
            if let Some(h) = &fields.token_header {
                facts.identifier = extract::token_identifier(headers, h);
            }
        }
        facts
    };
    if route.kind != RouteKind::Graphql {
        let facts = extract::body_facts(kind, bytes, &route.fields, norm)?;
        return Ok(smallvec::smallvec![Call {
            kind: route.kind,
            facts: with_token(facts, &route.fields),
            place: Place::Whole,
            client: ctx.client,
        }]);
    }
    let found = extract::graphql::calls(kind, bytes, ctx.rt.routes.graphql_ops())?;
    found
        .iter()
        .map(|c| {
            let facts = extract::facts(&c.args, &c.op.fields, norm)?;
            Ok(Call {
                kind: c.op.kind,
                facts: with_token(facts, &c.op.fields),
                place: Place::Graphql {
                    batch: c.batch_index,
                    key: c.response_key.clone(),
                },
                client: ctx.client,
            })
        })
        .collect()
}

/// The store's question for one counter of the plan.
fn ask(c: &Counted, calls: &[Call], keyer: &AccountKeyer) -> Ask {
    let call = &calls[c.call];
    let account = || {
        Subject::Account(
            call.facts
                .identifier
                .as_ref()
                .map_or_else(|| keyer.key(""), |id| id.account_key(keyer)),
        )
    };
    let (counter, subject) = match c.role {
        Role::FailClient => (Counter::LoginIp, Subject::Client(call.client.key)),
        Role::FailAccount => (Counter::Account, account()),
        Role::Register => (Counter::RegisterIp, Subject::Client(call.client.key)),
        Role::SendClient => (Counter::SendClient, Subject::Client(call.client.key)),
        Role::SendRecipient => (Counter::SendRecipient, account()),
    };
    Ask {
        counter,
        subject,
        limit: c.limit,
    }
}
