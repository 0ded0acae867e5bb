//! A managed connection's traffic: client messages (route selection, per-message throttles
//! and plans, invocation, the reply frame), `$disconnect`, and their access-log lines.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tollgate_ir::websocket::DISCONNECT;

use super::dispatch::{self, Answer, Invocation};
use super::session::Caller;
use super::stage::ManagedStage;
use super::{ConnectionId, Hub};
use crate::access_log::Record;
use crate::auth::AuthBody;
use crate::gateway::Gateway;
use crate::router::Params;
use crate::runtime::RoutePolicy;

/// Text when the data is UTF-8, binary otherwise.
pub(super) fn frame(data: Bytes) -> Message {
    match Utf8Bytes::try_from(data.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(data),
    }
}

pub(super) fn error_frame(message: &str, connection: &ConnectionId, request_id: &HeaderValue) -> Message {
    let body = json!({
        "message": message,
        "connectionId": connection.as_str(),
        "requestId": request_id.to_str().unwrap_or_default(),
    });
    Message::text(body.to_string())
}

/// One client message: route selection, throttles and plans, invocation; returns the frame to
/// send back, if any.
pub(super) async fn on_message(
    gateway: &Arc<Gateway>,
    stage: &ManagedStage,
    caller: &Caller,
    connection: &ConnectionId,
    message: Message,
) -> Option<Message> {
    let request_id = crate::headers::request_id(None);
    let selected = stage.select(&message);
    let Some(policy) = selected.policy else {
        let wanted = stage.wanted_key(&message);
        let text = match wanted {
            Some(key) => format!("no Route serves route key {key:?} and the API has no $default Route"),
            None => "the message selects no route key and the API has no $default Route".to_string(),
        };
        return Some(error_frame(&text, connection, &request_id));
    };
    let started = Instant::now();
    let mut record = new_record(gateway, Some(&**policy), &selected.key, connection, caller, &request_id);
    let body = message.into_data();
    if let Some(record) = record.as_mut() {
        record.bytes_received = body.len() as u64;
    }
    let (body, headers) = match admit_message(gateway, policy, caller, &request_id, body).await {
        Ok(admitted) => admitted,
        Err(early) => {
            let status = early.response.status();
            finish_record(gateway, record, status.as_u16(), started, early.reason, None);
            let text = status.canonical_reason().unwrap_or("Refused");
            return Some(error_frame(text, connection, &request_id));
        }
    };
    let call = Invocation {
        policy,
        route_key: &selected.key,
        connection_id: connection.as_str(),
        headers,
        body,
        request_id: &request_id,
        client_ip: caller.client_ip,
        max_response: stage.limits.max_message_bytes,
        principal: caller.principal.as_deref(),
    };
    let hub = gateway.websockets();
    match timed(hub, policy, &selected.key, dispatch::invoke(gateway.upstream(), call)).await {
        Ok(answer) => {
            let endpoint = answer.endpoint.clone();
            if let Some(record) = record.as_mut() {
                record.bytes_sent = answer.body.len() as u64;
            }
            finish_record(gateway, record, answer.status, started, None, endpoint);
            reply(answer, connection, &request_id)
        }
        Err(error) => {
            let status = error.status();
            finish_record(gateway, record, status.as_u16(), started, Some(error.reason()), None);
            Some(error_frame(&error.to_string(), connection, &request_id))
        }
    }
}

fn reply(answer: Answer, connection: &ConnectionId, request_id: &HeaderValue) -> Option<Message> {
    if !answer.accepted() {
        let text = format!("the integration answered {}", answer.status);
        return Some(error_frame(&text, connection, request_id));
    }
    (!answer.body.is_empty()).then(|| frame(answer.body))
}

/// Phases 6–13 for one message: API, stage, plan and route throttles, the API key and quota,
/// validation and transforms — the same policy HTTP requests get, counted per message.
async fn admit_message(
    gateway: &Gateway,
    policy: &RoutePolicy,
    caller: &Caller,
    request_id: &HeaderValue,
    body: Bytes,
) -> Result<(Bytes, HeaderMap), crate::traffic::Early> {
    let id = request_id.to_str().unwrap_or_default();
    let mut request = http::Request::new(());
    *request.method_mut() = Method::POST;
    *request.headers_mut() = caller.headers.clone();
    if let Ok(uri) = http::Uri::try_from(caller.path.as_str()) {
        *request.uri_mut() = uri;
    }
    let (mut parts, ()) = request.into_parts();
    let traffic = gateway.traffic();
    let mut state = traffic
        .before_auth(
            &policy.traffic,
            &Method::POST,
            &parts.headers,
            parts.headers.get(http::header::ORIGIN).cloned(),
            id,
        )
        .await?;
    let mut context = caller.context();
    let facts = crate::traffic::RequestFacts {
        request_id: id,
        host: &caller.host,
        path: &caller.path,
        stage_path: "/",
        client_ip: caller.client_ip,
        max_body: policy.max_body,
    };
    let params = Params::default();
    let body = traffic
        .after_auth(
            &policy.traffic,
            &mut state,
            &mut parts,
            AuthBody::Buffered(body),
            &params,
            &mut context,
            facts,
        )
        .await?;
    match body {
        AuthBody::Buffered(bytes) => Ok((bytes, parts.headers)),
        AuthBody::Streaming(_) => Ok((Bytes::new(), parts.headers)),
    }
}

