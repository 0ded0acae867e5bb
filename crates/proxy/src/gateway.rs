//! The request pipeline: one function that takes a request through every phase in order.
//!
//! The order (see DESIGN.md, "The request pipeline") and why each phase sits where it does:
//! 1. request id first, so every answer — even an early error — carries one;
//! 2. path normalization before any matching, so `/public/../admin` can never reach a route the
//!    normalized path would not;
//! 3. host → API → stage → canary track → route (404 / 405 with `Allow`); the track is chosen
//!    before the route because each track has its own route table (`canary.rs` says how);
//! 4. body limit (413) before the integration sees a byte;
//! 5. integration: mock answers here; HTTP forwards with timeout (504), retries, 502/503; a
//!    WebSocket upgrade is passed through, or on a managed WebSocket API runs `$connect` and
//!    hands the connection to a session (`websocket.rs`);
//! 6. response headers (`x-request-id`), then metrics and the access log when the body completes —
//!    including for requests answered early.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tollgate_ir as ir;

use crate::access_log::{AccessLog, Record};
use crate::body::{ProxyBody, full};
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::headers::{self, ClientFields, X_REQUEST_ID};
use crate::metrics::{Metrics, RouteMetrics};
use crate::normalize::normalize_path;
use crate::observe::{Completion, Observed};
use crate::runtime::{IntegrationRuntime, Matched, Runtime};
use crate::upstream::UpstreamClient;

/// What the server knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The client's IP address as a header value, made once per connection (`X-Forwarded-For`).
    pub remote_ip_value: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The TLS client certificate's verified identity (mTLS), if one was presented.
    pub peer: Option<Arc<crate::auth::mtls::PeerIdentity>>,
    /// The upstream connection this client connection used last (see [`Affinity`]).
    ///
    /// [`Affinity`]: crate::upstream::Affinity
    pub affinity: crate::upstream::Affinity,
    /// The route-timeout timer its requests share (see [`TimerSlot`]).
    ///
    /// [`TimerSlot`]: crate::upstream::TimerSlot
    pub route_timer: crate::upstream::TimerSlot,
    /// Where requests report to the connection's header-read timeout (none: no timeout).
    pub activity: Option<Arc<crate::server::Activity>>,
    /// The largest request head (request line and header fields) answered other than with 431.
    pub max_head_bytes: usize,
}

/// The data plane's shared state: the current Runtime and what outlives it.
pub struct Gateway {
    runtime: Arc<ArcSwapOption<Runtime>>,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    config_view: crate::config_view::ConfigView,
    traffic: crate::traffic::TrafficState,
    websockets: Arc<crate::websocket::Hub>,
}

impl Gateway {
    /// A gateway with no configuration yet (not ready; answers 503).
    pub fn new(client: UpstreamClient, metrics: Arc<Metrics>, access_log: AccessLog) -> Arc<Gateway> {
        let traffic = crate::traffic::TrafficState::local(&metrics);
        Self::with_traffic(client, metrics, access_log, traffic)
    }

    /// A gateway whose throttles and quotas use `traffic` (Redis, or a state directory).
    pub fn with_traffic(
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        traffic: crate::traffic::TrafficState,
    ) -> Arc<Gateway> {
        let metrics_for_hub = Arc::clone(&metrics);
        Arc::new(Gateway {
            runtime: Arc::new(ArcSwapOption::empty()),
            client,
            metrics,
            access_log,
            config_view: crate::config_view::ConfigView::new(serde_json::json!({"version": null})),
            traffic,
            websockets: crate::websocket::Hub::new(&metrics_for_hub),
        })
    }

    /// Live WebSocket connections, @connections credentials and the WebSocket drain.
    pub fn websockets(&self) -> &Arc<crate::websocket::Hub> {
        &self.websockets
    }

    /// The upstream client.
    pub fn upstream(&self) -> &UpstreamClient {
        &self.client
    }

    /// The access log.
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// Limiter, cache and quota state (for `/usage` and shutdown).
    pub fn traffic(&self) -> &crate::traffic::TrafficState {
        &self.traffic
    }

    /// Builds the tables for `snapshot` off the request path, then swaps them in at once.
    /// In-flight requests finish on the Runtime they started with.
    pub fn apply(&self, snapshot: &ir::Snapshot) {
        self.traffic.begin_build();
        let runtime = Runtime::build(snapshot, &self.metrics, &self.traffic, self.client.backends());
        self.runtime.store(Some(Arc::new(runtime)));
        self.websockets.configure(snapshot);
        self.metrics.config_version.set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
    }

