//! Backends as the proxy serves them: endpoints with counters, the balancing policy, outlier
//! detection, DNS endpoints and per-backend TLS. What must outlive a configuration swap (cursor,
//! in-flight and failure counters, ejections, DNS answers, TLS setups) lives in a registry keyed
//! by backend identity; a new Runtime picks it up while the old one still holds it.
//!
//! A backend resolved from a Service keeps its endpoint list swappable: an endpoint update (pod
//! churn) replaces the lists of the backends of the changed Services in place, without building
//! a new Runtime (see [`ServiceBackends`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, header};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tollgate_ir::upstream::{DnsTarget, HashOn, LoadBalancing, OutlierDetection, UpstreamTls};
use tollgate_ir::{self as ir};

use super::balance::{self, Cursor, Endpoint, EndpointStats, StatsTable};
use super::outlier::{self, Outcome, Recorded};
use super::resolve::{DnsEndpoints, ResolveError};

/// Upstream metric families owned by this module.
#[derive(Clone)]
pub struct UpstreamMetrics {
    ejections: IntCounterVec,
}

impl UpstreamMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &Registry) -> Result<UpstreamMetrics, prometheus::Error> {
        let ejections = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_ejections_total",
                "Endpoints ejected by outlier detection, by backend.",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(ejections.clone()))?;
        Ok(UpstreamMetrics { ejections })
    }
}

/// How a backend's TLS client is set up.
pub enum TlsSetup {
    /// The process-wide client configuration (web PKI roots plus `--upstream-ca`).
    Default,
    /// A configuration of this backend's own (ServiceExport CA or client certificate).
    Custom(Arc<TlsProfile>),
    /// The backend's TLS material could not be used; requests fail with 502 rather than go out
    /// with weaker settings.
    Broken(String),
}

/// A TLS client configuration with an identity, so pooled connections are never shared between
/// two configurations.
pub struct TlsProfile {
    /// Identity of the material (a hash), part of the pool key.
    pub id: u64,
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
}

/// The identity under which state is shared across Runtimes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    name: String,
    scheme: ir::Scheme,
    dns: Option<DnsTarget>,
}

struct Shared {
    cursor: Cursor,
    stats: Arc<StatsTable>,
    dns: Option<Arc<DnsEndpoints>>,
    tls: Mutex<Option<Arc<TlsProfile>>>,
}

/// State of every backend, shared by successive Runtimes. Cheap to clone.
#[derive(Clone)]
pub struct BackendRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    shared: Mutex<HashMap<SharedKey, Weak<Shared>>>,
    epoch: Instant,
    roots: Arc<rustls::RootCertStore>,
}

impl BackendRegistry {
    /// An empty registry; `roots` are trusted for HTTPS backends that name no CA of their own.
    pub fn new(roots: Arc<rustls::RootCertStore>) -> BackendRegistry {
        BackendRegistry {
            inner: Arc::new(RegistryInner {
                shared: Mutex::new(HashMap::new()),
                epoch: Instant::now(),
                roots,
            }),
        }
    }

    /// Starts building the backends of one Runtime.
    pub fn builder<'m>(&self, metrics: Option<&'m UpstreamMetrics>) -> BackendBuilder<'m> {
        let mut shared = self.inner.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.retain(|_, weak| weak.strong_count() > 0);
        for state in shared.values().filter_map(Weak::upgrade) {
            state.stats.prune();
        }
        BackendBuilder { registry: self.clone(), metrics, made: HashMap::new(), by_service: HashMap::new() }
    }

    fn shared(&self, key: SharedKey) -> Arc<Shared> {
        let mut map = self.inner.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let stats = Arc::new(StatsTable::default());
        let seed = balance::hash_bytes(key.name.as_bytes()) ^ u64::from(std::process::id());
        let made = Arc::new(Shared {
            cursor: Cursor::seeded(seed),
            dns: key.dns.clone().map(|target| Arc::new(DnsEndpoints::new(target, Arc::clone(&stats)))),
            stats,
            tls: Mutex::new(None),
        });
        map.insert(key, Arc::downgrade(&made));
        made
    }
}

