//! The small HTTP/1.1 client authorizers use to reach identity providers (JWKS, OIDC discovery)
//! and external authorization services: one connection per call (these calls are rare: their
//! results are cached), TLS with the public web roots, bounded in time and response size.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or request could not be built.
    #[error("invalid request: {0}")]
    Request(String),
    /// Connecting failed.
    #[error("connecting failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("request failed: {0}")]
    Send(#[source] hyper::Error),
    /// The server did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The response body could not be read or was too large.
    #[error("response body unreadable or larger than {0} bytes")]
    Body(usize),
}

fn tls() -> &'static tokio_rustls::TlsConnector {
    static TLS: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    TLS.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    })
}

async fn exchange(
    mut request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<(StatusCode, Bytes), FetchError> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or_else(|| FetchError::Request(format!("{uri}: no host")))?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = Uri::try_from(path).map_err(|e| FetchError::Request(e.to_string()))?;
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_else(|| host.clone());
    let host_header =
        http::HeaderValue::from_str(&authority).map_err(|e| FetchError::Request(e.to_string()))?;
    request.headers_mut().insert(http::header::HOST, host_header);
    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let response = if https {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let stream = tls().connect(name, tcp).await.map_err(FetchError::Connect)?;
        send_on(TokioIo::new(stream), request).await?
    } else {
        send_on(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|_| FetchError::Body(limit))?
        .to_bytes();
    Ok((status, body))
}

async fn send_on<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, FetchError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(FetchError::Send)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(FetchError::Send)
}

/// Sends `request` (absolute URI) and reads the whole response, within `timeout` and `limit`
/// bytes.
pub async fn send(
    request: Request<Full<Bytes>>,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), FetchError> {
    tokio::time::timeout(timeout, exchange(request, limit)).await.map_err(|_| FetchError::Timeout(timeout))?
}

/// A GET of `url` accepting JSON.
pub async fn get_json(url: &str, timeout: Duration, limit: usize) -> Result<(StatusCode, Bytes), FetchError> {
    let request = Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "tollgate")
        .body(Full::new(Bytes::new()))
        .map_err(|e| FetchError::Request(e.to_string()))?;
    send(request, timeout, limit).await
}
