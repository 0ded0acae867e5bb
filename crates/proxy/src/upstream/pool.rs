//! A lean HTTP/1.1 connection pool for upstreams, on hyper's low-level client connections.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to put the connection back
//! once the response body is done. Here the response body itself hands the connection back when
//! it reaches its end, so a proxied request costs no extra task, and checkout is one short lock.
//!
//! Connections are kept per endpoint (scheme + authority, and for TLS the client configuration
//! and server name they were made with), LIFO (the warmest first), at most
//! `MAX_IDLE_PER_ENDPOINT`, and dropped when idle longer than the idle timeout. A request that
//! could not be written on a pooled connection (the server closed it just as we picked it) is
//! retried once on a fresh connection: it never reached the upstream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

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
    /// The HTTP exchange failed after connecting.
    #[error("HTTP exchange with {endpoint}: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: hyper::Error,
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

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
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
    settings: PoolSettings,
    tls: tokio_rustls::TlsConnector,
}

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Pool {
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&settings.tls));
        Pool { inner: Arc::new(Inner { idle: Mutex::new(HashMap::new()), settings, tls }) }
    }

    /// Sends `request` to `scheme://authority` (`server_name` for TLS verification) and returns the
    /// response; its body returns the connection to the pool when it ends.
    pub async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        server_name: Option<&str>,
        request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
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
    ) -> Result<Response<PooledBody>, PoolError> {
        let key = Key {
            scheme: scheme.clone(),
            authority: authority.clone(),
            tls_profile: tls.map_or(0, |t| t.id),
            server_name: server_name.map(str::to_string),
        };
        let mut request = request;
        if let Some(mut sender) = self.checkout(&key, affinity).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(key, sender, response, affinity)),
                Err(mut error) => match error.take_message() {
                    // Not written: the pooled connection was closing. Use a fresh one.
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(PoolError::Http {
                            endpoint: authority.to_string(),
                            source: error.into_error(),
                        });
                    }
                },
            }
        }
        // Boxed: the TCP + TLS + handshake future is large and rarely needed; unboxed it would
        // grow every request's future by its size.
        let mut sender = Box::pin(self.connect(&key, server_name, tls)).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| PoolError::Http { endpoint: authority.to_string(), source })?;
        Ok(self.wrap(key, sender, response, affinity))
    }

    fn wrap(
        &self,
        key: Key,
        sender: http1::SendRequest<ProxyBody>,
        response: Response<Incoming>,
        affinity: Option<&Affinity>,
    ) -> Response<PooledBody> {
        let pool = Arc::clone(&self.inner);
        let affinity = affinity.cloned();
        response.map(|body| PooledBody {
            inner: body,
            ended: false,
            give_back: Some(GiveBack { held: Held { pool, key, sender }, affinity }),
            in_flight: None,
        })
    }

    async fn checkout(
        &self,
        key: &Key,
        affinity: Option<&Affinity>,
    ) -> Option<http1::SendRequest<ProxyBody>> {
        if let Some(mut sender) = affinity.and_then(|affinity| affinity.take(key)) {
            // Its exchange ended a round trip ago, so it is ready unless it is closing.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        let idle_timeout = self.inner.settings.idle_timeout;
        loop {
            let candidate = {
                let mut idle = self.inner.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                idle.get_mut(key)?.pop()
            }?;
            if candidate.sender.is_closed() || candidate.since.elapsed() > idle_timeout {
                continue;
            }
            let mut sender = candidate.sender;
            // Returned at the end of the previous response body; the connection task may not have
            // flipped to ready yet. That takes one scheduling round, not network time.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(
        &self,
        key: &Key,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
    ) -> Result<http1::SendRequest<ProxyBody>, PoolError> {
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
        if key.scheme == Scheme::HTTPS {
            let name = server_name.unwrap_or(address.0).to_string();
            let name = ServerName::try_from(name).map_err(|e| PoolError::Tls {
                endpoint: endpoint.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
            let connector = tls.map_or(&self.inner.tls, |t| &t.connector);
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|source| PoolError::Tls { endpoint: endpoint.clone(), source })?;
            handshake(TokioIo::new(tls), &endpoint).await
        } else {
            handshake(TokioIo::new(stream), &endpoint).await
        }
    }
}

async fn handshake<T>(io: T, endpoint: &str) -> Result<http1::SendRequest<ProxyBody>, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        // Flat writes, like the server side (see `server::connection_builder`).
        .writev(false)
        .handshake(io)
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
    sender: http1::SendRequest<ProxyBody>,
}

impl Affinity {
    /// The held connection, if it goes to `key`. One the upstream has closed is let go, so the
    /// slot can hold the next one.
    fn take(&self, key: &Key) -> Option<http1::SendRequest<ProxyBody>> {
        let mut slot = self.slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*slot {
            Some(held) if held.sender.is_closed() => {
                *slot = None;
                None
            }
            Some(held) if held.key == *key => slot.take().map(|held| held.sender),
            _ => None,
        }
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
    fn into_pool(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { sender: self.sender, since: Instant::now() });
        }
    }
}

