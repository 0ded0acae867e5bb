//! A lean HTTP/1.1 connection pool for upstreams.
//!
//! Requests without a body (most GETs) are exchanged by the proxy's own HTTP/1.1 code (`h1`) on
//! the request's task: no connection task, no channel hop. A request with a body goes through
//! hyper's low-level client connection, which reads the response while the upload is still
//! running; the connection it takes is handed to hyper for good (a connection hyper drives
//! serves body-less requests too).
//!
//! Why not hyper-util's pooled client: it spawns a task per request to put the connection back
//! once the response body is done. Here the response body itself hands the connection back when
//! it has been read off the connection, so a proxied request costs no extra task, and checkout is
//! one short lock — or none: a client connection keeps the upstream connection it used last (see
//! [`Affinity`]).
//!
//! Connections are kept per endpoint (scheme + authority, and for TLS the client configuration
//! and server name they were made with), LIFO (the warmest first), at most
//! `MAX_IDLE_PER_ENDPOINT`, and closed when idle longer than the idle timeout (a background sweep
//! closes them even when no request comes). Before an idle connection is used it is checked for
//! having been closed by the upstream (the usual end of an upstream's shorter keep-alive
//! timeout). A request that could not be written on a pooled connection is sent again on a fresh
//! one: it never reached the upstream. So is a body-less request whose pooled connection ends
//! before a single response byte, when its method is idempotent (RFC 9110 §9.2.2): a retry is
//! safe even if the server saw the first try.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::h1;
use crate::body::{BoxError, ProxyBody};
use crate::headers::Forwarding;

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// How often idle connections past the idle timeout (or closed by the upstream) are closed, at
/// most.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No TCP connection could be made (refused, unreachable, timed out).
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the upstream failed.
    #[error("TLS handshake with {endpoint}: {source}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange (hyper's client: a request with a body) failed after connecting.
    #[error("HTTP exchange with {endpoint}: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The HTTP exchange (the proxy's own: a body-less request) failed after connecting.
    #[error("HTTP exchange with {endpoint}: {source}")]
    Exchange {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: h1::H1Error,
    },
}

impl PoolError {
    /// Whether no connection could be established (safe to retry on another endpoint).
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect { .. } | PoolError::Tls { .. })
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    scheme: Scheme,
    authority: Authority,
    /// The TLS profile the connection was made with (0: the pool's own configuration).
    tls_profile: u64,
    /// The server name verified on the connection.
    server_name: Option<String>,
}

/// An upstream connection between exchanges.
enum Connection {
    /// Driven by the proxy's own HTTP/1.1 code, on the task of the request using it.
    Own(h1::Conn),
    /// Handed to hyper's client connection task (it carried a request with a body).
    Hyper(http1::SendRequest<ProxyBody>),
}

impl Connection {
    /// Whether it can carry another request (see [`h1::Conn::is_reusable`]); never waits.
    fn is_usable(&mut self) -> bool {
        match self {
            Connection::Own(conn) => conn.is_reusable(),
            Connection::Hyper(sender) => !sender.is_closed(),
        }
    }
}

struct Idle {
    conn: Connection,
    since: Instant,
}

/// Settings of the pool.
#[derive(Clone)]
pub struct PoolSettings {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// TLS client configuration for `https` upstreams.
    pub tls: Arc<rustls::ClientConfig>,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    /// Whether the idle sweep task runs.
    sweeping: AtomicBool,
    settings: PoolSettings,
    tls: tokio_rustls::TlsConnector,
}

/// Where a request goes: the endpoint, how to reach it, and the client connection's affinity.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'a Scheme,
    /// The endpoint's host and port.
    pub authority: &'a Authority,
    /// The TLS server name to verify, when not the authority's host.
    pub server_name: Option<&'a str>,
    /// The backend's own TLS configuration (`None`: the pool's).
    pub tls: Option<&'a super::backend::TlsProfile>,
    /// The client connection's affinity slot, if any.
    pub affinity: Option<&'a Affinity>,
}