    /// Applies an endpoint update to the tables being served, without rebuilding them; returns
    /// how many backends changed, or `None` when nothing is served yet. The update must be based
    /// on the snapshot last applied (the subscription checks that).
    pub fn apply_endpoints(&self, update: &ir::distribution::EndpointUpdate) -> Option<usize> {
        let runtime = self.runtime.load();
        let changed = runtime.as_ref()?.apply_endpoints(update);
        self.metrics.config_version.set(i64::try_from(update.version).unwrap_or(i64::MAX));
        Some(changed)
    }

    /// Publishes the document served at the admin port's `/config` (already redacted).
    pub fn set_config_view(&self, view: serde_json::Value) {
        self.config_view.set(view);
    }

    /// Publishes the `/config` document as built by `build` when first read (for configurations
    /// that change more often than anyone reads it; see `config_view`).
    pub fn defer_config_view(&self, build: crate::config_view::DeferredView) {
        self.config_view.defer(build);
    }

    /// Drops a `/config` document not built yet, and what it holds; the last built one is
    /// served until the next is published.
    pub fn discard_pending_config_view(&self) {
        self.config_view.discard_pending();
    }

    /// The `/config` document.
    /// Builds a deferred one first, which can take long: call it off the async workers.
    pub fn config_view(&self) -> Arc<serde_json::Value> {
        self.config_view.get()
    }

    /// The `/config` document as served (pretty JSON); like [`Gateway::config_view`], it may
    /// build a deferred one first.
    pub fn config_text(&self) -> Arc<str> {
        self.config_view.render()
    }

    /// Writes out buffered access-log lines (call once serving has stopped).
    pub fn flush_access_log(&self) {
        self.access_log.flush();
    }

    /// Whether a configuration has been loaded.
    pub fn is_ready(&self) -> bool {
        self.runtime.load().is_some()
    }

