//! Forwarding to the upstream: pooled keep-alive HTTP/1.1 connections, hop-by-hop
//! header handling, `X-Forwarded-*`, body limits, timeouts, and the mapping of
//! upstream failures to 502/504.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

mod h1;
mod pool;
pub use h1::Error as UpstreamError;
pub use pool::PooledBody;
use pool::{Pool, PoolError};

use crate::config::UpstreamConfig;

/// The body sent upstream: the client's, streamed under a size limit, or one
/// poolgate buffered (the guards read some bodies before forwarding).
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// Why forwarding failed.
#[derive(Debug)]
pub enum ForwardError {
    /// The upstream could not be connected to, or broke the connection.
    Unavailable(String),
    /// The upstream did not answer within the request timeout.
    Timeout,
    /// The client's body grew past the limit while streaming.
    BodyTooLarge,
    /// The client's body stream failed (the client went away).
    ClientBody(String),
}

thread_local! {
    /// The proxy worker this thread is (see [`set_worker`]).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as proxy worker `i`: its requests use pool `i`, so an
/// upstream connection is only ever driven by the thread that uses it.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// The upstream login service.
pub struct Upstream {
    /// One connection pool per proxy worker.
    pools: Box<[Arc<Pool>]>,
    base_path: String,
    request_timeout: Duration,
    preserve_host: bool,
    host_value: HeaderValue,
}

/// Reads the PEM certificates of `upstream.ca_file` (at least one).
pub fn load_ca_file(
    path: &std::path::Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("upstream.ca_file: cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("upstream.ca_file {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "upstream.ca_file {}: no CERTIFICATE block in it",
            path.display()
        );
    }
    Ok(certs)
}

/// TLS settings that trust only the CAs of `upstream.ca_file` (ring provider,
/// rustls's safe default protocol versions, no client certificate).
fn private_ca_config(path: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_ca_file(path)? {
        roots.add(cert).map_err(|e| {
            anyhow::anyhow!(
                "upstream.ca_file {}: not a usable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Upstream {
    /// Pooled clients for the configured upstream, one per proxy worker.
    pub fn new(cfg: &UpstreamConfig, uri: &Uri, workers: usize) -> anyhow::Result<Upstream> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = match &cfg.ca_file {
            Some(path) => tls.with_tls_config(private_ca_config(path)?),
            None => tls.with_webpki_roots(),
        };
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream.url has no host"))?;
        let target = Uri::builder()
            .scheme(uri.scheme().cloned().unwrap_or(Scheme::HTTP))
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let pools = (0..workers.max(1))
            .map(|_| {
                Pool::new(
                    connector.clone(),
                    target.clone(),
                    cfg.pool_max_idle,
                    cfg.pool_idle_timeout,
                )
            })
            .collect();
        Ok(Upstream {
            pools,
            host_value: HeaderValue::from_str(authority.as_str())?,
            base_path: uri.path().trim_end_matches('/').to_string(),
            request_timeout: cfg.request_timeout,
            preserve_host: cfg.preserve_host,
        })
    }

    /// How long the upstream has to answer (`upstream.request_timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Forwards `req` (already stripped of nothing) from client `peer`.
    pub async fn forward(
        &self,
        req: Request<UpstreamBody>,
        peer: IpAddr,
        peer_trusted: bool,
    ) -> Result<Response<PooledBody>, ForwardError> {
        let req = self.prepare(req, peer, peer_trusted);
        let pool = &self.pools[WORKER.with(|w| w.get()) % self.pools.len()];
        match crate::coarse_timer::timeout(self.request_timeout, pool.send(req)).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
            Ok(Err(PoolError::Connect(e))) => Err(ForwardError::Unavailable(e)),
            Ok(Err(PoolError::Send(e))) => Err(classify_error(e)),
        }
    }

    fn prepare(
        &self,
        req: Request<UpstreamBody>,
        peer: IpAddr,
        peer_trusted: bool,
    ) -> Request<UpstreamBody> {
        let (mut parts, body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // Without a base path the client's path and query go on as they are:
        // a clone shares hyper's buffer (no copy, no allocation).
        let pq = match (self.base_path.is_empty(), parts.uri.path_and_query()) {
            (true, Some(pq)) => Ok(pq.clone()),
            (true, None) => Ok(PathAndQuery::from_static("/")),
            (false, pq) => PathAndQuery::from_maybe_shared(Bytes::from(format!(
                "{}{}",
                self.base_path,
                pq.map_or("/", |p| p.as_str())
            ))),
        };
        // Origin form, as HTTP/1 sends it to a server (not a proxy).
        parts.uri = Uri::from(pq.unwrap_or_else(|_| PathAndQuery::from_static("/")));
        // The upstream speaks HTTP/1.1 whatever the client spoke.
        parts.version = Version::HTTP_11;
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        match (&client_host, self.preserve_host) {
            (Some(v), true) => {
                h.insert(header::HOST, v.clone());
            }
            _ => {
                h.insert(header::HOST, self.host_value.clone());
            }
        }
        append_xff(h, peer);
        forwarded(h, peer, peer_trusted);
        // Only a trusted proxy may tell us the original scheme and host.
        // (`entry`: one lookup where `contains_key` then `insert` made two.)
        let http = HeaderValue::from_static("http");
        if peer_trusted {
            h.entry(X_FORWARDED_PROTO).or_insert(http);
        } else {
            h.insert(X_FORWARDED_PROTO, http);
        }
        match (h.entry(X_FORWARDED_HOST), client_host) {
            (Entry::Occupied(_), _) if peer_trusted => {}
            (Entry::Occupied(mut e), Some(v)) => {
                e.insert(v);
            }
            (Entry::Occupied(e), None) => {
                e.remove_entry_mult();
            }
            (Entry::Vacant(e), Some(v)) => {
                e.insert(v);
            }
            (Entry::Vacant(_), None) => {}
        }
        Request::from_parts(parts, body)
    }
}

use crate::client_ip::X_FORWARDED_FOR;
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The lines of a list header folded into one, with a trailing `", "` when
/// there is anything, ready for this hop's element.
fn list_so_far(h: &HeaderMap, name: &HeaderName) -> String {
    let mut value = String::new();
    fold_lines(&mut value, h.get_all(name));
    value
}

/// [`list_so_far`]'s folding, onto `value`.
fn fold_lines<'a>(value: &mut String, lines: impl IntoIterator<Item = &'a HeaderValue>) {
    for v in lines {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                value.push_str(s);
                value.push_str(", ");
            }
        }
    }
}

/// Appends the peer to `X-Forwarded-For`, folding existing lines into one
/// (one lookup: the entry's lines are read and replaced in place).
fn append_xff(h: &mut HeaderMap, peer: IpAddr) {
    // Room for a few hops without growing; the value takes the buffer as is.
    let mut value = String::with_capacity(64);
    let entry = h.entry(X_FORWARDED_FOR);
    if let Entry::Occupied(e) = &entry {
        fold_lines(&mut value, e.iter());
    }
    push_ip(&mut value, peer);
    let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) else {
        return;
    };
    match entry {
        Entry::Occupied(mut e) => {
            e.insert(v);
        }
        Entry::Vacant(e) => {
            e.insert(v);
        }
    }
}

