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
                    } else {
                        admin_response(&gateway, extra.as_ref(), &request)
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

fn admin_response<B>(
    gateway: &Gateway,
    extra: Option<&ExtraMetrics>,
    request: &Request<B>,
) -> Response<ProxyBody> {
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
        "/metrics" => {
            let mut body = gateway.metrics().render();
            if let Some(extra) = extra {
                body.push_str(&extra());
            }
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
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
