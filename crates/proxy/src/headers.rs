//! Header handling shared by every forwarded request: hop-by-hop removal, `X-Forwarded-*`,
//! request ids and W3C trace context.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), and never cross the proxy.
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names, and
/// `Upgrade` (WebSocket passthrough handles upgrades itself). Returns whether the message had
/// any (whether anything may have been removed).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages carry none of them: one pass over the few names present is cheaper than ten
    // hash lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    true
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name) || name == header::UPGRADE
}

/// What the proxy knows about the client side of a request.
pub struct ClientContext<'a> {
    /// The client's address, as a header value (see [`client_ip_value`]).
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`: how the client reached the gateway.
    pub proto: &'static str,
    /// The Host the client asked for.
    pub host: Option<&'a HeaderValue>,
}

/// Adds `X-Forwarded-For` (appending the client address), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientContext<'_>) {
    let prior = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()).map(str::trim);
    let xff = match prior {
        Some(prior) if !prior.is_empty() => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + client.client_ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        // The common case shares the connection's value: no formatting, no allocation.
        _ => Some(client.client_ip.clone()),
    };
    if let Some(value) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(client.proto));
    match client.host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// An address as a header value (`X-Forwarded-For`), made once per client connection.
pub fn client_ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's `x-request-id` when it is a sane token (1–128 characters of `[A-Za-z0-9._:-]`),
/// otherwise a new UUID. Keeps hostile bytes out of logs and upstream headers.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        let bytes = value.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= 128
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return value.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Continues the client's W3C trace (same trace id and flags, a new parent id for the hop the
/// gateway adds) or starts a new sampled one when the client sent none or an invalid one.
pub fn propagate_traceparent(headers: &mut HeaderMap) {
    // `00-` trace id (32) `-` parent id (16) `-` flags (2): built on the stack.
    let mut next = [0u8; 55];
    next[..3].copy_from_slice(b"00-");
    next[35] = b'-';
    next[52] = b'-';
    // The hop's parent id; all zeros is invalid (a 2^-64 chance, but hostile-input rules apply
    // to our own output too).
    let parent = rand::random::<u64>().max(1);
    // Lower-case hex of exactly the slice's length: cannot fail.
    let _ = hex::encode_to_slice(parent.to_be_bytes(), &mut next[36..52]);
    match headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse_traceparent) {
        Some((trace_id, flags)) => {
            next[3..35].copy_from_slice(trace_id.as_bytes());
            next[53..55].copy_from_slice(flags.as_bytes());
        }
        None => {
            headers.remove(header::HeaderName::from_static("tracestate"));
            let trace_id = rand::random::<u128>().max(1);
            let _ = hex::encode_to_slice(trace_id.to_be_bytes(), &mut next[3..35]);
            next[53..55].copy_from_slice(b"01");
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(&next) {
        headers.insert(TRACEPARENT.clone(), value);
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(X_REQUEST_ID.clone()),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn forwarded_for_appends_client_ip() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        let host = HeaderValue::from_static("api.example");
        let ip = client_ip_value([127, 0, 0, 1].into());
        let client = ClientContext { client_ip: &ip, proto: "https", host: Some(&host) };
        set_forwarded(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        let mut first = HeaderMap::new();
        set_forwarded(&mut first, &ClientContext { client_ip: &ip, proto: "http", host: None });
        assert_eq!(first["x-forwarded-for"], "127.0.0.1");
        assert_eq!(first["x-forwarded-proto"], "http");
        assert!(!first.contains_key("x-forwarded-host"));
        let v6 = client_ip_value("2001:db8::1".parse().unwrap_or([0, 0, 0, 0].into()));
        assert_eq!(v6, "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn request_id_is_kept_only_when_sane() {
        assert_eq!(request_id(&map(&[("x-request-id", "abc-123")])), "abc-123");
        let replaced = request_id(&map(&[("x-request-id", "bad id\"{}")]));
        assert_ne!(replaced, "bad id\"{}");
        assert_eq!(replaced.len(), 36);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn traceparent_keeps_trace_id_and_replaces_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("traceparent", incoming)]);
        propagate_traceparent(&mut h);
        let out = h["traceparent"].to_str().unwrap_or_default().to_string();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming);
        assert!(parse_traceparent(&out).is_some(), "{out}");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut h = map(&[("traceparent", unsampled), ("tracestate", "vendor=1")]);
        propagate_traceparent(&mut h);
        assert!(h["traceparent"].to_str().unwrap_or_default().ends_with("-00"), "flags kept");
        assert_eq!(h["tracestate"], "vendor=1", "tracestate travels with a continued trace");
        let mut fresh = map(&[("traceparent", "garbage")]);
        propagate_traceparent(&mut fresh);
        let parsed = fresh["traceparent"].to_str().ok().and_then(parse_traceparent);
        assert!(parsed.is_some());
    }
}
