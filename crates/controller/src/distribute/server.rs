//! The subscription server: HTTP/2 (or HTTP/1.1) over TLS; `GET /v1alpha1/subscribe` streams
//! frames, `POST /v1alpha1/applied` records what a proxy applied, `POST /v1alpha1/stats` takes
//! its per-track counts of canary stages.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tollgate_ir::distribution::{
    APPLIED_PATH, AppliedReport, Frame as WireFrame, HAVE_VERSION_HEADER, MAX_STATS_BYTES, SESSION_HEADER,
    STATS_PATH, SUBSCRIBE_PATH, StatsReport,
};
use tracing::Instrument;

use super::auth::Authenticator;
use super::sessions::Sessions;
use crate::publish::{NextFrame, Publisher};

type Body = BoxBody<Bytes, Infallible>;

/// Why the server's TLS settings could not be loaded.
pub type TlsSetupError = crate::tls_reload::CertError;

/// A TLS acceptor from a PEM certificate chain and a PEM private key, offering h2 and http/1.1.
/// The files are re-read when they change (a rotated Secret), checked at most every 10 s.
pub fn server_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let resolver = crate::tls_reload::ReloadingCert::new(cert, key, Duration::from_secs(10))?;
    let mut config =
        rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves subscriptions.
pub struct DistributionServer {
    /// What is published.
    pub publisher: Arc<Publisher>,
    /// Connected proxies.
    pub sessions: Arc<Sessions>,
    /// Who may subscribe.
    pub auth: Authenticator,
    /// Interval of keepalive frames on idle subscriptions.
    pub keepalive: Duration,
}

impl DistributionServer {
    /// Accepts connections until `shutdown` flips; open subscriptions end with it.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: TlsAcceptor,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::stopped(&mut shutdown) => return,
            };
            let this = Arc::clone(&self);
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            let span = tracing::debug_span!("subscriber", %remote);
            tokio::spawn(
                async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let service = service_fn(move |request| {
                        let this = Arc::clone(&this);
                        let shutdown = shutdown.clone();
                        async move { Ok::<_, Infallible>(this.handle(request, shutdown).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                .instrument(span),
            );
        }
    }

    async fn handle(&self, request: Request<Incoming>, shutdown: watch::Receiver<bool>) -> Response<Body> {
        let identity = match self.auth.authenticate(request.headers()).await {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(%error, "subscription refused");
                return text(StatusCode::UNAUTHORIZED, format!("unauthorized: {error}\n"));
            }
        };
        match (request.method(), request.uri().path()) {
            (&Method::GET, SUBSCRIBE_PATH) => {
                let query = request.uri().query().unwrap_or_default();
                let param = |name: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_string)
                };
                let Some(fleet) = param("fleet").filter(|f| valid_name(f)) else {
                    return text(StatusCode::BAD_REQUEST, "fleet=NAME is required (a DNS label)\n".into());
                };
                let proxy = param("proxy")
                    .map(|p| p.to_ascii_lowercase())
                    .filter(|p| valid_name(p))
                    .unwrap_or_default();
                let have = request
                    .headers()
                    .get(HAVE_VERSION_HEADER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                self.subscribe(fleet, proxy, identity.0, have, shutdown)
            }
            (&Method::POST, APPLIED_PATH) => {
                let body = match Limited::new(request.into_body(), 4096).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "report too large\n".into()),
                };
                let Ok(report) = serde_json::from_slice::<AppliedReport>(&body) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "expected {\"session\":..., \"version\":...}\n".into(),
                    );
                };
                let published = self.publisher.current();
                if self.sessions.applied(&report.session, report.version, &published) {
                    text(StatusCode::NO_CONTENT, String::new())
                } else {
                    text(StatusCode::NOT_FOUND, "unknown session: subscribe again\n".into())
                }
            }
            (&Method::POST, STATS_PATH) => {
                let body = match Limited::new(request.into_body(), MAX_STATS_BYTES).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "stats report too large\n".into()),
                };
                let Ok(report) = serde_json::from_slice::<StatsReport>(&body) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "expected {\"session\":..., \"tracks\":[...]}\n".into(),
                    );
                };
                if self.sessions.record_stats(&report.session, report.tracks) {
                    text(StatusCode::NO_CONTENT, String::new())
                } else {
                    text(StatusCode::NOT_FOUND, "unknown session: subscribe again\n".into())
                }
            }
            _ => text(StatusCode::NOT_FOUND, format!("try GET {SUBSCRIBE_PATH}?fleet=NAME\n")),
        }
    }

    fn subscribe(
        &self,
        fleet: String,
        proxy: String,
        identity: String,
        have: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> Response<Body> {
        let guard = self.sessions.open(&fleet, &identity, &proxy);
        let session = guard.id.clone();
        let mut published = self.publisher.subscribe();
        let keepalive = self.keepalive;
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tracing::info!(%fleet, %proxy, %identity, have, "proxy subscribed");
        let span = tracing::info_span!("subscription", %fleet, %proxy);
        tokio::spawn(
            async move {
                let _guard = guard;
                // Always a full snapshot first: the proxy may have restarted, or this controller.
                let mut sent = 0;
                let keepalive_frame = Bytes::from(WireFrame::Keepalive.encode().unwrap_or_default());
                loop {
                    let view = {
                        let current = published.borrow_and_update();
                        if current.ready { current.fleet(&fleet) } else { None }
                    };
                    if let Some(view) = view {
                        let frame = match view.next_frame(sent) {
                            NextFrame::UpToDate => None,
                            NextFrame::Ready(frame) => Some(frame),
                            NextFrame::EncodeFull => {
                                // Tens of milliseconds at 10,000 Routes: off the async workers.
                                let encoding = Arc::clone(&view);
                                match tokio::task::spawn_blocking(move || encoding.full_frame()).await {
                                    Ok(Ok(frame)) => Some(frame),
                                    Ok(Err(error)) => {
                                        tracing::error!(%error, "cannot send the snapshot; closing");
                                        break;
                                    }
                                    Err(error) => {
                                        tracing::error!(%error, "encoding the snapshot panicked; closing");
                                        break;
                                    }
                                }
                            }
                        };
                        if let Some(frame) = frame {
                            if tx.send(Ok(Frame::data(frame))).await.is_err() {
                                break;
                            }
                            sent = view.version();
                        }
                    }
                    tokio::select! {
                        changed = published.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(keepalive) => {
                            if tx.send(Ok(Frame::data(keepalive_frame.clone()))).await.is_err() {
                                break;
                            }
                        }
                        _ = tx.closed() => break,
                        _ = crate::stopped(&mut shutdown) => break,
                    }
                }
                tracing::info!("proxy disconnected");
            }
            .instrument(span),
        );
        let mut response =
            Response::new(BoxBody::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-tollgate-frames"));
        if let Ok(value) = header::HeaderValue::from_str(&session) {
            response.headers_mut().insert(SESSION_HEADER, value);
        }
        response
    }
}

/// A DNS-label-like name: lower-case letters, digits, `-` and `.`, 1–253 characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(BoxBody::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}
