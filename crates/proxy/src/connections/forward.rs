//! Forwarding a @connections call to the replica that holds the connection: the request goes
//! unchanged (so the owner verifies the caller's signature itself), marked as forwarded so it
//! is never forwarded twice.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Set on forwarded calls; the receiving replica answers from its own connections only.
pub static FORWARDED: HeaderName = HeaderName::from_static("x-tollgate-forwarded");

const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owner replica could not be reached (it is gone, and so is the connection).
    #[error("the replica holding the connection ({0}) cannot be reached")]
    Unreachable(SocketAddr),
    /// The exchange with the owner failed or timed out.
    #[error("forwarding to {0} failed")]
    Exchange(SocketAddr),
}

/// Sends the call to `owner` and returns its answer.
pub async fn forward(
    owner: SocketAddr,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Response<Bytes>, ForwardError> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(owner))
        .await
        .map_err(|_| ForwardError::Unreachable(owner))?
        .map_err(|_| ForwardError::Unreachable(owner))?;
    let (mut sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|_| ForwardError::Exchange(owner))?;
    let span = tracing::debug_span!("connections_forward", %owner);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "forward connection ended with an error");
            }
        },
        span,
    ));
    let mut request = Request::from_parts(parts, Full::new(body));
    request.headers_mut().insert(FORWARDED.clone(), HeaderValue::from_static("1"));
    let exchange = async {
        let response = sender.send_request(request).await.ok()?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, 1024 * 1024).collect().await.ok()?.to_bytes();
        Some(Response::from_parts(head, body))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.ok().flatten().ok_or(ForwardError::Exchange(owner))
}
