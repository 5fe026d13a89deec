//! The upstream hop's HTTP/1.1, spoken on the request's own task.
//!
//! hyper's `client::conn` ran each upstream connection in a task of its
//! own: a request went to it through a channel, its answer's head came back
//! through a oneshot and its body through another channel, each hop a wake-up
//! of the other task, and the answer's head was parsed by hyper's general
//! client (~5k instructions per proxied GET, callgrind). Here the request's
//! future writes the request and reads the answer itself, Pingora-style:
//! `httparse` parses the answer's head, this module frames its body.
//!
//! What the framing follows (RFC 9112 §6): an answer to HEAD, a 1xx, 204 or
//! 304 has no body; `Transfer-Encoding` ending in `chunked` is chunked and
//! wins over `Content-Length`; any other `Transfer-Encoding` runs to the
//! close; several `Content-Length` values must agree; no length runs to the
//! close. A connection is reused only after an answer framed by a length or
//! by chunks, read to its end, with nothing after it, from an HTTP/1.1
//! upstream that did not say `Connection: close`, for a request sent whole.
//! Anything else closes it, so an answer can never be taken for the next
//! request's, nor the next request for the rest of this one's body.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::UpstreamBody;

/// An upstream connection as the connector opened it (TCP, or TLS over it).
pub(super) type Stream = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// Most bytes of an answer's head (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in an answer's head.
const MAX_HEADERS: usize = 128;
/// Most bytes of a chunk-size line, or of the trailer section.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub enum Error {
    /// The socket failed.
    Io(io::Error),
    /// The upstream closed the connection where an answer (or more of it)
    /// was due.
    Closed,
    /// The upstream's answer is not valid HTTP/1.1, or is beyond our limits.
    BadAnswer(&'static str),
    /// The client's body grew past `max_body_bytes` while streaming.
    BodyTooLarge,
    /// The client's body stream failed (the client went away).
    ClientBody(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "upstream connection failed: {e}"),
            Error::Closed => f.write_str("upstream closed the connection before the answer ended"),
            Error::BadAnswer(why) => write!(f, "invalid upstream answer: {why}"),
            Error::BodyTooLarge => f.write_str("request body over the limit"),
            Error::ClientBody(e) => write!(f, "client body failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// One upstream connection and the bytes read from it not yet used.
pub(super) struct Conn {
    io: Stream,
    buf: BytesMut,
    /// The upstream answered before the request's body was all sent: it
    /// still expects the rest, so nothing else may follow on this connection.
    cut_short: bool,
}

impl Conn {
    /// A fresh connection.
    pub(super) fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            cut_short: false,
        }
    }

    /// Whether the exchange left the connection clean: the request went
    /// whole and nothing is left unread of what the upstream sent.
    pub(super) fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.cut_short
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it and sent nothing unasked. A plain TCP connection asks the
    /// reactor first (no system call while nothing happened on it); when
    /// something did, or over TLS, a read tells: one that would wait says
    /// all is well. The waker is a no-op: nothing waits on an idle connection.
    pub(super) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let hyper_rustls::MaybeHttpsStream::Http(tcp) = self.io.inner() {
            if tcp.inner().poll_read_ready(&mut cx).is_pending() {
                return true;
            }
        }
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Reads more into the buffer; the end of the stream is [`Error::Closed`].
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(match ready!(self.poll_fill(cx)) {
            Ok(0) => Err(Error::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Io(e)),
        })
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, data))
                .await
                .map_err(Error::Io)?;
            if n == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            data = &data[n..];
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx))
            .await
            .map_err(Error::Io)
    }
}

/// How the request's body is framed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    /// No body, no length header (a bodiless GET, as clients send it).
    None,
    Length(u64),
    Chunked,
}

