//! Calling upstreams: one pooled HTTP/HTTPS client for the process, endpoint choice (balancing
//! policy, outlier ejection, DNS endpoints; see `backend`), per-route timeout and retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::body::{BoxError, ProxyBody, boxed};
use crate::error::ProxyError;
use crate::runtime::RoutePolicy;

mod backend;
pub mod balance;
mod deadline;
mod h1;
pub mod outlier;
mod pool;
mod resolve;

pub use backend::{
    BackendBuilder, BackendRegistry, BackendRuntime, Caller, InFlight, ServiceBackends, TlsProfile, TlsSetup,
    UpstreamMetrics,
};
pub use deadline::TimerSlot;
pub use pool::{Affinity, Keep, Pool, PoolError, PoolSettings, Target};
pub use resolve::ResolveError;

/// Settings of the upstream client.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Extra PEM CA certificates trusted for HTTPS upstreams (besides the public web roots).
    pub extra_ca_pem: Option<String>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            extra_ca_pem: None,
        }
    }
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// The extra CA file is not valid PEM.
    #[error("upstream CA bundle is not valid PEM: {0}")]
    CaPem(#[source] rustls_pki_types::pem::Error),
    /// A CA certificate was rejected.
    #[error("upstream CA certificate rejected: {0}")]
    Ca(#[source] rustls::Error),
}

/// The process-wide upstream client. Its pools are keyed by endpoint, so they survive
/// configuration swaps untouched.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Pool,
    backends: BackendRegistry,
    /// The default TLS client configuration (for dedicated connections: WebSocket passthrough).
    tls: Arc<rustls::ClientConfig>,
}

/// A successful upstream exchange.
pub struct Exchange {
    /// The upstream's response.
    pub response: Response<ProxyBody>,
    /// The endpoint that answered (formatted only where it is logged).
    pub endpoint: http::uri::Authority,
    /// Time to the response head.
    pub elapsed: Duration,
}

