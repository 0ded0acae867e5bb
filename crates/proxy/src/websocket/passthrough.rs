//! WebSocket passthrough: an HTTP Route whose backend speaks WebSocket. The upgrade request has
//! been through the whole pipeline; here it goes to one endpoint on a dedicated connection (an
//! upgraded connection never returns to the pool), and after the backend's 101 the bytes are
//! piped both ways — frames are opaque — until either side closes, the idle timeout or maximum
//! lifetime passes, or the proxy drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::upgrade::{self, Upgrade};
use crate::body::{ProxyBody, boxed, empty};
use crate::error::ProxyError;
use crate::gateway::Gateway;
use crate::runtime::RoutePolicy;
use crate::upstream::{BackendRuntime, Caller, TlsSetup};

/// Upstream I/O of either kind.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Forwards the upgrade request `parts` (headers already rewritten for the upstream) to an
/// endpoint of `backend`, and on 101 answers the client and starts piping.
pub async fn forward(
    gateway: &Arc<Gateway>,
    policy: &RoutePolicy,
    backend: &BackendRuntime,
    upgrade: Upgrade,
    mut parts: http::request::Parts,
    path_and_query: &str,
    caller: Caller<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ProxyError::Internal);
    };
    let timeout_ms = u64::try_from(policy.timeout.as_millis()).unwrap_or(u64::MAX);
    let endpoints = match tokio::time::timeout(policy.timeout, backend.endpoints()).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout { timeout_ms }),
        Ok(Err(_)) => return Err(ProxyError::NoEndpoints),
        Ok(Ok(endpoints)) => endpoints,
    };
    let hash_key = backend.hash_key(&parts.headers, parts.uri.query(), caller);
    let Some(endpoint) = backend.pick(&endpoints, hash_key, None) else {
        return Err(ProxyError::NoEndpoints);
    };
    let endpoint = &endpoint.authority;
    let io = tokio::time::timeout(policy.timeout, connect(gateway, backend, endpoint))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout { timeout_ms })??;
    let (mut sender, connection) =
        http1::handshake::<_, ProxyBody>(TokioIo::new(io)).await.map_err(|error| {
            tracing::debug!(%error, "upstream handshake failed");
            ProxyError::Upstream
        })?;
    tokio::spawn(
        async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream WebSocket connection ended with an error");
            }
        }
        .instrument(tracing::debug_span!("websocket_upstream")),
    );
    let headers = &mut parts.headers;
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if matches!(upgrade, Upgrade::Http2) {
        // RFC 8441 clients send no key; the HTTP/1.1 backend needs one.
        headers.insert(upgrade::SEC_WEBSOCKET_KEY.clone(), upgrade::new_key());
        headers.entry(upgrade::SEC_WEBSOCKET_VERSION.clone()).or_insert(HeaderValue::from_static("13"));
    }
    if let Some(host) = &backend.host_header {
        headers.insert(header::HOST, host.clone());
    } else if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(endpoint.as_str())
    {
        headers.insert(header::HOST, host);
    }
    let mut request = Request::new(empty());
    *request.method_mut() = http::Method::GET;
    *request.uri_mut() = Uri::try_from(path_and_query).map_err(|_| ProxyError::Internal)?;
    *request.headers_mut() = parts.headers;
    let mut response = tokio::time::timeout(policy.timeout, sender.send_request(request))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout { timeout_ms })?
        .map_err(|error| {
            tracing::debug!(%error, "upstream WebSocket request failed");
            ProxyError::Upstream
        })?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused the upgrade: its answer goes back as is.
        let (mut head, body) = response.into_parts();
        crate::headers::remove_hop_by_hop(&mut head.headers);
        return Ok(Response::from_parts(head, boxed(body)));
    }
    let upstream = hyper::upgrade::on(&mut response);
    let answer = upgrade::accept(&upgrade, response.headers());
    let timeouts = policy.web_socket;
    let hub = Arc::clone(gateway.websockets());
    let guard = hub.open("passthrough");
    tokio::spawn(
        async move {
            let (client, upstream) = match tokio::try_join!(on_upgrade, upstream) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade failed");
                    guard.ended("error");
                    return;
                }
            };
            let reason = pipe(
                TokioIo::new(client),
                TokioIo::new(upstream),
                timeouts.idle_timeout.as_duration(),
                timeouts.max_connection_duration.as_duration(),
                hub.drain_signal(),
            )
            .await;
            guard.ended(reason);
        }
        .instrument(tracing::debug_span!("websocket_passthrough")),
    );
    Ok(answer)
}

