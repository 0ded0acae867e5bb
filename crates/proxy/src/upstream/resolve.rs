//! DNS endpoints of an external backend: the proxy resolves the name itself and uses the answer
//! for a fixed time (the system resolver gives no TTL), refreshing in the background while the
//! old answer keeps serving. A failed refresh keeps the old answer and retries sooner.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use tokio::time::Instant;
use tollgate_ir::upstream::{AddressScope, DnsTarget, address_scope};

use super::balance::{Endpoint, StatsTable};

/// How soon a failed resolution is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Why a name gave no endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed.
    #[error("resolving {name}: {source}")]
    Lookup {
        /// The name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved only to addresses that are never backends (link-local, ...).
    #[error("{name} resolved to no usable address")]
    NoUsableAddress {
        /// The name.
        name: String,
    },
    /// A recent lookup failed; not retried yet.
    #[error("{name} did not resolve recently; retrying soon")]
    RecentlyFailed {
        /// The name.
        name: String,
    },
}

struct Resolution {
    endpoints: Arc<[Endpoint]>,
    refresh_at: Instant,
}

/// The resolved endpoints of one name and port, shared by every Runtime that uses them.
pub struct DnsEndpoints {
    target: DnsTarget,
    stats: Arc<StatsTable>,
    current: ArcSwapOption<Resolution>,
    /// Held while a lookup runs, so one lookup serves every waiting request.
    lookup: Arc<tokio::sync::Mutex<()>>,
    failed_at: Mutex<Option<Instant>>,
}

impl DnsEndpoints {
    /// Nothing resolved yet; the first request resolves.
    pub fn new(target: DnsTarget, stats: Arc<StatsTable>) -> DnsEndpoints {
        DnsEndpoints {
            target,
            stats,
            current: ArcSwapOption::empty(),
            lookup: Arc::new(tokio::sync::Mutex::new(())),
            failed_at: Mutex::new(None),
        }
    }

    /// The current endpoints: cached, or resolved now when there are none yet. A stale answer is
    /// returned at once while a background task refreshes it.
    pub async fn endpoints(self: &Arc<Self>) -> Result<Arc<[Endpoint]>, ResolveError> {
        if let Some(current) = self.current.load_full() {
            if Instant::now() >= current.refresh_at
                && let Ok(guard) = Arc::clone(&self.lookup).try_lock_owned()
            {
                let this = Arc::clone(self);
                let span = tracing::debug_span!("dns_refresh", name = %self.target.name);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let _guard = guard;
                        if let Err(error) = this.resolve_now().await {
                            tracing::warn!(%error, "keeping the previous addresses");
                        }
                    },
                    span,
                ));
            }
            return Ok(Arc::clone(&current.endpoints));
        }
        let _guard = self.lookup.lock().await;
        if let Some(current) = self.current.load_full() {
            return Ok(Arc::clone(&current.endpoints));
        }
        let failed_recently = self
            .failed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if failed_recently {
            return Err(ResolveError::RecentlyFailed { name: self.target.name.clone() });
        }
        self.resolve_now().await
    }

    /// Looks the name up and stores the answer (or, on failure, schedules a retry).
    async fn resolve_now(&self) -> Result<Arc<[Endpoint]>, ResolveError> {
        match lookup(&self.target).await {
            Ok(addresses) => {
                let endpoints: Arc<[Endpoint]> = addresses
                    .iter()
                    .filter_map(|a| Authority::try_from(a.to_string()).ok())
                    .map(|a| self.stats.endpoint(a))
                    .collect();
                tracing::debug!(name = %self.target.name, count = endpoints.len(), "resolved");
                self.current.store(Some(Arc::new(Resolution {
                    endpoints: Arc::clone(&endpoints),
                    refresh_at: Instant::now() + self.target.refresh.as_duration(),
                })));
                Ok(endpoints)
            }
            Err(error) => {
                *self.failed_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Some(Instant::now());
                if let Some(current) = self.current.load_full() {
                    self.current.store(Some(Arc::new(Resolution {
                        endpoints: Arc::clone(&current.endpoints),
                        refresh_at: Instant::now() + RETRY_AFTER_FAILURE,
                    })));
                }
                Err(error)
            }
        }
    }
}

/// Resolves the target to its usable addresses, sorted.
async fn lookup(target: &DnsTarget) -> Result<Vec<SocketAddr>, ResolveError> {
    let found = tokio::net::lookup_host((target.name.as_str(), target.port))
        .await
        .map_err(|source| ResolveError::Lookup { name: target.name.clone(), source })?;
    let mut addresses: Vec<SocketAddr> =
        found.filter(|a| !matches!(address_scope(a.ip()), AddressScope::Forbidden(_))).collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(ResolveError::NoUsableAddress { name: target.name.clone() });
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use tollgate_ir::Millis;

    use super::*;

    fn target(name: &str, refresh_ms: u64) -> DnsTarget {
        DnsTarget { name: name.into(), port: 8080, refresh: Millis(refresh_ms) }
    }

    #[tokio::test]
    async fn resolves_localhost_and_caches() {
        let dns = Arc::new(DnsEndpoints::new(target("localhost", 60_000), Arc::new(StatsTable::default())));
        let first = dns.endpoints().await.unwrap();
        assert!(first.iter().any(|e| e.authority.as_str() == "127.0.0.1:8080"), "{first:?}");
        let second = dns.endpoints().await.unwrap();
        assert!(Arc::ptr_eq(&first, &second), "served from the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_answer_serves_while_a_background_refresh_replaces_it() {
        let stats = Arc::new(StatsTable::default());
        let dns = Arc::new(DnsEndpoints::new(target("localhost", 1_000), Arc::clone(&stats)));
        let first = dns.endpoints().await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let stale = dns.endpoints().await.unwrap();
        assert!(Arc::ptr_eq(&first, &stale), "the stale answer is served at once");
        let deadline = Instant::now() + Duration::from_secs(30);
        let fresh = loop {
            let now = dns.endpoints().await.unwrap();
            if !Arc::ptr_eq(&now, &first) {
                break now;
            }
            assert!(Instant::now() < deadline, "no refresh happened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(fresh.len(), first.len());
        // The refreshed endpoints keep their counters (in-flight, failures, ejection).
        assert!(Arc::ptr_eq(&fresh[0].stats, &first[0].stats));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_fails_then_is_not_retried_at_once() {
        let dns = Arc::new(DnsEndpoints::new(
            target("does-not-exist.invalid", 60_000),
            Arc::new(StatsTable::default()),
        ));
        assert!(matches!(dns.endpoints().await, Err(ResolveError::Lookup { .. })));
        assert!(matches!(dns.endpoints().await, Err(ResolveError::RecentlyFailed { .. })));
    }
}