/// Whether the caller needs the request head back after a request with a body (to try again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Another attempt may follow: hyper gets a copy.
    Yes,
    /// The last attempt: hyper takes the head itself.
    No,
}

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Pool {
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&settings.tls));
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
                settings,
                tls,
            }),
        }
    }

    /// Sends `request` to `scheme://authority` (`server_name` for TLS verification) and returns the
    /// response; its body returns the connection to the pool when it ends.
    pub async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        server_name: Option<&str>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, PoolError> {
        self.send_with(scheme, authority, server_name, None, None, request).await
    }

    /// [`Pool::send`] with a backend's own TLS configuration (`None`: the pool's) and the client
    /// connection's [`Affinity`], if any. Connections are pooled per configuration and server
    /// name.
    pub async fn send_with(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
        affinity: Option<&Affinity>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, PoolError> {
        let (mut parts, body) = request.into_parts();
        let target = Target { scheme, authority, server_name, tls, affinity };
        self.send_parts(target, &mut parts, None, body, Keep::No, None).await
    }

    /// [`Pool::send_with`] for a head the caller keeps, plus the gateway's `added` fields: a
    /// body-less request is written from `parts` as they are; a request with a body takes them
    /// for hyper's client (a copy when `keep` says another attempt may need them). Borrowing
    /// instead of moving keeps the head out of every future on the way (hyper moves a request's
    /// future whole; see `gateway`). The response body holds `in_flight` until it ends, and
    /// comes boxed: a response moves up several await layers, boxed it is a third of the size.
    pub async fn send_parts(
        &self,
        target: Target<'_>,
        parts: &mut http::request::Parts,
        added: Option<&Forwarding<'_>>,
        body: ProxyBody,
        keep: Keep,
        in_flight: Option<super::backend::InFlight>,
    ) -> Result<Response<ProxyBody>, PoolError> {
        let Target { scheme, authority, server_name, tls, affinity } = target;
        let key = Key {
            scheme: scheme.clone(),
            authority: authority.clone(),
            tls_profile: tls.map_or(0, |t| t.id),
            server_name: server_name.map(str::to_string),
        };
        let give_back = GiveBack { pool: Arc::clone(&self.inner), key, affinity: affinity.cloned() };
        let owned = |parts: &mut http::request::Parts, body| {
            let mut parts = match keep {
                Keep::Yes => parts.clone(),
                Keep::No => std::mem::replace(parts, Request::new(()).into_parts().0),
            };
            if let Some(added) = added {
                added.insert_into(&mut parts.headers);
            }
            Request::from_parts(parts, body)
        };
        // A connection hyper already drives serves any request; an own one serves a body-less
        // request itself, and is handed to hyper for good by a request with a body.
        // hyper's client is boxed below: requests with a body are the rarer kind, and its future
        // (1.1 KB) would be part of every request's future (see `gateway`).
        let own = match self.checkout(&give_back.key, affinity) {
            Some(Connection::Hyper(sender)) => {
                let request = owned(parts, body);
                let sent = Box::pin(self.send_hyper(give_back, server_name, tls, Some(sender), request));
                return Ok(boxed_response(sent.await?, in_flight));
            }
            Some(Connection::Own(conn)) => Some(conn),
            None => None,
        };
        if body.is_end_stream() {
            let response = self.send_bodyless(give_back, server_name, tls, own, parts, added).await?;
            return Ok(boxed_response(response, in_flight));
        }
        // A connection that cannot be handed on (see `h1::Conn::into_io`) is closed: a fresh one.
        let sender = match own.and_then(h1::Conn::into_io) {
            Some(io) => Some(handshake(io, &give_back.key.authority).await?),
            None => None,
        };
        let request = owned(parts, body);
        let response = Box::pin(self.send_hyper(give_back, server_name, tls, sender, request)).await?;
        Ok(boxed_response(response, in_flight))
    }

    /// A body-less request on an own HTTP/1.1 connection: `taken` (the client connection's or
    /// a pooled one), or when there is none — or it turns out dead — a fresh one.
    async fn send_bodyless(
        &self,
        give_back: GiveBack,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
        taken: Option<h1::Conn>,
        parts: &http::request::Parts,
        added: Option<&Forwarding<'_>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let head_request = parts.method == http::Method::HEAD;
        let failed = |source| PoolError::Exchange { endpoint: give_back.key.authority.to_string(), source };
        if let Some(mut conn) = taken {
            match h1::exchange(&mut conn, parts, added, head_request).await {
                Ok(head) => return Ok(wrap_own(give_back, conn, head)),
                Err(error)
                    if error.is_unsent() || (error.is_stale_connection() && parts.method.is_idempotent()) => {
                }
                Err(error) => return Err(failed(error)),
            }
        }
        // Boxed: the TCP + TLS connect future is large and rarely needed; unboxed it would grow
        // every request's future by its size.
        let io = Box::pin(self.connect(&give_back.key, server_name, tls)).await?;
        let mut conn = h1::Conn::new(io);
        match h1::exchange(&mut conn, parts, added, head_request).await {
            Ok(head) => Ok(wrap_own(give_back, conn, head)),
            Err(error) => Err(failed(error)),
        }
    }

    /// A request on hyper's client: `sender` (the client connection's or a pooled one), or when
    /// there is none — or the request could not be written on it — a fresh connection.
    async fn send_hyper(
        &self,
        give_back: GiveBack,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
        sender: Option<http1::SendRequest<ProxyBody>>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let failed = |source| PoolError::Http { endpoint: give_back.key.authority.to_string(), source };
        if let Some(mut sender) = sender {
            // A connection comes back at the end of its previous response body; hyper's
            // connection task may not have flipped to ready yet. That takes one scheduling round,
            // not network time.
            if sender.is_ready() || sender.ready().await.is_ok() {
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(wrap_hyper(give_back, sender, response)),
                    Err(mut error) => match error.take_message() {
                        // Not written: the connection was closing. Use a fresh one.
                        Some(unsent) => request = unsent,
                        None => return Err(failed(error.into_error())),
                    },
                }
            }
        }
        let io = Box::pin(self.connect(&give_back.key, server_name, tls)).await?;
        let mut sender = handshake(io, &give_back.key.authority).await?;
        let response = sender.send_request(request).await.map_err(failed)?;
        Ok(wrap_hyper(give_back, sender, response))
    }

    /// The connection for `key`: the one `affinity` holds, else the warmest idle one. Connections
    /// found closed or idle too long are dropped on the way.
    fn checkout(&self, key: &Key, affinity: Option<&Affinity>) -> Option<Connection> {
        if let Some(conn) = affinity.and_then(|affinity| affinity.take(key)) {
            return Some(conn);
        }
        let idle_timeout = self.inner.settings.idle_timeout;
        let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(mut candidate) = list.pop() {
            if candidate.since.elapsed() <= idle_timeout && candidate.conn.is_usable() {
                return Some(candidate.conn);
            }
        }
        None
    }

    async fn connect(
        &self,
        key: &Key,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
    ) -> Result<h1::Io, PoolError> {
        let endpoint = key.authority.to_string();
        let address = (
            key.authority.host().trim_matches(['[', ']']),
            key.authority.port_u16().unwrap_or(if key.scheme == Scheme::HTTPS { 443 } else { 80 }),
        );
        let stream = tokio::time::timeout(self.inner.settings.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| PoolError::Connect {
                endpoint: endpoint.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| PoolError::Connect { endpoint: endpoint.clone(), source })?;
        let _ = stream.set_nodelay(true);
        if key.scheme != Scheme::HTTPS {
            return Ok(h1::Io::Plain(stream));
        }
        let name = server_name.unwrap_or(address.0).to_string();
        let name = ServerName::try_from(name).map_err(|e| PoolError::Tls {
            endpoint: endpoint.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let connector = tls.map_or(&self.inner.tls, |t| &t.connector);
        let tls =
            connector.connect(name, stream).await.map_err(|source| PoolError::Tls { endpoint, source })?;
        Ok(h1::Io::Tls(Box::new(tls)))
    }
}

/// `response` with its body boxed, holding `in_flight` until it ends.
fn boxed_response(
    response: Response<PooledBody>,
    in_flight: Option<super::backend::InFlight>,
) -> Response<ProxyBody> {
    response.map(|mut body| {
        body.in_flight = in_flight;
        body.boxed_unsync()
    })
}

/// Hands `io` to hyper's client connection task.
async fn handshake(io: h1::Io, authority: &Authority) -> Result<http1::SendRequest<ProxyBody>, PoolError> {
    let endpoint = authority.as_str();
    let (sender, connection) = http1::Builder::new()
        // Flat writes, like the server side (see `server::connection_builder`).
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| PoolError::Http { endpoint: endpoint.to_string(), source })?;
    let span = tracing::debug_span!("upstream_connection", endpoint);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        },
        span,
    ));
    Ok(sender)
}

