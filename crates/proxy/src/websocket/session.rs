//! A managed WebSocket connection: `$connect` (after the pipeline authorized the upgrade
//! request), the message loop (route selection, per-message throttles and plans, invocation,
//! reply frames), limits and timeouts, and exactly one `$disconnect` however it ends.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tollgate_ir::websocket::CONNECT;
use tracing::Instrument;

use super::dispatch::{self, Invocation};
use super::messages;
use super::registry::{Connection, Outbound, SessionGuard};
use super::stage::ManagedStage;
use super::upgrade::{self, Upgrade};
use super::{ConnectionId, Hub};
use crate::body::{ProxyBody, full};
use crate::context::RequestContext;
use crate::gateway::{ConnInfo, Gateway};
use crate::headers::X_REQUEST_ID;
use crate::runtime::RoutePolicy;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Who the client is, as `$connect` established it; every invocation of the connection
/// carries it.
pub struct Caller {
    /// The principal authorization established.
    pub(super) principal: Option<String>,
    claims: Arc<serde_json::Map<String, serde_json::Value>>,
    authorizer_context: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Headers the authorizer set (claims, context) and the API key, sent with every invocation.
    pub(super) headers: HeaderMap,
    /// Host of the upgrade request.
    pub(super) host: String,
    /// Normalized path of the upgrade request.
    pub(super) path: String,
    /// The client's address.
    pub(super) client_ip: IpAddr,
}

impl Caller {
    /// The request context of an invocation on behalf of this caller.
    pub(super) fn context(&self) -> RequestContext {
        RequestContext {
            principal: self.principal.clone(),
            claims: Arc::clone(&self.claims),
            authorizer_context: Arc::clone(&self.authorizer_context),
            api_key_id: None,
        }
    }
}

/// The upgrade request of a managed WebSocket API, after phases 1–13 admitted it.
pub struct ConnectRequest<'a> {
    /// The gateway.
    pub gateway: &'a Arc<Gateway>,
    /// The stage's `$connect` Route.
    pub policy: &'a Arc<RoutePolicy>,
    /// The stage.
    pub stage: &'a Arc<ManagedStage>,
    /// How the client asked to upgrade (`None`: it did not).
    pub upgrade: Option<Upgrade>,
    /// The request head after authorization (authorizer headers set).
    pub parts: http::request::Parts,
    /// The client's headers as received, to tell which ones the authorizer set.
    pub received: &'a HeaderMap,
    /// What authorization learned.
    pub context: &'a RequestContext,
    /// Connection facts.
    pub conn: &'a ConnInfo,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// Host, lower-case without port.
    pub host: &'a str,
    /// The normalized path.
    pub path: &'a str,
    /// The upgrade request's access-log line (gets the connection id).
    pub record: Option<&'a mut crate::access_log::Record>,
}

