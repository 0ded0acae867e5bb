//! `tollgate echo`: a small HTTP backend that answers every request with a JSON description of
//! what it received. For the quickstart, examples and end-to-end tests, so that trying Tollgate
//! needs no other image or program.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Serves until the process is stopped.
pub async fn run(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listen, %name, "echo backend listening");
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            let service = service_fn(move |request| echo(request, Arc::clone(&name)));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(request: Request<Incoming>, name: Arc<str>) -> Result<Response<Full<Bytes>>, Infallible> {
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
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}