fn wrap_own(give_back: GiveBack, conn: h1::Conn, head: h1::ResponseHead) -> Response<PooledBody> {
    let mut body = h1::Body::new(conn, &head);
    let mut give_back = Some(give_back);
    // The whole response came with its head (the common small answer): the connection can serve
    // the client connection's next request while this body is still being written to it.
    return_when_read_off(&mut body, &mut give_back);
    Response::from_parts(
        head.parts,
        PooledBody { source: Source::Own { body, give_back }, ended: false, in_flight: None },
    )
}

fn wrap_hyper(
    give_back: GiveBack,
    sender: http1::SendRequest<ProxyBody>,
    response: Response<Incoming>,
) -> Response<PooledBody> {
    response.map(|body| PooledBody {
        source: Source::Hyper { body, give_back: Some((give_back, sender)) },
        ended: false,
        in_flight: None,
    })
}

/// The upstream connection a client connection used last, kept for that client connection's
/// next request instead of going back to the shared pool (HAProxy's `http-reuse safe` does the
/// same). A keep-alive client then talks through one upstream connection: no pool lock, no
/// lookup, and a connection that finished its exchange a round trip ago. Whatever it holds goes
/// back to the pool when the client connection ends. Cheap to clone.
#[derive(Clone, Default)]
pub struct Affinity {
    slot: Arc<AffinitySlot>,
}

