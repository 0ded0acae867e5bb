//! Subscribing to the controller: receive the fleet's snapshots and endpoint updates over TLS,
//! apply each atomically, report the applied version and, every [`STATS_INTERVAL`], the
//! per-track counts of canary stages; keep serving and reconnect with backoff when the
//! controller goes away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tollgate_ir::Snapshot;
use tollgate_ir::distribution::{
    APPLIED_PATH, AppliedReport, Frame, FrameError, FrameReader, HAVE_VERSION_HEADER, SESSION_HEADER,
    STATS_PATH, SUBSCRIBE_PATH, StatsReport,
};
use tracing::Instrument;

use crate::gateway::Gateway;

/// Where and how to subscribe.
#[derive(Clone, Debug)]
pub struct SubscribeSettings {
    /// The controller's base URL (`https://tollgate-controller.tollgate-system.svc:9443`).
    pub controller: Uri,
    /// The fleet whose APIs this proxy serves.
    pub fleet: String,
    /// This proxy's name (its pod name), for the controller's logs and metrics.
    pub proxy: String,
    /// File holding the bearer token (re-read on every connection: projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that the controller's certificate must chain to (default: web PKI roots).
    pub ca_pem: Option<String>,
    /// Reconnect when nothing (not even a keepalive) arrived for this long.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The CA bundle is unusable.
    #[error("controller CA bundle: {0}")]
    Ca(String),
    /// The token file could not be read.
    #[error("reading the token file {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be built (a bad URL).
    #[error("building the subscription request: {0}")]
    Request(#[source] http::Error),
    /// The controller URL has no usable host.
    #[error("controller URL {0}: expected https://HOST[:PORT]")]
    Url(String),
    /// No TCP connection or no TLS session.
    #[error("connecting to the controller: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP/2 exchange failed.
    #[error("HTTP/2 with the controller: {0}")]
    Http(#[source] hyper::Error),
    /// The controller answered with an error status.
    #[error("controller answered {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its message.
        body: String,
    },
    /// The stream broke.
    #[error("subscription stream: {0}")]
    Stream(#[source] hyper::Error),
    /// Nothing arrived within the idle timeout.
    #[error("no frame for {0:?}: the controller is gone")]
    Idle(Duration),
    /// A frame could not be decoded.
    #[error("bad frame: {0}")]
    Frame(#[source] FrameError),
    /// An endpoint update for a snapshot this proxy does not hold.
    #[error("endpoint update for version {base}, but this proxy holds {held:?}: resubscribing")]
    OutOfSync {
        /// The update's base.
        base: u64,
        /// The full version held.
        held: Option<u64>,
    },
    /// Applying an endpoint update panicked (a bug): the tables may be partly updated, so the
    /// proxy resubscribes for a full snapshot.
    #[error("applying the endpoint update to version {0} panicked: resubscribing")]
    UpdatePanicked(u64),
    /// The controller closed the stream.
    #[error("the controller closed the subscription")]
    Closed,
}

/// How often the per-track counts of canary stages are reported to the controller. Short
/// against any analysis interval (at least 1s, typically minutes), so little is judged late.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Called after each snapshot or endpoint update is applied (e.g. to refresh `/config`), before
/// the applied version is reported: keep it cheap, and defer slow work (building a view of 10,000
/// routes; see `Gateway::defer_config_view`).
pub type OnApply = Arc<dyn Fn(&Arc<Snapshot>) + Send + Sync>;

/// The proxy's end of the subscription.
pub struct Subscriber {
    settings: SubscribeSettings,
    tls: TlsConnector,
    gateway: Arc<Gateway>,
    on_apply: OnApply,
    /// The snapshot served and the version of its last full snapshot.
    held: Option<(Arc<Snapshot>, u64)>,
}

impl Subscriber {
    /// Builds the TLS client (HTTP/2 by ALPN, HTTP/1.1 otherwise).
    pub fn new(
        settings: SubscribeSettings,
        gateway: Arc<Gateway>,
        on_apply: OnApply,
    ) -> Result<Subscriber, SubscribeError> {
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| SubscribeError::Ca(e.to_string()))?;
                    roots.add(cert).map_err(|e| SubscribeError::Ca(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(SubscribeError::Ca("holds no certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        // HTTP/2 only: the subscription and the applied-version reports share one connection.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        if settings.controller.scheme_str() != Some("https") || settings.controller.host().is_none() {
            return Err(SubscribeError::Url(settings.controller.to_string()));
        }
        Ok(Subscriber { settings, tls: TlsConnector::from(Arc::new(tls)), gateway, on_apply, held: None })
    }

    /// Subscribes until `shutdown` flips, reconnecting with exponential backoff (with jitter).
    /// The gateway keeps serving its last snapshot while disconnected.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.settings.min_backoff;
        loop {
            let span = tracing::info_span!("subscription", controller = %self.settings.controller, fleet = %self.settings.fleet);
            let mut progressed = false;
            let result = tokio::select! {
                result = self.session(&mut progressed).instrument(span) => result,
                _ = crate::server::stopped(&mut shutdown) => return,
            };
            if let Err(error) = result {
                tracing::warn!(%error, retry_in = ?backoff, version = ?self.gateway.version(), "subscription lost; still serving the last configuration");
            }
            if progressed {
                backoff = self.settings.min_backoff;
            }
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }

    fn token(&self) -> Result<Option<String>, SubscribeError> {
        let Some(path) = &self.settings.token_file else { return Ok(None) };
        let token = std::fs::read_to_string(path)
            .map_err(|source| SubscribeError::Token { path: path.clone(), source })?;
        Ok(Some(token.trim().to_string()))
    }

    fn url(&self, path_and_query: &str) -> Result<Uri, SubscribeError> {
        let base = self.settings.controller.to_string();
        format!("{}{path_and_query}", base.trim_end_matches('/'))
            .parse::<Uri>()
            .map_err(|e| SubscribeError::Request(e.into()))
    }

    /// One TCP + TLS + HTTP/2 connection to the controller.
    async fn connect(&self) -> Result<http2::SendRequest<Full<Bytes>>, SubscribeError> {
        let uri = &self.settings.controller;
        let host = uri.host().ok_or_else(|| SubscribeError::Url(uri.to_string()))?;
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(SubscribeError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|_| SubscribeError::Url(uri.to_string()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(SubscribeError::Connect)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(SubscribeError::Http)?;
        tokio::spawn(
            async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "controller connection ended");
                }
            }
            .instrument(tracing::debug_span!("controller-connection")),
        );
        Ok(sender)
    }

    async fn session(&mut self, progressed: &mut bool) -> Result<(), SubscribeError> {
        let token = self.token()?;
        let connect = tokio::time::timeout(self.settings.idle_timeout, self.connect());
        let mut sender = connect.await.map_err(|_| SubscribeError::Idle(self.settings.idle_timeout))??;
        let uri = self
            .url(&format!("{SUBSCRIBE_PATH}?fleet={}&proxy={}", self.settings.fleet, self.settings.proxy))?;
        let mut request = Request::get(uri).header(HAVE_VERSION_HEADER, self.gateway.version().unwrap_or(0));
        if let Some(token) = &token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).map_err(SubscribeError::Request)?;
        let response = tokio::time::timeout(self.settings.idle_timeout, sender.send_request(request))
            .await
            .map_err(|_| SubscribeError::Idle(self.settings.idle_timeout))?
            .map_err(SubscribeError::Http)?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let body = String::from_utf8_lossy(&body).trim().chars().take(300).collect();
            return Err(SubscribeError::Status { status, body });
        }
        let session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        tracing::info!("subscribed to the controller");
        let mut body = response.into_body();
        let mut reader = FrameReader::default();
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle = self.settings.idle_timeout;
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let frame = tokio::select! {
                frame = tokio::time::timeout_at(deadline, body.frame()) => {
                    frame.map_err(|_| SubscribeError::Idle(idle))?
                }
                _ = stats.tick() => {
                    self.report_stats(&mut sender, &session, token.as_deref()).await;
                    continue;
                }
            };
            deadline = tokio::time::Instant::now() + idle;
            let Some(frame) = frame else { return Err(SubscribeError::Closed) };
            let Ok(data) = frame.map_err(SubscribeError::Stream)?.into_data() else { continue };
            reader.push(&data);
            while let Some(frame) = reader.next_frame().map_err(SubscribeError::Frame)? {
                *progressed = true;
                let Some(version) = self.apply(frame).await? else { continue };
                self.report(&mut sender, &session, version, token.as_deref()).await;
            }
        }
    }

    /// Applies one frame; returns the version now served (None for keepalives).
    async fn apply(&mut self, frame: Frame) -> Result<Option<u64>, SubscribeError> {
        let (snapshot, full_version) = match frame {
            Frame::Keepalive => return Ok(None),
            Frame::Snapshot(snapshot) => {
                let version = snapshot.version;
                (Arc::new(snapshot), version)
            }
            Frame::Endpoints(update) => {
                let held_full = self.held.as_ref().map(|(_, full)| *full);
                let Some((held, full)) = self.held.take().filter(|(_, full)| *full == update.base_version)
                else {
                    return Err(SubscribeError::OutOfSync { base: update.base_version, held: held_full });
                };
                let version = update.version;
                let gateway = Arc::clone(&self.gateway);
                // The `/config` view not built yet holds the snapshot: let go, so that it is not
                // copied below (the updated one's view replaces it).
                gateway.discard_pending_config_view();
                // Pod churn: the served tables are updated in place (no rebuild). The held copy of
                // the snapshot follows (for later updates and `/config`); copying it (when the
                // `/config` view still holds it) and scanning its backends is CPU work at 10,000
                // routes, so off the async workers too.
                let updated = tokio::task::spawn_blocking(move || {
                    let mut snapshot = Arc::unwrap_or_clone(held);
                    snapshot.apply_endpoints(&update);
                    let changed = gateway.apply_endpoints(&update);
                    (Arc::new(snapshot), changed)
                })
                .await;
                let Ok((snapshot, changed)) = updated else {
                    return Err(SubscribeError::UpdatePanicked(version));
                };
                match changed {
                    Some(changed) => {
                        (self.on_apply)(&snapshot);
                        tracing::debug!(version, backends = changed, "endpoint update applied in place");
                        self.held = Some((snapshot, full));
                        return Ok(Some(version));
                    }
                    // Nothing served yet (cannot happen while a snapshot is held): build it all.
                    None => (snapshot, full),
                }
            }
        };
        let version = snapshot.version;
        let gateway = Arc::clone(&self.gateway);
        let building = Arc::clone(&snapshot);
        // Building the tables for 10,000 routes is CPU work: off the async workers.
        if tokio::task::spawn_blocking(move || gateway.apply(&building)).await.is_err() {
            tracing::error!(version, "building the runtime panicked; keeping the previous configuration");
            return Ok(None);
        }
        (self.on_apply)(&snapshot);
        tracing::info!(version, apis = snapshot.apis.len(), "configuration applied");
        self.held = Some((snapshot, full_version));
        Ok(Some(version))
    }

    /// Sends the per-track counts gathered since the last report (nothing when no canary stage
    /// had traffic). Best effort: counts of a lost report are not judged.
    async fn report_stats(
        &self,
        sender: &mut http2::SendRequest<Full<Bytes>>,
        session: &str,
        token: Option<&str>,
    ) {
        let tracks = self.gateway.metrics().drain_track_stats();
        if tracks.is_empty() {
            return;
        }
        let report = StatsReport { session: session.to_string(), tracks };
        if let Err(problem) = self.post_json(sender, STATS_PATH, &report, token).await {
            tracing::warn!(%problem, "canary stats report not delivered");
        }
    }

    /// Tells the controller which version is served. Best effort: a lost report is repeated with
    /// the next version, and the controller counts a proxy that never reports as not up to date.
    async fn report(
        &self,
        sender: &mut http2::SendRequest<Full<Bytes>>,
        session: &str,
        version: u64,
        token: Option<&str>,
    ) {
        let report = AppliedReport { session: session.to_string(), version };
        if let Err(problem) = self.post_json(sender, APPLIED_PATH, &report, token).await {
            tracing::warn!(%problem, version, "applied-version report not delivered");
        }
    }

    /// POSTs `body` as JSON to the controller on the subscription's connection (5 s at most);
    /// what went wrong, if anything, as text for the log.
    async fn post_json<T: serde::Serialize>(
        &self,
        sender: &mut http2::SendRequest<Full<Bytes>>,
        path: &str,
        body: &T,
        token: Option<&str>,
    ) -> Result<(), String> {
        let uri = self.url(path).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), sender.send_request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("refused with {}", response.status())),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }
}