    /// The version being served, if any.
    pub fn version(&self) -> Option<u64> {
        self.runtime.load().as_ref().map(|r| r.version())
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The slot holding the current Runtime (for the TLS certificate resolver).
    pub fn runtime_slot(&self) -> Arc<ArcSwapOption<Runtime>> {
        Arc::clone(&self.runtime)
    }

    /// Serves one request. The body type is the observing wrapper itself (not boxed again):
    /// one allocation per request fewer.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>, conn: ConnInfo) -> Response<Observed> {
        let start = tokio::time::Instant::now();
        // Until the response is done, the connection is not waiting for a request head.
        let busy = conn.activity.as_ref().map(|activity| activity.begin(request.version()));
        // The head stays here and goes down by reference (see `Received`).
        let (mut parts, body) = request.into_parts();
        let mut fields = ClientFields::read(&parts.headers);
        let request_id = headers::request_id(fields.request_id.take().as_ref());
        let Some(runtime) = self.runtime.load_full() else {
            let mut response = ProxyError::NotReady.into_response(request_id.to_str().unwrap_or_default());
            response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
            return response.map(Observed::unobserved);
        };
        let mut record =
            self.access_log.enabled().then(|| Box::new(new_record(&parts, &fields, &request_id, &conn)));
        let method = parts.method.clone();
        // The canary track, once a canary stage assigned one (phase 3).
        let mut assigned = None;
        let received = Received { parts: &mut parts, body, fields: &fields, conn: &conn };
        let (response, metrics, log) =
            self.pipeline(&runtime, received, &request_id, record.as_deref_mut(), &mut assigned).await;
        let status = response.status().as_u16();
        let (mut parts, body) = response.into_parts();
        parts.headers.insert(X_REQUEST_ID.clone(), request_id);
        let assigned: Option<crate::canary::Assignment> = assigned;
        if let Some(cookie) = assigned.as_ref().and_then(|a| a.set_cookie.clone()) {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        if let Some(record) = record.as_deref_mut() {
            record.status = status;
            record.track = assigned.map(|a| a.track).unwrap_or_default();
        }
        let done = Completion {
            metrics,
            method,
            start,
            record: record.filter(|_| log),
            log: self.access_log.clone(),
            busy,
        };
        Response::from_parts(parts, Observed::new(body, status, done))
    }

    /// Phases 2–5. Returns the response, the metrics bucket it counts in, and whether to log it.
    async fn pipeline(
        self: &Arc<Self>,
        runtime: &Arc<Runtime>,
        received: Received<'_>,
        request_id: &HeaderValue,
        record: Option<&mut Record>,
        assigned: &mut Option<crate::canary::Assignment>,
    ) -> (Response<ProxyBody>, Arc<RouteMetrics>, bool) {
        let id = request_id.to_str().unwrap_or_default();
        let Received { parts, body, fields, conn } = received;
        // A WebSocket upgrade (an HTTP/2 extended CONNECT is routed as the GET it stands for).
        let upgrade = crate::websocket::upgrade::requested(parts, fields.websocket_key);
        // Host and path are borrowed from a copy of the client's URI and `Host` value (reference
        // counts, no allocation): `parts` is changed further on.
        let client_uri = parts.uri.clone();
        let host = request_host(&client_uri, fields.host.as_ref());
        let mut record = record;
        if let Some(record) = record.as_deref_mut() {
            host.as_ref().clone_into(&mut record.host);
        }
        // The listener's limit on the request head, answered here (JSON, logged and counted) rather
        // than by the HTTP parser, whose own limit is twice this as a backstop (see `server`).
        let request_line =
            parts.method.as_str().len() + client_uri.path_and_query().map_or(1, |p| p.as_str().len()) + 11;
        if request_line + fields.header_bytes > conn.max_head_bytes {
            let error = ProxyError::HeadTooLarge { limit: conn.max_head_bytes };
            return (fail(error, id, record), Arc::clone(&runtime.unmatched), true);
        }
        let path = match normalize_path(client_uri.path()) {
            Ok(path) => path,
            Err(error) => {
                return (ProxyError::BadPath(error).into_response(id), Arc::clone(&runtime.unmatched), true);
            }
        };
        let mut routed = runtime.route(&host, &parts.method, &path, &parts.headers, conn.tls, assigned);
        // A CORS preflight is routed by the method it asks about, so the route's CORS policy
        // answers it (phase 6); APIs without CORS see it as a plain OPTIONS request.
        if let Some(asked) = crate::traffic::cors::preflight_method(&parts.method, &parts.headers)
            && let Ok(preflight) = runtime.route(&host, &asked, &path, &parts.headers, conn.tls, assigned)
            && preflight.policy.traffic.has_cors()
        {
            routed = Ok(preflight);
        }
        let matched = match routed {
            Ok(matched) => matched,
            Err(unmatched) => {
                if let Some(record) = record {
                    record.error = Some(unmatched.error.reason());
                    let (api, stage) = unmatched.labels;
                    if let Some(api) = api {
                        record.api = Arc::clone(api);
                    }
                    if let Some(stage) = stage {
                        record.stage = Arc::clone(stage);
                    }
                }
                return (
                    unmatched.error.into_response(id),
                    Arc::clone(unmatched.metrics),
                    unmatched.access_log,
                );
            }
        };
        let Matched { policy, params, stage_path, managed } = matched;
        let metrics = Arc::clone(&policy.metrics);
        let log = policy.access_log;
        if let Some(record) = record.as_deref_mut() {
            record.api = Arc::clone(&policy.api);
            record.stage = Arc::clone(&policy.stage);
            record.route = Arc::clone(&policy.route);
            set_logged_path(&mut record.path, &path);
        }
        if fields.content_length.is_some_and(|len| len > policy.max_body) {
            let error = ProxyError::PayloadTooLarge { limit: policy.max_body };
            return (fail(error, id, record), metrics, log);
        }
        let mut context = RequestContext::default();
        // Phase 5: resource policy (source address, trusted proxies) and the mTLS requirement.
        if let Err(error) = crate::auth::admit(policy, &parts.headers, conn, &mut context) {
            return (fail(error, id, record), metrics, log);
        }
        // Phases 6–7: CORS preflight, API and stage throttles. Here and below, a route without
        // any traffic feature skips the phases (they would pass it through unchanged).
        let traffic = &self.traffic;
        let acts = policy.traffic.acts();
        let mut traffic_state = if acts {
            match traffic
                .before_auth(&policy.traffic, &parts.method, &parts.headers, origin(parts, fields), id)
                .await
            {
                Ok(state) => state,
                Err(early) => return (answered(early, record, &context), metrics, log),
            }
        } else {
            crate::traffic::RequestState::default()
        };
        // Managed WebSocket connections carry the headers the authorizer sets: keep what the
        // client sent to tell them apart.
        let received = if managed.is_some() { parts.headers.clone() } else { http::HeaderMap::new() };
        // Phase 8: authorization (JWT, external authorizer, SigV4); identity into `context`.
        let auth_request =
            crate::auth::Request { parts: &mut *parts, body, conn, path: &path, request_id: id };
        let body = match crate::auth::authorize(policy, auth_request, &mut context).await {
            Ok(body) => body,
            // A caller can be identified and still refused (a missing scope): log who it was.
            Err(error) => {
                if let Some(record) = record.as_deref_mut() {
                    record.principal = context.principal.clone();
                }
                return (fail(error, id, record), metrics, log);
            }
        };
        // Phases 9–13: API key and usage plan, route throttle, validation, cache, transforms.
        let body = if acts {
            let facts = crate::traffic::RequestFacts {
                request_id: id,
                host: &host,
                path: &path,
                stage_path,
                client_ip: conn.remote.ip(),
                max_body: policy.max_body,
            };
            match traffic
                .after_auth(&policy.traffic, &mut traffic_state, parts, body, &params, &mut context, facts)
                .await
            {
                Ok(body) => body,
                Err(early) => return (answered(early, record, &context), metrics, log),
            }
        } else {
            body
        };
        if let Some(record) = record.as_deref_mut() {
            record.principal = context.principal.clone();
            record.api_key_id = context.api_key_id.clone();
        }
        // Managed WebSocket APIs: `$connect` decides; the session takes the connection.
        if let Some(stage) = managed {
            let connect = crate::websocket::session::ConnectRequest {
                gateway: self,
                policy,
                stage,
                upgrade,
                parts: take_head(parts),
                received: &received,
                context: &context,
                conn,
                request_id,
                host: &host,
                path: &path,
                record: record.as_deref_mut(),
            };
            // Boxed: a future is as large as its largest await, and this rare one would double
            // every request's future, which hyper copies whole for each request.
            return (Box::pin(crate::websocket::session::connect(connect)).await, metrics, log);
        }
        let (backend, rewrite, prefix) = match &policy.integration {
            IntegrationRuntime::Mock(mock) => {
                let mut response = Response::new(full(mock.body.clone()));
                *response.status_mut() = mock.status;
                *response.headers_mut() = mock.headers.clone();
                if acts {
                    response = traffic.respond(&policy.traffic, traffic_state, response, id).await;
                }
                return (response, metrics, log);
            }
            IntegrationRuntime::Http { backend, path, prefix } => (backend, path, prefix),
        };
        let mut upstream_path = String::with_capacity(prefix.len() + stage_path.len() + 64);
        upstream_path.push_str(prefix);
        match rewrite {
            Some(template) => template.render_into(&params, &mut upstream_path),
            None => upstream_path.push_str(stage_path),
        }
        if let Some(query) = parts.uri.query() {
            upstream_path.push('?');
            upstream_path.push_str(query);
        }
        let host_header = parts.headers.get(header::HOST).cloned();
        let from_authority = host_header.is_none();
        let client_host = host_header
            .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let had_hop_by_hop = headers::remove_hop_by_hop(&mut parts.headers);
        let client = headers::ClientContext {
            client_ip: &conn.remote_ip_value,
            proto: if conn.tls { "https" } else { "http" },
            host: client_host.as_ref(),
        };
        // X-Forwarded-*, X-Request-Id, traceparent: written after the client's fields.
        let forwarding = headers::Forwarding::take(&mut parts.headers, &client, request_id);
        // Host goes upstream as the client sent it. It is put back only where it is missing:
        // HTTP/2 carries it as `:authority`, and `Connection: host` names it hop-by-hop.
        if (from_authority || had_hop_by_hop)
            && let Some(host) = client_host
        {
            parts.headers.insert(header::HOST, host);
        }
        // WebSocket passthrough: a dedicated upstream connection, then a byte pipe.
        if let Some(upgrade) = upgrade {
            forwarding.insert_into(&mut parts.headers);
            let caller = crate::upstream::Caller {
                client_ip: conn.remote.ip(),
                principal: context.principal.as_deref(),
                affinity: None,
                forwarding: None,
                timer: None,
            };
            // Boxed, like `$connect` above: rare, and large.
            let forward = Box::pin(crate::websocket::passthrough::forward(
                self,
                policy,
                backend,
                upgrade,
                take_head(parts),
                &upstream_path,
                caller,
            ));
            return match forward.await {
                Ok(response) => (response, metrics, log),
                Err(error) => (fail(error, id, record), metrics, log),
            };
        }
        let buffer = policy.retries.attempts > 0;
        let body = match body.into_request_body(policy.max_body, buffer).await {
            Ok(body) => body,
            Err(error) => return (fail(error, id, record), metrics, log),
        };
        let caller = crate::upstream::Caller {
            client_ip: conn.remote.ip(),
            principal: context.principal.as_deref(),
            affinity: Some(&conn.affinity),
            forwarding: Some(&forwarding),
            timer: Some(&conn.route_timer),
        };
        match self.client.send(policy, backend, parts, upstream_path, body, caller).await {
            Ok(exchange) => {
                metrics.observe_upstream(exchange.elapsed.as_secs_f64());
                if let Some(record) = record {
                    record.upstream_ms = Some(exchange.elapsed.as_secs_f64() * 1000.0);
                    record.upstream = Some(exchange.endpoint.to_string());
                }
                let (mut head, body) = exchange.response.into_parts();
                headers::remove_hop_by_hop(&mut head.headers);
                let mut response = Response::from_parts(head, body);
                if acts {
                    response = traffic.respond(&policy.traffic, traffic_state, response, id).await;
                }
                (response, metrics, log)
            }
            Err(error) => (fail(error, id, record), metrics, log),
        }
    }
}

/// A request as the pipeline takes it. The head, the fields read off it and the connection are
/// borrowed from the handler: an async function keeps each argument it takes by value twice in
/// its future (the argument and its binding), and hyper copies the request's future whole.
struct Received<'a> {
    parts: &'a mut http::request::Parts,
    body: Incoming,
    fields: &'a ClientFields,
    conn: &'a ConnInfo,
}

