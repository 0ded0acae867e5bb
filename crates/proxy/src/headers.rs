//! Header handling shared by every forwarded request: hop-by-hop removal, `X-Forwarded-*`,
//! request ids and W3C trace context.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
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
    if let Some(value) = forwarded_for(headers.get(&X_FORWARDED_FOR), client.client_ip) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(client.proto));
    match client.host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// `X-Forwarded-For`: the client's address appended to what the client sent, if anything.
fn forwarded_for(prior: Option<&HeaderValue>, client_ip: &HeaderValue) -> Option<HeaderValue> {
    match prior.and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(prior) if !prior.is_empty() => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + client_ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        // The common case shares the connection's value: no formatting, no allocation.
        _ => Some(client_ip.clone()),
    }
}

/// The fields the gateway sets on every forwarded request: `X-Forwarded-For` (the client's
/// address appended), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id` and
/// `traceparent` (see [`next_traceparent`]).
///
/// They are kept out of the request's header map: the proxy's own HTTP/1.1 exchange writes them
/// after the client's fields, which spares a hash-map insert or lookup per field on every request
/// (callgrind: ~1,400 instructions per request). hyper's client and WebSocket passthrough get them
/// inserted ([`Forwarding::insert_into`]).
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The request id is borrowed: a clone of a value made for this request would allocate (its
    /// buffer becomes shared on the first clone).
    fields: [(&'static HeaderName, Option<Cow<'a, HeaderValue>>); 4],
    /// Kept as bytes: the own exchange writes them as they are, and a header value would cost an
    /// allocation and a check of every byte (~250 instructions per request).
    traceparent: Traceparent,
}

/// A `traceparent` value the gateway made: `00-` trace id (32 hex) `-` parent id (16 hex) `-`
/// flags (2 hex).
#[derive(Debug, Clone, Copy)]
pub struct Traceparent([u8; 55]);

impl Traceparent {
    /// The value's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        // Hex digits and dashes only: always a valid value.
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl<'a> Forwarding<'a> {
    /// Takes the client's own copies of these fields out of `headers` — folding in what they
    /// said: a prior `X-Forwarded-For` is extended, a valid `traceparent` continued (else
    /// `tracestate` goes too) — and makes the gateway's.
    pub fn take(
        headers: &mut HeaderMap,
        client: &ClientContext<'_>,
        request_id: &'a HeaderValue,
    ) -> Forwarding<'a> {
        // Most requests carry none of them: one pass over the few names present is cheaper than
        // six hash lookups.
        let sent = headers.keys().any(|name| SET_BY_GATEWAY.contains(&name) || name == TRACESTATE);
        let (prior_for, prior_trace) = if sent {
            let prior = (headers.get(&X_FORWARDED_FOR).cloned(), headers.get(&TRACEPARENT).cloned());
            for name in SET_BY_GATEWAY {
                headers.remove(name);
            }
            prior
        } else {
            (None, None)
        };
        let (traceparent, continued) = next_traceparent(prior_trace.as_ref());
        if sent && !continued {
            headers.remove(&TRACESTATE);
        }
        Forwarding {
            fields: [
                (&X_FORWARDED_FOR, forwarded_for(prior_for.as_ref(), client.client_ip).map(Cow::Owned)),
                (&X_FORWARDED_PROTO, Some(Cow::Owned(HeaderValue::from_static(client.proto)))),
                (&X_FORWARDED_HOST, client.host.cloned().map(Cow::Owned)),
                (&X_REQUEST_ID, Some(Cow::Borrowed(request_id))),
            ],
            traceparent,
        }
    }

    /// The fields and their values' bytes, in the order they are sent.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        let fields = self.header_fields().map(|(name, value)| (name, value.as_bytes()));
        fields.chain(std::iter::once((&TRACEPARENT, self.traceparent.as_bytes())))
    }

    /// The fields held as header values (all but `traceparent`).
    fn header_fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields.iter().filter_map(|(name, value)| Some((*name, value.as_deref()?)))
    }

    /// The value of field `name`, if the gateway sets it.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(field, _)| field.as_str().eq_ignore_ascii_case(name)).map(|(_, value)| value)
    }

    /// Puts the fields into `headers` (for transports that send a header map).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.header_fields() {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(TRACEPARENT.clone(), self.traceparent.to_header_value());
    }
}

