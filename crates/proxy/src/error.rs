//! Every way the gateway itself answers a request, mapped to a status and a JSON body in one place.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ProxyBody, full};

/// A request the gateway answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request path could not be normalized (bad percent-encoding, control bytes, ...).
    #[error("Bad Request: {0}")]
    BadPath(#[from] crate::normalize::PathError),
    /// No API, stage or route matches the request.
    #[error("Not Found")]
    NoRoute,
    /// The path matches routes, none of them for this method.
    #[error("Method Not Allowed")]
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: HeaderValue,
    },
    /// The request body is larger than the API allows.
    #[error("Request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The request line and header fields are larger than the listener allows.
    #[error("Request Header Fields Too Large: the request head exceeds {limit} bytes")]
    HeadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body could not be read from the client.
    #[error("Bad Request: the request body could not be read")]
    BodyRead,
    /// The backend has no ready endpoint.
    /// (The backend's name stays out of the message: it names the cluster's Services to anyone
    /// who asks. The access log's `route` leads an operator to it.)
    #[error("Service Unavailable: no healthy endpoint for this route")]
    NoEndpoints,
    /// Connecting to, or talking to, the upstream failed.
    #[error("Bad Gateway: the upstream did not answer")]
    Upstream,
    /// The upstream did not answer within the route's timeout.
    #[error("Gateway Timeout: the upstream did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The gateway has not loaded a configuration yet.
    #[error("Service Unavailable: the gateway has no configuration yet")]
    NotReady,
    /// Authorization refused the request (401, 403) or could not decide (500, 503).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// An internal error that must not happen; the message is generic on purpose.
    #[error("Internal Server Error")]
    Internal,
}

impl ProxyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BodyRead => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoEndpoints | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Auth(error) => error.status(),
        }
    }

    /// A short, bounded reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::HeadTooLarge { .. } => "head_too_large",
            ProxyError::BodyRead => "body_read",
            ProxyError::NoEndpoints => "no_endpoints",
            ProxyError::Upstream => "upstream_error",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::NotReady => "not_ready",
            ProxyError::Internal => "internal",
            ProxyError::Auth(error) => error.reason(),
        }
    }

    /// The response sent to the client: `{"message": ..., "requestId": ...}` with the right status
    /// and headers.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({ "message": self.to_string(), "requestId": request_id });
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let ProxyError::MethodNotAllowed { allow } = self {
            headers.insert(header::ALLOW, allow);
        } else if let ProxyError::Auth(error) = &self
            && let Some(challenge) = error.www_authenticate()
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_is_json_with_message_and_request_id() {
        let response = ProxyError::NoRoute.into_response("abc");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(json, serde_json::json!({"message": "Not Found", "requestId": "abc"}));
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response =
            ProxyError::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") }.into_response("x");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }
}
