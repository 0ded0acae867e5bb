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
        self.send_with(scheme, authority, server_name, None, request).await
    }

    /// [`Pool::send`] with a backend's own TLS configuration (`None`: the pool's). Connections
    /// are pooled per configuration and server name.
    pub async fn send_with(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        server_name: Option<&str>,
        tls: Option<&super::backend::TlsProfile>,
        request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let key = Key {
            scheme: scheme.clone(),
            authority: authority.clone(),
            tls_profile: tls.map_or(0, |t| t.id),
            server_name: server_name.map(str::to_string),
        };
        let mut request = request;
        if let Some(mut sender) = self.checkout(&key).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(key, sender, response)),
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
        let mut sender = self.connect(&key, server_name, tls).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| PoolError::Http { endpoint: authority.to_string(), source })?;
        Ok(self.wrap(key, sender, response))
    }

    fn wrap(
        &self,
        key: Key,
        sender: http1::SendRequest<ProxyBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody {
            inner: body,
            ended: false,
            give_back: Some(GiveBack { pool: Arc::clone(&self.inner), key, sender }),
            in_flight: None,
        })
    }

    async fn checkout(&self, key: &Key) -> Option<http1::SendRequest<ProxyBody>> {
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

struct GiveBack {
    pool: Arc<Inner>,
    key: Key,
    sender: http1::SendRequest<ProxyBody>,
}

impl GiveBack {
    fn give_back(self) {
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
