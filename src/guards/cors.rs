//! CORS from `allowedOrigins`: preflights are answered here; a request whose
//! `Origin` is not allowed is refused (403), not merely left without headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::{Guard, Rejection};
use crate::policy::CompiledPolicy;

/// Reasons of guard `cors`.
pub const REASONS: &[&str] = &["origin_not_allowed"];

/// The CORS verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` header: not a cross-origin browser request.
    NoOrigin,
    /// Allowed: echo this origin on the answer.
    Allowed(HeaderValue),
    /// Refused.
    Denied(Rejection),
}

/// The scheme a page used, as a trusted proxy reports it. Only the two a
/// browser origin can have for a login page are kept; any other word reads
/// as unknown (and then no origin is "the request's own").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

impl Scheme {
    /// The scheme named by `s` (any case, surrounding white space ignored).
    fn parse(s: &str) -> Option<Scheme> {
        let s = s.trim().trim_matches('"');
        if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> &'static str {
        match self {
            Scheme::Http => "80",
            Scheme::Https => "443",
        }
    }
}

/// Judges the request's `Origin` against the policy. An `Origin` that is the
/// request's own origin — scheme, host and port — is allowed without being
/// listed. poolgate usually sits behind a TLS terminator, so its own
/// listener's scheme is not the page's: `scheme` is the one a trusted proxy
/// reported (`X-Forwarded-Proto`, `Forwarded: proto=`), and without it the
/// request's own origin is unknown and the shortcut is not taken.
pub fn check(policy: &CompiledPolicy, headers: &HeaderMap, scheme: Option<Scheme>) -> Cors {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Cors::NoOrigin;
    };
    let allowed = match origin.to_str() {
        Ok(o) => policy.origins.allows(o) || scheme.is_some_and(|sc| same_origin(o, headers, sc)),
        Err(_) => false,
    };
    if allowed {
        Cors::Allowed(origin.clone())
    } else {
        Cors::Denied(Rejection::http(
            Guard::Cors,
            "origin_not_allowed",
            StatusCode::FORBIDDEN,
            "origin not allowed",
        ))
    }
}

/// Whether `origin` is `scheme://Host` (ports compared with the scheme's
/// default filled in, so `https://a.com` is `https://a.com:443`).
fn same_origin(origin: &str, headers: &HeaderMap, scheme: Scheme) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((o_scheme, o_authority)) = origin.split_once("://") else {
        return false;
    };
    if !o_scheme.eq_ignore_ascii_case(scheme.as_str()) || o_authority.is_empty() {
        return false;
    }
    let default = scheme.default_port();
    let split = |a: &str| -> (String, String) {
        // `[v6]:port`, `host:port` or a bare host.
        let (h, p) = match a.rfind(':') {
            Some(i) if !a[i..].contains(']') => (&a[..i], &a[i + 1..]),
            _ => (a, default),
        };
        (h.to_ascii_lowercase(), p.to_string())
    };
    split(o_authority) == split(host)
}

/// The scheme a trusted proxy says the client used: the last value of
/// `X-Forwarded-Proto`, else the `proto=` of the last `Forwarded` element.
/// The last is the nearest proxy's own: earlier values may have come from
/// the client, and a proxy that appends rather than replaces would pass
/// them on. Only ask when the peer is a trusted proxy. Read in place: no
/// copy of the header is made (this runs on every request from a proxy).
pub fn forwarded_proto(headers: &HeaderMap) -> Option<Scheme> {
    forwarded_proto_of(
        headers.get_all(&X_FORWARDED_PROTO).iter().next_back(),
        headers.get_all(header::FORWARDED).iter().next_back(),
    )
}

/// [`forwarded_proto`] from the last `X-Forwarded-Proto` and the last
/// `Forwarded` line, found by the caller (the gateway finds them in the same
/// pass as the client IP's headers: [`crate::client_ip::Forwarding`]).
pub fn forwarded_proto_of(
    last_proto: Option<&HeaderValue>,
    last_forwarded: Option<&HeaderValue>,
) -> Option<Scheme> {
    fn last(line: Option<&HeaderValue>) -> Option<&str> {
        line?.to_str().ok()?.rsplit(',').next()
    }
    if let Some(v) = last(last_proto) {
        // Present but blank: as before, the `Forwarded` header is not asked.
        return Scheme::parse(v);
    }
    let element = last(last_forwarded)?;
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("proto") {
            Some(Scheme::parse(v))
        } else {
            None
        }
    })?
}