/// Ends a request's head (whose request line and headers the caller wrote,
/// without any length or transfer coding): the framing header this hop
/// chose, and the blank line. `client_length` says whether the client gave a
/// `Content-Length`. The framing is returned: [`send`] keeps to it.
pub(super) fn end_head(
    method: &Method,
    client_length: bool,
    body: &UpstreamBody,
    out: &mut Vec<u8>,
) -> ReqFraming {
    let framing = req_framing(method, client_length, body);
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn req_framing(method: &Method, client_length: bool, body: &UpstreamBody) -> ReqFraming {
    match body.size_hint().exact() {
        // A bodiless request of a method that has no body by custom goes
        // without a length, unless the client gave one.
        Some(0)
            if !client_length
                && matches!(
                    *method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) =>
        {
            ReqFraming::None
        }
        Some(n) => ReqFraming::Length(n),
        None => ReqFraming::Chunked,
    }
}

/// What sending a request came to.
pub(super) enum Delivery {
    /// The request went whole (or the upstream answered before it ended).
    Done,
    /// Nothing reached the upstream: the request may go on another connection.
    NotSent(Error),
    /// It failed after some of it may have reached the upstream.
    Failed(Error),
}

/// The bytes of a buffered body (a guarded request's), to go out with the
/// head in one write; nothing for a streamed body. A `Full` gives its bytes
/// in one frame, at once; a copy is polled, so the body stays whole.
pub(super) fn buffered_body(body: &UpstreamBody) -> Option<Bytes> {
    let http_body_util::Either::Right(full) = body else {
        return None;
    };
    let mut full = full.clone();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        _ => None,
    }
}

/// Writes `first` (the head, and a buffered body after it), then streams
/// a body that is not buffered frame by frame, stopping early if the
/// upstream answers first (its answer is read next). `framing` is what
/// [`end_head`] wrote into the head.
pub(super) async fn send(
    conn: &mut Conn,
    first: &[u8],
    body: &mut UpstreamBody,
    framing: ReqFraming,
) -> Delivery {
    match first_write(conn, first).await {
        Delivery::Done => {}
        other => return other,
    }
    if matches!(body, http_body_util::Either::Right(_)) || body.is_end_stream() {
        return Delivery::Done;
    }
    match stream_body(conn, body, framing == ReqFraming::Chunked).await {
        Ok(()) => Delivery::Done,
        Err(e) => Delivery::Failed(e),
    }
}

/// The first write of a request: if the socket refuses it outright, none of
/// the request reached the upstream.
async fn first_write(conn: &mut Conn, data: &[u8]) -> Delivery {
    let first = std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_write(cx, data)).await;
    match first {
        Err(e) => Delivery::NotSent(Error::Io(e)),
        Ok(0) => Delivery::NotSent(Error::Closed),
        Ok(n) => match conn.write_all(&data[n..]).await {
            Ok(()) => match conn.flush().await {
                Ok(()) => Delivery::Done,
                Err(e) => Delivery::Failed(e),
            },
            Err(e) => Delivery::Failed(e),
        },
    }
}

/// Streams the client's body; returns early once the upstream's answer has
/// begun (the rest of the body is then not sent, and the connection is
/// marked [`Conn::cut_short`]: never reused).
async fn stream_body(conn: &mut Conn, body: &mut UpstreamBody, chunked: bool) -> Result<(), Error> {
    let mut pending = Bytes::new();
    let mut ended = false;
    std::future::poll_fn(|cx| loop {
        // Writing what we hold first; if the upstream does not take it,
        // see whether it already answers.
        while !pending.is_empty() {
            match Pin::new(&mut conn.io).poll_write(cx, &pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Closed)),
                Poll::Ready(Ok(n)) => pending.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => return early_answer(conn, cx),
            }
        }
        if ended {
            return Pin::new(&mut conn.io).poll_flush(cx).map_err(Error::Io);
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                // The client is slow: flush what went, and watch the answer.
                let _ = Pin::new(&mut conn.io).poll_flush(cx);
                return early_answer(conn, cx);
            }
            Poll::Ready(None) => {
                ended = true;
                if chunked {
                    pending = Bytes::from_static(b"0\r\n\r\n");
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(body_error(e))),
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are not forwarded (the request's TE was dropped).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                pending = if chunked {
                    let mut c = Vec::with_capacity(data.len() + 20);
                    c.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    c.extend_from_slice(&data);
                    c.extend_from_slice(b"\r\n");
                    Bytes::from(c)
                } else {
                    data
                };
            }
        }
    })
    .await
}

