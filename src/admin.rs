//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/policy`,
//! `/counters`, `/unblock`. Bind it to loopback or a pod-internal address: it
//! is not meant for the internet. With a token (`[admin] token` or
//! `POOLGATE_ADMIN_TOKEN`), `/policy`, `/counters` and `/unblock` (and
//! `/metrics` with `protect_metrics`) need `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
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
    /// How client keys are made (as in requests): `guards.ipv6_prefix`.
    pub ipv6_prefix: u8,
    /// The window of the send-code limits (`guards.send_code.window`, a
    /// restart-only key), for showing those counters.
    pub send_code_window: std::time::Duration,
    /// Who may call what (swapped by a configuration reload).
    pub auth: arc_swap::ArcSwap<AdminAuth>,
}

/// The admin token check.
///
/// The token is kept as its SHA-256 and a presented token is hashed too, so
/// the comparison is of two fixed-size digests, in constant time (`subtle`):
/// neither the content nor the length of the token leaks through timing.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<[u8; 32]>,
    protect_metrics: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.map(|_| "<set>"))
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

/// Whether a request may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Serve it.
    Granted,
    /// No or a wrong token: 401 with `WWW-Authenticate: Bearer`.
    Unauthenticated {
        /// A token was presented but is not the right one.
        invalid: bool,
    },
    /// `/unblock` from another host with no token configured: 403.
    Forbidden,
}

impl AdminAuth {
    /// From the configuration.
    pub fn new(cfg: &crate::config::AdminConfig) -> AdminAuth {
        AdminAuth {
            token: cfg.token.as_ref().map(|t| digest(t.expose().as_bytes())),
            protect_metrics: cfg.protect_metrics,
        }
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Decides whether `path`, asked with `headers` by `peer`, is served.
    ///
    /// `/healthz` and `/readyz` are always open (probes); `/metrics` unless
    /// `protect_metrics`; `/policy` and `/counters` need the token when one is
    /// set; `/unblock` changes state and needs the token, or, when none is
    /// configured, a caller on loopback (the default admin address).
    pub fn check(&self, path: &str, headers: &HeaderMap, peer: IpAddr) -> Access {
        let required = match path {
            "/unblock" => true,
            "/policy" | "/counters" => self.token.is_some(),
            "/metrics" => self.protect_metrics,
            _ => false,
        };
        if !required {
            return Access::Granted;
        }
        let Some(want) = &self.token else {
            return if crate::client_ip::canonical(peer).is_loopback() {
                Access::Granted
            } else {
                Access::Forbidden
            };
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let presented = match (values.next(), values.next()) {
            (Some(v), None) => bearer(v.as_bytes()),
            _ => None,
        };
        match presented {
            None => Access::Unauthenticated { invalid: false },
            Some(t) => {
                use subtle::ConstantTimeEq;
                if bool::from(digest(t).ct_eq(want)) {
                    Access::Granted
                } else {
                    Access::Unauthenticated { invalid: true }
                }
            }
        }
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn refused(access: Access) -> Response<Full<Bytes>> {
    match access {
        Access::Unauthenticated { invalid } => {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            let challenge = if invalid {
                r#"Bearer realm="poolgate-admin", error="invalid_token""#
            } else {
                r#"Bearer realm="poolgate-admin""#
            };
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            r
        }
        _ => text(
            StatusCode::FORBIDDEN,
            "POST /unblock from another host needs an admin token ([admin] token or POOLGATE_ADMIN_TOKEN)\n",
        ),
    }
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path();
        let access = self.auth.load().check(path, req.headers(), peer);
        if access != Access::Granted {
            return Ok(refused(access));
        }
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
                    .then(|| crate::routes::percent_decode(v).ok())
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
            let who = Subject::Client(crate::client_ip::client_key(ip, self.ipv6_prefix));
            if unblock {
                for (c, w) in [
                    (Counter::LoginIp, window(|p| p.login_fail)),
                    (Counter::RegisterIp, window(|p| p.register_limit)),
                    (Counter::SendClient, self.send_code_window),
                ] {
                    if let Err(e) = store.clear(c, who, w).await {
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
                    "codes_sent": store.show(Counter::SendClient, who, self.send_code_window).await,
                }),
            )
        } else if let Some(account) = param("account") {
            let id = crate::extract::identify_in(
                &account,
                crate::routes::IdKind::Auto,
                None,
                self.normalize,
            );
            let who = Subject::Account(id.account_key(store.account_keyer()));
            if unblock {
                for (c, w) in [
                    (Counter::Account, window(|p| p.password_fail)),
                    (Counter::SendRecipient, self.send_code_window),
                ] {
                    if let Err(e) = store.clear(c, who, w).await {
                        return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
                    }
                }
            }
            (
                format!("account {}", id.value),
                serde_json::json!({
                    "account": id.value,
                    "password_failures": store.show(Counter::Account, who, window(|p| p.password_fail)).await,
                    "codes_sent": store.show(Counter::SendRecipient, who, self.send_code_window).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, Secret};

    const TOKEN: &str = "0123456789abcdef-admin";

    fn auth(token: Option<&str>, protect_metrics: bool) -> AdminAuth {
        AdminAuth::new(&AdminConfig {
            token: token.map(Secret::new),
            protect_metrics,
        })
    }

    fn with(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn who_may_call_what() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.1.2.3".parse().unwrap();
        let open = auth(None, false);
        for p in ["/healthz", "/readyz", "/metrics", "/policy", "/counters"] {
            assert_eq!(open.check(p, &with(None), far), Access::Granted, "{p}");
        }
        assert_eq!(open.check("/unblock", &with(None), lo), Access::Granted);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(open.check("/unblock", &with(None), mapped), Access::Granted);
        assert_eq!(open.check("/unblock", &with(None), far), Access::Forbidden);

        let a = auth(Some(TOKEN), false);
        let good = format!("Bearer {TOKEN}");
        for p in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(a.check(p, &with(None), far), Access::Granted, "{p}");
        }
        for p in ["/policy", "/counters", "/unblock"] {
            assert_eq!(
                a.check(p, &with(None), lo),
                Access::Unauthenticated { invalid: false },
                "{p}: loopback is no credential once a token is set"
            );
            assert_eq!(a.check(p, &with(Some(&good)), far), Access::Granted);
            assert_eq!(
                a.check(p, &with(Some(&format!("bEaReR {TOKEN}"))), far),
                Access::Granted,
                "the scheme is case-insensitive"
            );
            for bad in [
                format!("Bearer {TOKEN}x"),
                format!("Bearer {}", &TOKEN[1..]),
                "Bearer ".to_string(),
                format!("Basic {TOKEN}"),
                TOKEN.to_string(),
            ] {
                assert_ne!(a.check(p, &with(Some(&bad)), lo), Access::Granted, "{bad}");
            }
        }
        let mut two = with(Some(&good));
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_ne!(a.check("/policy", &two, lo), Access::Granted);

        let m = auth(Some(TOKEN), true);
        assert_eq!(
            m.check("/metrics", &with(None), lo),
            Access::Unauthenticated { invalid: false }
        );
        assert_eq!(m.check("/metrics", &with(Some(&good)), lo), Access::Granted);
        assert!(!format!("{m:?}").contains(TOKEN));
    }
}
