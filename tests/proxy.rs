//! Forwarding through the real server stack over loopback sockets: what the
//! upstream receives (methods, targets, repeated and hop-by-hop headers,
//! `X-Forwarded-*`, bodies chunked or large), what the client gets back, h2c,
//! and poolgate's own answers when the upstream fails (502, 504) or the body
//! is too large (413).

mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

struct Rig {
    up: FakeUpstream,
    app: poolgate::App,
    _dir: tempfile::TempDir,
}

/// The fixture pool from a file, the fake upstream, and poolgate with `tweak` applied.
async fn rig(tweak: impl FnOnce(&mut poolgate::Config)) -> Rig {
    let (up, app, _dir) = start_fixture(tweak).await;
    Rig { up, app, _dir }
}

/// The fake upstream's answer to a non-echo target.
fn plain_answer(target: &str) -> String {
    json!({"code": 200, "message": "ok", "data": {"target": target}}).to_string()
}

#[tokio::test]
async fn every_method_reaches_the_upstream_unchanged_and_the_answer_comes_back_unchanged() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        let client = h1_client();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let target = format!("/echo/{method}/a%20b/%E4%B8%AD?x=1&y=%2F&x=2&empty=&flag");
            let body: Vec<u8> = format!("body of {method} \u{4e2d}\0\r\n")
                .into_bytes()
                .into_iter()
                .chain((0..=255u8).rev())
                .collect();
            let req = build(
                method,
                gw,
                &target,
                &[
                    ("content-type", "application/x-test"),
                    ("x-custom", "one"),
                    ("x-custom", "two, three"),
                    ("authorization", "Bearer client-token"),
                    ("cookie", "sid=1"),
                    ("connection", "keep-alive, x-hop-a, X-Hop-B"),
                    ("x-hop-a", "dropped"),
                    ("x-hop-b", "dropped"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                    ("trailer", "x-checksum"),
                ],
                body.clone(),
            );
            let reply = send_with(&client, req).await;

            let seen = r.up.only(&target);
            assert_eq!(seen.method, method);
            assert_eq!(seen.target, target);
            assert_eq!(seen.version, Version::HTTP_11);
            assert!(seen.complete);
            assert_eq!(seen.body, body, "{method}: request body");
            assert_eq!(seen.header_all("x-custom"), ["one", "two, three"]);
            assert_eq!(seen.header("content-type"), Some("application/x-test"));
            assert_eq!(seen.header("authorization"), Some("Bearer client-token"));
            assert_eq!(seen.header("cookie"), Some("sid=1"));
            assert_eq!(
                seen.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            for hop in [
                "connection",
                "keep-alive",
                "te",
                "x-hop-a",
                "x-hop-b",
                "proxy-authorization",
                "trailer",
                "upgrade",
            ] {
                assert_eq!(seen.header_all(hop), Vec::<&str>::new(), "{method}: {hop}");
            }
            let host = gw.to_string();
            assert_eq!(seen.header("host"), Some(host.as_str()));
            assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
            assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
            assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));

            assert_eq!(reply.status, StatusCode::CREATED, "{method}");
            assert_eq!(reply.body, body, "{method}: response body");
            assert_eq!(reply.header_all("x-up"), ["1", "2"]);
            assert_eq!(
                reply.header_all("set-cookie"),
                ["a=1; Path=/", "b=2; HttpOnly"]
            );
            assert_eq!(reply.header("content-type"), Some("application/x-test"));
            assert_eq!(reply.header("x-echo-method"), Some(method));
            assert_eq!(
                reply.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            // The upstream's own hop-by-hop headers stop at poolgate too.
            assert_eq!(reply.header("keep-alive"), None);
            assert_eq!(reply.header("x-up-hop"), None);
        }
        assert_eq!(r.up.requests().len(), 5, "no retries, no extra requests");
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn upstream_error_statuses_and_bodies_pass_through_untouched() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        for status in [200u16, 204, 302, 404, 418, 500, 503] {
            let target = format!("/api/thing?status={status}");
            let s = status.to_string();
            let reply = send(build("GET", gw, &target, &[("x-reply-status", &s)], "")).await;
            assert_eq!(reply.status.as_u16(), status);
            if status == 204 {
                assert_eq!(reply.body, "", "a 204 has no body");
            } else {
                assert_eq!(reply.text(), plain_answer(&target), "{status}");
                assert_eq!(reply.header("content-type"), Some("application/json"));
            }
        }
        r.app.shutdown().await;
    })
    .await;
}