/// Invokes `$disconnect` (once: the session's single exit path calls this).
pub(super) async fn disconnect(
    gateway: &Arc<Gateway>,
    stage: &ManagedStage,
    caller: &Caller,
    connection: &ConnectionId,
    reason: &'static str,
) {
    let request_id = crate::headers::request_id(None);
    let Some(policy) = stage.disconnect() else {
        let mut record = new_record(gateway, None, DISCONNECT, connection, caller, &request_id);
        if let Some(record) = record.as_mut() {
            record.disconnect_reason = Some(reason);
        }
        finish_record(gateway, record, 200, Instant::now(), None, None);
        return;
    };
    let mut headers = caller.headers.clone();
    headers.insert(dispatch::DISCONNECT_REASON.clone(), HeaderValue::from_static(reason));
    let started = Instant::now();
    let mut record = new_record(gateway, Some(&**policy), DISCONNECT, connection, caller, &request_id);
    if let Some(record) = record.as_mut() {
        record.disconnect_reason = Some(reason);
    }
    let call = Invocation {
        policy,
        route_key: DISCONNECT,
        connection_id: connection.as_str(),
        headers,
        body: Bytes::new(),
        request_id: &request_id,
        client_ip: caller.client_ip,
        max_response: stage.limits.max_message_bytes,
        principal: caller.principal.as_deref(),
    };
    match timed(gateway.websockets(), policy, DISCONNECT, dispatch::invoke(gateway.upstream(), call)).await {
        Ok(answer) => finish_record(gateway, record, answer.status, started, None, answer.endpoint),
        Err(error) => {
            tracing::debug!(%error, "$disconnect invocation failed");
            finish_record(gateway, record, error.status().as_u16(), started, Some(error.reason()), None);
        }
    }
}

pub(super) async fn timed<T>(
    hub: &Hub,
    policy: &RoutePolicy,
    route_key: &str,
    call: impl Future<Output = Result<T, crate::error::ProxyError>>,
) -> Result<T, crate::error::ProxyError> {
    let started = Instant::now();
    let result = call.await;
    hub.metrics
        .invocation
        .with_label_values(&[&*policy.api, &*policy.stage, route_key])
        .observe(started.elapsed().as_secs_f64());
    result
}

pub(super) fn new_record(
    gateway: &Gateway,
    policy: Option<&RoutePolicy>,
    route_key: &str,
    connection: &ConnectionId,
    caller: &Caller,
    request_id: &HeaderValue,
) -> Option<Record> {
    if !gateway.access_log().enabled() || policy.is_some_and(|p| !p.access_log) {
        return None;
    }
    let now = time::OffsetDateTime::now_utc();
    Some(Record {
        time: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        request_id: request_id.to_str().unwrap_or_default().to_string(),
        api: policy.map(|p| Arc::clone(&p.api)).unwrap_or_default(),
        stage: policy.map(|p| Arc::clone(&p.stage)).unwrap_or_default(),
        route: policy.map(|p| Arc::clone(&p.route)).unwrap_or_default(),
        method: "WEBSOCKET".to_string(),
        host: caller.host.clone(),
        path: route_key.to_string(),
        protocol: "WebSocket",
        client_ip: caller.client_ip.to_string(),
        principal: caller.principal.clone(),
        connection_id: Some(connection.as_str().to_string()),
        ..Record::default()
    })
}

pub(super) fn finish_record(
    gateway: &Gateway,
    record: Option<Record>,
    status: u16,
    started: Instant,
    error: Option<&'static str>,
    upstream: Option<String>,
) {
    let Some(mut record) = record else { return };
    record.status = status;
    record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    record.error = error;
    if upstream.is_some() {
        record.upstream_ms = Some(record.duration_ms);
        record.upstream = upstream;
    }
    gateway.access_log().write(&record);
}