struct GiveBack {
    held: Held,
    /// The client connection's slot, tried before the shared pool.
    affinity: Option<Affinity>,
}

impl GiveBack {
    fn give_back(self) {
        if self.held.sender.is_closed() {
            return;
        }
        let unkept = match self.affinity {
            Some(affinity) => affinity.keep(self.held),
            None => Some(self.held),
        };
        if let Some(held) = unkept {
            held.into_pool();
        }
    }
}

/// A response body from the pool: when it has been read to its end, the connection goes back to
/// the pool; dropped before the end, the connection is closed.
pub struct PooledBody {
    inner: Incoming,
    ended: bool,
    give_back: Option<GiveBack>,
    /// Counts the request in flight on its endpoint until the body ends or is dropped.
    in_flight: Option<super::backend::InFlight>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl PooledBody {
    /// Keeps `guard` until the body ends or is dropped.
    pub fn hold(&mut self, guard: Option<super::backend::InFlight>) {
        self.in_flight = guard;
    }

    fn finish(&mut self) {
        self.ended = true;
        self.in_flight = None;
        if let Some(give_back) = self.give_back.take() {
            give_back.give_back();
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled.
        if !self.ended && self.inner.is_end_stream() {
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

    /// An HTTP/1.1 upstream that answers every request with the number of the connection it
    /// came on (0, 1, ...), closing the connection after each answer when `close` is set.
    /// Returns its authority and the count of accepted connections.
    async fn numbered_upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let (authority, accepted, _) = closable_upstream(close).await;
        (authority, accepted)
    }

    /// [`numbered_upstream`], and a switch that closes every open connection.
    async fn closable_upstream(close: bool) -> (Authority, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
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
                    loop {
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let body = number.to_string();
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

    async fn send(pool: &Pool, authority: &Authority, affinity: Option<&Affinity>) -> Response<PooledBody> {
        let sending = pool.send_with(&Scheme::HTTP, authority, None, None, affinity, get());
        tokio::time::timeout(Duration::from_secs(5), sending).await.expect("in time").expect("answered")
    }

    /// Sends a request and reads the answer to its end (handing the connection back): the number
    /// of the upstream connection that served it.
    async fn served_on(pool: &Pool, authority: &Authority, affinity: Option<&Affinity>) -> String {
        connection_of(send(pool, authority, affinity).await).await
    }

    /// Reads the body to its end (which hands the connection back) and returns it.
    async fn connection_of(response: Response<PooledBody>) -> String {
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
        let first = send(&pool, &authority, Some(&client)).await;
        let second = send(&pool, &authority, Some(&client)).await;
        assert_eq!(connection_of(first).await, "0");
        assert_eq!(connection_of(second).await, "1");
        assert_eq!(served_on(&pool, &authority, None).await, "1", "the pool has the other");
        assert_eq!(served_on(&pool, &authority, Some(&client)).await, "0", "held");
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
        let (authority, accepted, close_all) = closable_upstream(false).await;
        let pool = pool();
        let (a, b) = (Affinity::default(), Affinity::default());
        assert_eq!(served_on(&pool, &authority, Some(&a)).await, "0");
        close_all.notify_waiters();
        let held_closed = || {
            let slot = a.slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.as_ref().is_some_and(|held| held.sender.is_closed())
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
}