#[derive(Default)]
struct AffinitySlot(Mutex<Option<Held>>);

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.slot.0.lock().map(|slot| slot.is_some()).unwrap_or(false);
        f.debug_struct("Affinity").field("holds_connection", &held).finish()
    }
}

struct Held {
    pool: Arc<Inner>,
    key: Key,
    conn: Connection,
}

impl Affinity {
    /// The held connection, if it goes to `key`. One the upstream has closed is let go, so the
    /// slot can hold the next one.
    fn take(&self, key: &Key) -> Option<Connection> {
        let mut slot = self.slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = slot.as_mut()?;
        if !held.conn.is_usable() {
            *slot = None;
            return None;
        }
        if held.key != *key {
            return None;
        }
        slot.take().map(|held| held.conn)
    }

    /// Keeps `held` unless a connection is held already; otherwise hands it back.
    fn keep(&self, held: Held) -> Option<Held> {
        let mut slot = self.slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_some() {
            return Some(held);
        }
        *slot = Some(held);
        None
    }
}

impl Drop for AffinitySlot {
    fn drop(&mut self) {
        let slot = self.0.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = slot.take() {
            held.into_pool();
        }
    }
}

impl Held {
    /// Puts the connection in the shared pool, unless it is closed or the pool is full.
    fn into_pool(mut self) {
        if !self.conn.is_usable() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { conn: self.conn, since: Instant::now() });
        }
        drop(idle);
        start_sweeping(&self.pool);
    }
}

/// Where a connection goes when its response body is off it.
struct GiveBack {
    pool: Arc<Inner>,
    key: Key,
    /// The client connection's slot, tried before the shared pool.
    affinity: Option<Affinity>,
}

impl GiveBack {
    fn give_back(self, conn: Connection) {
        let held = Held { pool: self.pool, key: self.key, conn };
        let unkept = match self.affinity {
            Some(affinity) => affinity.keep(held),
            None => Some(held),
        };
        if let Some(held) = unkept {
            held.into_pool();
        }
    }
}

/// Starts (once per pool) the task that closes idle connections past the idle timeout or closed
/// by the upstream, so their sockets do not linger when traffic stops.
fn start_sweeping(pool: &Arc<Inner>) {
    if pool.sweeping.load(Ordering::Relaxed) || pool.sweeping.swap(true, Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        pool.sweeping.store(false, Ordering::Relaxed);
        return;
    };
    let weak: Weak<Inner> = Arc::downgrade(pool);
    let every = pool.settings.idle_timeout.clamp(Duration::from_millis(50), SWEEP_EVERY);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            sweep(&pool);
        }
    });
}