/// Appends `ip` as `Display` writes it; an IPv4 address without
/// `core::fmt`, which cost ~1,300 instructions per request (~3% of a GET).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, &o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 7239 `Forwarded`: an untrusted client's is dropped (upstreams often
/// read its first `for=`, which the client writes); a trusted proxy's gets
/// this hop appended, as `X-Forwarded-For` does.
fn forwarded(h: &mut HeaderMap, peer: IpAddr, peer_trusted: bool) {
    if !h.contains_key(header::FORWARDED) {
        return;
    }
    if !peer_trusted {
        h.remove(header::FORWARDED);
        return;
    }
    let mut value = list_so_far(h, &header::FORWARDED);
    use std::fmt::Write;
    let _ = match peer {
        IpAddr::V4(v4) => write!(value, "for={v4}"),
        IpAddr::V6(v6) => write!(value, "for=\"[{v6}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(header::FORWARDED, v);
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// and `Transfer-Encoding`, which hyper re-frames itself. `Connection` comes
/// first: [`strip_hop_by_hop`] reads the names it lists.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// The place of `name` in [`HOP_BY_HOP`]: a `match` on its text (a switch
/// on the length, then one comparison) where nine `HeaderName` comparisons
/// per header were ~700 instructions per proxied GET (callgrind).
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "upgrade" => 7,
        "transfer-encoding" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`, and
/// `Transfer-Encoding`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds which fixed ones are present, so that
    // only those are removed (each remove hashes its name): most messages
    // carry none, a keep-alive answer one or two (this was ~3% of a login).
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` is a list header: every line can name headers. Its
        // usual tokens (close, keep-alive, upgrade) need no name parsed.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|n| {
                !n.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| n.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

fn classify_error(e: h1::Error) -> ForwardError {
    match e {
        h1::Error::BodyTooLarge => ForwardError::BodyTooLarge,
        h1::Error::ClientBody(e) => ForwardError::ClientBody(e),
        other => ForwardError::Unavailable(crate::error_chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_index_is_the_place_in_the_list_and_nothing_else() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
        }
        for other in [
            "host",
            "content-length",
            "x-connection",
            "tee",
            "upgrade-insecure-requests",
        ] {
            assert_eq!(hop_index(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut samples: Vec<IpAddr> = (0..=255u8)
            .map(|o| IpAddr::from([o, 255 - o, o / 3, 9]))
            .collect();
        samples.push("::1".parse().unwrap());
        samples.push("2001:db8::8a2e:370:7334".parse().unwrap());
        samples.push("::ffff:1.2.3.4".parse().unwrap());
        for ip in samples {
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("connection", "Keep-Alive, X-Hop, close"),
            ("connection", "te"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);

        let mut none = map(&[("content-type", "text/plain"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut none);
        assert_eq!(none.len(), 2);
    }
}