/// Phase 14 for a managed WebSocket API: invokes `$connect` and, when it accepts, answers the
/// upgrade and starts the session.
pub async fn connect(request: ConnectRequest<'_>) -> Response<ProxyBody> {
    let ConnectRequest {
        gateway,
        policy,
        stage,
        upgrade,
        mut parts,
        received,
        context,
        conn,
        request_id,
        host,
        path,
        record,
    } = request;
    let id = request_id.to_str().unwrap_or_default();
    let Some(upgrade) = upgrade else {
        return error_response(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket API: connect with a WebSocket client (Upgrade: websocket)",
            id,
        );
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", id);
    };
    let hub = gateway.websockets();
    let connection_id = ConnectionId::generate(hub.owner());
    if let Some(record) = record {
        record.connection_id = Some(connection_id.as_str().to_string());
    }
    let caller = Caller {
        principal: context.principal.clone(),
        claims: Arc::clone(&context.claims),
        authorizer_context: Arc::clone(&context.authorizer_context),
        headers: carried_headers(received, &parts.headers),
        host: host.to_string(),
        path: path.to_string(),
        client_ip: conn.remote.ip(),
    };
    // `$connect` sees the upgrade request's headers (as AWS passes them), minus the handshake.
    let mut headers = parts.headers.clone();
    for name in
        [&upgrade::SEC_WEBSOCKET_KEY, &upgrade::SEC_WEBSOCKET_VERSION, &upgrade::SEC_WEBSOCKET_EXTENSIONS]
    {
        headers.remove(name);
    }
    let call = Invocation {
        policy,
        route_key: CONNECT,
        connection_id: connection_id.as_str(),
        headers,
        body: Bytes::new(),
        request_id,
        client_ip: conn.remote.ip(),
        max_response: stage.limits.max_message_bytes,
        principal: caller.principal.as_deref(),
    };
    let answer = match messages::timed(hub, policy, CONNECT, dispatch::invoke(gateway.upstream(), call)).await
    {
        Ok(answer) => answer,
        Err(error) => return error.into_response(id),
    };
    if !answer.accepted() {
        // The integration refused: its status (and body) go back to the client.
        let mut response = Response::new(full(answer.body));
        *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
        if let Some(content_type) = answer.headers.get(header::CONTENT_TYPE) {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
        }
        return response;
    }
    // Only a subprotocol the client offered and the integration chose is agreed.
    let mut agreed = HeaderMap::new();
    if let Some(chosen) = answer.headers.get(&upgrade::SEC_WEBSOCKET_PROTOCOL)
        && offered(&parts.headers, chosen)
    {
        agreed.insert(upgrade::SEC_WEBSOCKET_PROTOCOL.clone(), chosen.clone());
    }
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (connection, outbound) = Connection::new(
        connection_id,
        Arc::clone(&policy.api),
        Arc::clone(&policy.stage),
        conn.remote.ip(),
        user_agent,
    );
    let live = Live {
        gateway: Arc::clone(gateway),
        stage: Arc::clone(stage),
        caller,
        guard: hub.open("managed"),
        connection,
        outbound,
    };
    let span = tracing::debug_span!("websocket", connection = %live.connection.id);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade failed");
                    live.guard.ended("error");
                    return;
                }
            };
            let limits = &live.stage.limits;
            let mut config = WebSocketConfig::default();
            // Small buffers: 10,000 idle connections must fit in little memory.
            config.read_buffer_size = 1024;
            config.write_buffer_size = 0;
            config.max_write_buffer_size =
                usize::try_from(limits.max_message_bytes.saturating_mul(4)).unwrap_or(usize::MAX);
            config.max_frame_size = usize::try_from(limits.max_frame_bytes).ok();
            config.max_message_size = usize::try_from(limits.max_message_bytes).ok();
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
            run(live, socket).await;
        }
        .instrument(span),
    );
    upgrade::accept(&upgrade, &agreed)
}

/// Headers every invocation carries: those the authorizer set (present now, different from
/// what the client sent) and the API key.
fn carried_headers(received: &HeaderMap, now: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in now {
        let set_by_gateway = !received.get_all(name).iter().any(|v| v == value);
        if set_by_gateway || name.as_str() == "x-api-key" {
            out.append(name.clone(), value.clone());
        }
    }
    for name in [&X_REQUEST_ID, &header::HOST] {
        out.remove(name);
    }
    out
}

fn offered(headers: &HeaderMap, chosen: &HeaderValue) -> bool {
    let Ok(chosen) = chosen.to_str() else { return false };
    headers
        .get_all(&upgrade::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == chosen.trim())
}

/// A connection's state while it is open.
struct Live {
    gateway: Arc<Gateway>,
    stage: Arc<ManagedStage>,
    caller: Caller,
    guard: SessionGuard,
    connection: Arc<Connection>,
    outbound: tokio::sync::mpsc::Receiver<Outbound>,
}

type Pending<'a> = Pin<Box<dyn Future<Output = Option<Message>> + Send + 'a>>;

