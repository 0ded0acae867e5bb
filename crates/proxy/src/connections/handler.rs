//! The @connections listener and its one handler.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::forward::{FORWARDED, forward};
use super::signature::{self, SignatureError};
use crate::gateway::Gateway;
use crate::server::{Shutdown, stopped};
use crate::websocket::ConnectionId;
use crate::websocket::registry::{Outbound, SendError};

/// Largest body `POST /@connections/{id}` accepts (128 KiB, as AWS).
pub const MAX_POST_BYTES: usize = 128 * 1024;

/// Serves the @connections API on `listener` until `shutdown` flips.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: Shutdown) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "connections listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(handle(&gateway, request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(
            async move {
                if let Err(error) = watched.await {
                    tracing::debug!(%error, "connections API connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("connections_api", %remote)),
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// `/@connections/{id}` or `/{stage}/@connections/{id}`.
struct Target {
    stage: Option<String>,
    id: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let path = path.strip_prefix('/')?;
    let (stage, rest) = match path.split_once("/@connections/") {
        Some((stage, rest)) if !stage.is_empty() && !stage.contains('/') => (Some(stage.to_string()), rest),
        _ => (None, path.strip_prefix("@connections/")?),
    };
    let id = percent_encoding::percent_decode_str(rest).decode_utf8().ok()?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    Some(Target { stage, id: id.into_owned() })
}

async fn handle(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let Some(target) = parse_path(parts.uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundException",
            "Not Found: use /@connections/{connectionId}",
        );
    };
    if ![Method::GET, Method::POST, Method::DELETE].contains(&parts.method) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET, POST or DELETE");
    }
    let body = match Limited::new(body, MAX_POST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLargeException",
                "the message is larger than 131072 bytes",
            );
        }
    };
    let hub = gateway.websockets();
    let id = ConnectionId::from_text(&target.id);
    let forwarded = parts.headers.contains_key(&FORWARDED);
    let local = hub.get(id.as_str());
    // Authenticate first, whatever the id: an unauthenticated caller learns nothing.
    let keys = match &local {
        Some(connection) => hub.keys_for(&connection.api).to_vec(),
        None => hub.all_keys(),
    };
    let caller = match signature::verify(&parts, &body, keys) {
        Ok(caller) => caller,
        Err(e @ SignatureError::Missing) => {
            return error(StatusCode::FORBIDDEN, "ForbiddenException", &e.to_string());
        }
        Err(SignatureError::Invalid(e)) => {
            return error(StatusCode::FORBIDDEN, "ForbiddenException", &format!("Forbidden: {}", e.reason()));
        }
    };
    let Some(connection) = local else {
        return match id.owner() {
            Some(owner) if !forwarded && Some(owner) != hub.owner() && forwardable(owner, hub.owner()) => {
                match forward(owner, parts, body).await {
                    Ok(response) => response.map(Full::new),
                    Err(e) => {
                        tracing::debug!(error = %e, "@connections forward failed");
                        gone()
                    }
                }
            }
            _ => gone(),
        };
    };
    if target.stage.as_deref().is_some_and(|stage| stage != &*connection.stage) {
        return gone();
    }
    tracing::debug!(%caller, connection = %id, method = %parts.method, "@connections call");
    match parts.method {
        Method::POST => match connection.send(Outbound::Data(body)) {
            Ok(()) => Response::new(Full::new(Bytes::new())),
            Err(SendError::Gone) => gone(),
            Err(SendError::Full) => error(
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                "the client is not reading its messages fast enough",
            ),
        },
        Method::DELETE => match connection.send(Outbound::Close) {
            Ok(()) | Err(SendError::Full) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Err(SendError::Gone) => gone(),
        },
        _ => {
            let format = &time::format_description::well_known::Rfc3339;
            let body = json!({
                "connectedAt": connection.connected_at.format(format).unwrap_or_default(),
                "lastActiveAt": connection.last_active().format(format).unwrap_or_default(),
                "identity": {
                    "sourceIp": connection.source_ip.to_string(),
                    "userAgent": connection.user_agent,
                },
            });
            json_response(StatusCode::OK, None, body.to_string())
        }
    }
}

fn gone() -> Response<Full<Bytes>> {
    error(StatusCode::GONE, "GoneException", "the connection is gone (closed, or never existed)")
}

fn error(status: StatusCode, kind: &'static str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, Some(kind), json!({"message": message}).to_string())
}

fn json_response(status: StatusCode, kind: Option<&'static str>, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(kind) = kind {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(kind));
    }
    response
}

/// Whether a call may be forwarded to `owner`, the address a connection id names. Ids come from
/// callers, so the address is not trusted: only loopback and private addresses (where the other
/// replicas of a fleet live) are ever contacted, and only by a replica that has a listener of its
/// own — a signed caller cannot make the gateway call public addresses or the cloud metadata
/// service. The path stays `/@connections/{id}` and the caller's own signature travels with it.
fn forwardable(owner: SocketAddr, own: Option<SocketAddr>) -> bool {
    own.is_some()
        && match owner.ip() {
            IpAddr::V4(ip) => {
                ip.is_loopback() || ip.is_private() || (ip.octets()[0] == 100 && ip.octets()[1] & 0xC0 == 64)
            }
            IpAddr::V6(ip) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_and_without_stage() {
        let t = parse_path("/@connections/abc-_1").unwrap_or_else(|| unreachable!());
        assert_eq!((t.stage, t.id.as_str()), (None, "abc-_1"));
        let t = parse_path("/prod/@connections/a%3D").unwrap_or_else(|| unreachable!());
        assert_eq!((t.stage.as_deref(), t.id.as_str()), (Some("prod"), "a="));
        assert!(parse_path("/@connections/").is_none());
        assert!(parse_path("/a/b/@connections/x").is_none());
        assert!(parse_path("/other").is_none());
    }

    #[test]
    fn only_internal_addresses_are_forwarded_to() {
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{a}: {e}"));
        let own = addr("10.0.0.5:9902");
        let ok = |a: &str| forwardable(addr(a), Some(own));
        assert!(
            ok("10.0.3.7:9902") && ok("127.0.0.1:9902") && ok("192.168.1.2:9902") && ok("[fd00::1]:9902")
        );
        assert!(ok("100.64.0.9:9902"), "carrier-grade NAT ranges hold pod IPs on some clusters");
        assert!(!ok("93.184.216.34:9902") && !ok("169.254.169.254:9902") && !ok("[2001:db8::1]:9902"));
        assert!(!forwardable(addr("10.0.3.7:9902"), None), "a replica without a listener forwards nothing");
    }
}
