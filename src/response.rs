//! Responses poolgate writes itself, in Authing's envelope
//! `{"code": ..., "message": ..., "data": null}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// The body of every response poolgate sends: the upstream's, streamed, or its own.
pub type RespBody = Either<Incoming, Full<Bytes>>;

/// A JSON response in Authing's envelope.
pub fn envelope(status: StatusCode, code: i64, message: &str) -> Response<RespBody> {
    let body = serde_json::json!({ "code": code, "message": message, "data": null });
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
