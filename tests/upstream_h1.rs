//! The upstream hop's HTTP/1.1 (src/proxy/h1.rs) against a raw upstream
//! that answers each path with exact bytes: chunked answers, interim
//! answers, answers framed up to the close, and the framings an upstream
//! can get wrong. What matters most: whatever an upstream sends, one
//! request's answer never becomes another's (a connection is reused only
//! after an answer whose end is certain), and a head poolgate cannot frame
//! is a 502, not a guess.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// The exact bytes the upstream answers `path` with, and what it does next.
fn script(method: &str, path: &str) -> (Vec<u8>, Then) {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let answer: String = match path {
        "/plain" if method == "HEAD" => {
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\n".into()
        }
        "/plain" => ok("fine"),
        "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
            .into(),
        "/coding-and-length" => "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\
             transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .into(),
        "/extra" => format!(
            "{}HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            ok("ok")
        ),
        "/interim" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}",
            ok("ok")
        ),
        "/no-content" => "HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n".into(),
        // Hop-by-hop headers in any case, one named by a later `Connection`.
        "/hop-headers" => "HTTP/1.1 200 OK\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             CONNECTION: keep-alive, x-up-hop, X-Other-Hop\r\nx-other-hop: 2\r\n\
             Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTrailer: x-sum\r\n\
             Proxy-Connection: keep-alive\r\nx-kept: 3\r\ncontent-length: 2\r\n\r\nok"
            .into(),
        "/to-the-close" => {
            return (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it".to_vec(),
                Then::Close,
            )
        }
        // Refuses a body at its head, and reads none of it.
        "/early" => {
            return (
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n".to_vec(),
                Then::Hold,
            )
        }
        "/conflicting-lengths" => {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk".into()
        }
        "/signed-length" => "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok".into(),
        "/huge-head" => format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(70 * 1024)
        ),
        "/bad-chunk" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n"
            .into(),
        "/switch" => "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".into(),
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
    };
    (answer.into_bytes(), Then::KeepAlive)
}

/// A raw upstream answering bodiless requests by [`script`]; the number of
/// connections it accepted.
async fn scripted_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(script).await
}

/// Sends `method path` on `client` (one kept-alive connection, so one proxy
/// worker and one upstream pool).
async fn ask(client: &TestClient, gw: SocketAddr, method: &str, path: &str) -> Reply {
    send_with(client, build(method, gw, path, &[], Bytes::new())).await
}

/// Writes one raw request and reads until the connection closes.
async fn raw_exchange(gw: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut s, Duration::from_secs(20)).await).into_owned()
}

#[tokio::test]
async fn a_chunked_answer_arrives_whole_and_its_connection_serves_the_next_request() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let client = h1_client();
        for _ in 0..3 {
            let r = ask(&client, app.proxy_addr(), "GET", "/chunked").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, "hello world");
            // Re-framed for the client: the upstream's coding is its own hop's.
            assert_eq!(r.header("x-trailer"), None);
        }
        let r = ask(&client, app.proxy_addr(), "GET", "/plain").await;
        assert_eq!(r.body, "fine");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bytes_after_an_answer_never_answer_the_next_request() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let client = h1_client();
        let r = ask(&client, app.proxy_addr(), "GET", "/extra").await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
        for _ in 0..3 {
            let r = ask(&client, app.proxy_addr(), "GET", "/plain").await;
            assert_eq!(r.body, "fine", "an earlier answer's leftovers came back");
        }
        // The connection with leftovers was closed, the next one kept.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_answer_framed_by_a_coding_and_a_length_is_read_by_its_chunks_and_not_reused() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let client = h1_client();
        let r = ask(&client, app.proxy_addr(), "GET", "/coding-and-length").await;
        assert_eq!(r.body, "hello");
        assert_eq!(
            r.header("content-length"),
            None,
            "the untrusted length went on"
        );
        let r = ask(&client, app.proxy_addr(), "GET", "/plain").await;
        assert_eq!(r.body, "fine");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_answers_hop_by_hop_headers_and_the_ones_its_connection_names_stop_here() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let client = h1_client();
        for _ in 0..2 {
            let r = ask(&client, app.proxy_addr(), "GET", "/hop-headers").await;
            assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
            assert_eq!(r.header("x-kept"), Some("3"));
            for hop in [
                "x-up-hop",
                "x-other-hop",
                "keep-alive",
                "proxy-authenticate",
                "upgrade",
                "trailer",
                "proxy-connection",
            ] {
                assert_eq!(r.header(hop), None, "{hop}");
            }
        }
        // `Connection: keep-alive` from the upstream did not stop reuse.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_answer_up_to_the_close_is_passed_whole_and_its_connection_is_not_reused() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let client = h1_client();
        for _ in 0..2 {
            let r = ask(&client, app.proxy_addr(), "GET", "/to-the-close").await;
            assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"all of it"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn interim_answers_are_skipped_and_bodiless_answers_keep_the_connection() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let gw = app.proxy_addr();
        let client = h1_client();
        let r = ask(&client, gw, "GET", "/interim").await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
        let r = ask(&client, gw, "HEAD", "/plain").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), Some("4"));
        assert!(r.body.is_empty());
        let r = ask(&client, gw, "GET", "/no-content").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(r.header("x-n"), Some("1"));
        let r = ask(&client, gw, "GET", "/plain").await;
        assert_eq!(r.body, "fine");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn heads_poolgate_cannot_frame_are_a_502_and_a_bad_chunk_cuts_the_answer_short() {
    bounded("test", LIMIT, async {
        let (up, _) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let gw = app.proxy_addr();
        for path in [
            "/conflicting-lengths",
            "/signed-length",
            "/huge-head",
            "/switch",
        ] {
            let r = get(gw, path).await;
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
        }
        // The bad chunk comes after the head and a good chunk: the client
        // may get those or nothing, but never an answer that ends as if whole.
        let text = raw_exchange(gw, "/bad-chunk").await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{text}"
        );
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "passed off as complete: {text}"
        );
        assert!(!text.contains("more"), "{text}");
        // Still serving.
        assert_eq!(get(gw, "/plain").await.body, "fine");
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_whose_upstream_answered_before_the_body_ended_takes_no_next_request() {
    bounded("test", LIMIT, async {
        let (up, accepted) = scripted_upstream().await;
        let (app, _dir) = start_before(up, |c| {
            // One worker, one pool: the next request would find that connection.
            c.server.workers = 1;
            c.server.max_body_bytes = 64 << 20;
        })
        .await;
        let gw = app.proxy_addr();

        // A body far larger than the socket buffers between poolgate and an
        // upstream that reads none of it: poolgate sees the answer while
        // it still has body to send.
        let len: usize = 48 << 20;
        let s = TcpStream::connect(gw).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let head = format!("POST /early HTTP/1.1\r\nhost: gw\r\ncontent-length: {len}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if wr.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before an answer");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        writer.abort();

        // The upstream still waits for that body: the next request must go
        // on a new connection, or it would never be answered.
        let r = get(gw, "/plain").await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"fine"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        app.shutdown().await;
    })
    .await;
}