/// Builds the backends of one Runtime; routes with the same backend share one.
pub struct BackendBuilder<'m> {
    registry: BackendRegistry,
    metrics: Option<&'m UpstreamMetrics>,
    made: HashMap<String, Arc<BackendRuntime>>,
    by_service: HashMap<ir::distribution::ServiceRef, Vec<Arc<BackendRuntime>>>,
}

/// The backends of one Runtime that were resolved from a Service, by Service port: what an
/// endpoint update changes.
#[derive(Default)]
pub struct ServiceBackends(HashMap<ir::distribution::ServiceRef, Vec<Arc<BackendRuntime>>>);

impl ServiceBackends {
    /// Gives every backend of each listed Service its new endpoints; returns how many backends
    /// changed. In-flight requests keep the list they picked from.
    pub fn update(&self, update: &ir::distribution::EndpointUpdate) -> usize {
        let mut changed = 0;
        for service in &update.services {
            for backend in self.0.get(&service.service).into_iter().flatten() {
                changed += usize::from(backend.set_endpoints(&service.endpoints));
            }
        }
        changed
    }
}

impl BackendBuilder<'_> {
    /// The runtime backend for `b`.
    pub fn backend(&mut self, b: &ir::Backend) -> Arc<BackendRuntime> {
        // Everything that can differ between two backends of one name is in the key.
        let identity = serde_json::to_string(b).unwrap_or_else(|_| b.name.clone());
        if let Some(made) = self.made.get(&identity) {
            return Arc::clone(made);
        }
        let shared =
            self.registry.shared(SharedKey { name: b.name.clone(), scheme: b.scheme, dns: b.dns.clone() });
        let endpoints = endpoint_list(&shared, &b.endpoints);
        let tls = match &b.tls {
            None => TlsSetup::Default,
            Some(material) => match tls_profile(&shared, material, &self.registry.inner.roots) {
                Ok(profile) => TlsSetup::Custom(profile),
                Err(error) => {
                    tracing::warn!(backend = %b.name, %error, "upstream TLS setup failed; requests get 502");
                    TlsSetup::Broken(error.to_string())
                }
            },
        };
        let made = Arc::new(BackendRuntime {
            name: b.name.clone(),
            scheme: match b.scheme {
                ir::Scheme::Http => Scheme::HTTP,
                ir::Scheme::Https => Scheme::HTTPS,
            },
            host_header: b.host_header.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
            server_name: b.tls_server_name.clone(),
            endpoints: ArcSwap::from_pointee(endpoints),
            balancing: b.load_balancing.clone(),
            outlier: b.outlier_detection,
            tls,
            epoch: self.registry.inner.epoch,
            ejections: self.metrics.map(|m| m.ejections.with_label_values(&[b.name.as_str()])),
            shared,
            last_failure_warning: AtomicU64::new(0),
        });
        self.made.insert(identity, Arc::clone(&made));
        // DNS backends take their endpoints from DNS, never from an endpoint update.
        if let Some(service) = b.service.as_ref().filter(|_| b.dns.is_none()) {
            self.by_service.entry(service.clone()).or_default().push(Arc::clone(&made));
        }
        made
    }

    /// The backends built from Services, for endpoint updates.
    pub fn finish(self) -> ServiceBackends {
        ServiceBackends(self.by_service)
    }
}

/// The endpoints of `authorities` (unparsable ones left out), with the counters they share
/// across Runtimes.
fn endpoint_list(shared: &Shared, authorities: &[String]) -> Arc<[Endpoint]> {
    authorities
        .iter()
        .filter_map(|e| Authority::try_from(e.as_str()).ok())
        .map(|a| shared.stats.endpoint(a))
        .collect()
}

