//! Endpoint choice: round robin, least request (power of two choices over requests in flight)
//! and consistent hashing (rendezvous), each skipping ejected endpoints.
//!
//! Rendezvous (highest random weight) hashing scores every endpoint for a key and takes the
//! best: when an endpoint goes away only the keys it held move (each to its second choice), and a
//! new endpoint takes only the keys it now scores best for. Scores use a fixed hash function, so
//! every proxy of a fleet sends a key to the same endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::uri::Authority;

/// Per-endpoint counters shared by every Runtime that uses the endpoint (they survive swaps).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Requests sent and not yet finished (response body not ended or dropped).
    pub in_flight: AtomicU32,
    /// Failures in a row (outlier detection).
    pub consecutive_failures: AtomicU32,
    /// Until when the endpoint is ejected, in milliseconds since the registry's epoch (0: never).
    pub ejected_until_ms: AtomicU64,
}

/// One endpoint of a backend.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub authority: Authority,
    /// Hash of the authority, for rendezvous scores.
    pub hash: u64,
    /// Shared counters.
    pub stats: Arc<EndpointStats>,
}

impl Endpoint {
    /// An endpoint with its counters.
    pub fn new(authority: Authority, stats: Arc<EndpointStats>) -> Endpoint {
        let hash = hash_bytes(authority.as_str().as_bytes());
        Endpoint { authority, hash, stats }
    }
}

/// The counters of a backend's endpoints by authority, so that a new Runtime (or a new DNS
/// answer) picks up the counters of endpoints it keeps.
#[derive(Debug, Default)]
pub struct StatsTable {
    stats: Mutex<HashMap<Authority, Arc<EndpointStats>>>,
}

impl StatsTable {
    /// The endpoint `authority` with its (possibly existing) counters.
    pub fn endpoint(&self, authority: Authority) -> Endpoint {
        let mut stats = self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let shared = Arc::clone(stats.entry(authority.clone()).or_default());
        Endpoint::new(authority, shared)
    }

