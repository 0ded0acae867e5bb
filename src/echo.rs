//! `tollgate echo`: a small HTTP backend that answers every request with a JSON description of
//! what it received. For the quickstart, examples and end-to-end tests, so that trying Tollgate
//! needs no other image or program.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Serves until the process is stopped. `fail_percent` of the requests (spread evenly: with 20,
/// every fifth) are answered 500 — a misbehaving release for trying canary analysis.
pub async fn run(listen: SocketAddr, name: String, fail_percent: u8) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listen, %name, fail_percent, "echo backend listening");
    let name: Arc<str> = name.into();
    let served = Arc::new(AtomicU64::new(0));
    let fail_percent = u64::from(fail_percent.min(100));
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let name = Arc::clone(&name);
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                // The n-th request fails when it crosses the next whole failure of n × percent / 100.
                let fail = n * fail_percent / 100 > (n - 1) * fail_percent / 100;
                echo(request, Arc::clone(&name), fail)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(
    request: Request<Incoming>,
    name: Arc<str>,
    fail: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // Bounded: the echo backend is a test tool, not a sink for large uploads.
    let body = http_body_util::Limited::new(body, 1024 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()))
        })
        .collect();
    let doc = serde_json::json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(doc.to_string())));
    if fail {
        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}