/// Why the backend's TLS material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM block could not be read.
    #[error("{what} is not valid PEM: {source}")]
    Pem {
        /// Which material.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the material.
    #[error("{what} rejected: {source}")]
    Rejected {
        /// Which material.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The CA bundle held no certificate.
    #[error("the CA bundle holds no certificate")]
    EmptyCa,
}

fn tls_profile(
    shared: &Shared,
    material: &UpstreamTls,
    default_roots: &Arc<rustls::RootCertStore>,
) -> Result<Arc<TlsProfile>, TlsSetupError> {
    let mut digest = Sha256::new();
    for part in [
        material.ca_pem.as_deref().unwrap_or(""),
        material.client_certificate.as_ref().map(|c| c.cert_pem.as_str()).unwrap_or(""),
        material.client_certificate.as_ref().map(|c| c.key_pem.expose()).unwrap_or(""),
    ] {
        digest.update(part.len().to_be_bytes());
        digest.update(part.as_bytes());
    }
    let hash = digest.finalize();
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(hash.get(..8).unwrap_or(&[0; 8]));
    // 0 is the process-wide configuration.
    let id = u64::from_be_bytes(id_bytes).max(1);
    let mut cached = shared.tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(profile) = cached.as_ref().filter(|p| p.id == id) {
        return Ok(Arc::clone(profile));
    }
    let roots = match &material.ca_pem {
        None => Arc::clone(default_roots),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|source| TlsSetupError::Pem { what: "ca.crt", source })?;
                roots.add(cert).map_err(|source| TlsSetupError::Rejected { what: "ca.crt", source })?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::EmptyCa);
            }
            Arc::new(roots)
        }
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match &material.client_certificate {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsSetupError::Pem { what: "tls.crt", source })?;
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.expose().as_bytes())
                .map_err(|source| TlsSetupError::Pem { what: "tls.key", source })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsSetupError::Rejected { what: "client certificate", source })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let profile = Arc::new(TlsProfile { id, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) });
    *cached = Some(Arc::clone(&profile));
    Ok(profile)
}

/// What the pipeline knows about the caller, for consistent hashing.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The client's address (the TCP peer).
    pub client_ip: IpAddr,
    /// The principal the authorizer set, if any.
    pub principal: Option<&'a str>,
    /// The client connection's upstream connection affinity, if it has one.
    pub affinity: Option<&'a super::Affinity>,
    /// The fields the gateway adds to the request, when kept out of its header map.
    pub forwarding: Option<&'a crate::headers::Forwarding<'a>>,
    /// The client connection's route-timeout timer, if it keeps one between requests.
    pub timer: Option<&'a super::TimerSlot>,
}

/// How often, at most, a backend's failed requests are logged as warnings.
pub const FAILURE_WARNING_INTERVAL_MS: u64 = 10_000;

/// An upstream with its endpoints, balancing policy and outlier detection.
pub struct BackendRuntime {
    /// Bounded name for logs and metrics.
    pub name: String,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host header to send; `None`: keep the client's.
    pub host_header: Option<HeaderValue>,
    /// Name to verify an HTTPS upstream's certificate against (default: the endpoint host).
    pub server_name: Option<String>,
    /// TLS client setup for HTTPS.
    pub tls: TlsSetup,
    /// The configured endpoints; replaced whole by an endpoint update.
    endpoints: ArcSwap<Arc<[Endpoint]>>,
    balancing: LoadBalancing,
    outlier: Option<OutlierDetection>,
    epoch: Instant,
    ejections: Option<IntCounter>,
    shared: Arc<Shared>,
    /// When a failed request was last logged as a warning (ms since `epoch`, +1; 0: never).
    last_failure_warning: AtomicU64,
}