impl UpstreamClient {
    /// Builds the client.
    pub fn new(settings: &UpstreamSettings) -> Result<UpstreamClient, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(pem) = &settings.extra_ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.map_err(UpstreamSetupError::CaPem)?).map_err(UpstreamSetupError::Ca)?;
            }
        }
        let roots = Arc::new(roots);
        let backends = BackendRegistry::new(Arc::clone(&roots));
        let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        let pool = Pool::new(PoolSettings {
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            tls: Arc::clone(&tls),
        });
        crate::auth::fetch::use_pool(pool.clone());
        Ok(UpstreamClient { pool, backends, tls })
    }

    /// The default TLS client configuration, for connections outside the pool (an upgraded
    /// WebSocket connection never returns to it).
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// Backend state shared across configuration swaps (counters, ejections, DNS, TLS).
    pub fn backends(&self) -> &BackendRegistry {
        &self.backends
    }

    /// Sends `parts` (already rewritten: headers, path) with `body` to an endpoint of `backend`,
    /// chosen by its balancing policy (`caller` feeds consistent hashing), retrying per the
    /// route's policy (on another endpoint when there is one), within the route's timeout. Every
    /// attempt's outcome feeds outlier detection.
    pub async fn send(
        &self,
        policy: &RoutePolicy,
        backend: &BackendRuntime,
        parts: &mut http::request::Parts,
        path_and_query: String,
        body: RequestBody,
        caller: Caller<'_>,
    ) -> Result<Exchange, ProxyError> {
        let started = tokio::time::Instant::now();
        let deadline = started + policy.timeout;
        let timeout_ms = u64::try_from(policy.timeout.as_millis()).unwrap_or(u64::MAX);
        let retries = &policy.retries;
        // Taken by value: the URI keeps the string's buffer instead of copying it.
        parts.uri = Uri::try_from(path_and_query).map_err(|_| ProxyError::Internal)?;
        // Endpoint authority and scheme travel separately: the request line stays origin-form.
        parts.version = http::Version::HTTP_11;
        if let Some(host) = &backend.host_header {
            parts.headers.insert(header::HOST, host.clone());
        }
        let tls = match &backend.tls {
            TlsSetup::Default => None,
            TlsSetup::Custom(profile) => Some(&**profile),
            TlsSetup::Broken(reason) => {
                tracing::warn!(backend = %backend.name, %reason, "upstream TLS is not usable");
                policy.metrics.upstream_error("tls_setup");
                return Err(ProxyError::Upstream);
            }
        };
        let endpoints = match deadline::within(deadline, caller.timer, backend.endpoints()).await {
            Err(_elapsed) => {
                policy.metrics.upstream_error("timeout");
                return Err(ProxyError::UpstreamTimeout { timeout_ms });
            }
            Ok(Err(error)) => {
                tracing::warn!(backend = %backend.name, %error, "no endpoints");
                policy.metrics.upstream_error("resolve");
                return Err(ProxyError::NoEndpoints);
            }
            Ok(Ok(endpoints)) => endpoints,
        };
        let hash_key = backend.hash_key(&parts.headers, parts.uri.query(), caller);
        let mut body = Some(body);
        let mut attempt = 0;
        let mut avoid: Option<http::uri::Authority> = None;
        loop {
            let Some(endpoint) = backend.pick(&endpoints, hash_key, avoid.as_ref()) else {
                return Err(ProxyError::NoEndpoints);
            };
            let can_retry = attempt < retries.attempts;
            let this_body = match body.take() {
                Some(RequestBody::Buffered(bytes)) if can_retry => {
                    body = Some(RequestBody::Buffered(bytes.clone()));
                    full_body(bytes)
                }
                Some(RequestBody::Buffered(bytes)) => full_body(bytes),
                Some(RequestBody::Streaming(stream)) => stream,
                None => return Err(ProxyError::Internal),
            };
            let in_flight = backend.start(endpoint);
            let can_retry = can_retry && body.is_some();
            let target = pool::Target {
                scheme: &backend.scheme,
                authority: &endpoint.authority,
                server_name: backend.server_name.as_deref(),
                tls,
                affinity: caller.affinity,
            };
            // The head is copied only when another attempt may need it.
            let keep = if can_retry { Keep::Yes } else { Keep::No };
            // Built inside `within`'s argument: a future bound to a local first keeps a second
            // slot of its size in this function's state.
            let sent = deadline::within(
                deadline,
                caller.timer,
                self.pool.send_parts(target, parts, caller.forwarding, this_body, keep, in_flight),
            );
            match sent.await {
                Err(_elapsed) => {
                    backend.record(endpoint, &endpoints, true);
                    policy.metrics.upstream_error("timeout");
                    return Err(ProxyError::UpstreamTimeout { timeout_ms });
                }
                Ok(Ok(response)) => {
                    backend.record(endpoint, &endpoints, response.status().is_server_error());
                    if can_retry && retries.on_statuses.contains(&response.status().as_u16()) {
                        policy.metrics.upstream_error("retry_status");
                        avoid = Some(endpoint.authority.clone());
                        attempt += 1;
                        continue;
                    }
                    return Ok(Exchange {
                        response,
                        endpoint: endpoint.authority.clone(),
                        elapsed: started.elapsed(),
                    });
                }
                Ok(Err(error)) => {
                    // A client body over the limit is the client's failure, not the endpoint's.
                    let too_large = body_too_large(&error);
                    if !too_large {
                        backend.record(endpoint, &endpoints, true);
                    }
                    if error.is_connect() {
                        policy.metrics.upstream_error("connect");
                        if can_retry && retries.on_connect_failure {
                            avoid = Some(endpoint.authority.clone());
                            attempt += 1;
                            continue;
                        }
                    } else {
                        policy.metrics.upstream_error("protocol");
                    }
                    if too_large {
                        return Err(ProxyError::PayloadTooLarge { limit: policy.max_body });
                    }
                    // The cause (refused, a certificate the CA does not vouch for, ...) is what an
                    // operator needs to fix a 502; the client only learns that it was one.
                    if backend.failure_warning_due() {
                        tracing::warn!(backend = %backend.name, endpoint = %endpoint.authority, error = %ErrorChain(&error), "upstream request failed; answered 502 (further failures of this backend: debug log, or one warning per 10 s)");
                    } else {
                        tracing::debug!(backend = %backend.name, error = %ErrorChain(&error), "upstream request failed");
                    }
                    return Err(ProxyError::Upstream);
                }
            }
        }
    }
}

/// A request body on its way upstream.
pub enum RequestBody {
    /// Read fully (needed to retry); cloned per attempt.
    Buffered(Bytes),
    /// Streamed through, size-limited; cannot be retried.
    Streaming(ProxyBody),
}

impl RequestBody {
    /// Prepares the client's body: buffered (when the route retries) or streamed, limited to
    /// `limit` bytes either way.
    pub async fn prepare(body: Incoming, limit: u64, buffer: bool) -> Result<RequestBody, ProxyError> {
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let limited = Limited::new(body, limit_usize);
        if !buffer {
            return Ok(RequestBody::Streaming(boxed(limited)));
        }
        match limited.collect().await {
            Ok(collected) => Ok(RequestBody::Buffered(collected.to_bytes())),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                Err(ProxyError::PayloadTooLarge { limit })
            }
            Err(_) => Err(ProxyError::BodyRead),
        }
    }
}

fn full_body(bytes: Bytes) -> ProxyBody {
    boxed(Full::new(bytes).map_err(|never| -> BoxError { match never {} }))
}

/// Whether the request failed because the client's streamed body went over the limit.
fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Displays an error with its sources, for debug logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
