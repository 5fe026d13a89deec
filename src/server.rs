//! Listeners: accept loops for the proxy (HTTP/1.1 and h2c) and the admin
//! port, with graceful drain on shutdown, a cap on open connections, and
//! [`RequestHygiene`]: the size check on a request's head made before the
//! gateway sees it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
use crate::response::{self, RespBody};

/// Connection-level settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Time a client has to send its request headers (HTTP/1); also the idle
    /// timeout of a keep-alive connection, since hyper runs this timer while
    /// it waits for the next request head.
    pub header_read_timeout: Duration,
    /// Most connections open at once; past it new ones get a 503 and are
    /// closed. Clones share it: the proxy's per-core workers hold one cap.
    pub cap: ConnectionCap,
    /// hyper's own limit on a request head (HTTP/1 read buffer, HTTP/2 header
    /// list): a backstop above the limit [`RequestHygiene`] answers in JSON.
    pub head_backstop_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// `poolgate_connections_rejected_total` of this listener, if counted.
    pub rejected: Option<prometheus::IntCounter>,
    /// `poolgate_connection_errors_total{listener, reason}`, if counted.
    pub errors: Option<prometheus::IntCounterVec>,
    /// How long in-flight requests may take after shutdown starts.
    pub shutdown_grace: Duration,
    /// Name for logs.
    pub name: &'static str,
}

/// Binds `n` listening sockets to `addr` with `SO_REUSEPORT`, so the kernel
/// spreads new connections over the proxy workers (as nginx's `reuseport`).
/// With port 0 the first socket picks the port and the others join it.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Serves `listener` until `shutdown` turns true, then drains open connections
/// for up to `shutdown_grace`. `make_service` builds the service of a
/// connection; `on_conn(true/false)` is told when one opens and closes.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    opts: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
    on_conn: impl Fn(bool) + Send + Sync + 'static,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Armed and dropped per request head: the coarse timer makes that a
        // thread-local push and removal (see `coarse_timer`).
        .timer(crate::coarse_timer::CoarseTimer)
        .header_read_timeout(opts.header_read_timeout)
        // hyper refuses a buffer under 8 KiB.
        .max_buf_size(opts.head_backstop_bytes.max(8192))
        // An answer's head and body copied into one buffer and sent with
        // one `send`, not queued as slices for `writev`: the gateway's
        // answers are small JSON, and the queue cost more than the copy
        // (~300 instructions per GET, ~700 per login, callgrind). The
        // copy is bounded by `max_buf_size` above; a large body is flushed
        // as it fills.
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(opts.head_backstop_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let on_conn = std::sync::Arc::new(on_conn);
    let ConnectionCap {
        limit,
        slots,
        refusals,
        full,
    } = opts.cap.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::error!(listener = opts.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(c) = &opts.rejected {
                c.inc();
            }
            // One line per episode, not per connection: a flood must not flood the log.
            if !full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    listener = opts.name,
                    max_connections = limit,
                    reason = "connection_limit",
                    "connection cap reached; new connections get 503 until some close"
                );
            }
            match refusals.clone().try_acquire_owned() {
                Ok(p) => {
                    tokio::spawn(async move {
                        refuse_connection(stream).await;
                        drop(p);
                    });
                }
                Err(_) => drop(stream),
            }
            continue;
        };
        if slots.available_permits() > limit / 10 {
            full.store(false, Ordering::Relaxed);
        }
        let _ = stream.set_nodelay(true);
        let svc = make_service(peer);
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let watched = graceful.watch(conn);
        let on_conn = on_conn.clone();
        let errors = opts.errors.clone();
        let name = opts.name;
        tokio::spawn(async move {
            on_conn(true);
            if let Err(e) = watched.await {
                let reason = connection_error_reason(&*e);
                if let Some(c) = &errors {
                    c.with_label_values(&[name, reason]).inc();
                }
                // What hyper answered itself (400, 431, timeout) is a client
                // being refused: log it like the gateway's own refusals.
                if matches!(reason, "bad_request" | "head_too_large" | "header_timeout") {
                    tracing::info!(listener = name, client_ip = %peer.ip(), reason, error = %e, "connection refused by the HTTP parser");
                } else {
                    tracing::debug!(listener = name, %peer, reason, error = %e, "connection ended with an error");
                }
            }
            on_conn(false);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {
            tracing::info!(listener = opts.name, "all connections drained");
        }
        _ = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(listener = opts.name, grace = ?opts.shutdown_grace, "drain deadline passed; closing remaining connections");
        }
    }
}

/// The `reason` label of a connection that ended with an error.
fn connection_error_reason(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return "other";
    };
    if h.is_parse_too_large() {
        "head_too_large"
    } else if h.is_parse() || h.is_parse_version_h2() {
        "bad_request"
    } else if h.is_timeout() {
        "header_timeout"
    } else if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
        "client_gone"
    } else {
        "other"
    }
}

/// A cap on open connections. Clones share the count, so every worker
/// serving one listening address draws on the same slots.
#[derive(Clone)]
pub struct ConnectionCap {
    limit: usize,
    slots: Arc<Semaphore>,
    // Refusals are answered by short tasks; bound them too, so a flood past
    // the cap costs a fixed amount of memory (past this, the socket is just closed).
    refusals: Arc<Semaphore>,
    // Set while refusing, so the log says so once per episode.
    full: Arc<AtomicBool>,
}

