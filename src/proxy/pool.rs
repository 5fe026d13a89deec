//! One proxy worker's keep-alive HTTP/1 connections to the upstream.
//!
//! hyper-util's legacy client did this job through a general pool: keyed by
//! scheme and authority (hashed on every checkout and return), racing each
//! checkout against a lazy connect, with a task per connection return. Its
//! checkout, returns and hashing were ~9% of a login's instructions
//! (callgrind, `benches/loadtest.sh instructions`). Here there is one
//! upstream and one worker thread per pool: a stack of idle connections
//! behind an uncontended lock, the request's own task speaking HTTP/1.1 on
//! them (`h1`).
//!
//! - A connection goes back to the stack when its answer's body has been
//!   read to the end ([`PooledBody`]) and `h1` found the exchange clean
//!   (see its module doc); an answer dropped unread closes it.
//! - Checkout takes the most recently used connection that is usable, and
//!   drops closed ones and ones idle past `upstream.pool_idle_timeout`; a
//!   reaper task drops idle ones when no request comes.
//! - A request a reused connection certainly did not send (its first write
//!   failed) is sent again on another connection, as the legacy client's
//!   `retry_canceled_requests` did. So is an idempotent request with no
//!   body to stream (RFC 9110 §9.2.2) that a reused connection closed on
//!   before any byte of an answer: the upstream closed it idle as it went.
//!   Nothing else that may have been sent is.
//! - At most `upstream.pool_max_idle` idle connections are kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, Uri};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::h1::{self, Conn, Delivery, Framing};
use super::UpstreamBody;

/// Opens upstream connections (TCP, TLS for an `https` upstream).
pub(super) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why a pooled request failed.
pub(super) enum PoolError {
    /// No connection could be opened.
    Connect(String),
    /// The exchange failed (the request may have been sent).
    Send(h1::Error),
}

/// The connections of one proxy worker.
pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    connector: Connector,
    /// `scheme://authority/`: what the connector connects to.
    target: Uri,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the reaper task runs (started with the first connection, on
    /// the worker's runtime).
    reaper: std::sync::atomic::AtomicBool,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Pool {
    /// An empty pool; connections are opened on demand.
    pub(super) fn new(
        connector: Connector,
        target: Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            connector,
            target,
            max_idle,
            idle_timeout,
            reaper: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends a request on an idle connection or a new one: `head` holds its
    /// request line and headers (see [`h1::end_head`] for the rest).
    ///
    /// A function returning an `async` block, not an `async fn`: an `async
    /// fn` keeps its arguments twice in its future (as captured, then as
    /// locals), and this future is inside every forwarded request's. The
    /// head is finished before the future is built, so it holds only what
    /// the exchange needs.
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    pub(super) fn send(
        self: &Arc<Self>,
        method: Method,
        mut head: Vec<u8>,
        client_length: bool,
        mut body: UpstreamBody,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> + Send + '_ {
        // The head, and a buffered body with it: one write.
        let framing = h1::end_head(&method, client_length, &body, &mut head);
        if let Some(b) = h1::buffered_body(&body) {
            head.extend_from_slice(&b);
        }
        // Whether the request may go again after a reused connection closed
        // on it unanswered: idempotent, and no body that streaming used up.
        let replayable = matches!(
            method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) && (body.is_end_stream()
            || matches!(body, http_body_util::Either::Right(_)));
        async move {
            loop {
                let (mut conn, reused) = match self.checkout() {
                    Some(c) => (c, true),
                    // Boxed: the connector's future (TCP, TLS) is large and
                    // rare; inline, it would grow every request's future, which
                    // is moved a few times per request.
                    None => (Box::pin(self.connect()).await?, false),
                };
                match h1::send(&mut conn, &head, &mut body, framing).await {
                    Delivery::Done => {}
                    // Each retry used up an idle connection, so this ends.
                    Delivery::NotSent(_) if reused => continue,
                    Delivery::NotSent(e) | Delivery::Failed(e) => return Err(PoolError::Send(e)),
                }
                match h1::read_head(&mut conn, &method).await {
                    Ok(answer) => {
                        let mut resp = Response::new(PooledBody {
                            conn: Some(conn),
                            framing: answer.body,
                            reusable: answer.reusable,
                            pool: Arc::downgrade(self),
                        });
                        *resp.status_mut() = answer.status;
                        *resp.version_mut() = answer.version;
                        *resp.headers_mut() = answer.headers;
                        return Ok(resp);
                    }
                    Err(h1::Error::Closed) if reused && replayable => continue,
                    Err(e) => return Err(PoolError::Send(e)),
                }
            }
        }
    }

    /// The most recently used usable connection; closed and expired ones
    /// are dropped on the way.
    fn checkout(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(mut c) = idle.pop() {
            if now.duration_since(c.since) <= self.idle_timeout && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Back into the stack, unless it is full.
    fn put(&self, conn: Box<Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Drops idle connections past the idle timeout, and closed ones.
    fn prune(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            idle.retain_mut(|c| {
                now.duration_since(c.since) <= self.idle_timeout && c.conn.is_usable()
            });
        }
    }

    /// Opens a connection.
    async fn connect(self: &Arc<Self>) -> Result<Box<Conn>, PoolError> {
        use tower::Service;
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(crate::error_chain(&*e)))?;
        self.start_reaper();
        // Boxed: the stream type has room for a TLS session (over a kilobyte),
        // and a connection is moved a few times per request.
        Ok(Box::new(Conn::new(TokioIo::new(io))))
    }

    /// Idle connections must close after the idle timeout even when no
    /// checkout comes to notice: a task per pool looks at them.
    fn start_reaper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match pool.upgrade() {
                    Some(p) => p.prune(),
                    None => return,
                }
            }
        });
    }

    /// Idle connections held now (tests and metrics).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