/// Target, headers the client sends, the `X-Forwarded-For` the upstream must see.
type XffCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn x_forwarded_for_is_appended_and_proto_and_host_are_not_spoofable() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        let host = gw.to_string();
        let cases: [XffCase; 3] = [
            ("/xff/none", &[], "127.0.0.1"),
            (
                "/xff/one",
                &[("x-forwarded-for", "198.51.100.9")],
                "198.51.100.9, 127.0.0.1",
            ),
            (
                "/xff/two-lines",
                &[
                    ("x-forwarded-for", "203.0.113.1"),
                    ("x-forwarded-for", "198.51.100.9, 192.0.2.7"),
                ],
                "203.0.113.1, 198.51.100.9, 192.0.2.7, 127.0.0.1",
            ),
        ];
        for (target, headers, want) in cases {
            let mut h = headers.to_vec();
            // A client that is not a trusted proxy cannot choose these.
            h.push(("x-forwarded-proto", "https"));
            h.push(("x-forwarded-host", "evil.example"));
            h.push(("forwarded", "for=6.6.6.6;proto=https"));
            let reply = send(build("GET", gw, target, &h, "")).await;
            assert_eq!(reply.status, StatusCode::OK);
            let seen = r.up.only(target);
            assert_eq!(seen.header_all("x-forwarded-for"), [want], "{target}");
            assert_eq!(seen.header_all("x-forwarded-proto"), ["http"], "{target}");
            assert!(seen.header_all("forwarded").is_empty(), "{target}");
            assert_eq!(
                seen.header_all("x-forwarded-host"),
                [host.as_str()],
                "{target}"
            );
        }
        r.app.shutdown().await;

        // From a trusted proxy, the original scheme and host are kept.
        let r = rig(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
        let gw = r.app.proxy_addr();
        let reply = send(build(
            "GET",
            gw,
            "/xff/trusted",
            &[
                ("x-forwarded-for", "198.51.100.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "login.example.com"),
                ("forwarded", "for=198.51.100.9;proto=https"),
            ],
            "",
        ))
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = r.up.only("/xff/trusted");
        assert_eq!(
            seen.header_all("forwarded"),
            ["for=198.51.100.9;proto=https, for=127.0.0.1"]
        );
        assert_eq!(
            seen.header_all("x-forwarded-for"),
            ["198.51.100.9, 127.0.0.1"]
        );
        assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
        assert_eq!(seen.header_all("x-forwarded-host"), ["login.example.com"]);
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn host_and_path_prefix_follow_the_upstream_settings() {
    bounded("test", LIMIT, async {
        // preserve_host = false: the upstream's own authority goes in Host.
        let r = rig(|c| c.upstream.preserve_host = false).await;
        let gw = r.app.proxy_addr();
        let reply = send(build("GET", gw, "/host/check?q=1", &[], "")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = r.up.only("/host/check?q=1");
        let up = r.up.addr.to_string();
        assert_eq!(seen.header("host"), Some(up.as_str()));
        // X-Forwarded-Host still tells the upstream what the client asked for.
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(gw.to_string().as_str())
        );
        r.app.shutdown().await;

        // A base path in upstream.url is prepended to every target.
        let up = FakeUpstream::start().await;
        let dir = tempdir();
        let pool = dir.path().join("pool.json");
        write_pool(&pool, &fixture_pool());
        let mut cfg = file_config(&pool, up.addr, "");
        cfg.upstream.url = format!("http://{}/base/", up.addr);
        let app = poolgate::App::start(cfg).await.unwrap();
        let reply = send(build(
            "POST",
            app.proxy_addr(),
            "/echo/p?x=%2F",
            &[],
            "prefixed",
        ))
        .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body, "prefixed");
        assert_eq!(up.only("/base/echo/p?x=%2F").body, "prefixed");
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_chunked_body_is_streamed_to_the_upstream_byte_exact() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        let chunks: Vec<Bytes> = (0..64u32)
            .map(|i| {
                Bytes::from(
                    (0..(1000 + i * 37))
                        .map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8)
                        .collect::<Vec<u8>>(),
                )
            })
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(Frame::data(chunk)), rx))
        });
        let body = StreamBody::new(Box::pin(stream));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(format!("http://{gw}/echo/stream"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap();
        let pending = tokio::spawn(async move { client.request(req).await });
        tx.send(chunks[0].clone()).await.unwrap();
        // Streamed, not buffered: the upstream has the request head while the
        // client still holds most of the body back.
        wait_for(
            "the upstream sees the head before the body ends",
            Duration::from_secs(10),
            || r.up.arrived("/echo/stream") == 1,
        )
        .await;
        assert!(r.up.requests().is_empty(), "the body cannot have ended yet");
        for c in &chunks[1..] {
            tx.send(c.clone()).await.unwrap();
        }
        drop(tx);
        let resp = pending
            .await
            .unwrap()
            .expect("the chunked request succeeds");
        let reply = read_reply(resp).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(reply.body == expected, "echoed body differs");

        let seen = r.up.only("/echo/stream");
        assert!(seen.complete);
        assert_eq!(seen.body.len(), expected.len());
        assert!(seen.body == expected, "the upstream's body differs");
        assert_eq!(seen.header("content-length"), None);
        assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_five_megabyte_body_round_trips_byte_exact() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        let big: Bytes = (0..5 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect::<Vec<u8>>()
            .into();
        let reply = send(build(
            "PUT",
            gw,
            "/echo/big",
            &[("content-type", "application/octet-stream")],
            big.clone(),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body.len(), big.len());
        assert!(reply.body == big, "response body differs");
        let seen = r.up.only("/echo/big");
        assert_eq!(seen.header("content-length"), Some("5242880"));
        assert!(seen.body == big, "the upstream's body differs");
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_proxied_over_one_connection() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        let client = h2_client();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let method = ["POST", "PUT", "PATCH", "DELETE"][i % 4];
                let target = format!("/echo/h2/{i}?n={i}&m={method}");
                let body = format!("h2 body {i} ").repeat(i + 1);
                let req = build(
                    method,
                    gw,
                    &target,
                    &[("x-custom", "one"), ("x-custom", "two")],
                    body.clone(),
                );
                let reply = send_with(&client, req).await;
                (i, method, target, body, reply)
            }));
        }
        for t in tasks {
            let (i, method, target, body, reply) = t.await.unwrap();
            assert_eq!(reply.version, Version::HTTP_2, "{i}");
            assert_eq!(reply.status, StatusCode::CREATED, "{i}");
            assert_eq!(reply.body, body, "{i}");
            assert_eq!(reply.header_all("x-up"), ["1", "2"]);
            let seen = r.up.only(&target);
            assert_eq!(seen.method, method);
            assert_eq!(
                seen.version,
                Version::HTTP_11,
                "the upstream speaks HTTP/1.1"
            );
            assert_eq!(seen.body, body);
            assert_eq!(seen.header_all("x-custom"), ["one", "two"]);
            let host = gw.to_string();
            assert_eq!(seen.header("host"), Some(host.as_str()));
            assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
            assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
            assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        }
        let m = metrics(r.app.admin_addr()).await;
        assert_eq!(
            metric(&m, "poolgate_connections_open", &[]),
            Some(1.0),
            "16 streams shared one h2c connection"
        );
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_upstream_gives_502() {
    bounded("test", LIMIT, async {
        let dir = tempdir();
        let pool = dir.path().join("pool.json");
        write_pool(&pool, &fixture_pool());
        let app = poolgate::App::start(file_config(&pool, unused_addr(), ""))
            .await
            .unwrap();
        let gw = app.proxy_addr();
        let reply = post_json(gw, "/api/other", "{}").await;
        assert_envelope_exact(&reply, 502, "upstream unavailable");
        // A guarded route (a v2 login) reports the same way.
        let reply = post_json(
            gw,
            "/api/v2/login/account",
            r#"{"account":"a@example.com","password":"x"}"#,
        )
        .await;
        assert_envelope_exact(&reply, 502, "upstream unavailable");
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_rejections_total",
                &[("reason", "upstream_error")]
            ),
            Some(2.0)
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_upstream_gives_504_after_the_request_timeout() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.upstream.request_timeout = Duration::from_millis(300)).await;
        let gw = r.app.proxy_addr();
        r.up.set_mode(UpMode::Delay(Duration::from_secs(3)));
        let started = Instant::now();
        let reply = post_json(gw, "/slow", r#"{"a":1}"#).await;
        let took = started.elapsed();
        assert_envelope_exact(&reply, 504, "upstream timed out");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
            "answered after {took:?}"
        );
        assert_eq!(
            r.up.arrived("/slow"),
            1,
            "the request did reach the upstream"
        );

        r.up.set_mode(UpMode::Normal);
        let reply = get(gw, "/fast").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), plain_answer("/fast"));
        let m = metrics(r.app.admin_addr()).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_rejections_total",
                &[("reason", "upstream_timeout")]
            ),
            Some(1.0)
        );
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_resets_closes_or_answers_garbage_gives_502() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        // Warm a pooled keep-alive connection first: failures must not stick to it.
        assert_eq!(get(gw, "/warm").await.status, StatusCode::OK);
        for (mode, target) in [
            (UpMode::Reset, "/broken/reset"),
            (UpMode::Close, "/broken/close"),
            (UpMode::Garbage, "/broken/garbage"),
        ] {
            r.up.set_mode(mode);
            let reply = post_json(gw, target, r#"{"n":1}"#).await;
            assert_envelope_exact(&reply, 502, "upstream unavailable");
            // Sent once, not retried: a login must never be sent twice.
            let seen = r.up.only(target);
            assert!(seen.complete, "{mode:?}");
            assert_eq!(seen.body, r#"{"n":1}"#);

            r.up.set_mode(UpMode::Normal);
            let after = format!("{target}/after");
            let reply = get(gw, &after).await;
            assert_eq!(reply.status, StatusCode::OK, "{mode:?}: recovered");
            assert_eq!(reply.text(), plain_answer(&after));
        }
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_with_content_length_gets_413_and_is_not_forwarded() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.server.max_body_bytes = 1000).await;
        let gw = r.app.proxy_addr();
        let reply = send(build("POST", gw, "/echo/over", &[], vec![b'x'; 1001])).await;
        assert_envelope_exact(&reply, 413, "request body too large");
        assert_eq!(r.up.complete_to("/echo/over").len(), 0);
        assert_eq!(
            r.up.arrived("/echo/over"),
            0,
            "rejected on its content-length"
        );

        // Exactly at the limit passes, byte-exact.
        let reply = send(build("POST", gw, "/echo/at", &[], vec![b'y'; 1000])).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body, vec![b'y'; 1000]);
        assert_eq!(r.up.only("/echo/at").body, vec![b'y'; 1000]);
        r.app.shutdown().await;
    })
    .await;
}