async fn connect(
    gateway: &Gateway,
    backend: &BackendRuntime,
    endpoint: &http::uri::Authority,
) -> Result<Box<dyn Io>, ProxyError> {
    let https = backend.scheme == http::uri::Scheme::HTTPS;
    let host = endpoint.host().trim_matches(['[', ']']);
    let port = endpoint.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = TcpStream::connect((host, port)).await.map_err(|error| {
        tracing::debug!(%error, %endpoint, "WebSocket upstream connect failed");
        ProxyError::Upstream
    })?;
    let _ = stream.set_nodelay(true);
    if !https {
        return Ok(Box::new(stream));
    }
    let name = backend.server_name.clone().unwrap_or_else(|| host.to_string());
    let name = ServerName::try_from(name).map_err(|_| ProxyError::Upstream)?;
    let connector = match &backend.tls {
        TlsSetup::Default => tokio_rustls::TlsConnector::from(gateway.upstream().tls_config()),
        TlsSetup::Custom(profile) => profile.connector.clone(),
        TlsSetup::Broken(reason) => {
            tracing::warn!(backend = %backend.name, %reason, "upstream TLS is not usable");
            return Err(ProxyError::Upstream);
        }
    };
    let tls = connector.connect(name, stream).await.map_err(|error| {
        tracing::debug!(%error, %endpoint, "WebSocket upstream TLS failed");
        ProxyError::Upstream
    })?;
    Ok(Box::new(tls))
}

/// Copies bytes both ways until both directions end (`closed`), or a timeout or drain ends the
/// connection. Returns the reason. On drain each direction finishes the frame in flight and
/// then sends a close frame (1001, going away) — unmasked to the client, masked to the backend
/// — so both peers see a clean WebSocket close.
async fn pipe<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    lifetime: Duration,
    drain: tokio::sync::watch::Receiver<bool>,
) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    // Milliseconds since `started` of the last byte either way.
    let last = AtomicU64::new(0);
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let copies = async {
        let (to_upstream, to_client) = tokio::join!(
            copy(client_read, upstream_write, &last, started, drain.clone(), masked_close()),
            copy(upstream_read, client_write, &last, started, drain.clone(), CLOSE_GOING_AWAY.to_vec())
        );
        match (to_upstream, to_client) {
            (Ok(true), _) | (_, Ok(true)) => "drain",
            (Ok(false), Ok(false)) => "closed",
            _ => "error",
        }
    };
    let idle_watch = async {
        loop {
            let at = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    };
    tokio::select! {
        reason = copies => reason,
        () = idle_watch => "idle",
        () = tokio::time::sleep(lifetime) => "lifetime",
    }
}

/// A close frame with status 1001 (going away), as a server sends it (unmasked).
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame as a client sends it (masked with a fresh key).
fn masked_close() -> Vec<u8> {
    let key = uuid::Uuid::new_v4();
    let key = key.as_bytes();
    let (k0, k1, k2, k3) = (key[0], key[1], key[2], key[3]);
    vec![0x88, 0x82, k0, k1, k2, k3, 0x03 ^ k0, 0xE9 ^ k1]
}

/// Copies one direction; returns `true` when it ended because the proxy drains.
async fn copy<R, W>(
    mut from: R,
    mut to: W,
    last: &AtomicU64,
    started: tokio::time::Instant,
    mut drain: tokio::sync::watch::Receiver<bool>,
    close: Vec<u8>,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 8192];
    let mut frames = Frames::default();
    let mut draining = false;
    loop {
        if draining && frames.at_boundary() {
            to.write_all(&close).await?;
            let _ = to.shutdown().await;
            return Ok(true);
        }
        let n = tokio::select! {
            read = from.read(&mut buffer) => read?,
            () = crate::server::stopped(&mut drain), if !draining => {
                draining = true;
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(false);
        }
        let chunk = buffer.get(..n).unwrap_or_default();
        frames.feed(chunk);
        to.write_all(chunk).await?;
        to.flush().await?;
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(elapsed, Ordering::Relaxed);
    }
}