use crate::client_ip::X_FORWARDED_PROTO;

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Headers of an allowed preflight's answer.
pub fn preflight_headers(origin: &HeaderValue, req: &HeaderMap, out: &mut HeaderMap) {
    add_allow_origin(origin, out);
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    // Echo the requested headers if they are a plain token list.
    if let Some(h) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let ok = h
            .as_bytes()
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' '));
        if ok {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    out.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
}

/// `Access-Control-Allow-Origin` for an allowed origin, with credentials and `Vary: Origin`.
pub fn add_allow_origin(origin: &HeaderValue, out: &mut HeaderMap) {
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    let has_vary_origin = out.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !has_vary_origin {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PoolDetail, WhitelistEntries};

    fn policy(origins: &str) -> CompiledPolicy {
        let pool = PoolDetail {
            allowed_origins: Some(origins.into()),
            ..Default::default()
        };
        CompiledPolicy::compile(&pool, &WhitelistEntries::default(), "t").unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn verdicts() {
        let p = policy("https://app.sample.com");
        assert_eq!(check(&p, &h(&[]), None), Cors::NoOrigin);
        assert!(matches!(
            check(&p, &h(&[("origin", "https://app.sample.com")]), None),
            Cors::Allowed(_)
        ));
        assert!(
            matches!(check(&p, &h(&[("origin", "https://evil.com")]), None), Cors::Denied(r) if r.status == 403)
        );
        let same = |origin: &str, host: &str, scheme: Option<Scheme>| {
            matches!(
                check(&p, &h(&[("origin", origin), ("host", host)]), scheme),
                Cors::Allowed(_)
            )
        };
        // The request's own origin, when a trusted proxy says the scheme.
        assert!(same(
            "https://gw.example:8443",
            "gw.example:8443",
            Some(Scheme::Https)
        ));
        assert!(same(
            "https://gw.example",
            "gw.example:443",
            Some(Scheme::Https)
        ));
        assert!(same(
            "https://GW.example",
            "gw.example",
            Some(Scheme::Https)
        ));
        // Scheme, host and port all count.
        assert!(!same(
            "http://gw.example",
            "gw.example",
            Some(Scheme::Https)
        ));
        assert!(!same("ftp://gw.example", "gw.example", Some(Scheme::Https)));
        assert!(!same(
            "https://gw.example:8443",
            "gw.example",
            Some(Scheme::Https)
        ));
        assert!(!same(
            "https://gw.example.evil",
            "gw.example",
            Some(Scheme::Https)
        ));
        // Without a scheme from a trusted proxy the own origin is unknown.
        assert!(!same("https://gw.example", "gw.example", None));
        assert!(!same("http://gw.example", "gw.example", None));
    }

    #[test]
    fn forwarded_scheme() {
        let proto = |pairs: &[(&str, &str)]| forwarded_proto(&h(pairs));
        assert_eq!(
            proto(&[("x-forwarded-proto", "HTTPS")]),
            Some(Scheme::Https)
        );
        assert_eq!(
            proto(&[(
                "forwarded",
                "for=1.2.3.4;proto=http, for=5.6.7.8;proto=\"https\""
            )]),
            Some(Scheme::Https)
        );
        // The nearest proxy's value, not what the client put first.
        assert_eq!(
            proto(&[("x-forwarded-proto", "https, http")]),
            Some(Scheme::Http)
        );
        assert_eq!(proto(&[]), None);
        // A word that is no page's scheme, or a blank one, is unknown; a blank
        // X-Forwarded-Proto is not overruled by a Forwarded header.
        assert_eq!(proto(&[("x-forwarded-proto", "wss")]), None);
        assert_eq!(
            proto(&[("x-forwarded-proto", " "), ("forwarded", "proto=https")]),
            None
        );
        assert_eq!(proto(&[("forwarded", "for=1.2.3.4")]), None);
    }

    #[test]
    fn vary_is_added_once() {
        let mut out = h(&[("vary", "Accept-Encoding, origin")]);
        add_allow_origin(&HeaderValue::from_static("https://a.com"), &mut out);
        assert_eq!(out.get_all(header::VARY).iter().count(), 1);
        let mut out = HeaderMap::new();
        add_allow_origin(&HeaderValue::from_static("https://a.com"), &mut out);
        assert_eq!(out.get(header::VARY).unwrap(), "Origin");
    }
}
