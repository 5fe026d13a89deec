//! The upstream connection pool (src/proxy/pool.rs) over real sockets:
//! requests one after the other share one upstream connection whichever
//! client connection they come on, and an upstream that closes its idle
//! connection after every answer does not fail the next request (it was
//! certainly not sent on the closed connection, so it goes on a new one).

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// A raw HTTP/1 upstream answering every bodiless request with 200 "ok",
/// counting its accepted connections; with `close_idle`, it closes each
/// connection right after its answer, without saying so.
async fn ok_upstream(close_idle: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let then = if close_idle {
        Then::Close
    } else {
        Then::KeepAlive
    };
    raw_upstream(move |_, _| {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        (answer.to_vec(), then)
    })
    .await
}

/// Sends `n` GETs one after the other on one client connection; the
/// statuses and bodies of the answers.
async fn keep_alive_gets(gw: SocketAddr, n: usize) -> Vec<String> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let req = format!("GET /api/other/{i} HTTP/1.1\r\nhost: example.com\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The answer is whole once its head and its content-length body are in.
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1).unwrap_or("").to_string();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    out.push(format!("{status} {body}"));
                    break;
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "poolgate closed the client connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    out
}

#[tokio::test]
async fn requests_one_after_the_other_share_one_upstream_connection() {
    bounded("test", LIMIT, async {
        let (up, accepted) = ok_upstream(false).await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let answers = keep_alive_gets(app.proxy_addr(), 5).await;
        assert_eq!(answers, vec!["200 ok"; 5]);
        // Another client connection, later: the same upstream connection,
        // unless the kernel put it on the other proxy worker (one pool each).
        for _ in 0..4 {
            let answers = keep_alive_gets(app.proxy_addr(), 2).await;
            assert_eq!(answers, vec!["200 ok"; 2]);
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!(
            n <= app_workers(),
            "{n} upstream connections for sequential requests"
        );
        app.shutdown().await;
    })
    .await;
}

/// Proxy workers of the test config: one pool each.
fn app_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_fails_no_request() {
    bounded("test", LIMIT, async {
        let (up, accepted) = ok_upstream(true).await;
        let (app, _dir) = start_before(up, |_| {}).await;
        let answers = keep_alive_gets(app.proxy_addr(), 6).await;
        assert_eq!(answers, vec!["200 ok"; 6]);
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        app.shutdown().await;
    })
    .await;
}