/// While the request cannot progress: an answer already on its way ends the
/// sending (`Ready(Ok)`), a close is an error, else we wait for either.
/// Interim answers (a `100 Continue` to a forwarded `Expect`) are skipped:
/// they ask for the rest of the body.
fn early_answer(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
    loop {
        if final_head_begun(&mut conn.buf) {
            conn.cut_short = true;
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(conn.poll_more(cx)) {
            return Poll::Ready(Err(e));
        }
    }
}

/// Consumes complete interim (1xx) heads at the front of `buf`; whether what
/// is left is the start of a final answer (or something [`read_head`] will
/// reject), rather than nothing or part of a head yet to be told apart.
fn final_head_begun(buf: &mut BytesMut) -> bool {
    match front_head(buf, |_, _| ()) {
        Ok(Some(_)) | Err(_) => true,
        Ok(None) => buf.len() > MAX_HEAD,
    }
}

/// Parses the head at the front of `buf`, consuming complete interim heads
/// (1xx but 101: a 101 is returned, for the caller to refuse) before it.
/// `Ok(None)` while the head is incomplete; else its length and what `read`
/// took from it, given the parsed head and the bytes it points into.
fn front_head<T>(
    buf: &mut BytesMut,
    read: impl FnOnce(&httparse::Response<'_, '_>, &[u8]) -> T,
) -> Result<Option<(usize, T)>, httparse::Error> {
    loop {
        // Uninitialised slots: filling 128 empty headers per answer costs
        // more than parsing a short head.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)?
        {
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(n) => n,
        };
        let code = resp.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            buf.advance(n);
            continue;
        }
        return Ok(Some((n, read(&resp, buf))));
    }
}

fn body_error(e: Box<dyn std::error::Error + Send + Sync>) -> Error {
    if e.is::<http_body_util::LengthLimitError>() {
        return Error::BodyTooLarge;
    }
    Error::ClientBody(crate::error_chain(&*e))
}

/// An answer's head and how its body is framed.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// Its headers, but for hop-by-hop ones and those its `Connection` names.
    pub(super) headers: HeaderMap,
    pub(super) body: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub(super) reusable: bool,
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked; in the state given.
    Chunked(Chunk),
    /// Up to the close of the connection.
    Close,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk.
    Trailers,
    /// Read to the end.
    Done,
}

