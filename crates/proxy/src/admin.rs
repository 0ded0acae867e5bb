//! The admin port: `/healthz`, `/readyz`, `/metrics`, `/config`. Never exposes a secret: `/config`
//! serves a view its owner built with secrets already redacted.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};
use crate::gateway::Gateway;
use crate::server::Shutdown;

/// Extra metrics text appended to `/metrics` (for processes with their own registries).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the admin endpoints until shutdown.
pub async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    extra: Option<ExtraMetrics>,
    mut shutdown: Shutdown,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let gateway = Arc::clone(&gateway);
        let extra = extra.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let gateway = Arc::clone(&gateway);
                let extra = extra.clone();
                async move {
                    let response = if request.uri().path() == "/usage" {
                        usage_response(&gateway, request.uri().query()).await
                    } else if request.uri().path() == "/config" && allowed_method(&request) {
                        config_response(gateway).await
                    } else if request.uri().path() == "/metrics" && allowed_method(&request) {
                        metrics_response(gateway, extra).await
                    } else {
                        admin_response(&gateway, &request)
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response<B>(gateway: &Gateway, request: &Request<B>) -> Response<ProxyBody> {
    if !allowed_method(request) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => match gateway.version() {
            Some(version) => text(StatusCode::OK, format!("ready: config version {version}\n"), "text/plain"),
            None => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no configuration loaded\n", "text/plain")
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics, /config, /usage?plan=ns/name\n",
            "text/plain",
        ),
    }
}

fn allowed_method<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET || request.method() == Method::HEAD
}

/// `/config`: the view of the configuration served, built first if it was deferred (a large
/// snapshot takes a while), on a blocking thread.
async fn config_response(gateway: Arc<Gateway>) -> Response<ProxyBody> {
    match tokio::task::spawn_blocking(move || gateway.config_text()).await {
        Ok(body) => text(StatusCode::OK, body.as_bytes().to_vec(), "application/json"),
        Err(_) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "building the view failed; see the log\n", "text/plain")
        }
    }
}

/// `/metrics`, rendered on a blocking thread: with per-route series for 10,000 Routes the text is
/// tens of MB and takes hundreds of milliseconds, which on a single worker held every request
/// up for as long, at every scrape.
async fn metrics_response(gateway: Arc<Gateway>, extra: Option<ExtraMetrics>) -> Response<ProxyBody> {
    let rendered = tokio::task::spawn_blocking(move || {
        let mut body = gateway.metrics().render();
        if let Some(extra) = extra {
            body.push_str(&extra());
        }
        body
    });
    match rendered.await {
        Ok(body) => text(StatusCode::OK, body, "text/plain; version=0.0.4"),
        Err(_) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "rendering metrics failed; see the log\n", "text/plain")
        }
    }
}

/// `/usage?plan=namespace/name`: each API key's quota use in the current period.
async fn usage_response(gateway: &Gateway, query: Option<&str>) -> Response<ProxyBody> {
    let Some(plan) = crate::traffic::query_value(query, "plan") else {
        return text(StatusCode::BAD_REQUEST, "usage: give the plan as ?plan=namespace/name\n", "text/plain");
    };
    match gateway.traffic().usage(&plan).await {
        Some(report) => text(
            StatusCode::OK,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
            "application/json",
        ),
        None => text(StatusCode::NOT_FOUND, format!("usage: no served UsagePlan {plan}\n"), "text/plain"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::access_log::AccessLog;
    use crate::metrics::Metrics;
    use crate::upstream::{UpstreamClient, UpstreamSettings};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }

    /// On a single-threaded runtime (a proxy with one worker), a `/metrics` rendered on the
    /// runtime's thread would hold every other request up until it is done. The extra metrics
    /// block until released (or give up after a while and say so).
    #[tokio::test(flavor = "current_thread")]
    async fn the_admin_port_answers_while_metrics_are_rendered() {
        let (release, held) = mpsc::channel::<()>();
        let (entered, mut rendering) = tokio::sync::mpsc::unbounded_channel();
        let gave_up = Arc::new(AtomicBool::new(false));
        let gave_up_flag = Arc::clone(&gave_up);
        let held = Mutex::new(held);
        let extra: ExtraMetrics = Arc::new(move || {
            let _ = entered.send(());
            let released = held.lock().ok().map(|h| h.recv_timeout(Duration::from_secs(10)).is_ok());
            if released != Some(true) {
                gave_up_flag.store(true, Ordering::SeqCst);
            }
            "extra_metric 1\n".to_string()
        });
        let metrics = Metrics::new().expect("metrics");
        let client = UpstreamClient::new(&UpstreamSettings::default()).expect("client");
        let gateway = Gateway::new(client, Arc::clone(&metrics), AccessLog::disabled(metrics));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(serve_admin(listener, gateway, Some(extra), shutdown));

        let scrape = tokio::spawn(get(addr, "/metrics"));
        rendering.recv().await.expect("the metrics are being rendered");
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(!gave_up.load(Ordering::SeqCst), "/healthz waited for /metrics to be rendered");
        release.send(()).expect("the renderer is waiting");
        let scrape = scrape.await.expect("the /metrics request");
        assert!(scrape.starts_with("HTTP/1.1 200") && scrape.contains("extra_metric 1"), "{scrape}");
        assert!(scrape.contains("tollgate_"), "{scrape}");
    }
}