    /// Forgets counters no endpoint uses any more.
    pub fn prune(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        stats.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

/// The balancing state that outlives a Runtime: the round-robin cursor and the random source.
#[derive(Debug, Default)]
pub struct Cursor {
    next: AtomicUsize,
    random: AtomicU64,
}

impl Cursor {
    /// A cursor whose random sequence starts at `seed`.
    pub fn seeded(seed: u64) -> Cursor {
        Cursor { next: AtomicUsize::new(0), random: AtomicU64::new(seed) }
    }

    fn random(&self) -> u64 {
        // splitmix64: a well-mixed sequence from a counter, lock-free.
        mix(self.random.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }
}

/// The next available endpoint in turn.
pub fn round_robin<'e>(
    endpoints: &'e [Endpoint],
    available: impl Fn(&Endpoint) -> bool,
    cursor: &Cursor,
) -> Option<&'e Endpoint> {
    let len = endpoints.len();
    let start = cursor.next.fetch_add(1, Ordering::Relaxed);
    (0..len).filter_map(|offset| endpoints.get((start + offset) % len)).find(|e| available(e))
}

/// Of two distinct available endpoints picked at random, the one with fewer requests in flight
/// (the first picked on a tie).
pub fn least_request<'e>(
    endpoints: &'e [Endpoint],
    available: impl Fn(&Endpoint) -> bool,
    cursor: &Cursor,
) -> Option<&'e Endpoint> {
    let candidates: Vec<&Endpoint> = endpoints.iter().filter(|e| available(e)).collect();
    let len = candidates.len();
    let pick = |r: u64| usize::try_from(r % len.max(1) as u64).unwrap_or(0);
    match len {
        0 => None,
        1 => candidates.first().copied(),
        _ => {
            let first = pick(cursor.random());
            // A second index different from the first: offset by 1..len.
            let second = (first + 1 + pick(cursor.random()) % (len - 1)) % len;
            let (a, b) = (candidates.get(first).copied()?, candidates.get(second).copied()?);
            let load = |e: &Endpoint| e.stats.in_flight.load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// The available endpoint with the highest rendezvous score for `key`.
pub fn rendezvous(
    endpoints: &[Endpoint],
    available: impl Fn(&Endpoint) -> bool,
    key: u64,
) -> Option<&Endpoint> {
    endpoints.iter().filter(|e| available(e)).max_by_key(|e| (score(key, e.hash), e.authority.as_str()))
}

/// The rendezvous score of an endpoint for a key.
fn score(key: u64, endpoint: u64) -> u64 {
    mix(key ^ endpoint.rotate_left(32))
}

/// FNV-1a over `bytes`, then mixed: a fixed, fast hash (not keyed: a caller choosing keys can
/// only choose which endpoint it lands on, which it could do by picking any key).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(hash)
}

/// The splitmix64 finalizer: every input bit affects every output bit.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                let authority =
                    Authority::try_from(format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)).unwrap();
                Endpoint::new(authority, Arc::new(EndpointStats::default()))
            })
            .collect()
    }

    #[test]
    fn round_robin_skips_unavailable_endpoints() {
        let eps = endpoints(3);
        let cursor = Cursor::default();
        let down = eps[1].authority.clone();
        let picks: Vec<String> = (0..4)
            .map(|_| round_robin(&eps, |e| e.authority != down, &cursor).unwrap().authority.to_string())
            .collect();
        assert!(!picks.contains(&down.to_string()));
        assert!(
            picks.contains(&eps[0].authority.to_string()) && picks.contains(&eps[2].authority.to_string())
        );
        assert!(round_robin(&eps, |_| false, &cursor).is_none());
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let eps = endpoints(2);
        eps[0].stats.in_flight.store(3, Ordering::Relaxed);
        let cursor = Cursor::seeded(7);
        for _ in 0..50 {
            assert_eq!(least_request(&eps, |_| true, &cursor).unwrap().authority, eps[1].authority);
        }
        // Ties go either way over time.
        eps[0].stats.in_flight.store(0, Ordering::Relaxed);
        let mut seen = HashMap::new();
        for _ in 0..200 {
            *seen.entry(least_request(&eps, |_| true, &cursor).unwrap().authority.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn least_request_with_one_or_no_candidates() {
        let eps = endpoints(3);
        let cursor = Cursor::default();
        let only = eps[2].authority.clone();
        assert_eq!(least_request(&eps, |e| e.authority == only, &cursor).unwrap().authority, only);
        assert!(least_request(&eps, |_| false, &cursor).is_none());
    }

    #[test]
    fn rendezvous_spreads_keys() {
        let eps = endpoints(4);
        let mut counts = HashMap::new();
        for k in 0..4000u32 {
            let e = rendezvous(&eps, |_| true, hash_bytes(&k.to_be_bytes())).unwrap();
            *counts.entry(e.authority.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|c| (700..1300).contains(c)), "{counts:?}");
    }

    proptest! {
        /// Removing an endpoint moves only the keys it held; adding one moves keys only to it.
        #[test]
        fn rendezvous_moves_only_the_keys_of_changed_endpoints(
            n in 2usize..20,
            removed in 0usize..20,
            keys in proptest::collection::vec(any::<u64>(), 1..200),
        ) {
            let all = endpoints(n + 1);
            let before = &all[..n];
            let removed = removed % n;
            let after: Vec<Endpoint> =
                before.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, e)| e.clone()).collect();
            for key in keys {
                let old = rendezvous(before, |_| true, key).unwrap();
                let new = rendezvous(&after, |_| true, key).unwrap();
                if old.authority != before[removed].authority {
                    prop_assert_eq!(&old.authority, &new.authority);
                }
                let grown = rendezvous(&all, |_| true, key).unwrap();
                if grown.authority != all[n].authority {
                    prop_assert_eq!(&grown.authority, &old.authority);
                }
                // Ejecting (skipping) an endpoint is the same as removing it.
                let skipped =
                    rendezvous(before, |e| e.authority != before[removed].authority, key).unwrap();
                prop_assert_eq!(&skipped.authority, &new.authority);
            }
        }
    }
}