type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>;

/// A streamed body of these frames, without a content-length.
fn frames(
    parts: impl IntoIterator<Item = Bytes>,
) -> StreamBody<futures_util::stream::Iter<Frames>> {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        parts.into_iter().map(|b| Ok(Frame::data(b))).collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

/// A streamed body of `n` chunks of `size` bytes, without a content-length.
fn chunked(n: usize, size: usize) -> StreamBody<futures_util::stream::Iter<Frames>> {
    frames((0..n).map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size])))
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_and_never_arrives_whole() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.server.max_body_bytes = 1000).await;
        let gw = r.app.proxy_addr();
        let client = Client::builder(TokioExecutor::new()).build_http();

        let resp = bounded(
            "chunked over the limit",
            Duration::from_secs(30),
            client.request(
                Request::post(format!("http://{gw}/echo/chunked-over"))
                    .body(chunked(20, 100))
                    .unwrap(),
            ),
        )
        .await
        .expect("poolgate answers");
        let reply = read_reply(resp).await;
        assert_envelope_exact(&reply, 413, "request body too large");
        // The upstream may have seen the head; it must not have a whole request.
        wait_for_quiet().await;
        assert_eq!(r.up.complete_to("/echo/chunked-over").len(), 0);

        // Chunked and exactly at the limit passes.
        let resp = client
            .request(
                Request::post(format!("http://{gw}/echo/chunked-at"))
                    .body(chunked(10, 100))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1000);
        assert_eq!(r.up.only("/echo/chunked-at").body, body);
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_guarded_login_in_pieces_is_judged_whole_and_forwarded_byte_exact() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.guards.inspect_body_bytes = 100).await;
        let (gw, admin) = (r.app.proxy_addr(), r.app.admin_addr());
        let client = Client::builder(TokioExecutor::new()).build_http();
        let login = |parts: &[&str]| {
            Request::post(format!("http://{gw}/api/v2/login/account"))
                .header("content-type", "application/json")
                .body(frames(parts.iter().map(|p| Bytes::from(p.to_string()))))
                .unwrap()
        };
        // The account's name is cut across three pieces: read as one body, it
        // is counted for that account (a wrong password).
        let parts = [
            r#"{"account":"pie"#,
            r#"ces@exam"#,
            r#"ple.com","password":"wrong"}"#,
        ];
        let resp = client.request(login(&parts)).await.expect("answered");
        let status = resp.status();
        let answer = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "{answer:?}");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["code"],
            2333
        );
        let sent = r.up.only("/api/v2/login/account").body;
        assert_eq!(sent, parts.concat().as_bytes(), "forwarded byte-exact");
        let c = get(admin, "/counters?account=pieces@example.com").await;
        assert_eq!(c.json()["password_failures"]["count"], 1, "{}", c.text());

        // Pieces that together pass guards.inspect_body_bytes (each alone
        // does not): 413, and nothing arrives.
        let long = "x".repeat(60);
        let parts = [r#"{"account":"a@example.com","password":""#, &long, r#""}"#];
        let resp = client.request(login(&parts)).await.expect("answered");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        wait_for_quiet().await;
        assert_eq!(
            r.up.complete_to("/api/v2/login/account").len(),
            1,
            "only the first"
        );
        r.app.shutdown().await;
    })
    .await;
}