/// The fields [`Forwarding`] sets (a client's copies are replaced).
const SET_BY_GATEWAY: [&HeaderName; 5] =
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &X_REQUEST_ID, &TRACEPARENT];

/// An address as a header value (`X-Forwarded-For`), made once per client connection.
pub fn client_ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's fields the gateway reads for every request, found in one pass over the fields
/// the request carries (five hash lookups cost more than one walk over a typical request's few
/// fields). Values are the first of their field, as `HeaderMap::get` returns; fields most
/// requests lack are only noted as present, and looked up when they are.
#[derive(Debug, Default)]
pub struct ClientFields {
    /// `Host`.
    pub host: Option<HeaderValue>,
    /// `X-Request-Id`.
    pub request_id: Option<HeaderValue>,
    /// `Content-Length`, when it is a number.
    pub content_length: Option<u64>,
    /// `Origin` (CORS) is present.
    pub origin: bool,
    /// `Sec-WebSocket-Key` is present (every WebSocket upgrade request has it).
    pub websocket_key: bool,
    /// The header fields' size as sent in HTTP/1.1 (`name: value` and CRLF each).
    pub header_bytes: usize,
}

impl ClientFields {
    /// Reads the fields off `headers`.
    pub fn read(headers: &HeaderMap) -> ClientFields {
        let (mut host, mut request_id, mut content_length) = (None, None, None);
        let (mut origin, mut websocket_key, mut header_bytes) = (false, false, 0);
        for (name, value) in headers {
            header_bytes += name.as_str().len() + value.len() + 4;
            let first = if name == header::HOST {
                &mut host
            } else if name == header::CONTENT_LENGTH {
                &mut content_length
            } else if name == X_REQUEST_ID {
                &mut request_id
            } else {
                origin |= name == header::ORIGIN;
                websocket_key |= name == header::SEC_WEBSOCKET_KEY;
                continue;
            };
            first.get_or_insert(value);
        }
        ClientFields {
            host: host.cloned(),
            request_id: request_id.cloned(),
            content_length: content_length.and_then(|value: &HeaderValue| value.to_str().ok()?.parse().ok()),
            origin,
            websocket_key,
            header_bytes,
        }
    }
}