/// Closes the idle connections past the idle timeout or closed by the upstream.
fn sweep(pool: &Inner) {
    let idle_timeout = pool.settings.idle_timeout;
    let mut expired = Vec::new();
    {
        let mut idle = pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for list in idle.values_mut() {
            for mut entry in std::mem::take(list) {
                if entry.since.elapsed() <= idle_timeout && entry.conn.is_usable() {
                    list.push(entry);
                } else {
                    expired.push(entry);
                }
            }
        }
        idle.retain(|_, list| !list.is_empty());
    }
    // Closed outside the lock.
    drop(expired);
}

enum Source {
    /// From an own HTTP/1.1 connection (a body-less request); the connection is inside the body
    /// until it has been read off it.
    Own { body: h1::Body, give_back: Option<GiveBack> },
    /// From hyper's client connection.
    Hyper { body: Incoming, give_back: Option<(GiveBack, http1::SendRequest<ProxyBody>)> },
}

/// A response body from the pool: once it has been read off its connection, the connection goes
/// back to the client connection's slot or the pool; dropped before that, the connection is
/// closed.
pub struct PooledBody {
    source: Source,
    ended: bool,
    /// Counts the request in flight on its endpoint until the body ends or is dropped.
    in_flight: Option<super::backend::InFlight>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut self.source {
            Source::Own { body, give_back } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    *give_back = None;
                }
                // Hand the connection back as soon as the body is off it, before the last chunk
                // has even been written to the client.
                return_when_read_off(body, give_back);
                polled.map_err(Into::into)
            }
            Source::Hyper { body, give_back } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    *give_back = None;
                }
                polled.map_err(Into::into)
            }
        };
        if let Poll::Ready(None) = polled {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Own { body, .. } => body.is_end_stream(),
            Source::Hyper { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Own { body, .. } => body.size_hint(),
            Source::Hyper { body, .. } => body.size_hint(),
        }
    }
}

impl PooledBody {
    fn finish(&mut self) {
        self.ended = true;
        self.in_flight = None;
        match &mut self.source {
            Source::Own { body, give_back } => return_when_read_off(body, give_back),
            Source::Hyper { give_back, .. } => {
                if let Some((give_back, sender)) = give_back.take() {
                    give_back.give_back(Connection::Hyper(sender));
                }
            }
        }
    }
}