/// Gives in-flight upstream bookkeeping a moment to settle before asserting an absence.
async fn wait_for_quiet() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_upstream_answer_that_breaks_off_is_never_passed_off_as_complete() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        r.up.set_mode(UpMode::BreakBody);
        // A login is read to learn its outcome: poolgate answers 502 itself.
        let reply = post_json(
            gw,
            "/api/v2/login/account",
            r#"{"account":"a@example.com","password":"x"}"#,
        )
        .await;
        assert_envelope_exact(&reply, 502, "upstream answer broke off");
        assert_eq!(r.up.complete_to("/api/v2/login/account").len(), 1);

        // Anything else streams: the client gets the head, then a body that
        // fails, never a short body that looks whole.
        let resp = bounded(
            "the head",
            Duration::from_secs(30),
            h1_client().request(build("GET", gw, "/streamed", &[], "")),
        )
        .await
        .expect("the head arrives");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = bounded(
            "the broken body",
            Duration::from_secs(30),
            resp.into_body().collect(),
        )
        .await;
        assert!(
            body.is_err(),
            "a truncated body was delivered as complete: {:?}",
            body.map(|b| b.to_bytes())
        );
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_declared_oversized_body_gets_413_in_the_shape_of_the_api_called() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.server.max_body_bytes = 1000).await;
        let gw = r.app.proxy_addr();
        let big = format!(r#"{{"account":"a@example.com","password":"{}"}}"#, "x".repeat(1000));
        let cases = [
            ("/api/v2/login/account", json!({"code": 413, "message": "request body too large", "apiCode": 413, "data": null})),
            ("/api/v3/signin", json!({"statusCode": 413, "message": "request body too large", "apiCode": 413, "data": null})),
            ("/graphql/v2", json!({"data": null, "errors": [{"message": {"code": 413, "message": "request body too large"}, "extensions": {"code": 413}}]})),
        ];
        for (target, want) in cases {
            let reply = post_json(gw, target, &big).await;
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{target}");
            assert_eq!(reply.json(), want, "{target}");
            assert_eq!(r.up.arrived(target), 0, "{target}");
        }
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn headers_named_in_any_connection_line_are_dropped_both_ways() {
    bounded("test", LIMIT, async {
        let r = rig(|_| {}).await;
        let gw = r.app.proxy_addr();
        // Connection is a list: it may come as several lines, each naming headers.
        let reply = send(build(
            "POST",
            gw,
            "/echo/conn-lines",
            &[
                ("connection", "keep-alive"),
                ("connection", "x-hop-second-line"),
                ("x-hop-second-line", "must not be forwarded"),
                ("x-kept", "yes"),
            ],
            "b",
        ))
        .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let seen = r.up.only("/echo/conn-lines");
        assert_eq!(seen.header_all("x-hop-second-line"), Vec::<&str>::new());
        assert_eq!(seen.header_all("connection"), Vec::<&str>::new());
        assert_eq!(seen.header("x-kept"), Some("yes"));

        // The same in the upstream's answer (raw: hyper would merge the lines).
        r.up.set_mode(UpMode::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\
              Connection: x-up-hop-2\r\nX-Up-Hop-2: must not reach the client\r\n\
              X-Up: 1\r\nContent-Length: 4\r\n\r\nbody",
        ));
        let reply = get(gw, "/conn-lines-answer").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "body");
        assert_eq!(reply.header("x-up"), Some("1"));
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(reply.header("x-up-hop-2"), None);
        r.app.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_proxy_workers_share_one_port_and_each_connection_is_served_and_drained() {
    bounded("test", LIMIT, async {
        let r = rig(|c| c.server.workers = 4).await;
        let gw = r.app.proxy_addr();
        // 48 fresh connections at once: the kernel spreads them over the
        // workers' sockets; every one must be answered, on the port reported.
        let replies = futures_util::future::join_all((0..48).map(|i| async move {
            let client = h1_client();
            let target = format!("/spread/{i}");
            let reply = send_with(&client, build("GET", gw, &target, &[], Bytes::new())).await;
            (target, reply)
        }))
        .await;
        for (target, reply) in &replies {
            assert_eq!(reply.status, StatusCode::OK, "{target}");
            assert_eq!(reply.text(), plain_answer(target));
        }
        assert_eq!(r.up.requests().len(), 48);
        // Shutdown stops every worker (the test's time bound would catch one that hangs).
        r.app.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(gw).await.is_err(),
            "no worker is still listening"
        );
    })
    .await;
}
