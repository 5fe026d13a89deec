//! Guard `body`: a request's body before its facts are judged — over the
//! size limits (413), not received in time (408), broken off (400), in a
//! shape that cannot be read unambiguously (400/415, [`ExtractError`]), and
//! a trusted backend naming an end user by something that is not an IP (400).

use http::StatusCode;

use super::{Guard, Rejection};
use crate::extract::ExtractError;

/// Reasons of guard `body`.
pub const REASONS: &[&str] = &[
    "body_too_large",
    "body_timeout",
    "client_body_error",
    "unsupported_content_type",
    "compressed_body",
    "malformed_body",
    "ambiguous_graphql",
    "ambiguous_body",
    "bad_client_ip",
];

/// A declared `Content-Length` over `server.max_body_bytes`. Never shadowed:
/// the upstream would get a body over the limit.
pub fn declared_length(len: Option<u64>, max: u64) -> Result<(), Rejection> {
    match len {
        Some(len) if len > max => Err(Rejection::http(
            Guard::Body,
            "body_too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        _ => Ok(()),
    }
}

/// A guarded body over `guards.inspect_body_bytes`.
pub fn too_large_to_inspect() -> Rejection {
    Rejection::http(
        Guard::Body,
        "body_too_large",
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large for a guarded route",
    )
}

/// A guarded body not received within `server.body_read_timeout`.
pub fn timeout() -> Rejection {
    Rejection::http(
        Guard::Body,
        "body_timeout",
        StatusCode::REQUEST_TIMEOUT,
        "request body not received in time",
    )
}

/// A guarded body that broke off while being read.
pub fn broken() -> Rejection {
    Rejection::http(
        Guard::Body,
        "client_body_error",
        StatusCode::BAD_REQUEST,
        "request body could not be read",
    )
}

/// A body whose facts cannot be read unambiguously.
pub fn unreadable(e: &ExtractError) -> Rejection {
    let (status, reason) = e.status_reason();
    Rejection::http(Guard::Body, reason, status, e.to_string())
}

/// A trusted backend's `X-Real-IP` or `clientIp` that is not one IP address.
pub fn bad_client_ip(message: &'static str) -> Rejection {
    Rejection::http(
        Guard::Body,
        "bad_client_ip",
        StatusCode::BAD_REQUEST,
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_refusals_carry_their_status_as_code() {
        assert!(declared_length(None, 10).is_ok());
        assert!(declared_length(Some(10), 10).is_ok());
        let r = declared_length(Some(11), 10).unwrap_err();
        assert_eq!(
            (r.guard, r.reason, r.code),
            (Guard::Body, "body_too_large", 413)
        );
        assert_eq!(timeout().code, 408);
        assert_eq!(broken().code, 400);
        assert_eq!(too_large_to_inspect().code, 413);
        let e = unreadable(&ExtractError::Compressed);
        assert_eq!((e.reason, e.code), ("compressed_body", 415));
        assert!(REASONS.contains(&e.reason));
        assert_eq!(bad_client_ip("x").reason, "bad_client_ip");
    }
}
