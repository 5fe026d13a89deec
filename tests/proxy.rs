//! Forwarding fidelity and upstream failures, through the real server stack.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioExecutor;
use support::*;

async fn start(extra: &str) -> (Upstream, poolgate::App, tempfile::TempDir) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), &fixture_pool(), up.addr, extra);
    let app = poolgate::App::start(cfg).await.unwrap();
    (up, app, dir)
}

#[tokio::test]
async fn methods_query_headers_and_bodies_arrive_unchanged() {
    let (up, app, _d) = start("").await;
    let gw = app.proxy_addr();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{gw}/echo/a%20b?x=1&y=%2F&x=2"))
            .header("x-custom", "one")
            .header("x-custom", "two")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "must go")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "198.51.100.9")
            .body(Full::new(Bytes::from(format!("body of {method}"))))
            .unwrap();
        let (status, headers, body) = send(req).await;
        assert_eq!(status, StatusCode::CREATED, "{method}");
        assert_eq!(body, format!("body of {method}"));
        let ups: Vec<_> = headers
            .get_all("x-up")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(ups, ["1", "2"]);
        let seen = up.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, "/echo/a%20b?x=1&y=%2F&x=2");
        assert_eq!(seen.header_all("x-custom"), ["one", "two"]);
        for hop in ["x-hop", "keep-alive", "te", "connection"] {
            assert_eq!(seen.header(hop), None, "{hop} must not be forwarded");
        }
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("198.51.100.9, 127.0.0.1")
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(gw.to_string().as_str())
        );
        assert_eq!(seen.header("host"), Some(gw.to_string().as_str()));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn chunked_and_five_megabyte_bodies_are_byte_exact() {
    let (up, app, _d) = start("").await;
    let gw = app.proxy_addr();
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (status, _, body) = send(
        Request::post(format!("http://{gw}/echo/big"))
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body.len(), big.len());
    assert!(body == big);
    assert!(up.last().body == big);

    // Chunked: a streamed body without content-length.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = (0..50)
        .map(|i| Ok(hyper::body::Frame::data(Bytes::from(format!("chunk-{i};")))))
        .collect();
    let stream = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::post(format!("http://{gw}/echo/chunked"))
                .body(stream)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let expected: String = (0..50).map(|i| format!("chunk-{i};")).collect();
    assert_eq!(got, expected);
    assert_eq!(up.last().body, expected);
    app.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let (up, app, _d) = start("").await;
    let gw = app.proxy_addr();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(
            Request::post(format!("http://{gw}/echo/h2?q=1"))
                .body(Full::new(Bytes::from("over h2")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "over h2"
    );
    let seen = up.last();
    assert_eq!(seen.uri, "/echo/h2?q=1");
    assert_eq!(seen.header("host"), Some(gw.to_string().as_str()));
    app.shutdown().await;
}

#[tokio::test]
async fn upstream_refused_reset_and_slow_get_502_and_504_envelopes() {
    // Refused: nothing listens on the upstream port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = poolgate::App::start(file_config(dir.path(), &fixture_pool(), closed, ""))
        .await
        .unwrap();
    let (status, _, body) = post(app.proxy_addr(), "/anything", "{}", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["code"], 502);
    assert_eq!(body["data"], serde_json::Value::Null);
    assert!(body["message"].is_string());
    app.shutdown().await;

    let (up, app, _d) = start("").await;
    up.set_mode(Mode::Reset);
    let (status, _, body) = post(app.proxy_addr(), "/anything", "{}", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["code"], 502);
    // The upstream request timeout in the test config is 2s.
    up.set_mode(Mode::Delay(3000));
    let (status, _, body) = post(app.proxy_addr(), "/anything", "{}", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["code"], 504);
    assert_eq!(body["data"], serde_json::Value::Null);
    let (_, metrics) = get(app.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains(r#"outcome="upstream_timeout""#),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = file_config(dir.path(), &fixture_pool(), up.addr, "");
    cfg.server.max_body_bytes = 1000;
    let app = poolgate::App::start(cfg).await.unwrap();
    let gw = app.proxy_addr();
    let (status, _, body) = post(gw, "/echo/x", &"x".repeat(1001), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], 413);
    assert_eq!(up.total(), 0, "nothing reached the upstream");

    // Chunked, no content-length: the limit is enforced while streaming.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = (0..20)
        .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'y'; 100]))))
        .collect();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::post(format!("http://{gw}/echo/chunked"))
                .body(StreamBody::new(futures_util::stream::iter(chunks)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], 413);
    assert_eq!(
        up.count("/echo/chunked"),
        0,
        "no complete request reached the upstream"
    );
    app.shutdown().await;
}
