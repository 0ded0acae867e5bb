//! The small HTTP/1.1 client authorizers use to reach identity providers (JWKS, OIDC discovery)
//! and external authorization services: the process's upstream connection pool (keep-alive, the
//! public web roots plus any `--upstream-ca`), bounded in time and response size.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, StatusCode, Uri};
use http_body_util::Full;

use crate::upstream::{Pool, PoolError, PoolSettings};

/// Why a call to an identity provider or an authorization service failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or request could not be built.
    #[error("invalid request: {0}")]
    Request(String),
    /// Connecting to, or exchanging with, the service failed.
    #[error("{0}")]
    Upstream(#[source] PoolError),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The answer could not be read or was too large.
    #[error("response body unreadable or larger than {0} bytes")]
    Body(usize),
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Makes authorizer calls share the upstream connection pool (keep-alive, and the CAs trusted
/// with `--upstream-ca`). Called once when the process builds its upstream client.
pub fn use_pool(pool: Pool) {
    let _ = POOL.set(pool);
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pool::new(PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            tls: Arc::new(tls),
        })
    })
}

async fn exchange(
    mut request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<(StatusCode, Bytes), FetchError> {
    let uri = request.uri().clone();
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
    let authority = uri.authority().cloned().ok_or_else(|| FetchError::Request(format!("{uri}: no host")))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = Uri::try_from(path).map_err(|e| FetchError::Request(e.to_string()))?;
    let host_header =
        http::HeaderValue::from_str(authority.as_str()).map_err(|e| FetchError::Request(e.to_string()))?;
    request.headers_mut().insert(http::header::HOST, host_header);
    let request = request.map(crate::body::boxed);
    let response = pool().send(&scheme, &authority, None, request).await.map_err(FetchError::Upstream)?;
    let status = response.status();
    let body = crate::body::collect_limited(response.into_body(), u64::try_from(limit).unwrap_or(u64::MAX))
        .await
        .map_err(|()| FetchError::Body(limit))?;
    Ok((status, body))
}

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