/// The client's `x-request-id` (`sent`) when it is a sane token (1–128 characters of
/// `[A-Za-z0-9._:-]`), otherwise a new UUID. Keeps hostile bytes out of logs and upstream headers.
pub fn request_id(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = sent {
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

/// The `traceparent` for the next hop: the client's trace continued (same trace id and flags, a
/// new parent id for the hop the gateway adds) when `prior` is valid — then `true` — else a new
/// sampled trace.
pub fn next_traceparent(prior: Option<&HeaderValue>) -> (Traceparent, bool) {
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
    let continued = match prior.and_then(|v| v.to_str().ok()).and_then(parse_traceparent) {
        Some((trace_id, flags)) => {
            next[3..35].copy_from_slice(trace_id.as_bytes());
            next[53..55].copy_from_slice(flags.as_bytes());
            true
        }
        None => {
            let trace_id = rand::random::<u128>().max(1);
            let _ = hex::encode_to_slice(trace_id.to_be_bytes(), &mut next[3..35]);
            next[53..55].copy_from_slice(b"01");
            false
        }
    };
    (Traceparent(next), continued)
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
        let sent = |pairs| ClientFields::read(&map(pairs)).request_id;
        assert_eq!(request_id(sent(&[("x-request-id", "abc-123")]).as_ref()), "abc-123");
        let replaced = request_id(sent(&[("x-request-id", "bad id\"{}")]).as_ref());
        assert_ne!(replaced, "bad id\"{}");
        assert_eq!(replaced.len(), 36);
        assert_eq!(request_id(None).len(), 36);
    }

    #[test]
    fn client_fields_are_the_first_values_of_their_fields() {
        let fields = ClientFields::read(&map(&[
            ("Host", "api.example.com"),
            ("content-length", "12"),
            ("x-other", "1"),
            ("host", "second.example.com"),
            ("X-Request-Id", "first"),
            ("x-request-id", "second"),
            ("origin", "https://app.example"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]));
        assert_eq!(fields.host.as_ref().map(HeaderValue::as_bytes), Some(&b"api.example.com"[..]));
        assert_eq!(fields.request_id.as_ref().map(HeaderValue::as_bytes), Some(&b"first"[..]));
        assert_eq!(fields.content_length, Some(12));
        assert!(fields.origin && fields.websocket_key);
        let none = ClientFields::read(&map(&[("content-length", "twelve"), ("x-other", "1")]));
        assert!(none.host.is_none() && none.request_id.is_none());
        assert!(!none.origin && !none.websocket_key);
        assert_eq!(none.content_length, None, "not a number");
        // `content-length: twelve\r\n` and `x-other: 1\r\n`, as sent over HTTP/1.1.
        assert_eq!(none.header_bytes, 24 + 12);
    }

    /// Every field the gateway sets, from a request that sent its own copies of all of them.
    fn forwarded(pairs: &[(&str, &str)]) -> (HeaderMap, HeaderMap) {
        let mut h = map(pairs);
        let ip = client_ip_value([127, 0, 0, 1].into());
        let host = HeaderValue::from_static("api.example");
        let client = ClientContext { client_ip: &ip, proto: "https", host: Some(&host) };
        let request_id = HeaderValue::from_static("req-1");
        let forwarding = Forwarding::take(&mut h, &client, &request_id);
        let mut added = HeaderMap::new();
        forwarding.insert_into(&mut added);
        assert_eq!(forwarding.get("X-Request-Id"), Some(&b"req-1"[..]));
        assert_eq!(forwarding.get("traceparent"), added.get("traceparent").map(HeaderValue::as_bytes));
        (h, added)
    }

    #[test]
    fn forwarding_replaces_the_clients_copies_and_extends_forwarded_for() {
        let (rest, added) = forwarded(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("x-request-id", "client-id"),
            ("accept", "*/*"),
        ]);
        assert_eq!(rest.len(), 1, "only the client's other fields stay: {rest:?}");
        assert_eq!(added["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(added["x-forwarded-proto"], "https");
        assert_eq!(added["x-forwarded-host"], "api.example");
        assert_eq!(added["x-request-id"], "req-1");
        let (rest, added) = forwarded(&[("accept", "*/*")]);
        assert_eq!(rest.len(), 1);
        assert_eq!(added["x-forwarded-for"], "127.0.0.1");
        assert_eq!(added.len(), 5);
    }

    #[test]
    fn traceparent_keeps_trace_id_and_replaces_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (rest, added) = forwarded(&[("traceparent", incoming), ("tracestate", "vendor=1")]);
        let out = added["traceparent"].to_str().unwrap_or_default().to_string();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming);
        assert!(parse_traceparent(&out).is_some(), "{out}");
        assert_eq!(rest["tracestate"], "vendor=1", "tracestate travels with a continued trace");
        assert!(!rest.contains_key("traceparent"), "the client's copy is replaced, not repeated");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (_, added) = forwarded(&[("traceparent", unsampled)]);
        assert!(added["traceparent"].to_str().unwrap_or_default().ends_with("-00"), "flags kept");
        let (rest, added) = forwarded(&[("traceparent", "garbage"), ("tracestate", "vendor=1")]);
        let parsed = added["traceparent"].to_str().ok().and_then(parse_traceparent);
        assert!(parsed.is_some());
        assert!(!rest.contains_key("tracestate"), "a new trace starts without the old state");
        let (_, added) = forwarded(&[]);
        assert!(
            added["traceparent"].to_str().ok().and_then(parse_traceparent).is_some(),
            "a trace is started"
        );
    }
}