/// An upstream answer's body, read from its connection by the request's
/// task. Read to the end, a reusable connection goes back to the pool;
/// dropped before that, the connection closes with it.
pub struct PooledBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    reusable: bool,
    pool: Weak<Pool>,
}

impl PooledBody {
    /// At the end of the body: the connection goes back if it may.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.is_clean() {
                if let Some(pool) = self.pool.upgrade() {
                    pool.put(conn);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = h1::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match h1::poll_body(conn, &mut this.framing, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(data))) => {
                // A body of known length may never be polled for its end.
                if this.framing == Framing::Length(0) {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is in no state to be reused.
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty answer (204, a HEAD's) is never polled.
        if self.framing == Framing::Length(0) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Either};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream answering each request with `ok` on a kept-alive
    /// connection; the number of connections it accepted.
    async fn upstream() -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let a = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(a).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    fn pool(target: Uri, idle_timeout: Duration) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(connector, target, 4, idle_timeout)
    }

    /// A bodiless GET: its head, and what `send` takes with it.
    async fn send_get(p: &Arc<Pool>) -> Result<Response<PooledBody>, PoolError> {
        let body: UpstreamBody = Either::Right(http_body_util::Full::new(Bytes::new()));
        let head = b"GET /x HTTP/1.1\r\nhost: up\r\n".to_vec();
        p.send(Method::GET, head, false, body).await
    }

    async fn send(p: &Arc<Pool>) -> String {
        let Ok(resp) = send_get(p).await else {
            panic!("send failed")
        };
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_read_answer_gives_its_connection_back_and_the_next_request_reuses_it() {
        let (target, accepted) = upstream().await;
        let p = pool(target, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(send(&p).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(p.idle_len(), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_does_not_come_back() {
        let (target, accepted) = upstream().await;
        let p = pool(target, Duration::from_secs(60));
        let Ok(resp) = send_get(&p).await else {
            panic!("send failed")
        };
        drop(resp);
        assert_eq!(p.idle_len(), 0);
        assert_eq!(send(&p).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_dropped() {
        let (target, accepted) = upstream().await;
        let p = pool(target, Duration::from_millis(1));
        assert_eq!(send(&p).await, "ok");
        // The reaper (every 100 ms at least) empties the stack.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.idle_len() > 0 {
            assert!(
                Instant::now() < deadline,
                "the idle connection was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(send(&p).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