/// The message loop. Messages are handled one at a time, in order; while one is being invoked,
/// frames pushed through @connections still go out.
async fn run(live: Live, mut socket: Socket) {
    let Live { gateway, stage, caller, guard, connection, mut outbound } = live;
    let hub: &Arc<Hub> = gateway.websockets();
    hub.insert(Arc::clone(&connection));
    let mut drain = hub.drain_signal();
    let limits = &stage.limits;
    let started = tokio::time::Instant::now();
    let lifetime = started + limits.max_connection_duration.as_duration();
    let idle = limits.idle_timeout.as_duration();
    let mut last = started;
    let mut pending: Option<Pending<'_>> = None;
    let reason: &'static str = loop {
        let idle_at = last + idle;
        tokio::select! {
            () = crate::server::stopped(&mut drain) => {
                close(&mut socket, CloseCode::Away, "the gateway is shutting down").await;
                break "drain";
            }
            () = tokio::time::sleep_until(lifetime) => {
                close(&mut socket, CloseCode::Away, "maximum connection duration reached").await;
                break "lifetime";
            }
            () = tokio::time::sleep_until(idle_at) => {
                close(&mut socket, CloseCode::Away, "idle timeout").await;
                break "idle";
            }
            out = outbound.recv() => match out {
                Some(Outbound::Data(data)) => {
                    last = tokio::time::Instant::now();
                    connection.touch();
                    hub.metrics.messages.with_label_values(&["out"]).inc();
                    if send(&mut socket, messages::frame(data)).await.is_err() {
                        break "error";
                    }
                }
                Some(Outbound::Close) | None => {
                    close(&mut socket, CloseCode::Normal, "closed by the backend").await;
                    break "api";
                }
            },
            reply = async { match pending.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                pending = None;
                if let Some(reply) = reply {
                    hub.metrics.messages.with_label_values(&["out"]).inc();
                    if send(&mut socket, reply).await.is_err() {
                        break "error";
                    }
                }
            }
            message = socket.next(), if pending.is_none() => match message {
                None => break "client",
                Some(Err(WsError::Capacity(_))) => {
                    close(&mut socket, CloseCode::Size, "message too big").await;
                    break "too_big";
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "WebSocket read failed");
                    break "error";
                }
                Some(Ok(Message::Close(_))) => {
                    // tungstenite answers the close handshake on the next flush.
                    let _ = socket.flush().await;
                    break "client";
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    last = tokio::time::Instant::now();
                    let _ = socket.flush().await;
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(message)) => {
                    last = tokio::time::Instant::now();
                    connection.touch();
                    hub.metrics.messages.with_label_values(&["in"]).inc();
                    pending = Some(Box::pin(messages::on_message(&gateway, &stage, &caller, &connection.id, message)));
                }
            },
        }
    };
    drop(pending);
    hub.remove(&connection.id);
    guard.ended(reason);
    // Boxed: an invocation future is large (connect, TLS, HTTP) and must not size every idle
    // session task.
    Box::pin(messages::disconnect(&gateway, &stage, &caller, &connection.id, reason)).await;
}

async fn send(socket: &mut Socket, message: Message) -> Result<(), ()> {
    // A client that does not read for this long is treated as gone.
    match tokio::time::timeout(std::time::Duration::from_secs(10), socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), socket.close(Some(frame))).await;
}

fn error_response(status: StatusCode, message: &str, request_id: &str) -> Response<ProxyBody> {
    let body = json!({"message": message, "requestId": request_id}).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UPGRADE_REQUIRED {
        response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_headers_are_the_ones_the_gateway_set_plus_the_api_key() {
        let mut received = HeaderMap::new();
        received.insert("authorization", HeaderValue::from_static("Bearer t"));
        received.insert("x-user-id", HeaderValue::from_static("forged"));
        received.insert("x-api-key", HeaderValue::from_static("k"));
        let mut now = received.clone();
        now.insert("x-user-id", HeaderValue::from_static("alice"));
        now.insert("x-tenant", HeaderValue::from_static("t1"));
        let carried = carried_headers(&received, &now);
        assert_eq!(carried.get("x-user-id").map(|v| v.as_bytes()), Some(&b"alice"[..]));
        assert_eq!(carried.get("x-tenant").map(|v| v.as_bytes()), Some(&b"t1"[..]));
        assert_eq!(carried.get("x-api-key").map(|v| v.as_bytes()), Some(&b"k"[..]));
        assert!(carried.get("authorization").is_none());
    }
}
