//! Forwarding to the upstream: pooled keep-alive HTTP/1.1 connections, hop-by-hop
//! header handling, `X-Forwarded-*`, body limits, timeouts, and the mapping of
//! upstream failures to 502/504.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body as _, Incoming};
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

/// A request ready for the upstream: its head written for the hop (request
/// line and headers, without the framing [`Upstream::send`] adds), and its
/// body.
pub struct Prepared {
    method: http::Method,
    head: Vec<u8>,
    /// Whether the client gave a length (see `h1::end_head`).
    client_length: bool,
    body: UpstreamBody,
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

    /// Forwarding, first half: `req` from client `peer` with its head
    /// rewritten for the hop (see `encode_head`), synchronously. A caller
    /// that sends it later holds this (~100 bytes) rather than the request
    /// (~270); and since the head is written here, the send's future only
    /// waits (an `async fn` doing both would keep the request and its parts
    /// in its state beside the send).
    pub fn prepare(
        &self,
        req: Request<UpstreamBody>,
        peer: IpAddr,
        peer_trusted: bool,
    ) -> Prepared {
        let (parts, body) = req.into_parts();
        // Room for a buffered body too: it goes out in the head's write.
        let buffered = match &body {
            Either::Right(full) => full.size_hint().lower() as usize,
            Either::Left(_) => 0,
        };
        let mut head = Vec::with_capacity(512 + buffered);
        let client_length = self.encode_head(&parts, peer, peer_trusted, &mut head);
        Prepared {
            method: parts.method,
            head,
            client_length,
            body,
        }
    }

    /// Forwarding, second half: sends a prepared request on this worker's
    /// pool, within `upstream.request_timeout`; the answer comes without
    /// hop-by-hop headers.
    pub fn send(
        &self,
        req: Prepared,
    ) -> impl std::future::Future<Output = Result<Response<PooledBody>, ForwardError>> + Send + '_
    {
        let pool = &self.pools[WORKER.with(|w| w.get()) % self.pools.len()];
        let send = pool.send(req.method, req.head, req.client_length, req.body);
        // A combinator, not an `async` block: a block would hold the future
        // twice (captured, then awaited).
        futures_util::FutureExt::map(
            crate::coarse_timer::timeout(self.request_timeout, send),
            |sent| match sent {
                Err(_) => Err(ForwardError::Timeout),
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(PoolError::Connect(e))) => Err(ForwardError::Unavailable(e)),
                Ok(Err(PoolError::Send(e))) => Err(classify_error(e)),
            },
        )
    }

    /// The request's head as it goes upstream, written in one pass over the
    /// client's headers: no map insert or removal (each hashes its name; the
    /// map-editing version was ~2,000 instructions per proxied GET, callgrind).
    /// - Origin form (`base_path` + the client's path and query), HTTP/1.1
    ///   whatever the client spoke.
    /// - `Host` first: the client's, with `upstream.preserve_host`, else the
    ///   upstream's.
    /// - Hop-by-hop headers and those the client's `Connection` names are
    ///   dropped (RFC 9110 §7.6.1); the length is re-framed by `h1`.
    /// - `X-Forwarded-For` gets the peer appended (lines folded into one);
    ///   `Forwarded` too from a trusted proxy, and is dropped from anyone
    ///   else. Only a trusted proxy may tell us the original scheme and host
    ///   (`X-Forwarded-Proto`, `X-Forwarded-Host`); for anyone else they are
    ///   written from what poolgate saw.
    ///
    /// Returns whether the client gave a length (see [`h1::end_head`]).
    fn encode_head(
        &self,
        parts: &http::request::Parts,
        peer: IpAddr,
        peer_trusted: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let h = &parts.headers;
        // What must be known before the first header is written: the
        // client's host, and the names its `Connection` lists.
        let mut client_host: Option<&[u8]> = None;
        let mut named: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
        for (name, value) in h {
            if *name == header::HOST {
                client_host = client_host.or(Some(value.as_bytes()));
            } else if *name == header::CONNECTION {
                connection_tokens(value, &mut named);
            }
        }
        let client_host =
            client_host.or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()));

        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.base_path.as_bytes());
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        out.extend_from_slice(pq.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let host = match client_host {
            Some(v) if self.preserve_host => v,
            _ => self.host_value.as_bytes(),
        };
        push_header(out, "host", host);

        let mut xff = String::with_capacity(64);
        let mut fwd: Option<String> = None;
        let mut client_length = false;
        let (mut has_proto, mut has_host) = (false, false);
        for (name, value) in h {
            // A header the client's `Connection` names is its connection's,
            // whatever its name: as if absent (so a named `X-Forwarded-For`
            // is not carried on, and a named `X-Forwarded-Proto` is written
            // afresh even from a trusted proxy).
            if !named.is_empty()
                && named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name.as_str().as_bytes()))
            {
                continue;
            }
            if *name == header::CONTENT_LENGTH {
                client_length = true;
                continue;
            }
            if *name == header::HOST || hop_index(name).is_some() {
                continue;
            }
            if *name == X_FORWARDED_FOR {
                fold_line(&mut xff, value);
                continue;
            }
            if *name == header::FORWARDED {
                if peer_trusted {
                    fold_line(fwd.get_or_insert_with(String::new), value);
                }
                continue;
            }
            if *name == X_FORWARDED_PROTO {
                if !peer_trusted {
                    continue;
                }
                has_proto = true;
            } else if *name == X_FORWARDED_HOST {
                if !peer_trusted {
                    continue;
                }
                has_host = true;
            }
            push_header(out, name.as_str(), value.as_bytes());
        }
        push_ip(&mut xff, peer);
        push_header(out, "x-forwarded-for", xff.as_bytes());
        if let Some(mut value) = fwd {
            use std::fmt::Write;
            let _ = match peer {
                IpAddr::V4(v4) => write!(value, "for={v4}"),
                IpAddr::V6(v6) => write!(value, "for=\"[{v6}]\""),
            };
            push_header(out, "forwarded", value.as_bytes());
        }
        if !has_proto {
            push_header(out, "x-forwarded-proto", b"http");
        }
        if let (false, Some(v)) = (has_host, client_host) {
            push_header(out, "x-forwarded-host", v);
        }
        client_length
    }
}