/// Reads the answer's head (skipping interim 1xx answers). A close before
/// any byte of an answer is [`Error::Closed`]; one within it is a bad answer.
pub(super) async fn read_head(conn: &mut Conn, method: &Method) -> Result<Head, Error> {
    let mut got_any = !conn.buf.is_empty();
    loop {
        if let Some(head) = parse_head(conn, method)? {
            return Ok(head);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Error::BadAnswer("head too large"));
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(if got_any {
                    Error::BadAnswer("head cut short")
                } else {
                    Error::Closed
                })
            }
            Ok(_) => got_any = true,
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// One complete head from the buffer, if it holds one (interim answers are
/// consumed and skipped).
fn parse_head(conn: &mut Conn, method: &Method) -> Result<Option<Head>, Error> {
    // Where each header sits in the head's bytes, so that the values can
    // share those bytes (no copy each).
    let scanned = front_head(&mut conn.buf, |resp, bytes| {
        let base = bytes.as_ptr() as usize;
        let spans: smallvec::SmallVec<[(usize, usize, usize, usize); 16]> = resp
            .headers
            .iter()
            .map(|h| {
                let name_at = h.name.as_ptr() as usize - base;
                let value_at = h.value.as_ptr() as usize - base;
                (name_at, h.name.len(), value_at, h.value.len())
            })
            .collect();
        (resp.code.unwrap_or(0), resp.version == Some(1), spans)
    });
    let (len, (code, http11, spans)) = match scanned {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::BadAnswer("too many headers")),
        Err(_) => return Err(Error::BadAnswer("malformed head")),
    };
    if len > MAX_HEAD {
        return Err(Error::BadAnswer("head too large"));
    }
    let status = StatusCode::from_u16(code).map_err(|_| Error::BadAnswer("status out of range"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Nothing poolgate sends asks for an upgrade.
        return Err(Error::BadAnswer("unasked protocol switch"));
    }
    let version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let n = spans.len();
    let raw = conn.buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(n);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = version != Version::HTTP_11;
    // Names the answer's `Connection` lines list: hop-by-hop too (rare).
    let mut named: smallvec::SmallVec<[HeaderName; 2]> = smallvec::SmallVec::new();
    for &(na, nl, va, vl) in &spans {
        let (name, role) = answer_name(&raw[na..na + nl])?;
        let value = HeaderValue::from_maybe_shared(raw.slice(va..va + vl))
            .map_err(|_| Error::BadAnswer("bad header value"))?;
        if role == Role::Plain {
            headers.append(name, value);
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let v = parse_length(value.as_bytes()).ok_or(Error::BadAnswer("bad content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(Error::BadAnswer("conflicting content-length"));
            }
            length = Some(v);
        } else if name == header::TRANSFER_ENCODING {
            // Only the last coding decides; it must be `chunked` to frame.
            let s = value.to_str().unwrap_or("");
            for coding in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                chunked = coding.eq_ignore_ascii_case("chunked");
                other_coding |= !chunked;
            }
            continue;
        } else if name == header::CONNECTION {
            let mut tokens = smallvec::SmallVec::new();
            close |= super::connection_tokens(&value, &mut tokens);
            named.extend(tokens.iter().filter_map(|t| HeaderName::from_bytes(t).ok()));
            continue;
        } else if super::hop_index(&name).is_some() {
            // The answer's hop-by-hop headers stop here (RFC 9110 §7.6.1).
            continue;
        }
        headers.append(name, value);
    }
    for n in named {
        headers.remove(n);
    }
    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let te = chunked || other_coding;
    let body = if bodiless {
        Framing::Length(0)
    } else if te {
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    if te && !bodiless {
        // A length beside a transfer coding is not to be trusted (nor passed on).
        headers.remove(header::CONTENT_LENGTH);
    }
    // Framed by a coding *and* a length, the upstream may disagree with
    // us on where the answer ends: never reuse such a connection.
    let reusable = !close && body != Framing::Close && !(te && length.is_some());
    Ok(Some(Head {
        status,
        version,
        headers,
        body,
        reusable,
    }))
}

/// What [`parse_head`] does with an answer header besides passing it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Nothing: an end-to-end header the framing does not read.
    Plain,
    /// Framing (`Content-Length`, `Transfer-Encoding`), `Connection`, or
    /// another hop-by-hop header: looked at by name.
    Special,
}

/// An answer header's name, and whether [`parse_head`] must look at it.
/// The names nearly every answer carries are matched here first, as their
/// constants: `HeaderName::from_bytes` lower-cases every name into a buffer
/// and matches it again (~120 instructions a header, five or six a head),
/// and `hop_index` compares the result as text. Any other name takes that
/// general path, so what is accepted is exactly what `from_bytes` accepts
/// (held to it by a unit test).
fn answer_name(b: &[u8]) -> Result<(HeaderName, Role), Error> {
    let usual = match b.len() {
        4 if b.eq_ignore_ascii_case(b"date") => Some((header::DATE, Role::Plain)),
        6 if b.eq_ignore_ascii_case(b"server") => Some((header::SERVER, Role::Plain)),
        12 if b.eq_ignore_ascii_case(b"content-type") => Some((header::CONTENT_TYPE, Role::Plain)),
        13 if b.eq_ignore_ascii_case(b"cache-control") => {
            Some((header::CACHE_CONTROL, Role::Plain))
        }
        10 if b.eq_ignore_ascii_case(b"set-cookie") => Some((header::SET_COOKIE, Role::Plain)),
        14 if b.eq_ignore_ascii_case(b"content-length") => {
            Some((header::CONTENT_LENGTH, Role::Special))
        }
        10 if b.eq_ignore_ascii_case(b"connection") => Some((header::CONNECTION, Role::Special)),
        17 if b.eq_ignore_ascii_case(b"transfer-encoding") => {
            Some((header::TRANSFER_ENCODING, Role::Special))
        }
        _ => None,
    };
    if let Some(found) = usual {
        return Ok(found);
    }
    let name = HeaderName::from_bytes(b).map_err(|_| Error::BadAnswer("bad header name"))?;
    let role = if name == header::CONTENT_LENGTH || super::hop_index(&name).is_some() {
        Role::Special
    } else {
        Role::Plain
    };
    Ok((name, role))
}

/// A `Content-Length` value: digits only (no sign, no space, no list).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Reads a body frame from `conn` as `framing` says, advancing it; `None`
/// at the end of the body.
pub(super) fn poll_body(
    conn: &mut Conn,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, Error>>> {
    loop {
        match framing {
            Framing::Length(0) => return Poll::Ready(None),
            Framing::Length(rem) => {
                if !conn.buf.is_empty() {
                    let n = (*rem).min(conn.buf.len() as u64) as usize;
                    *rem -= n as u64;
                    return Poll::Ready(Some(Ok(conn.buf.split_to(n).freeze())));
                }
                if let Err(e) = ready!(conn.poll_more(cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
            }
            Framing::Close => {
                if !conn.buf.is_empty() {
                    return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                }
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) => return Poll::Ready(None),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                }
            }
            Framing::Chunked(state) => match chunk_step(&mut conn.buf, state) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if *state == Chunk::Done => return Poll::Ready(None),
                // More bytes wanted.
                Ok(None) => {
                    if let Err(e) = ready!(conn.poll_more(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            },
        }
    }
}

/// Advances a chunked reader over `buf` as far as it can: data when some
/// is there, `None` when done or when more bytes are wanted.
fn chunk_step(buf: &mut BytesMut, state: &mut Chunk) -> Result<Option<Bytes>, Error> {
    loop {
        match *state {
            Chunk::Done => return Ok(None),
            // `parse_chunk_size` takes a line with no digit for a size of 0.
            Chunk::Size if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                return Err(Error::BadAnswer("bad chunk size"))
            }
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::BadAnswer("chunk-size line too long"));
                    }
                    return Ok(None);
                }
                Err(_) => return Err(Error::BadAnswer("bad chunk size")),
            },
            Chunk::Data(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = rem.min(buf.len() as u64) as usize;
                *state = if rem == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rem - n as u64)
                };
                return Ok(Some(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::BadAnswer("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                // Trailer fields are dropped; the section ends at an empty line.
                match buf.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        buf.advance(2);
                        *state = Chunk::Done;
                    }
                    Some(end) => buf.advance(end + 2),
                    None => {
                        if buf.len() > MAX_TRAILERS {
                            return Err(Error::BadAnswer("trailers too large"));
                        }
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8]) -> Result<(Vec<u8>, Chunk), Error> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        while let Some(d) = chunk_step(&mut buf, &mut state)? {
            out.extend_from_slice(&d);
        }
        Ok((out, state))
    }

    #[test]
    fn chunked_bodies_decode_and_end_only_at_the_last_chunk() {
        let (body, state) =
            chunks(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(state, Chunk::Done);
        // Cut anywhere before the end: not done, no error.
        let full = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..full.len() {
            let (_, state) = chunks(&full[..cut]).unwrap();
            assert_ne!(state, Chunk::Done, "cut at {cut}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"5 5\r\nhello\r\n",
        ] {
            assert!(chunks(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1,1",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answer_names_are_what_from_bytes_makes_of_them() {
        let mut names: Vec<Vec<u8>> = [
            "Date",
            "date",
            "DATE",
            "Server",
            "sErVeR",
            "Content-Type",
            "content-type",
            "Cache-Control",
            "Set-Cookie",
            "set-cookiE",
            "Content-Length",
            "Connection",
            "Keep-Alive",
            "Transfer-Encoding",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "X-Request-Id",
            "dat",
            "datee",
            "servers",
            "content-typf",
            "set_cookie",
            "cache-contro1",
            "",
            "da te",
            "date:",
            "\u{e9}tag",
        ]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
        // Every byte in each position of a usual name: a near miss must go
        // the general way and come out as from_bytes says.
        for base in [
            "date",
            "server",
            "set-cookie",
            "connection",
            "content-length",
        ] {
            for i in 0..base.len() {
                for b in 0..=255u8 {
                    let mut n = base.as_bytes().to_vec();
                    n[i] = b;
                    names.push(n);
                }
            }
        }
        for n in &names {
            let ours = answer_name(n);
            match HeaderName::from_bytes(n) {
                Ok(theirs) => {
                    let (name, role) = ours.unwrap_or_else(|_| panic!("{n:?} refused"));
                    assert_eq!(name, theirs, "{n:?}");
                    let special = theirs == header::CONTENT_LENGTH
                        || super::super::hop_index(&theirs).is_some();
                    assert_eq!(role == Role::Special, special, "{n:?}");
                }
                Err(_) => assert!(ours.is_err(), "{n:?} accepted"),
            }
        }
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
