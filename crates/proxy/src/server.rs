//! Listeners: accept loops for plain HTTP (HTTP/1.1 + h2c) and TLS (ALPN h2 / http/1.1), with
//! header limits, a header-read timeout and graceful draining on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::gateway::{ConnInfo, Gateway};

mod drain;
mod idle;

pub use drain::{Drain, Finish, Member, Watched};
pub use idle::{Activity, Busy};

/// Connection-level limits of a listener.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Largest request head (request line + headers) accepted; larger heads get 431.
    pub max_header_bytes: usize,
    /// Time a connection may go without a request in flight: for a client to send a complete
    /// request head, and the keep-alive idle time between requests (see `server::idle`).
    pub header_read_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// A signal that flips once, when shutdown starts.
pub type Shutdown = watch::Receiver<bool>;

/// Resolves once shutdown has started (or its sender is gone).
pub async fn stopped(shutdown: &mut Shutdown) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Serves the gateway on `listener` until `shutdown` flips, then drains: stops accepting, lets
/// in-flight requests finish for up to `drain_timeout`, and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    settings: ServerSettings,
    mut shutdown: Shutdown,
) {
    let builder = Arc::new(connection_builder(&settings));
    let drain = Drain::new();
    let local = listener.local_addr().ok();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let span = tracing::debug_span!("connection", %remote);
        // Counted from the accept (for TLS, the handshake counts as time without a request).
        let mut member = drain.enter();
        let activity = member.close_when_idle(settings.header_read_timeout);
        match &tls {
            None => {
                let info = ConnInfo {
                    remote,
                    remote_ip_value: crate::headers::client_ip_value(remote.ip()),
                    tls: false,
                    peer: None,
                    affinity: Default::default(),
                    route_timer: Default::default(),
                    activity: Some(activity),
                    max_head_bytes: settings.max_header_bytes,
                };
                let gateway = Arc::clone(&gateway);
                let service = service_fn(move |request| {
                    let (gateway, info) = (Arc::clone(&gateway), info.clone());
                    async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, info).await) }
                });
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let watched = member.watch(connection);
                tokio::spawn(log_connection_end(watched).instrument(span));
            }
            Some(acceptor) => {
                let config = Arc::clone(acceptor.config());
                let slot = gateway.runtime_slot();
                // The client certificate's identity is known only after the handshake; the
                // service (built here, outside the task) reads it from this cell.
                let peer_cell: Arc<std::sync::OnceLock<Arc<crate::auth::mtls::PeerIdentity>>> =
                    Arc::default();
                let service = {
                    let gateway = Arc::clone(&gateway);
                    let peer_cell = Arc::clone(&peer_cell);
                    let affinity = crate::upstream::Affinity::default();
                    let route_timer = crate::upstream::TimerSlot::default();
                    let remote_ip_value = crate::headers::client_ip_value(remote.ip());
                    let max_head_bytes = settings.max_header_bytes;
                    service_fn(move |request| {
                        let gateway = Arc::clone(&gateway);
                        let info = ConnInfo {
                            remote,
                            remote_ip_value: remote_ip_value.clone(),
                            tls: true,
                            peer: peer_cell.get().cloned(),
                            affinity: affinity.clone(),
                            route_timer: route_timer.clone(),
                            activity: Some(Arc::clone(&activity)),
                            max_head_bytes,
                        };
                        async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, info).await) }
                    })
                };
                // The handshake is time without a request too: bounded by the header-read timeout
                // when that is shorter.
                let handshake_timeout = settings.tls_handshake_timeout.min(settings.header_read_timeout);
                tokio::spawn(
                    async move {
                        // The client-certificate verifier is chosen by SNI (mTLS per API).
                        let (stream, peer) = match crate::auth::mtls::accept(
                            stream,
                            &config,
                            &slot,
                            handshake_timeout,
                        )
                        .await
                        {
                            Ok(accepted) => accepted,
                            Err(error) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                return;
                            }
                        };
                        if let Some(peer) = peer {
                            let _ = peer_cell.set(peer);
                        }
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        log_connection_end(member.watch(connection)).await;
                    }
                    .instrument(span),
                );
            }
        }
    }
    drop(listener);
    tracing::info!(listener = ?local, connections = drain.count(), "draining");
    if tokio::time::timeout(settings.drain_timeout, drain.shutdown()).await.is_err() {
        tracing::warn!(listener = ?local, "drain timeout expired; closing remaining connections");
    }
}

async fn log_connection_end<E: std::fmt::Display>(connection: impl Future<Output = Result<(), E>>) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// The HTTP parser's own limit on a request head: twice the gateway's, so that heads up to the
/// gateway's limit and somewhat beyond reach the gateway, which answers them with JSON.
fn parser_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2)
}

fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // No `header_read_timeout`: `server::idle` does its job without a timer per request.
        // One flat buffer per write instead of hyper's queue of slices for writev: the typical
        // API response is a small head and body, and copying it once measured cheaper (callgrind
        // -2 % instructions per request, and less kernel time) than building iovecs.
        .writev(false)
        // A client may close its sending side once its request is out and still gets the
        // response (without this, hyper treats the early EOF as an aborted request and drops
        // the connection unanswered). This also spares hyper's probe of the client socket while
        // a request is in flight, which took a fresh 8 KB read buffer for every request (the
        // request head still holds the old one): -1,000 instructions per request. As with
        // HAProxy's default (no `abortonclose`), a client that goes away mid-request is noticed
        // when its response is written, so its upstream call runs until the response or the
        // route timeout; the access log and metrics then count it.
        .half_close(true)
        // The limit is checked by the gateway (a JSON 431 that is logged and counted, see
        // `Gateway::pipeline`); the parser's buffer, at twice the limit, is the backstop that
        // answers larger heads with a bare 431 before they are read whole.
        .max_buf_size(parser_limit(settings.max_header_bytes).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(parser_limit(settings.max_header_bytes)).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024)
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT with `:protocol websocket`).
        .enable_connect_protocol();
    builder
}