/// One header line.
fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What a `Connection` line says: whether it asks to close, and (onto
/// `named`) the header names it lists. Its usual tokens (close, keep-alive,
/// the fixed hop-by-hop names) need no entry. Read as bytes: `str`'s split
/// and Unicode trim were ~350 instructions for a bare `keep-alive`.
fn connection_tokens<'a>(
    value: &'a HeaderValue,
    named: &mut smallvec::SmallVec<[&'a [u8]; 4]>,
) -> bool {
    let mut close = false;
    for token in value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
    {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty()
            && !HOP_BY_HOP
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
        {
            named.push(token);
        }
    }
    close
}

use crate::client_ip::X_FORWARDED_FOR;
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A list header's line folded onto `value` (trimmed; an empty or non-text
/// line adds nothing), with a trailing `", "` ready for the next element.
fn fold_line(value: &mut String, line: &HeaderValue) {
    if let Ok(s) = line.to_str() {
        let s = s.trim();
        if !s.is_empty() {
            value.push_str(s);
            value.push_str(", ");
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// and `Transfer-Encoding`, which each hop frames for itself. Neither the
/// request's head upstream nor the answer's to the client carries them, nor
/// the names a `Connection` line lists.
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

    fn upstream(base_path: &str, preserve_host: bool) -> Upstream {
        Upstream {
            pools: Box::new([]),
            base_path: base_path.to_string(),
            request_timeout: Duration::from_secs(1),
            preserve_host,
            host_value: HeaderValue::from_static("up.internal:8080"),
        }
    }

    /// The head `up` writes for `req` from `peer`, and whether the client gave a length.
    fn head(up: &Upstream, req: Request<()>, peer: &str, trusted: bool) -> (String, bool) {
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let length = up.encode_head(&parts, peer.parse().unwrap(), trusted, &mut out);
        (String::from_utf8(out).unwrap(), length)
    }

    fn busy_login() -> Request<()> {
        Request::post("/api/v2/login/account?x=1")
            .header("Host", "gw.example.com")
            .header("Content-Type", "application/json")
            .header("Content-Length", "12")
            // Named by a `Connection` line that comes after it.
            .header("x-hop", "1")
            .header("Connection", "Keep-Alive, X-Hop, close")
            .header("connection", "te")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("transfer-encoding", "chunked")
            .header("upgrade", "h2c")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-for", "203.0.113.9")
            .header("X-Forwarded-For", "198.51.100.1")
            .header("forwarded", "for=203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example")
            .header("x-kept", "1")
            .body(())
            .unwrap()
    }

    #[test]
    fn an_untrusted_clients_head_loses_hop_headers_and_cannot_spoof_the_forwarding_ones() {
        let (h, length) = head(&upstream("/base", false), busy_login(), "10.0.0.7", false);
        assert_eq!(
            h,
            "POST /base/api/v2/login/account?x=1 HTTP/1.1\r\n\
             host: up.internal:8080\r\n\
             content-type: application/json\r\n\
             x-kept: 1\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.1, 10.0.0.7\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: gw.example.com\r\n"
        );
        assert!(length, "the client's length is reported, not copied");
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_stay_and_get_this_hop() {
        let (h, _) = head(&upstream("", true), busy_login(), "10.0.0.7", true);
        assert_eq!(
            h,
            "POST /api/v2/login/account?x=1 HTTP/1.1\r\n\
             host: gw.example.com\r\n\
             content-type: application/json\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: spoofed.example\r\n\
             x-kept: 1\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.1, 10.0.0.7\r\n\
             forwarded: for=203.0.113.9, for=10.0.0.7\r\n"
        );
        let six = Request::get("/")
            .header("forwarded", "for=a")
            .body(())
            .unwrap();
        let (h, length) = head(&upstream("", false), six, "2001:db8::1", true);
        assert!(
            h.contains("forwarded: for=a, for=\"[2001:db8::1]\"\r\n"),
            "{h}"
        );
        assert!(!length);
    }

    #[test]
    fn forwarding_headers_a_connection_line_names_count_as_absent() {
        let req = Request::get("/")
            .header("host", "gw.example.com")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example")
            .header(
                "connection",
                "X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, Host",
            )
            .body(())
            .unwrap();
        let (h, _) = head(&upstream("", true), req, "10.0.0.7", true);
        assert_eq!(
            h,
            "GET / HTTP/1.1\r\n\
             host: gw.example.com\r\n\
             x-forwarded-for: 10.0.0.7\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: gw.example.com\r\n"
        );
    }

    #[test]
    fn without_a_host_header_the_targets_authority_is_the_clients_host() {
        let abs = Request::get("http://abs.example:81/p?q").body(()).unwrap();
        let (h, _) = head(&upstream("", true), abs, "192.0.2.1", false);
        assert_eq!(
            h,
            "GET /p?q HTTP/1.1\r\n\
             host: abs.example:81\r\n\
             x-forwarded-for: 192.0.2.1\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: abs.example:81\r\n"
        );
        let bare = Request::get("/").body(()).unwrap();
        let (h, _) = head(&upstream("", true), bare, "192.0.2.1", false);
        assert_eq!(
            h,
            "GET / HTTP/1.1\r\nhost: up.internal:8080\r\n\
             x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n"
        );
    }
}