/// Counts a request in flight on an endpoint until dropped (with the response body).
pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BackendRuntime {
    /// The current endpoints: the configured ones, or the DNS answer for a `dnsName` backend.
    pub async fn endpoints(&self) -> Result<Arc<[Endpoint]>, ResolveError> {
        match &self.shared.dns {
            Some(dns) => dns.endpoints().await,
            None => Ok(self.configured_endpoints()),
        }
    }

    /// The configured endpoints (of a backend that does not resolve DNS).
    pub fn configured_endpoints(&self) -> Arc<[Endpoint]> {
        Arc::clone(&**self.endpoints.load())
    }

    /// Replaces the configured endpoints; false when they are the same ones already.
    fn set_endpoints(&self, authorities: &[String]) -> bool {
        let current = self.endpoints.load();
        let same = current.len() == authorities.len()
            && current.iter().zip(authorities).all(|(e, a)| e.authority.as_str() == a.as_str());
        if same {
            return false;
        }
        self.endpoints.store(Arc::new(endpoint_list(&self.shared, authorities)));
        true
    }

    /// The request's hash key under a ConsistentHash policy (`None`: not hashed, or the value is
    /// missing).
    pub fn hash_key(&self, headers: &HeaderMap, query: Option<&str>, caller: Caller<'_>) -> Option<u64> {
        let LoadBalancing::ConsistentHash { hash_on } = &self.balancing else { return None };
        let hash = balance::hash_bytes;
        match hash_on {
            HashOn::Header(name) => headers
                .get(name.as_str())
                .map(HeaderValue::as_bytes)
                .or_else(|| caller.forwarding?.get(name))
                .map(hash),
            HashOn::Query(name) => query_value(query?, name).map(|v| hash(v.as_bytes())),
            HashOn::Cookie(name) => cookie_value(headers, name).map(|v| hash(v.as_bytes())),
            HashOn::Principal => caller.principal.map(|p| hash(p.as_bytes())),
            HashOn::SourceIp => Some(hash(caller.client_ip.to_string().as_bytes())),
        }
    }

    /// Chooses an endpoint: by the policy, among endpoints not ejected and not `avoid` (the one
    /// that just failed, when retrying). When every endpoint is excluded, the exclusions are
    /// relaxed (avoid first, then ejection) rather than failing the request.
    pub fn pick<'e>(
        &self,
        endpoints: &'e [Endpoint],
        key: Option<u64>,
        avoid: Option<&Authority>,
    ) -> Option<&'e Endpoint> {
        // The clock is read only when ejections are possible.
        let now = self.outlier.as_ref().map(|_| self.now_ms());
        let ejected = |e: &Endpoint| now.is_some_and(|now| outlier::is_ejected(&e.stats, now));
        let choose = |available: &dyn Fn(&Endpoint) -> bool| match (&self.balancing, key) {
            (LoadBalancing::ConsistentHash { .. }, Some(key)) => {
                balance::rendezvous(endpoints, available, key)
            }
            (LoadBalancing::LeastRequest, _) => {
                balance::least_request(endpoints, available, &self.shared.cursor)
            }
            _ => balance::round_robin(endpoints, available, &self.shared.cursor),
        };
        choose(&|e| !ejected(e) && Some(&e.authority) != avoid)
            .or_else(|| choose(&|e| !ejected(e)))
            .or_else(|| choose(&|_| true))
    }

    /// Marks a request in flight on `endpoint` (LeastRequest only; otherwise nothing is counted).
    pub fn start(&self, endpoint: &Endpoint) -> Option<InFlight> {
        if self.balancing != LoadBalancing::LeastRequest {
            return None;
        }
        endpoint.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(&endpoint.stats)))
    }

    /// Records the outcome of an attempt for outlier detection.
    pub fn record(&self, endpoint: &Endpoint, endpoints: &[Endpoint], failed: bool) {
        let Some(policy) = &self.outlier else { return };
        let outcome = if failed { Outcome::Failure } else { Outcome::Success };
        match outlier::record(policy, endpoint, endpoints, outcome, self.now_ms()) {
            Recorded::Ejected => {
                tracing::warn!(
                    backend = %self.name,
                    endpoint = %endpoint.authority,
                    ejection_ms = policy.ejection_time.0,
                    "endpoint ejected after consecutive failures"
                );
                if let Some(counter) = &self.ejections {
                    counter.inc();
                }
            }
            Recorded::KeptAtLimit => tracing::debug!(
                backend = %self.name,
                endpoint = %endpoint.authority,
                "endpoint keeps failing but the ejection limit is reached"
            ),
            Recorded::Counted => {}
        }
    }

    /// Whether a failed request should be logged as a warning now: the first failure, then at most
    /// one per [`FAILURE_WARNING_INTERVAL_MS`] (the others go to the debug log), so that a backend
    /// that is down explains itself without flooding the log.
    pub fn failure_warning_due(&self) -> bool {
        let now = self.now_ms().saturating_add(1);
        let last = self.last_failure_warning.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= FAILURE_WARNING_INTERVAL_MS)
            && self
                .last_failure_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The first value of query parameter `name` (raw, not percent-decoded).
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of cookie `name`.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> BackendRegistry {
        BackendRegistry::new(Arc::new(rustls::RootCertStore::empty()))
    }

    fn ir_backend(endpoints: &[&str], balancing: LoadBalancing) -> ir::Backend {
        ir::Backend {
            name: "export:team/orders".into(),
            scheme: ir::Scheme::Http,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            host_header: None,
            tls_server_name: None,
            service: None,
            tls: None,
            load_balancing: balancing,
            outlier_detection: Some(OutlierDetection {
                consecutive_errors: 1,
                ejection_time: ir::Millis(60_000),
                max_ejection_percent: 50,
            }),
            dns: None,
        }
    }

    #[test]
    fn ejections_survive_a_new_runtime_and_routes_share_a_backend() {
        let registry = registry();
        let b = ir_backend(&["10.0.0.1:80", "10.0.0.2:80"], LoadBalancing::RoundRobin);
        let mut builder = registry.builder(None);
        let old = builder.backend(&b);
        assert!(Arc::ptr_eq(&old, &builder.backend(&b)), "one backend per build");
        let eps = old.configured_endpoints();
        old.record(&eps[0], &eps, true);
        // An endpoint update: the same backend with one more endpoint, built while the old
        // Runtime is still alive.
        let grown = ir_backend(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], LoadBalancing::RoundRobin);
        let new = registry.builder(None).backend(&grown);
        let picks: Vec<String> = (0..6)
            .map(|_| new.pick(&new.configured_endpoints(), None, None).unwrap().authority.to_string())
            .collect();
        assert!(!picks.contains(&"10.0.0.1:80".to_string()), "still ejected: {picks:?}");
    }

    #[test]
    fn an_endpoint_update_changes_the_backends_of_its_service_in_place() {
        use ir::distribution::{EndpointUpdate, ServiceEndpoints, ServiceRef};
        let registry = registry();
        let orders = ServiceRef { namespace: "team".into(), name: "orders".into(), port: 80 };
        let from_orders = |endpoints: &[&str], balancing| ir::Backend {
            service: Some(orders.clone()),
            ..ir_backend(endpoints, balancing)
        };
        let authorities =
            |list: &[Endpoint]| list.iter().map(|e| e.authority.to_string()).collect::<Vec<_>>();
        let mut builder = registry.builder(None);
        let round_robin =
            builder.backend(&from_orders(&["10.0.0.1:80", "10.0.0.2:80"], LoadBalancing::RoundRobin));
        // The same Service under another policy is a backend of its own: updated too.
        let hashed = builder.backend(&from_orders(
            &["10.0.0.1:80", "10.0.0.2:80"],
            LoadBalancing::ConsistentHash { hash_on: HashOn::SourceIp },
        ));
        let elsewhere = builder.backend(&ir_backend(&["10.0.9.9:80"], LoadBalancing::RoundRobin));
        let services = builder.finish();
        let before = round_robin.configured_endpoints();
        round_robin.record(&before[0], &before, true);

        let update = EndpointUpdate {
            version: 2,
            base_version: 1,
            services: vec![ServiceEndpoints {
                service: orders.clone(),
                endpoints: vec!["10.0.0.1:80".into(), "10.0.0.3:80".into()],
            }],
        };
        assert_eq!(services.update(&update), 2);
        for backend in [&round_robin, &hashed] {
            assert_eq!(authorities(&backend.configured_endpoints()), ["10.0.0.1:80", "10.0.0.3:80"]);
        }
        assert_eq!(authorities(&elsewhere.configured_endpoints()), ["10.0.9.9:80"], "another backend");
        assert_eq!(
            authorities(&before),
            ["10.0.0.1:80", "10.0.0.2:80"],
            "a request in flight keeps its list"
        );
        // The counters follow the endpoint: 10.0.0.1 is still ejected.
        let now = round_robin.configured_endpoints();
        let picks: Vec<String> =
            (0..4).map(|_| round_robin.pick(&now, None, None).unwrap().authority.to_string()).collect();
        assert_eq!(picks, ["10.0.0.3:80"; 4]);
        assert_eq!(services.update(&update), 0, "the same lists again change nothing");
        let other = EndpointUpdate {
            services: vec![ServiceEndpoints {
                service: ServiceRef { name: "billing".into(), ..orders },
                endpoints: vec!["10.0.0.7:80".into()],
            }],
            ..update
        };
        assert_eq!(services.update(&other), 0, "another Service's update");
    }

    #[test]
    fn hash_keys_from_the_request() {
        let b = registry().builder(None).backend(&ir_backend(
            &["10.0.0.1:80"],
            LoadBalancing::ConsistentHash { hash_on: HashOn::Cookie("session".into()) },
        ));
        let caller = Caller {
            client_ip: "10.1.1.1".parse().unwrap(),
            principal: None,
            affinity: None,
            forwarding: None,
            timer: None,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(b.hash_key(&headers, None, caller), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        assert_eq!(b.hash_key(&headers, None, caller), Some(balance::hash_bytes(b"abc")));
        let key = |hash_on: HashOn, headers: &HeaderMap, query: Option<&str>, caller: Caller<'_>| {
            let b = registry()
                .builder(None)
                .backend(&ir_backend(&["10.0.0.1:80"], LoadBalancing::ConsistentHash { hash_on }));
            b.hash_key(headers, query, caller)
        };
        let mut user = HeaderMap::new();
        user.insert("x-user", HeaderValue::from_static("u1"));
        let h = balance::hash_bytes;
        assert_eq!(key(HashOn::Header("x-user".into()), &user, None, caller), Some(h(b"u1")));
        assert_eq!(key(HashOn::Query("id".into()), &user, Some("id=7"), caller), Some(h(b"7")));
        assert_eq!(key(HashOn::Query("id".into()), &user, None, caller), None);
        assert_eq!(key(HashOn::Principal, &user, None, caller), None, "anonymous: round robin");
        let known = Caller { principal: Some("alice"), ..caller };
        assert_eq!(key(HashOn::Principal, &user, None, known), Some(h(b"alice")));
        assert_eq!(key(HashOn::SourceIp, &user, None, caller), Some(h(b"10.1.1.1")));
        // A field the gateway sets is hashed as sent upstream, though kept out of the map.
        let ip = crate::headers::client_ip_value([10, 1, 1, 1].into());
        let client = crate::headers::ClientContext { client_ip: &ip, proto: "http", host: None };
        let mut sent = HeaderMap::new();
        sent.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        let id = HeaderValue::from_static("r1");
        let forwarding = crate::headers::Forwarding::take(&mut sent, &client, &id);
        let forwarded = Caller { forwarding: Some(&forwarding), ..caller };
        let on_xff = HashOn::Header("X-Forwarded-For".into());
        assert_eq!(key(on_xff, &sent, None, forwarded), Some(h(b"192.0.2.7, 10.1.1.1")));
        let round_robin =
            registry().builder(None).backend(&ir_backend(&["10.0.0.1:80"], LoadBalancing::RoundRobin));
        assert_eq!(round_robin.hash_key(&user, None, caller), None);
        assert_eq!(query_value("a=1&id=42&id=7", "id"), Some("42"));
        assert_eq!(query_value("flag&b=2", "flag"), Some(""));
        assert_eq!(query_value("a=1", "id"), None);
    }

    #[test]
    fn hashing_avoids_the_failed_endpoint_on_retry() {
        let b = registry().builder(None).backend(&ir_backend(
            &["10.0.0.1:80", "10.0.0.2:80"],
            LoadBalancing::ConsistentHash { hash_on: HashOn::SourceIp },
        ));
        let endpoints = b.configured_endpoints();
        let first = b.pick(&endpoints, Some(42), None).unwrap().authority.clone();
        assert_eq!(b.pick(&endpoints, Some(42), None).unwrap().authority, first, "stable");
        let retry = b.pick(&endpoints, Some(42), Some(&first)).unwrap();
        assert_ne!(retry.authority, first);
    }
}
