//! CORS from `allowedOrigins`: preflights are answered here; a request whose
//! `Origin` is not allowed is refused (403), not merely left without headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::Rejection;
use crate::policy::CompiledPolicy;

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

/// Judges the request's `Origin` against the policy. An `Origin` naming the
/// request's own `Host` is same-origin and always allowed.
pub fn check(policy: &CompiledPolicy, headers: &HeaderMap) -> Cors {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Cors::NoOrigin;
    };
    let allowed = match origin.to_str() {
        Ok(o) => policy.origins.allows(o) || same_origin(o, headers),
        Err(_) => false,
    };
    if allowed {
        Cors::Allowed(origin.clone())
    } else {
        Cors::Denied(Rejection::http(
            "cors",
            "origin_not_allowed",
            StatusCode::FORBIDDEN,
            "origin not allowed",
        ))
    }
}

fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !authority.is_empty() && authority.eq_ignore_ascii_case(host))
}

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
        assert_eq!(check(&p, &h(&[])), Cors::NoOrigin);
        assert!(matches!(
            check(&p, &h(&[("origin", "https://app.sample.com")])),
            Cors::Allowed(_)
        ));
        assert!(
            matches!(check(&p, &h(&[("origin", "https://evil.com")])), Cors::Denied(r) if r.status == 403)
        );
        // Same origin as the Host is allowed.
        assert!(matches!(
            check(
                &p,
                &h(&[
                    ("origin", "https://gw.example:8443"),
                    ("host", "gw.example:8443")
                ])
            ),
            Cors::Allowed(_)
        ));
        assert!(matches!(
            check(
                &p,
                &h(&[
                    ("origin", "https://gw.example.evil"),
                    ("host", "gw.example")
                ])
            ),
            Cors::Denied(_)
        ));
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