/// The request's `Origin`, looked up only when the request has one.
fn origin(parts: &http::request::Parts, fields: &ClientFields) -> Option<HeaderValue> {
    if fields.origin { parts.headers.get(header::ORIGIN).cloned() } else { None }
}

/// The most characters of a path an access-log line holds: a path is the client's to choose.
const LOGGED_PATH_CHARS: usize = 2048;

/// Sets the logged path to `path` cut to [`LOGGED_PATH_CHARS`] characters, reusing `logged`'s
/// buffer (copied whole, without counting, when its bytes fit).
fn set_logged_path(logged: &mut String, path: &str) {
    logged.clear();
    if path.len() <= LOGGED_PATH_CHARS {
        logged.push_str(path);
    } else {
        logged.extend(path.chars().take(LOGGED_PATH_CHARS));
    }
}

/// The request head, for the rare paths that take it (WebSocket upgrades), leaving an empty one.
fn take_head(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// A response a traffic phase gave (an error, or a cache hit), logged with the identity known.
fn answered(
    early: crate::traffic::Early,
    record: Option<&mut Record>,
    context: &RequestContext,
) -> Response<ProxyBody> {
    if let Some(record) = record {
        record.error = early.reason;
        record.principal = context.principal.clone();
        record.api_key_id = context.api_key_id.clone();
    }
    early.response
}

fn fail(error: ProxyError, request_id: &str, record: Option<&mut Record>) -> Response<ProxyBody> {
    if let Some(record) = record {
        record.error = Some(error.reason());
    }
    error.into_response(request_id)
}

fn new_record(
    request: &http::request::Parts,
    fields: &ClientFields,
    request_id: &HeaderValue,
    conn: &ConnInfo,
) -> Record {
    let now = time::OffsetDateTime::now_utc();
    Record {
        time: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        request_id: request_id.to_str().unwrap_or_default().to_string(),
        method: request.method.as_str().to_string(),
        // `host` is set by the pipeline, which computes it anyway.
        path: {
            let mut path = String::new();
            set_logged_path(&mut path, request.uri.path());
            path
        },
        protocol: match request.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        bytes_received: fields.content_length.unwrap_or(0),
        // Formatted once per connection already (formatting an address per request cost more
        // than the rest of the record).
        client_ip: conn.remote_ip_value.to_str().unwrap_or_default().to_string(),
        ..Record::default()
    }
}

/// The host the client asked for, lower-case, without port and trailing dot: the URI's authority
/// (HTTP/2 `:authority`, an absolute-form target), or the `Host` field. Borrowed unless it had
/// upper-case letters.
fn request_host<'a>(uri: &'a http::Uri, host_field: Option<&'a HeaderValue>) -> Cow<'a, str> {
    let raw = uri.host().or_else(|| host_field.and_then(|h| h.to_str().ok())).unwrap_or_default();
    // One pass from the end: the port's digits, then its colon — unless the colon belongs to a
    // bare IPv6 address (`::1`); a bracketed one (`[::1]:80`) keeps its brackets.
    let bytes = raw.as_bytes();
    let digits = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let mut end = match bytes[..bytes.len() - digits].split_last() {
        Some((b':', host)) if host.last() != Some(&b':') => host.len(),
        _ => bytes.len(),
    };
    while end > 0 && bytes[end - 1] == b'.' {
        end -= 1;
    }
    let host = &raw[..end];
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// hyper moves the request future whole into the connection for every request, so its size
    /// is paid per request: it was 21,688 bytes before the rare, large awaits (managed WebSocket
    /// `$connect`, JWT verification, upstream connect) were boxed, and the memcpy was 36 % of the
    /// proxy's instructions. This keeps such awaits from creeping back (an unboxed `$connect`
    /// alone makes it 10,536 bytes).
    #[tokio::test]
    async fn the_request_future_stays_small() {
        let metrics = Metrics::new().expect("metrics");
        let client = UpstreamClient::new(&crate::upstream::UpstreamSettings::default()).expect("client");
        let gateway = Gateway::new(client, Arc::clone(&metrics), AccessLog::disabled(metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let size = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&size);
        tokio::spawn(async move {
            let Ok((stream, remote)) = listener.accept().await else { return };
            let service = hyper::service::service_fn(move |request| {
                let info = ConnInfo {
                    remote,
                    remote_ip_value: headers::client_ip_value(remote.ip()),
                    tls: false,
                    peer: None,
                    affinity: Default::default(),
                    route_timer: Default::default(),
                    activity: None,
                    max_head_bytes: usize::MAX,
                };
                let future = Arc::clone(&gateway).handle(request, info);
                seen.store(std::mem::size_of_val(&future), Ordering::SeqCst);
                async move { Ok::<_, std::convert::Infallible>(future.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer));
        read.await.expect("answered in time").expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 503"), "not configured yet: 503");
        let size = size.load(Ordering::SeqCst);
        // Session 6 passed the head down to the upstream call by reference; session 7 keeps it,
        // the fields read off it and the connection in the handler (see `Received`).
        assert!(size > 0 && size <= 8 * 1024, "the request future is {size} bytes; box the new large await");
    }

    #[test]
    fn logged_paths_are_cut_to_2048_characters() {
        let cut = |path: &str| {
            let mut logged = "/previous/request".to_owned();
            set_logged_path(&mut logged, path);
            logged
        };
        assert_eq!(cut("/short"), "/short");
        let long = "é".repeat(3000);
        assert_eq!(cut(&long).chars().count(), 2048);
        assert_eq!(cut(&"a".repeat(2048)).len(), 2048);
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let origin_form = http::Uri::from_static("/x");
        let host = |value: &'static str| Some(HeaderValue::from_static(value));
        assert_eq!(request_host(&origin_form, host("API.Example.com:8443").as_ref()), "api.example.com");
        assert_eq!(request_host(&origin_form, host("api.example.com.").as_ref()), "api.example.com");
        let h2 = http::Uri::from_static("https://H2.example/x");
        assert_eq!(request_host(&h2, host("other.example").as_ref()), "h2.example", "authority first");
        assert_eq!(request_host(&origin_form, host("[::1]:80").as_ref()), "[::1]");
        assert_eq!(request_host(&origin_form, None), "");
        for (sent, host) in [
            ("example.com:", "example.com"),
            ("a:b:80", "a:b"),
            ("::1", "::1"),
            (":80", ""),
            ("123", "123"),
            ("host.:8080", "host"),
            ("[::1]", "[::1]"),
            ("x:8a", "x:8a"),
        ] {
            let value = HeaderValue::from_static(sent);
            assert_eq!(request_host(&origin_form, Some(&value)), host, "{sent}");
        }
        assert!(matches!(request_host(&origin_form, host("a.example:80").as_ref()), Cow::Borrowed(_)));
    }
}
