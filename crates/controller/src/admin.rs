//! The controller's admin port: `/healthz`, `/readyz` (ready once a snapshot is published),
//! `/metrics`, and `/config` (what is published, every object's conditions, connected proxies —
//! secrets redacted by the same view standalone mode serves).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
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
            let service = service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
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
            let report = state.reports.borrow().clone();
            let fleets: serde_json::Map<String, serde_json::Value> = published
                .fleets
                .iter()
                .map(|(name, view)| {
                    let snapshot = crate::view::config_view(&view.snapshot, &[], None);
                    (name.clone(), json!({"version": view.version(), "fullVersion": view.full_version, "snapshot": snapshot}))
                })
                .collect();
            let progress: serde_json::Map<String, serde_json::Value> =
                fleet_progress(&state.publisher, &state.sessions, &state.peers.borrow())
                    .into_iter()
                    .map(|(key, p)| {
                        (key.to_string(), json!({"fleet": p.fleet, "connected": p.proxies.connected, "upToDate": p.proxies.up_to_date}))
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
            text(StatusCode::OK, serde_json::to_string_pretty(&body).unwrap_or_default(), "application/json")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics, /config\n".into(),
            "text/plain",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
