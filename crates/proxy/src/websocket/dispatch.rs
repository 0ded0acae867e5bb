//! Invoking a WebSocket route's integration: one HTTP `POST` carrying the message and the
//! connection's context headers; a mock integration answers by itself.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};

use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::router::Params;
use crate::runtime::{IntegrationRuntime, RoutePolicy};
use crate::upstream::{RequestBody, UpstreamClient};

/// `x-tollgate-connection-id`.
pub static CONNECTION_ID: HeaderName = HeaderName::from_static("x-tollgate-connection-id");
/// `x-tollgate-route-key`.
pub static ROUTE_KEY: HeaderName = HeaderName::from_static("x-tollgate-route-key");
/// `x-tollgate-stage`.
pub static STAGE: HeaderName = HeaderName::from_static("x-tollgate-stage");
/// `x-tollgate-disconnect-reason` (on `$disconnect` invocations).
pub static DISCONNECT_REASON: HeaderName = HeaderName::from_static("x-tollgate-disconnect-reason");

/// One invocation of a route's integration.
pub struct Invocation<'a> {
    /// The route.
    pub policy: &'a RoutePolicy,
    /// The route key that selected it.
    pub route_key: &'a str,
    /// The connection.
    pub connection_id: &'a str,
    /// Headers to send besides the context headers (the authorizer's, the API key, ...).
    pub headers: HeaderMap,
    /// The message (empty for `$connect` / `$disconnect`).
    pub body: Bytes,
    /// The request id of this invocation.
    pub request_id: &'a HeaderValue,
    /// The client's address (`X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// Largest response body read back.
    pub max_response: u64,
    /// The caller established at `$connect` (consistent hashing on the principal).
    pub principal: Option<&'a str>,
}

/// What the integration answered.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// Time the integration took.
    pub elapsed: Duration,
    /// The endpoint that answered (`None` for mocks).
    pub endpoint: Option<String>,
}

impl Answer {
    /// Whether the integration accepted (2xx).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Calls the route's integration.
pub async fn invoke(client: &UpstreamClient, call: Invocation<'_>) -> Result<Answer, ProxyError> {
    let started = Instant::now();
    let policy = call.policy;
    let (backend, rewrite, prefix) = match &policy.integration {
        IntegrationRuntime::Mock(mock) => {
            return Ok(Answer {
                status: mock.status.as_u16(),
                headers: mock.headers.clone(),
                body: mock.body.clone(),
                elapsed: started.elapsed(),
                endpoint: None,
            });
        }
        IntegrationRuntime::Http { backend, path, prefix } => (backend, path, prefix),
    };
    let mut path = String::with_capacity(prefix.len() + 16);
    path.push_str(prefix);
    if let Some(template) = rewrite {
        template.render_into(&Params::default(), &mut path);
    }
    if path.is_empty() {
        path.push('/');
    }
    let mut headers = call.headers;
    headers::remove_hop_by_hop(&mut headers);
    for name in [header::CONTENT_LENGTH, header::HOST, header::CONTENT_TYPE] {
        headers.remove(name);
    }
    let content_type = if std::str::from_utf8(&call.body).is_err() {
        "application/octet-stream"
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&call.body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in
        [(&CONNECTION_ID, call.connection_id), (&ROUTE_KEY, call.route_key), (&STAGE, &*policy.stage)]
    {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    headers.insert(X_REQUEST_ID.clone(), call.request_id.clone());
    let client_ip = headers::client_ip_value(call.client_ip);
    let forwarded = headers::ClientContext { client_ip: &client_ip, proto: "http", host: None };
    headers::set_forwarded(&mut headers, &forwarded);
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.headers_mut() = headers;
    let (mut parts, ()) = request.into_parts();
    let body = RequestBody::Buffered(call.body);
    let caller = crate::upstream::Caller {
        client_ip: call.client_ip,
        principal: call.principal,
        affinity: None,
        forwarding: None,
        timer: None,
    };
    let exchange = client.send(policy, backend, &mut parts, path, body, caller).await?;
    let (head, body) = exchange.response.into_parts();
    let Ok(body) = crate::body::collect_limited(body, call.max_response).await else {
        return Err(ProxyError::Upstream);
    };
    Ok(Answer {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
        elapsed: started.elapsed(),
        endpoint: Some(exchange.endpoint.to_string()),
    })
}
