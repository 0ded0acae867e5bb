//! Recognizing WebSocket upgrade requests — HTTP/1.1 `Upgrade: websocket` and HTTP/2 extended
//! CONNECT (RFC 8441, `:protocol websocket`) — and building the answer that accepts one.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::body::{ProxyBody, empty};

/// `sec-websocket-key`.
pub static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
/// `sec-websocket-accept`.
pub static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
/// `sec-websocket-version`.
pub static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
/// `sec-websocket-protocol`.
pub static SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
/// `sec-websocket-extensions`.
pub static SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

/// How the client asked to open a WebSocket.
#[derive(Clone, Debug)]
pub enum Upgrade {
    /// HTTP/1.1 `GET` with `Upgrade: websocket`; answered with 101.
    Http1 {
        /// The client's `Sec-WebSocket-Key`.
        key: HeaderValue,
    },
    /// HTTP/2 extended CONNECT with `:protocol websocket`; answered with 200.
    Http2,
}

/// The upgrade `parts` asks for, if any; `key_sent`: it has a `Sec-WebSocket-Key` (see
/// [`crate::headers::ClientFields`]). An HTTP/2 extended CONNECT is turned into a `GET` here so
/// that it is routed like the HTTP/1.1 request it stands for.
pub fn requested(parts: &mut http::request::Parts, key_sent: bool) -> Option<Upgrade> {
    if parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
    {
        parts.method = Method::GET;
        return Some(Upgrade::Http2);
    }
    if parts.method != Method::GET || parts.version != http::Version::HTTP_11 {
        return None;
    }
    // The key first: it settles it for the plain requests that are nearly all traffic.
    if !key_sent {
        return None;
    }
    let key = parts.headers.get(&SEC_WEBSOCKET_KEY)?;
    let upgrade = has_token(&parts.headers, &header::UPGRADE, "websocket");
    let connection = has_token(&parts.headers, &header::CONNECTION, "upgrade");
    (upgrade && connection).then(|| Upgrade::Http1 { key: key.clone() })
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The response that accepts `upgrade` (101 with `Sec-WebSocket-Accept`, or 200 for HTTP/2),
/// with the subprotocol and extensions the other side agreed to.
pub fn accept(upgrade: &Upgrade, agreed: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    if let Upgrade::Http1 { key } = upgrade {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(SEC_WEBSOCKET_ACCEPT.clone(), accept);
        }
    }
    for name in [&SEC_WEBSOCKET_PROTOCOL, &SEC_WEBSOCKET_EXTENSIONS] {
        if let Some(value) = agreed.get(name) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

/// A fresh `Sec-WebSocket-Key` (for an HTTP/2 client's connection to an HTTP/1.1 backend).
pub fn new_key() -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri("/chat");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap_or_default().into_parts().0
    }

    fn asked(method: Method, headers: &[(&str, &str)]) -> Option<Upgrade> {
        let mut parts = parts(method, headers);
        let fields = crate::headers::ClientFields::read(&parts.headers);
        requested(&mut parts, fields.websocket_key)
    }

    #[test]
    fn http1_upgrade_needs_upgrade_connection_and_key() {
        let full =
            [("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade"), ("sec-websocket-key", "k")];
        assert!(matches!(asked(Method::GET, &full), Some(Upgrade::Http1 { .. })));
        assert!(asked(Method::POST, &full).is_none());
        assert!(asked(Method::GET, &full[..2]).is_none());
        assert!(asked(Method::GET, &full[1..]).is_none());
    }

    #[test]
    fn accept_key_follows_rfc6455() {
        let upgrade = Upgrade::Http1 { key: HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==") };
        let response = accept(&upgrade, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers().get(&SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes()),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
    }
}
