//! The controller's admin port: `/healthz`, `/readyz` (ready once a snapshot is published),
//! `/metrics`, and `/config` (what is published, every object's conditions, connected proxies —
//! secrets redacted by the same view standalone mode serves).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::distribute::Sessions;
use crate::metrics::ControllerMetrics;
use crate::publish::Publisher;
use crate::reconcile::{Report, fleet_progress};
use crate::source::Source;

/// What the admin port reads.
pub struct AdminState {
    /// Published snapshots.
    pub publisher: Arc<Publisher>,
    /// Connected proxies.
    pub sessions: Arc<Sessions>,
    /// Metrics.
    pub metrics: Arc<ControllerMetrics>,
    /// The latest compile.
    pub reports: watch::Receiver<Option<Arc<Report>>>,
    /// Leadership (always false for the folder source, which writes no status).
    pub leader: watch::Receiver<bool>,
    /// The other replicas' proxy reports (kept current while this replica leads).
    pub peers: watch::Receiver<Vec<crate::replicas::ReplicaReport>>,
    /// The source, for its last error.
    pub source: Arc<dyn Source>,
}

/// Serves the admin endpoints until `shutdown` flips.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(state, &request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond<B>(state: Arc<AdminState>, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into(), "text/plain");
    }
    let published = state.publisher.current();
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if published.ready => {
            text(StatusCode::OK, "ready: snapshots published\n".into(), "text/plain")
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for every store to sync and the first compile\n".into(),
            "text/plain",
        ),
        "/metrics" => text(StatusCode::OK, state.metrics.render(), "text/plain; version=0.0.4"),
        "/config" => {
            // Hundreds of milliseconds and tens of MB at 10,000 Routes: on a blocking thread, so
            // that probes, subscriptions and reports on this worker are not held up meanwhile.
            match tokio::task::spawn_blocking(move || config_document(&state)).await {
                Ok(document) => text(StatusCode::OK, document, "application/json"),
                Err(error) => {
                    tracing::error!(%error, "building /config panicked");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "building /config failed; see the log\n".into(),
                        "text/plain",
                    )
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics, /config\n".into(),
            "text/plain",
        ),
    }
}

/// The `/config` document: what is published, every object's conditions, connected proxies.
fn config_document(state: &AdminState) -> String {
    let published = state.publisher.current();
    let report = state.reports.borrow().clone();
    let fleets: serde_json::Map<String, serde_json::Value> = published
        .fleets
        .iter()
        .map(|(name, view)| {
            let snapshot = crate::view::config_view(&view.snapshot, &[], None);
            (
                name.clone(),
                json!({"version": view.version(), "fullVersion": view.full_version, "snapshot": snapshot}),
            )
        })
        .collect();
    let progress: serde_json::Map<String, serde_json::Value> = fleet_progress(
        &state.publisher,
        &state.sessions,
        &state.peers.borrow(),
    )
    .into_iter()
    .map(|(key, p)| {
        (
            key.to_string(),
            json!({"fleet": p.fleet, "connected": p.proxies.connected, "upToDate": p.proxies.up_to_date}),
        )
    })
    .collect();
    let proxies: Vec<serde_json::Value> = state
        .sessions
        .list()
        .into_iter()
        .map(|s| json!({"fleet": s.fleet, "proxy": s.proxy, "identity": s.identity, "applied": s.applied}))
        .collect();
    let body = json!({
        "leader": *state.leader.borrow(),
        "lastError": state.source.last_error(),
        "fleets": fleets,
        "apiProgress": progress,
        "proxies": proxies,
        "canaryEvidence": state.metrics.canary_evidence.view(),
        "objects": report.as_ref().map(|r| &r.compiled.reports),
    });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::load::Loaded;

    /// A source whose `last_error` (read while `/config` is built) blocks until released, or
    /// gives up after a while and says so.
    struct HeldSource {
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        release: Mutex<mpsc::Receiver<()>>,
        gave_up: AtomicBool,
    }

    impl Source for HeldSource {
        fn current(&self) -> Option<Arc<Loaded>> {
            None
        }

        fn last_error(&self) -> Option<String> {
            let _ = self.entered.send(());
            let released = self.release.lock().ok().map(|r| r.recv_timeout(Duration::from_secs(10)).is_ok());
            if released != Some(true) {
                self.gave_up.store(true, Ordering::SeqCst);
            }
            None
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }

    /// On a single-threaded runtime, so that a `/config` built on the runtime's thread would hold
    /// `/healthz` up until the source gives up.
    #[tokio::test(flavor = "current_thread")]
    async fn the_admin_port_answers_probes_while_config_is_being_built() {
        let (release, held) = mpsc::channel();
        let (entered, mut building) = tokio::sync::mpsc::unbounded_channel();
        let source =
            Arc::new(HeldSource { entered, release: Mutex::new(held), gave_up: AtomicBool::new(false) });
        let metrics = ControllerMetrics::new().expect("metrics");
        let state = Arc::new(AdminState {
            publisher: Arc::new(Publisher::new()),
            sessions: Sessions::new(Arc::clone(&metrics)),
            metrics,
            reports: watch::channel(None).1,
            leader: watch::channel(false).1,
            peers: watch::channel(Vec::new()).1,
            source: Arc::clone(&source) as Arc<dyn Source>,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, state, shutdown));

        let config = tokio::spawn(get(addr, "/config"));
        building.recv().await.expect("/config is being built");
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(!source.gave_up.load(Ordering::SeqCst), "/healthz waited for /config to be built");
        release.send(()).expect("the source is waiting");
        let config = config.await.expect("the /config request");
        assert!(config.starts_with("HTTP/1.1 200"), "{config}");
        assert!(config.contains("\"fleets\""), "{config}");
    }
}
