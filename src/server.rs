//! Listeners: accept loops for the proxy (HTTP/1.1 and h2c) and the admin
//! port, with graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connection-level settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Time a client has to send its request headers (HTTP/1).
    pub header_read_timeout: Duration,
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
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let on_conn = std::sync::Arc::new(on_conn);
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
        let _ = stream.set_nodelay(true);
        let svc = make_service(peer);
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let watched = graceful.watch(conn);
        let on_conn = on_conn.clone();
        let name = opts.name;
        tokio::spawn(async move {
            on_conn(true);
            if let Err(e) = watched.await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
            on_conn(false);
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
