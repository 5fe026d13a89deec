//! One proxy worker's keep-alive HTTP/1 connections to the upstream.
//!
//! hyper-util's legacy client did this job through a general pool: keyed by
//! scheme and authority (hashed on every checkout and return), racing each
//! checkout against a lazy connect, with a task per connection return. Its
//! checkout, returns and hashing were ~9% of a login's instructions
//! (callgrind, `benches/loadtest.sh instructions`). Here there is one
//! upstream and one worker thread per pool: a stack of idle connections
//! behind an uncontended lock, hyper's `client::conn::http1` underneath.
//!
//! - A connection goes back to the stack when its answer's body has been
//!   read to the end ([`PooledBody`]); an answer dropped unread closes it.
//! - Checkout takes the most recently used connection that is ready, and
//!   drops closed ones and ones idle past `upstream.pool_idle_timeout`; a
//!   reaper task drops idle ones when no request comes.
//! - A request a reused connection certainly did not send (it was closed
//!   first) is sent again on another connection, as the legacy client's
//!   `retry_canceled_requests` did; nothing that may have been sent is.
//! - At most `upstream.pool_max_idle` idle connections are kept.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;

use super::UpstreamBody;

/// Opens upstream connections (TCP, TLS for an `https` upstream).
pub(super) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why a pooled request failed.
pub(super) enum PoolError {
    /// No connection could be opened.
    Connect(String),
    /// The exchange failed (the request may have been sent).
    Send(hyper::Error),
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
    conn: SendRequest<UpstreamBody>,
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

    /// Sends `req` (origin-form URI) on an idle connection or a new one.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                // Boxed: the connector's future (TCP, TLS) is large and
                // rare; inline, it would grow every request's future, which
                // is moved a few times per request.
                None => (Box::pin(self.connect()).await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let pool = Arc::downgrade(self);
                    return Ok(resp.map(|body| PooledBody {
                        body,
                        back: Some((conn, pool)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before a byte of it was written: another
                    // connection may take it. Each retry used up an idle
                    // connection, so this ends.
                    Some(again) if reused => req = again,
                    _ => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
    }

    /// The most recently used ready connection; closed and expired ones are
    /// dropped on the way, busy ones (an answer still being read) kept.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if self.stale(c, now) {
                idle.swap_remove(i);
            } else if c.conn.is_ready() {
                return Some(idle.swap_remove(i).conn);
            }
        }
        None
    }

    /// Back into the stack, unless it is full or the connection closed.
    fn put(&self, conn: SendRequest<UpstreamBody>) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Drops idle connections past the idle timeout (and closed ones).
    fn prune(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            idle.retain(|c| !self.stale(c, now));
        }
    }

    /// Whether an idle connection is closed or idle past the timeout.
    fn stale(&self, c: &Idle, now: Instant) -> bool {
        c.conn.is_closed() || now.duration_since(c.since) > self.idle_timeout
    }

    /// Opens a connection and spawns the task that drives it.
    async fn connect(self: &Arc<Self>) -> Result<SendRequest<UpstreamBody>, PoolError> {
        use tower::Service;
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(crate::error_chain(&*e)))?;
        let (conn, driver) = http1::handshake(io)
            .await
            .map_err(|e| PoolError::Connect(crate::error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(target: "poolgate::proxy", error = %e, "upstream connection ended");
            }
        });
        self.start_reaper();
        Ok(conn)
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

/// An upstream answer's body that gives its connection back to the pool
/// once read to the end; dropped before that, the connection closes with
/// it (hyper cannot reuse a connection with an unread answer).
pub struct PooledBody {
    body: Incoming,
    back: Option<(SendRequest<UpstreamBody>, Weak<Pool>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((conn, pool)) = self.back.take() {
            if let Some(pool) = pool.upgrade() {
                pool.put(conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            // A body of known length may never be polled for its end.
            Some(Ok(_)) if self.body.is_end_stream() => self.give_back(),
            None => self.give_back(),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty answer (204, a HEAD's) is never polled.
        if self.body.is_end_stream() {
            self.give_back();
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

    fn get() -> Request<UpstreamBody> {
        let body: UpstreamBody = Either::Right(http_body_util::Full::new(Bytes::new()));
        Request::get("/x").header("host", "up").body(body).unwrap()
    }

    async fn send(p: &Arc<Pool>) -> String {
        let Ok(resp) = p.send(get()).await else {
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
        let Ok(resp) = p.send(get()).await else {
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