/// Tracks WebSocket frame boundaries in a byte stream (headers parsed, payloads skipped), so a
/// close frame can be put between two frames, never inside one.
#[derive(Default)]
struct Frames {
    head: [u8; 14],
    filled: usize,
    remaining: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.filled == 0 && self.remaining == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len());
                self.remaining -= n as u64;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            let Some((first, rest)) = data.split_first() else { return };
            if let Some(slot) = self.head.get_mut(self.filled) {
                *slot = *first;
                self.filled += 1;
            }
            data = rest;
            if let Some(payload) = payload_len(self.head.get(..self.filled).unwrap_or_default()) {
                self.remaining = payload;
                self.filled = 0;
            }
        }
    }
}

/// The payload length once `head` holds a whole frame header.
fn payload_len(head: &[u8]) -> Option<u64> {
    let second = *head.get(1)?;
    let masked = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, short) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        len => (0, Some(u64::from(len))),
    };
    if head.len() < 2 + extended + masked {
        return None;
    }
    match short {
        Some(len) => Some(len),
        None => {
            let bytes = head.get(2..2 + extended)?;
            Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_pipe_closes_after_the_idle_timeout() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let (_tx, drain) = tokio::sync::watch::channel(false);
        let reason = pipe(client, upstream, Duration::from_secs(5), Duration::from_secs(60), drain).await;
        assert_eq!(reason, "idle");
    }

    #[tokio::test(start_paused = true)]
    async fn pipe_copies_both_ways_and_ends_on_drain() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let (tx, drain) = tokio::sync::watch::channel(false);
        let piping =
            tokio::spawn(pipe(client, upstream, Duration::from_secs(5), Duration::from_secs(60), drain));
        client_peer.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap_or_default();
        let mut got = [0u8; 4];
        upstream_peer.read_exact(&mut got).await.unwrap_or_default();
        assert_eq!(got, [0x81, 0x02, b'h', b'i']);
        upstream_peer.write_all(&[0x81, 0x02, b'y', b'o']).await.unwrap_or_default();
        client_peer.read_exact(&mut got).await.unwrap_or_default();
        assert_eq!(got, [0x81, 0x02, b'y', b'o']);
        tx.send_replace(true);
        assert_eq!(piping.await.ok(), Some("drain"));
        // Both peers get a close frame (1001): unmasked to the client, masked to the backend.
        let mut close = [0u8; 4];
        client_peer.read_exact(&mut close).await.unwrap_or_default();
        assert_eq!(close, CLOSE_GOING_AWAY);
        let mut masked = [0u8; 8];
        upstream_peer.read_exact(&mut masked).await.unwrap_or_default();
        assert_eq!((masked[0], masked[1]), (0x88, 0x82));
        assert_eq!((masked[6] ^ masked[2], masked[7] ^ masked[3]), (0x03, 0xE9));
    }

    #[test]
    fn frame_boundaries_are_tracked_across_chunks() {
        let mut frames = Frames::default();
        // A masked 300-byte frame (16-bit length), split inside the header and the payload.
        let mut frame = vec![0x82, 0xFE, 0x01, 0x2C, 1, 2, 3, 4];
        frame.extend(std::iter::repeat_n(0u8, 300));
        frames.feed(&frame[..3]);
        assert!(!frames.at_boundary());
        frames.feed(&frame[3..100]);
        assert!(!frames.at_boundary());
        frames.feed(&frame[100..]);
        assert!(frames.at_boundary());
        // Two small unmasked frames in one chunk.
        frames.feed(&[0x81, 0x02, b'h', b'i', 0x89, 0x00]);
        assert!(frames.at_boundary());
        frames.feed(&[0x81, 0x05, b'h']);
        assert!(!frames.at_boundary());
    }
}
