//! The proxy's own HTTP/1.1 client exchange, for requests without a body.
//!
//! Why not hyper's client connection for these: hyper runs every upstream connection as a task of
//! its own, so each proxied request crosses to that task and back through channels — two task
//! wake-ups and a dispatcher round per request that a proxy does not need. Here the request's
//! own future writes the head and reads the response head on the connection, and the response
//! body reads the rest (usually it came with the head); the connection goes back to its client
//! connection's affinity slot, or the pool, as soon as the body is off it.
//!
//! Scope, on purpose: requests **without a body** (the common GET/HEAD/DELETE/OPTIONS case).
//! A request with a body needs its upload and the response read concurrently (a server may
//! answer before it has read everything); that stays on hyper's client, see `pool`.
//!
//! Responses are read per RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//! with `chunked` last is decoded (trailers included); otherwise `Content-Length` (every value
//! must agree); otherwise the body runs to the connection's end. A connection is reused only
//! after a complete, keep-alive response with no byte left over; a response carrying both
//! `Transfer-Encoding` and `Content-Length` is decoded as chunked and its connection closed (the
//! request-smuggling defence of RFC 9112 §6.1). Chunk-size lines are parsed strictly (hex digits,
//! then only whitespace and `;extensions`, no bare CR or LF): httparse's parser accepts an empty
//! size and bare line feeds in extensions, both known smuggling ambiguities. Interim 1xx
//! responses are skipped; a 101 to a request that did not ask to upgrade is an error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::headers::Forwarding;

mod transport;

use transport::{QueuedHead, Transport};