/// Returns the connection under `body` once the body has been read off it (and the connection
/// can carry another request).
fn return_when_read_off(body: &mut h1::Body, give_back: &mut Option<GiveBack>) {
    if give_back.is_some()
        && let Some(conn) = body.take_reusable()
        && let Some(give_back) = give_back.take()
    {
        give_back.give_back(Connection::Own(conn));
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled.
        if !self.ended && self.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// How a test upstream treats the requests on one connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Answers {
        /// Answers every request, keeping the connection open.
        Every,
        /// Answers one request, then closes (`Connection: close`).
        OneThenClose,
        /// Answers the first request; reads the next and closes without answering it (a server
        /// that dies, or times the connection out, just as a request arrives).
        FirstThenHangUp,
    }

    /// An HTTP/1.1 upstream that answers every request with the number of the connection it
    /// came on (0, 1, ...), closing the connection after each answer when `close` is set.
    /// Returns its authority and the count of accepted connections.
    async fn numbered_upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let answers = if close { Answers::OneThenClose } else { Answers::Every };
        let (authority, accepted, _) = closable_upstream(answers).await;
        (authority, accepted)
    }

    /// A numbered upstream answering as `answers` says, and a switch that closes every open
    /// connection.
    async fn closable_upstream(answers: Answers) -> (Authority, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let close_all = Arc::new(tokio::sync::Notify::new());
        let closer = Arc::clone(&close_all);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority =
            Authority::try_from(listener.local_addr().expect("addr").to_string()).expect("authority");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let closer = Arc::clone(&closer);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let mut answered = false;
                    loop {
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            if answered && answers == Answers::FirstThenHangUp {
                                return;
                            }
                            answered = true;
                            let body = number.to_string();
                            let close = answers == Answers::OneThenClose;
                            let connection = if close { "close" } else { "keep-alive" };
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nconnection: {connection}\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                        tokio::select! {
                            read = stream.read(&mut chunk) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            },
                            _ = closer.notified() => return,
                        }
                    }
                });
            }
        });
        (authority, accepted, close_all)
    }

    fn pool() -> Pool {
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Pool::new(PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            tls: Arc::new(tls),
        })
    }

    fn get() -> Request<ProxyBody> {
        let mut request = Request::new(crate::body::empty());
        *request.uri_mut() = http::Uri::from_static("/");
        request
    }

    async fn send(pool: &Pool, authority: &Authority, affinity: Option<&Affinity>) -> Response<ProxyBody> {
        let sending = pool.send_with(&Scheme::HTTP, authority, None, None, affinity, get());
        tokio::time::timeout(Duration::from_secs(5), sending).await.expect("in time").expect("answered")
    }

    /// Sends a request and reads the answer to its end (handing the connection back): the number
    /// of the upstream connection that served it.
    async fn served_on(pool: &Pool, authority: &Authority, affinity: Option<&Affinity>) -> String {
        connection_of(send(pool, authority, affinity).await).await
    }

    /// Reads the body to its end (which hands the connection back) and returns it.
    async fn connection_of(response: Response<ProxyBody>) -> String {
        let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
        String::from_utf8_lossy(&collected.expect("in time").expect("body").to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn a_client_connection_keeps_the_upstream_connection_it_used() {
        let (authority, accepted) = numbered_upstream(false).await;
        let pool = pool();
        let (a, b) = (Affinity::default(), Affinity::default());
        assert_eq!(served_on(&pool, &authority, Some(&a)).await, "0");
        // Held by `a`, so `b` cannot take it from the pool: it gets its own.
        assert_eq!(served_on(&pool, &authority, Some(&b)).await, "1");
        for _ in 0..3 {
            assert_eq!(served_on(&pool, &authority, Some(&a)).await, "0");
            assert_eq!(served_on(&pool, &authority, Some(&b)).await, "1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_held_connection_returns_to_the_pool_when_the_client_connection_ends() {
        let (authority, accepted) = numbered_upstream(false).await;
        let pool = pool();
        let client = Affinity::default();
        assert_eq!(served_on(&pool, &authority, Some(&client)).await, "0");
        drop(client);
        assert_eq!(served_on(&pool, &authority, None).await, "0", "reused from the pool");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_connection_is_held_and_the_others_go_back_to_the_pool() {
        let (authority, accepted) = numbered_upstream(false).await;
        let pool = pool();
        let client = Affinity::default();
        // Two exchanges at once on one client connection (as HTTP/2 streams are).
        let (first, second) =
            tokio::join!(send(&pool, &authority, Some(&client)), send(&pool, &authority, Some(&client)));
        let (first, second) = (connection_of(first).await, connection_of(second).await);
        assert_ne!(first, second, "two exchanges at once take two connections");
        let pooled = served_on(&pool, &authority, None).await;
        let held = served_on(&pool, &authority, Some(&client)).await;
        assert_ne!(pooled, held, "one is held, the pool has the other");
        assert!([&first, &second].contains(&&pooled) && [&first, &second].contains(&&held));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_held_connection_serves_only_its_own_endpoint() {
        let (first, first_accepted) = numbered_upstream(false).await;
        let (second, second_accepted) = numbered_upstream(false).await;
        let pool = pool();
        let client = Affinity::default();
        assert_eq!(served_on(&pool, &first, Some(&client)).await, "0");
        assert_eq!(served_on(&pool, &second, Some(&client)).await, "0");
        assert_eq!(served_on(&pool, &first, Some(&client)).await, "0");
        assert_eq!(served_on(&pool, &second, Some(&client)).await, "0");
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
        assert_eq!(second_accepted.load(Ordering::SeqCst), 1, "reused through the pool");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_held() {
        let (authority, accepted) = numbered_upstream(true).await;
        let pool = pool();
        let client = Affinity::default();
        for expected in ["0", "1", "2"] {
            assert_eq!(served_on(&pool, &authority, Some(&client)).await, expected);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_held_connection_the_upstream_closed_is_let_go() {
        let (authority, accepted, close_all) = closable_upstream(Answers::Every).await;
        let pool = pool();
        let (a, b) = (Affinity::default(), Affinity::default());
        assert_eq!(served_on(&pool, &authority, Some(&a)).await, "0");
        close_all.notify_waiters();
        let held_closed = || {
            let mut slot = a.slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.as_mut().is_some_and(|held| !held.conn.is_usable())
        };
        for _ in 0..500 {
            if held_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(held_closed(), "the upstream closed the held connection");
        assert_eq!(served_on(&pool, &authority, Some(&a)).await, "1");
        // `a` holds the new connection, so `b` needs one of its own.
        assert_eq!(served_on(&pool, &authority, Some(&b)).await, "2");
        assert_eq!(served_on(&pool, &authority, Some(&a)).await, "1");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    fn request(method: http::Method, body: &'static str) -> Request<ProxyBody> {
        let mut request = Request::new(crate::body::full(body));
        *request.method_mut() = method;
        *request.uri_mut() = http::Uri::from_static("/");
        if !body.is_empty() {
            request.headers_mut().insert(http::header::CONTENT_LENGTH, body.len().into());
        }
        request
    }

    async fn try_send(
        pool: &Pool,
        authority: &Authority,
        request: Request<ProxyBody>,
    ) -> Result<String, PoolError> {
        let sending = pool.send_with(&Scheme::HTTP, authority, None, None, None, request);
        let response = tokio::time::timeout(Duration::from_secs(5), sending).await.expect("in time")?;
        Ok(connection_of(response).await)
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_used() {
        let (authority, accepted, close_all) = closable_upstream(Answers::Every).await;
        let pool = pool();
        assert_eq!(served_on(&pool, &authority, None).await, "0");
        // Not idempotent, so neither request could be sent again had it gone out on the dead
        // connection: each goes to a fresh one instead, without a body (the own exchange) and
        // with one (hyper's client).
        for (body, fresh) in [("", "1"), ("payload", "2")] {
            close_all.notify_waiters();
            // Until the close has reached the pooled connection's socket.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answer = try_send(&pool, &authority, request(http::Method::POST, body)).await;
            assert_eq!(answer.expect("answered"), fresh, "body {body:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idempotent_request_is_sent_again_when_its_connection_dies_before_answering() {
        let (authority, accepted, _) = closable_upstream(Answers::FirstThenHangUp).await;
        let pool = pool();
        assert_eq!(try_send(&pool, &authority, get()).await.expect("first"), "0");
        // Connection 0 reads this one and closes without a word: a GET is safe to send again.
        assert_eq!(try_send(&pool, &authority, get()).await.expect("sent again"), "1");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A body-less POST is not: the upstream may have acted on it.
        let error = try_send(&pool, &authority, request(http::Method::POST, "")).await.err();
        assert!(matches!(error, Some(PoolError::Exchange { .. })), "{error:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_carries_requests_with_and_without_a_body() {
        let (authority, accepted) = numbered_upstream(false).await;
        let pool = pool();
        let client = Affinity::default();
        let send = |request| pool.send_with(&Scheme::HTTP, &authority, None, None, Some(&client), request);
        for request in [get(), request(http::Method::POST, "abc"), get(), request(http::Method::PUT, "d")] {
            let response =
                tokio::time::timeout(Duration::from_secs(5), send(request)).await.expect("in time");
            assert_eq!(connection_of(response.expect("answered")).await, "0");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the own connection was handed to hyper, not replaced"
        );
    }

    #[tokio::test]
    async fn idle_connections_past_the_idle_timeout_are_closed_by_the_sweep() {
        let (authority, accepted) = numbered_upstream(false).await;
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let pool = Pool::new(PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(100),
            tls: Arc::new(tls),
        });
        assert_eq!(served_on(&pool, &authority, None).await, "0");
        let idle_count = || {
            let idle = pool.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            idle.values().map(Vec::len).sum::<usize>()
        };
        assert_eq!(idle_count(), 1);
        let swept = async {
            while idle_count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), swept).await.expect("swept without a request coming");
        assert_eq!(served_on(&pool, &authority, None).await, "1");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