impl ConnectionCap {
    /// A cap of `limit` open connections.
    pub fn new(limit: usize) -> Self {
        ConnectionCap {
            limit,
            slots: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            full: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl std::fmt::Debug for ConnectionCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCap")
            .field("limit", &self.limit)
            .field("available", &self.slots.available_permits())
            .finish()
    }
}

/// Refusal answers being written at once, at most.
const REFUSALS_IN_FLIGHT: usize = 256;

/// The answer to a connection over the cap: a complete HTTP/1.1 503 in the
/// v2 envelope, sent before reading anything, so it needs no parsing.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json; charset=utf-8\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 97\r\n\r\n\
{\"code\":503,\"message\":\"poolgate is at its connection limit, try again\",\"apiCode\":503,\"data\":null}";

/// Writes [`OVER_CAP`] and closes, within a second whatever the client does.
async fn refuse_connection(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(OVER_CAP).await?;
        stream.shutdown().await?;
        // Read (and drop) what the client sent until it closes: closing with
        // unread bytes would send a reset, and the client could lose the 503.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The check on a request's head made before the gateway sees it: its size,
/// answered 431 in Authing's v2 envelope (hyper's own 431 has no body),
/// logged with its reason and counted in `poolgate_rejections_total{reason}`.
///
/// It also refuses (400, `bad_transfer_encoding`) a `Transfer-Encoding` that
/// is not exactly one `chunked`, such as `identity, chunked`, which hyper
/// accepts because it ends in `chunked`: poolgate applies no coding but
/// chunked, and a front proxy may read such a list differently.
///
/// Other framing (smuggling shapes) needs no check here: hyper refuses with 400
/// two different `Content-Length`s, a list or a sign in one, a
/// `Transfer-Encoding` other than a lone final `chunked`, `Transfer-Encoding`
/// in HTTP/1.0, obs-fold lines, whitespace before a colon and bad chunk
/// sizes; and it reads `Content-Length` with `Transfer-Encoding` as chunked
/// and closes the connection after the answer (RFC 9112 §6.3), so trailing
/// bytes are never read as a request. `tests/hostile.rs` holds it to that.
/// Those refusals are counted by the accept loop in
/// `poolgate_connection_errors_total{reason="bad_request"}`.
#[derive(Clone)]
pub struct RequestHygiene<S> {
    inner: S,
    limits: Arc<HeadLimits>,
    peer: SocketAddr,
}

/// What [`RequestHygiene`] enforces.
pub struct HeadLimits {
    /// Largest request head, in bytes (request line plus header lines).
    pub max_header_bytes: usize,
    /// Where rejections are counted.
    pub metrics: Metrics,
    /// The budget on rejection log lines (shared with the gateway).
    pub rejection_log: Arc<crate::rejection_log::RejectionLog>,
}

impl<S> RequestHygiene<S> {
    /// `inner` behind the checks, for a connection from `peer`.
    pub fn new(inner: S, limits: Arc<HeadLimits>, peer: SocketAddr) -> Self {
        RequestHygiene {
            inner,
            limits,
            peer,
        }
    }
}

/// The size of a request head as it came in: request line plus
/// `name: value\r\n` per header (HTTP/2 pseudo-headers counted the same way).
pub fn head_bytes<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// No `Transfer-Encoding`, or exactly one line saying `chunked` (HTTP/2 has
/// none: its layer refuses the header).
fn plain_transfer_encoding<B>(req: &Request<B>) -> bool {
    let mut te = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

impl<S> tower::Service<Request<Incoming>> for RequestHygiene<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    /// The inner service's future as it is (no second box per request), or
    /// the refusal, ready.
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Response<RespBody>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let size = head_bytes(&req);
        let (status, reason, message) = if size > self.limits.max_header_bytes {
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "request headers too large",
            )
        } else if !plain_transfer_encoding(&req) {
            (
                StatusCode::BAD_REQUEST,
                "bad_transfer_encoding",
                "Transfer-Encoding must be exactly \"chunked\"",
            )
        } else {
            return futures_util::future::Either::Left(self.inner.call(req));
        };
        if self.limits.rejection_log.allow("head") {
            tracing::warn!(
                client_ip = %self.peer.ip(), method = %req.method(), path = req.uri().path(),
                reason, status = status.as_u16(), head_bytes = size,
                "request rejected"
            );
        }
        let m = &self.limits.metrics;
        m.rejections.with_label_values(&[reason]).inc();
        m.requests
            .with_label_values(&["other", method_label(req.method()), "rejected"])
            .inc();
        let mut resp = response::envelope(status, i64::from(status.as_u16()), message);
        if req.version() != Version::HTTP_2 {
            // The body (if any) is left unread: closing is cheaper than
            // reading a body we refused, and no byte of it can become a request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        futures_util::future::Either::Right(std::future::ready(Ok(resp)))
    }
}

/// A method as a metric label, with bounded cardinality.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_cap_answer_is_well_framed() {
        let text = std::str::from_utf8(OVER_CAP).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], 503);
        assert!(v["data"].is_null());
    }
}
