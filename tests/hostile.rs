//! Hostile clients against the real listener, over raw sockets where a client
//! library would hide the bytes: oversized heads, slow and idle connections,
//! trickling bodies, the connection cap, request-smuggling shapes, and a
//! flood of distinct client addresses against the rate limiters' key cap.

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);
const LOGIN: &str = "/api/v2/login/account";

/// Reads until the peer closes (or `limit`); returns what arrived and whether it closed.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .is_ok();
    (out, closed)
}

/// The status code and JSON body (if any) of the first response in `raw`.
fn parse_first(raw: &[u8]) -> (u16, Option<serde_json::Value>) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .filter(|b| b.starts_with('{'))
        .and_then(|b| serde_json::from_str(b).ok());
    (status, body)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    bounded("connecting", LIMIT, TcpStream::connect(addr))
        .await
        .expect("connects")
}

#[tokio::test]
async fn an_oversized_head_gets_431_in_the_json_envelope_and_is_not_forwarded() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|c| c.server.max_header_bytes = 4096).await;
        let big = "a".repeat(5000);

        // HTTP/1.1 over a raw socket: the JSON answer, then the connection closes.
        let mut s = connect(app.proxy_addr()).await;
        let req = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (raw, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        let (status, body) = parse_first(&raw);
        assert_eq!(status, 431);
        assert_eq!(
            body,
            Some(serde_json::json!({"code": 431, "message": "request headers too large", "apiCode": 431, "data": null}))
        );
        assert!(closed, "the connection is closed after a 431");

        // Many small headers add up the same way.
        let many: Vec<(String, String)> = (0..60)
            .map(|i| (format!("x-h{i}"), "b".repeat(80)))
            .collect();
        let mut b = http::Request::builder().uri(format!("http://{}/many", app.proxy_addr()));
        for (k, v) in &many {
            b = b.header(k, v);
        }
        let r = send(b.body(http_body_util::Full::new(Bytes::new())).unwrap()).await;
        assert_envelope_exact(&r, 431, "request headers too large");

        // HTTP/2 gets the same JSON answer (hyper's header-list limit is the larger backstop).
        let req = build("GET", app.proxy_addr(), "/big-h2", &[("x-big", &big)], Bytes::new());
        let r = send_with(&h2_client(), req).await;
        assert_envelope_exact(&r, 431, "request headers too large");

        // Past the backstop (4x) hyper answers itself, still 431, and nothing is forwarded.
        let huge = "a".repeat(20_000);
        let mut s = connect(app.proxy_addr()).await;
        let req = format!("GET /huge HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n");
        let _ = s.write_all(req.as_bytes()).await;
        let (raw, _) = read_to_close(&mut s, Duration::from_secs(10)).await;
        assert_eq!(parse_first(&raw).0, 431);

        assert_eq!(up.arrived_total(), 0, "no oversized head reached the upstream");
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(&m, "poolgate_rejections_total", &[("reason", "headers_too_large")]),
            Some(3.0)
        );
        // Under the limit, all is normal.
        let r = get(app.proxy_addr(), "/fine").await;
        assert_eq!(r.status, StatusCode::OK);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    bounded("test", LIMIT, async {
        let (_up, app, _dir) =
            start_fixture(|c| c.server.header_read_timeout = Duration::from_millis(800)).await;
        let mut s = connect(app.proxy_addr()).await;
        s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read the first answer (keep-alive), then stay silent.
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(parse_first(&buf[..n]).0, 200);
        let idle_from = Instant::now();
        let (rest, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        let idle = idle_from.elapsed();
        assert!(closed, "an idle keep-alive connection is closed");
        assert!(
            idle >= Duration::from_millis(600) && idle < Duration::from_secs(5),
            "closed after {idle:?}, expected about the 800ms header_read_timeout"
        );
        // hyper closes silently on an idle connection (nothing half-sent to answer).
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

        // A client that trickles a second request head byte by byte is cut too.
        let mut s = connect(app.proxy_addr()).await;
        let started = Instant::now();
        let mut cut = false;
        for b in b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !cut {
            let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
            cut = closed;
        }
        assert!(cut, "a trickling head is cut off");
        assert!(started.elapsed() < Duration::from_secs(6));
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_connection_errors_total",
                &[("listener", "proxy"), ("reason", "header_timeout")]
            ),
            Some(2.0),
            "both cut-offs are counted"
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_guarded_body_that_trickles_gets_408_and_is_not_forwarded() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) =
            start_fixture(|c| c.server.body_read_timeout = Duration::from_millis(700)).await;
        let mut s = connect(app.proxy_addr()).await;
        let head = format!(
            "POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(b"{\"account\":").await.unwrap();
        let started = Instant::now();
        let (raw, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        let took = started.elapsed();
        let (status, body) = parse_first(&raw);
        assert_eq!(status, 408);
        let body = body.expect("JSON body");
        assert_eq!(body["code"], 408);
        assert_eq!(body["message"], "request body not received in time");
        assert!(body["data"].is_null());
        assert!(closed, "the connection is closed: the rest of the body must not become a request");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert_eq!(up.arrived_total(), 0);
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(&m, "poolgate_rejections_total", &[("reason", "body_timeout")]),
            Some(1.0)
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_are_counted() {
    bounded("test", LIMIT, async {
        let (_up, app, _dir) = start_fixture(|c| {
            c.server.max_connections = 3;
            c.server.header_read_timeout = Duration::from_secs(30);
        })
        .await;
        let addr = app.proxy_addr();
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = connect(addr).await;
            // A full exchange proves each held connection was really served.
            s.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(parse_first(&buf[..n]).0, 200);
            held.push(s);
        }
        let m = metrics(app.admin_addr()).await;
        assert_eq!(metric(&m, "poolgate_connections_open", &[]), Some(3.0));

        // The fourth: a 503 in the envelope, then closed, even though it sent a request.
        let mut s = connect(addr).await;
        let _ = s.write_all(b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (raw, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        let (status, body) = parse_first(&raw);
        assert_eq!(status, 503);
        let body = body.expect("JSON body");
        assert_eq!(body["code"], 503);
        assert!(body["data"].is_null());
        assert!(closed);
        let m = metrics(app.admin_addr()).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_connections_rejected_total",
                &[("listener", "proxy")]
            ),
            Some(1.0)
        );
        assert_eq!(metric(&m, "poolgate_connections_open", &[]), Some(3.0));

        // A slot freed is a slot usable.
        drop(held.pop());
        let mut ok = false;
        for _ in 0..50 {
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                let mut s = connect(addr).await;
                s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let (raw, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
                Some(parse_first(&raw).0)
            })
            .await;
            if let Ok(Some(200)) = r {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "a connection is accepted again once one closes");
        drop(held);
        app.shutdown().await;
    })
    .await;
}

/// A smuggling attempt: the request, then (in the same bytes) a second one
/// that a parser reading the framing differently would see.
struct Smuggle {
    name: &'static str,
    head: &'static str,
    /// Refused with 400 (true), or served once with the framing hyper chose
    /// and the connection closed after it (false: `Content-Length` together
    /// with `Transfer-Encoding`, RFC 9112 §6.3).
    refused: bool,
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

const SHAPES: &[Smuggle] = &[
    Smuggle {
        name: "content-length then transfer-encoding",
        head: "POST /echo/cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        refused: false,
    },
    Smuggle {
        name: "transfer-encoding then content-length",
        head: "POST /echo/te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n",
        refused: false,
    },
    Smuggle {
        name: "two different content-lengths",
        head: "POST /echo/cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 36\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "a content-length list",
        head: "POST /echo/cl-list HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 36\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "a signed content-length",
        head: "POST /echo/cl-plus HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "obs-fold header line",
        head: "POST /echo/fold HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "transfer-encoding xchunked",
        head: "POST /echo/xchunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "transfer-encoding chunked, identity",
        head: "POST /echo/chunked-identity HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "transfer-encoding identity, chunked",
        head: "POST /echo/identity-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "transfer-encoding twice",
        head: "POST /echo/te-te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "space before the colon",
        head: "POST /echo/te-space HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        refused: true,
    },
    Smuggle {
        name: "transfer-encoding in HTTP/1.0",
        head: "POST /echo/te-10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        refused: true,
    },
];

#[tokio::test]
async fn request_smuggling_shapes_are_refused_and_nothing_is_smuggled() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|_| {}).await;
        for shape in SHAPES {
            let mut s = connect(app.proxy_addr()).await;
            let bytes = format!("{}{SMUGGLED}", shape.head);
            let _ = s.write_all(bytes.as_bytes()).await;
            let (raw, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
            let text = String::from_utf8_lossy(&raw);
            let (status, _) = parse_first(&raw);
            let want = if shape.refused { 400 } else { 201 };
            assert_eq!(status, want, "{}: {text}", shape.name);
            assert_eq!(
                text.matches("HTTP/1.").count(),
                1,
                "{}: exactly one answer: {text}",
                shape.name
            );
            assert!(
                closed,
                "{}: the connection is closed after the answer",
                shape.name
            );
        }
        // Give any stray forward time to land before looking.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            up.arrived("/smuggled"),
            0,
            "a smuggled request reached the upstream"
        );
        // The two served shapes arrived once each, re-framed by poolgate's own
        // client: no Content-Length of the client's survives to disagree with the body.
        let served = up.requests();
        assert_eq!(served.len(), 2, "{served:?}");
        for r in &served {
            assert!(
                r.target == "/echo/cl-te" || r.target == "/echo/te-cl",
                "{}",
                r.target
            );
            assert!(r.body.is_empty() && r.complete, "{r:?}");
            assert_ne!(r.header("content-length"), Some("5"));
            assert_ne!(r.header("content-length"), Some("40"));
        }
        // Every refusal is counted: by hyper's parser, or by our own check.
        let m = metrics(app.admin_addr()).await;
        let by_parser = metric(
            &m,
            "poolgate_connection_errors_total",
            &[("listener", "proxy"), ("reason", "bad_request")],
        )
        .unwrap_or(0.0);
        let by_us = metric(
            &m,
            "poolgate_rejections_total",
            &[("reason", "bad_transfer_encoding")],
        )
        .unwrap_or(0.0);
        // hyper lets these two through (they end in `chunked`); the gateway refuses them.
        assert_eq!(
            by_us, 2.0,
            "identity, chunked and chunked twice are ours to refuse"
        );
        assert_eq!(
            by_parser + by_us,
            SHAPES.iter().filter(|s| s.refused).count() as f64
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_chunk_sizes_never_reach_the_upstream_as_a_request() {
    bounded("test", LIMIT, async {
        let (up, app, _dir) = start_fixture(|_| {}).await;
        let cases = [
            // Guarded (read whole before forwarding) and streamed routes.
            format!("POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
            format!("POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{{}}\r\n0\r\n\r\n"),
            "POST /echo/bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2x\r\nab\r\n0\r\n\r\n".to_string(),
            "POST /echo/neg-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n".to_string(),
            // More data than the chunk size says: the head is already streamed
            // to the upstream, the body breaks off there.
            "POST /echo/long-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n".to_string(),
        ];
        for c in &cases {
            let mut s = connect(app.proxy_addr()).await;
            let _ = s.write_all(format!("{c}{SMUGGLED}").as_bytes()).await;
            let (raw, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
            let text = String::from_utf8_lossy(&raw);
            assert!(closed, "{c:?}: closed");
            // hyper may have nothing to answer with (the head was already
            // taken); what matters is there is never a 2xx and never a second answer.
            assert!(text.matches("HTTP/1.").count() <= 1, "{c:?}: {text}");
            if !raw.is_empty() {
                let (status, _) = parse_first(&raw);
                assert!((400..600).contains(&status), "{c:?}: {text}");
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.arrived("/smuggled"), 0);
        assert!(
            up.complete_to(LOGIN).is_empty()
                && up.complete_to("/echo/bad-chunk").is_empty()
                && up.complete_to("/echo/long-chunk").is_empty(),
            "no broken body arrived whole"
        );
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_distinct_client_addresses_stays_under_the_rate_limit_key_cap() {
    bounded("test", Duration::from_secs(120), async {
        const CAP: usize = 300;
        const CLIENTS: usize = 3000;
        let (up, app, _dir) = start_fixture(|c| {
            c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            c.rate_limit.max_tracked_keys = CAP;
            c.rate_limit.other = poolgate::config::Rate {
                per_second: 1,
                burst: 1,
            };
            // No sweep during the flood: this is the gap between two sweeps,
            // where nothing but the cap bounds the table.
            c.guards.sweep_interval = Duration::from_secs(3600);
        })
        .await;
        let addr = app.proxy_addr();
        let admin = app.admin_addr();
        let client = h1_client();
        // 1,500 IPv4 addresses and 1,500 IPv6 addresses in distinct /64s.
        let ips: Vec<String> = (0..1500u32)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .chain((0..1500u32).map(|i| format!("2001:db8:{:x}:{:x}::1", i >> 8, i & 0xff)))
            .collect();
        assert_eq!(ips.len(), CLIENTS);
        let started = Instant::now();
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        let mut worst = 0.0f64;
        for batch in ips.chunks(100) {
            let futs = batch.iter().map(|ip| {
                let req = build(
                    "GET",
                    addr,
                    "/flood",
                    &[("x-forwarded-for", ip)],
                    Bytes::new(),
                );
                send_with(&client, req)
            });
            for r in futures_util::future::join_all(futs).await {
                *statuses.entry(r.status.as_u16()).or_default() += 1;
            }
            let m = metrics(admin).await;
            let live = metric(
                &m,
                "poolgate_rate_limit_tracked_keys",
                &[("class", "other")],
            )
            .expect("live gauge exported");
            worst = worst.max(live);
        }
        let secs = started.elapsed().as_secs() as usize;
        assert!(worst <= CAP as f64, "tracked keys {worst} > cap {CAP}");
        let m = metrics(admin).await;
        assert_eq!(
            metric(
                &m,
                "poolgate_rate_limit_tracked_keys",
                &[("class", "other")]
            ),
            Some(CAP as f64),
            "the table is full, not past full"
        );
        assert_eq!(
            metric(
                &m,
                "poolgate_rate_limit_overflow_total",
                &[("class", "other")]
            ),
            Some((CLIENTS - CAP) as f64),
            "every newcomer past the cap used the overflow bucket"
        );
        // Past the cap the newcomers share one bucket of 1/s: all but about
        // one a second are limited.
        let limited = statuses.get(&429).copied().unwrap_or(0);
        assert!(
            limited + secs + 1 >= CLIENTS - CAP,
            "the flood is still limited: {statuses:?} in {secs}s"
        );
        assert_eq!(up.arrived_total(), CLIENTS - limited);
        app.shutdown().await;
    })
    .await;
}
