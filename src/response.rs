//! Responses poolgate writes itself, in the shape the client's API speaks:
//! Authing's v2 envelope `{"code", "message", "data": null}`, v3's
//! `{"statusCode", "message", "apiCode", "data": null}`, or GraphQL errors.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::proxy::{PooledBody, UpstreamError};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use crate::routes::Flavor;

/// The body of every response poolgate sends: the upstream's, streamed (maybe
/// after a prefix poolgate already read), or its own.
pub type RespBody = Either<Replay, Full<Bytes>>;

pin_project_lite::pin_project! {
    /// The upstream's body, with the bytes poolgate read to judge it put back in front.
    pub struct Replay {
        prefix: Option<Bytes>,
        #[pin]
        rest: Option<PooledBody>,
    }
}

impl Replay {
    /// The upstream body as is.
    pub fn new(body: PooledBody) -> Self {
        Replay {
            prefix: None,
            rest: Some(body),
        }
    }

    /// `prefix` then whatever `rest` still holds.
    pub fn with_prefix(prefix: Bytes, rest: Option<PooledBody>) -> Self {
        Replay {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut h = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        h.set_lower(h.lower() + p);
        if let Some(u) = h.upper() {
            h.set_upper(u + p);
        }
        h
    }
}

/// A JSON response in Authing's v2 envelope.
pub fn envelope(status: StatusCode, code: i64, message: &str) -> Response<RespBody> {
    error(Flavor::V2, status, code, message)
}

/// An error answer in the client's API shape.
pub fn error(flavor: Flavor, status: StatusCode, code: i64, message: &str) -> Response<RespBody> {
    let body = match flavor {
        // `apiCode` too: Authing's newer servers send it, and Guard reads it.
        Flavor::V2 => {
            serde_json::json!({ "code": code, "message": message, "apiCode": code, "data": null })
        }
        Flavor::V3 => {
            let status_code = if status == StatusCode::OK {
                400
            } else {
                status.as_u16()
            };
            serde_json::json!({ "statusCode": status_code, "message": message, "apiCode": code, "data": null })
        }
        Flavor::Graphql => serde_json::json!({
            "data": null,
            "errors": [{ "message": { "code": code, "message": message }, "extensions": { "code": code } }]
        }),
    };
    json(status, &body)
}

/// A JSON response with an arbitrary body.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<RespBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}