/// Most header fields accepted in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and fields) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Interim (1xx) responses skipped before the final one; more is a misbehaving upstream.
const MAX_INTERIM: usize = 8;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Writing the request failed.
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    /// Reading failed before any byte of a response arrived.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// Reading failed in the middle of a response.
    #[error("reading the response (partly received): {0}")]
    ReadMidResponse(#[source] io::Error),
    /// The connection ended before any byte of a response arrived.
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeResponse,
    /// The connection ended inside the response head.
    #[error("the upstream closed the connection inside the response head")]
    ClosedInHead,
    /// The connection ended before the body did.
    #[error("the upstream closed the connection before the response body ended")]
    ClosedInBody,
    /// The response head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head is larger than accepted.
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The response breaks HTTP/1.1 framing rules.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl H1Error {
    /// Whether the request cannot have reached the upstream: writing it failed (a partly written
    /// head is never acted on). Such a request can be sent again, whatever its method.
    pub fn is_unsent(&self) -> bool {
        matches!(self, H1Error::Write(_))
    }

    /// Whether the connection was dead when the request was written on it: the write failed, or
    /// the connection ended or was reset before a single response byte. The server may have seen
    /// the request in the second case, so only an idempotent request may be sent again.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            H1Error::Write(_) | H1Error::ClosedBeforeResponse => true,
            H1Error::Read(error) => matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// A connected upstream transport.
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// An upstream connection with its read buffer, between exchanges.
pub struct Conn {
    io: Transport,
    buf: BytesMut,
    /// Request heads are encoded here; kept to reuse its allocation.
    head: Vec<u8>,
}

impl Conn {
    /// Wraps a fresh transport.
    pub fn new(io: Io) -> Conn {
        Conn { io: Transport::new(io), buf: BytesMut::new(), head: Vec::new() }
    }

    /// The transport, to hand the connection to hyper's client (only between exchanges, when
    /// no byte is buffered). `None` when it cannot be handed on (see `Transport::into_io`).
    pub fn into_io(self) -> Option<Io> {
        self.io.into_io()
    }

    /// Whether an idle connection can carry a request: the upstream has not closed it and sent
    /// nothing unasked. Never waits: the socket is polled once with a no-op waker, which costs no
    /// system call unless the reactor has seen it readable since the last read (an idle
    /// connection the server closed, the usual case an upstream's keep-alive timeout makes).
    pub fn is_reusable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        // Anything but "would block" means closed (0 bytes), an error, or bytes nobody asked
        // for: unusable alike.
        if let Transport::Plain { read, .. } = &self.io {
            // `try_read` consults the reactor's readiness first and registers no waker.
            return matches!(read.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Reads more of a response whose head was `queued` for the round's batch: until the batch
    /// has written it (or handed it back, then it is finished here) the read only registers
    /// interest. Something read before the head is out (the upstream spoke first, or closed)
    /// fails the exchange as unsent, and the head is not written.
    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        queued: &mut Option<QueuedHead>,
    ) -> Poll<Result<io::Result<usize>, H1Error>> {
        if let Some(head) = queued {
            match head.writer().poll_written(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(H1Error::Write(error))),
                Poll::Ready(Ok(())) => *queued = None,
            }
        }
        let read = ready!(self.poll_fill(cx));
        if let Some(head) = queued.take() {
            head.writer().settle_early().map_err(H1Error::Write)?;
        }
        Poll::Ready(Ok(read))
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A response head read from the upstream, and how its body is framed.
pub struct ResponseHead {
    /// The response's status, version and fields.
    pub parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes the head of a body-less `request` (origin-form target; the gateway's `added` fields
/// after the request's own) and reads the final response head. `head_request`: the method was
/// HEAD (the response has no body whatever it says).
pub async fn exchange(
    conn: &mut Conn,
    request: &http::request::Parts,
    added: Option<&Forwarding<'_>>,
    head_request: bool,
) -> Result<ResponseHead, H1Error> {
    conn.head.clear();
    encode_request_head(request, added, &mut conn.head);
    // Written at the end of the scheduling round, back to back with the round's other heads,
    // after their reads: the upstream is then woken once per round instead of once per request
    // (measured: 0.02-0.05 instead of 0.22-0.31 upstream wake-ups per request, HAProxy's 0.04;
    // see `transport`). Only when there is something to batch with: a lone request (one client
    // connection) would wait for the round for nothing.
    let (_in_flight, others) = InFlight::enter();
    let mut queued = None;
    match &mut conn.io {
        Transport::Plain { write: writer, .. } => {
            if others > 0 {
                queued = Some(writer.queue(&mut conn.head));
            } else {
                writer.write_now(&mut conn.head);
                std::future::poll_fn(|cx| writer.poll_written(cx)).await.map_err(H1Error::Write)?;
            }
        }
        Transport::Tls(stream) => {
            if others > 0 {
                transport::to_the_back_of_the_queue().await;
            }
            // TLS buffers records: flushed after the head.
            let written = async {
                stream.write_all(&conn.head).await?;
                stream.flush().await
            };
            written.await.map_err(H1Error::Write)?;
        }
    }
    // Bytes left from an earlier exchange would have made the connection unusable; start clean.
    conn.buf.clear();
    let mut received = 0usize;
    let mut interim = 0usize;
    loop {
        if conn.buf.is_empty() {
            // Nothing to parse yet (the usual first round): read first.
        } else if let Some(parsed) = parse_response_head(&mut conn.buf)? {
            if parsed.status.is_informational() {
                if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(H1Error::Invalid("101 Switching Protocols to a request without Upgrade"));
                }
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(H1Error::Invalid("too many interim (1xx) responses"));
                }
                continue;
            }
            return finish_head(parsed, head_request);
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(H1Error::HeadTooLarge);
        }
        if conn.buf.capacity() - conn.buf.len() < READ_CHUNK / 4 {
            conn.buf.reserve(READ_CHUNK);
        }
        let read = match std::future::poll_fn(|cx| conn.poll_response(cx, &mut queued)).await? {
            Ok(read) => read,
            Err(error) if received == 0 => return Err(H1Error::Read(error)),
            Err(error) => return Err(H1Error::ReadMidResponse(error)),
        };
        if read == 0 {
            return Err(if received == 0 { H1Error::ClosedBeforeResponse } else { H1Error::ClosedInHead });
        }
        received += read;
    }
}

/// Exchanges in progress on this thread, from the write of the request head to its response
/// head, counted while the guard lives. The count belongs to the thread that began the
/// exchange, even if the task has moved on to another worker since.
struct InFlight(Arc<AtomicUsize>);

thread_local! {
    static EXCHANGES: Arc<AtomicUsize> = Arc::default();
}

impl InFlight {
    /// Counts one exchange in; returns the guard and how many others were in progress.
    fn enter() -> (InFlight, usize) {
        EXCHANGES.with(|count| (InFlight(Arc::clone(count)), count.fetch_add(1, Ordering::Relaxed)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `METHOD target HTTP/1.1`, the fields as they are (names are lower case in a `HeaderMap`),
/// then the gateway's `added` fields, and the blank line. `http` types cannot hold CR or LF in
/// any of these.
fn encode_request_head(request: &http::request::Parts, added: Option<&Forwarding<'_>>, out: &mut Vec<u8>) {
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(64 + target.len() + (request.headers.len() + 5) * 48);
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let own = request.headers.iter().map(|(name, value)| (name, value.as_bytes()));
    for (name, value) in own.chain(added.into_iter().flat_map(Forwarding::iter)) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

struct ParsedHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: FramingFields,
}

/// Response heads with up to this many fields are parsed without an allocation for their spans.
const INLINE_FIELDS: usize = 16;

/// Where one field's name and value lie in the head's bytes.
#[derive(Clone, Copy, Default)]
struct FieldSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses a complete response head off the front of `buf`; `None` while it is incomplete.
fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, H1Error> {
    let mut storage = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut storage,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status =
        StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| H1Error::Invalid("status code"))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Field values are sliced out of the head's bytes (no copy): remember where they are, since
    // the parsed fields borrow the buffer the head is then split off.
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| {
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        (u32::try_from(start).unwrap_or(u32::MAX), u32::try_from(part.len()).unwrap_or(u32::MAX))
    };
    let span = |field: &httparse::Header<'_>| FieldSpan {
        name: offset(field.name.as_bytes()),
        value: offset(field.value),
    };
    // On the stack for a typical head (an array of `MAX_HEADERS` would be zeroed for every
    // response), in a vector for a longer one.
    let count = response.headers.len();
    let mut inline = [FieldSpan::default(); INLINE_FIELDS];
    let spilled: Vec<FieldSpan>;
    let spans: &[FieldSpan] = if count <= INLINE_FIELDS {
        for (slot, field) in inline.iter_mut().zip(response.headers.iter()) {
            *slot = span(field);
        }
        &inline[..count]
    } else {
        spilled = response.headers.iter().map(span).collect();
        &spilled
    };
    let head = buf.split_to(len).freeze();
    let slice = |(start, len): (u32, u32)| {
        let (start, len) = (start as usize, len as usize);
        head.get(start..start.saturating_add(len)).ok_or(H1Error::Invalid("header field outside the head"))
    };
    // Room for the fields the gateway adds (`x-request-id`, CORS, cache status) without growing.
    let mut headers = HeaderMap::with_capacity(count + 4);
    let mut framing = FramingFields::default();
    for span in spans {
        let name = field_name(slice(span.name)?).map_err(|_| H1Error::Invalid("header field name"))?;
        let value = slice(span.value)?;
        let value = if value.is_empty() {
            HeaderValue::from_static("")
        } else {
            HeaderValue::from_maybe_shared(head.slice_ref(value))
                .map_err(|_| H1Error::Invalid("header field value"))?
        };
        framing.note(&name, &value)?;
        headers.append(name, value);
    }
    Ok(Some(ParsedHead { status, version, headers, framing }))
}

/// A response field's name: the common ones recognised by comparing words of their bytes,
/// any other by `HeaderName::from_bytes`, which validates and lower-cases the bytes and looks the
/// result up among all standard names (~190 instructions a field). `name` is a token (httparse
/// checked it).
fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header::{
        CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, DATE, ETAG, LAST_MODIFIED, SERVER, SET_COOKIE, VARY,
    };
    let is = |lower: &[u8]| token_eq_lower(name, lower);
    Ok(match name.len() {
        4 if is(b"date") => DATE,
        4 if is(b"etag") => ETAG,
        4 if is(b"vary") => VARY,
        6 if is(b"server") => SERVER,
        10 if is(b"connection") => CONNECTION,
        10 if is(b"set-cookie") => SET_COOKIE,
        12 if is(b"content-type") => CONTENT_TYPE,
        13 if is(b"cache-control") => CACHE_CONTROL,
        13 if is(b"last-modified") => LAST_MODIFIED,
        14 if is(b"content-length") => CONTENT_LENGTH,
        16 if is(b"content-encoding") => CONTENT_ENCODING,
        17 if is(b"transfer-encoding") => TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(name),
    })
}

/// Whether token `name` is `lower` (lower-case letters and `-`) in any letter case. Setting bit
/// 5 lower-cases a letter and keeps `-`; no other token byte becomes a letter or `-` by it, so the
/// comparison is exact for tokens. Eight bytes at a time, the last word overlapping.
fn token_eq_lower(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = u64::from_ne_bytes([0x20; 8]);
    if name.len() != lower.len() {
        return false;
    }
    if name.len() < 8 {
        return name.iter().zip(lower).all(|(byte, expected)| byte | 0x20 == *expected);
    }
    let word = |bytes: &[u8], at: usize| {
        bytes.get(at..at + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()).map(u64::from_ne_bytes)
    };
    let same = |at: usize| match (word(name, at), word(lower, at)) {
        (Some(got), Some(expected)) => got | CASE == expected,
        _ => false,
    };
    (0..name.len() / 8).all(|i| same(i * 8)) && same(name.len() - 8)
}

/// What the framing fields of a response head say, gathered while the fields are read (instead
/// of three lookups afterwards).
#[derive(Default)]
struct FramingFields {
    /// `Connection: close` is listed.
    close: bool,
    /// `Connection: keep-alive` is listed.
    keep_alive: bool,
    /// `Transfer-Encoding` is present, and whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    /// The `Content-Length`: every value (and list item) must be the same number.
    content_length: Option<u64>,
}

impl FramingFields {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), H1Error> {
        let items = || value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name == CONNECTION {
            for item in items() {
                self.close |= item.eq_ignore_ascii_case(b"close");
                self.keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == TRANSFER_ENCODING {
            // The last coding of the last field that names one decides (RFC 9112 §6.3).
            match items().rfind(|coding| !coding.is_empty()) {
                Some(last) => self.transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked")),
                None => {
                    self.transfer_encoding.get_or_insert(false);
                }
            }
        } else if name == CONTENT_LENGTH {
            for item in items() {
                let parsed = parse_decimal(item).ok_or(H1Error::Invalid("Content-Length"))?;
                if self.content_length.is_some_and(|known| known != parsed) {
                    return Err(H1Error::Invalid("conflicting Content-Length values"));
                }
                self.content_length = Some(parsed);
            }
        }
        Ok(())
    }
}

fn finish_head(parsed: ParsedHead, head_request: bool) -> Result<ResponseHead, H1Error> {
    let ParsedHead { status, version, headers, framing: fields } = parsed;
    let mut keep_alive = match version {
        Version::HTTP_10 => fields.keep_alive,
        _ => !fields.close,
    };
    let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else if let Some(chunked) = fields.transfer_encoding {
        if fields.content_length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(length) = fields.content_length {
        if length == 0 { Framing::Empty } else { Framing::Length(length) }
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(ResponseHead { parts, framing, keep_alive })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0')))
}

/// Parses a chunk-size line (without its CRLF): hex digits, then optional whitespace and
/// `;extensions`, which are ignored. No control character but a tab anywhere in the line.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return None;
    }
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if rest.first().is_some_and(|&b| b != b';') {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

enum State {
    Done,
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
}

/// A response body read off its connection. When it has been read to its end on a keep-alive
/// response, [`Body::take_reusable`] hands the connection back.
pub struct Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    /// The whole body, when it was already in the buffer with the head.
    ready: Option<Bytes>,
}

impl Body {
    /// The body of `head`, read from `conn`.
    pub fn new(mut conn: Conn, head: &ResponseHead) -> Body {
        let mut ready = None;
        let state = match head.framing {
            Framing::Empty => State::Done,
            Framing::Length(length) => match usize::try_from(length) {
                Ok(length) if conn.buf.len() >= length => {
                    ready = Some(conn.buf.split_to(length).freeze());
                    State::Done
                }
                _ => State::Length(length),
            },
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Body { conn: Some(conn), state, keep_alive: head.keep_alive, ready }
    }

    /// Whether the whole body has been read off the connection (it may still hold a last chunk
    /// to hand out).
    fn read_off(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The connection, once the body has been read off it, when it can carry another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let reusable =
            self.read_off() && self.keep_alive && self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if reusable { self.conn.take() } else { None }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.keep_alive = false;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

/// Takes up to `remaining` bytes off the front of `buf` as a data frame.
fn take_data(buf: &mut BytesMut, remaining: &mut u64) -> Frame<Bytes> {
    let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
    *remaining -= n as u64;
    Frame::data(buf.split_to(n).freeze())
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        if let Some(bytes) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let buffered = !conn.buf.is_empty();
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(remaining) if buffered => {
                    let frame = take_data(&mut conn.buf, remaining);
                    if *remaining == 0 {
                        this.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                State::ChunkData(remaining) if buffered => {
                    let frame = take_data(&mut conn.buf, remaining);
                    if *remaining == 0 {
                        this.state = State::ChunkEnd;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                State::UntilClose if buffered => {
                    let all = conn.buf.len();
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(all).freeze()))));
                }
                State::ChunkSize => {
                    if let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                        let Some(size) = parse_chunk_size(&conn.buf[..end]) else {
                            return this.fail(H1Error::Invalid("chunk size"));
                        };
                        conn.buf.advance(end + 2);
                        this.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                        continue;
                    }
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return this.fail(H1Error::Invalid("chunk size line too long"));
                    }
                }
                State::ChunkEnd if conn.buf.len() >= 2 => {
                    if &conn.buf[..2] != b"\r\n" {
                        return this.fail(H1Error::Invalid("chunk not followed by CRLF"));
                    }
                    conn.buf.advance(2);
                    this.state = State::ChunkSize;
                    continue;
                }
                State::Trailers => {
                    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&conn.buf, &mut storage) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for field in fields.iter() {
                                let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(field.name.as_bytes()),
                                    HeaderValue::from_bytes(field.value),
                                ) else {
                                    return this.fail(H1Error::Invalid("trailer field"));
                                };
                                trailers.append(name, value);
                            }
                            conn.buf.advance(len);
                            this.state = State::Done;
                            if !trailers.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                            }
                            continue;
                        }
                        Ok(httparse::Status::Partial) if conn.buf.len() <= MAX_TRAILER_BYTES => {}
                        Ok(httparse::Status::Partial) => {
                            return this.fail(H1Error::Invalid("trailers too large"));
                        }
                        Err(error) => return this.fail(H1Error::Parse(error)),
                    }
                }
                State::Length(_) | State::ChunkData(_) | State::UntilClose | State::ChunkEnd => {}
            }
            // More bytes are needed.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::ClosedInBody),
                Ok(_) => {}
                Err(error) => return this.fail(H1Error::ReadMidResponse(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.read_off()
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |b| b.len() as u64);
        match self.state {
            State::Done => SizeHint::with_exact(ready),
            State::Length(remaining) => SizeHint::with_exact(remaining + ready),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
