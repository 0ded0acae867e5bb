//! The response cache of a stage: byte-bounded (moka with a weigher, least recently used entries
//! evicted first), per-entry TTL, keyed by method, host, stage, path, the route's key parameters
//! and — unless the route's responses are shared — the caller's identity, so an authorized
//! response never reaches another caller.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use moka::Expiry;
use moka::future::Cache;
use tollgate_ir::traffic as ir;

use crate::router::Params;

/// A stored response.
pub struct CachedResponse {
    /// Status (200 unless a route caches others).
    pub status: StatusCode,
    /// Response headers (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When it was stored (for `Age`).
    pub stored: Instant,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// One stage's cache. Survives configuration swaps while its identity and size are unchanged.
pub struct ResponseCache {
    entries: Cache<String, Arc<CachedResponse>>,
    /// Largest single entry stored.
    pub max_entry: u64,
}

impl ResponseCache {
    /// A cache bounded to `max_bytes` (keys, headers and bodies counted).
    pub fn new(max_bytes: u64) -> ResponseCache {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| -> u32 {
                let headers: usize = value.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
                u32::try_from(key.len() + headers + value.body.len() + 128).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        // One entry may use at most an eighth of the cache (and never more than 8 MiB), so one
        // large response cannot flush everything else.
        ResponseCache { entries, max_entry: (max_bytes / 8).min(8 * 1024 * 1024) }
    }

    /// The entry under `key`, when fresh.
    pub async fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.entries.get(key).await
    }

    /// Stores a response for `ttl`.
    pub async fn put(&self, key: String, status: StatusCode, headers: HeaderMap, body: Bytes, ttl: Duration) {
        let value = Arc::new(CachedResponse { status, headers, body, stored: Instant::now(), ttl });
        self.entries.insert(key, value).await;
    }

    /// Drops the entry under `key`.
    pub async fn invalidate(&self, key: &str) {
        self.entries.invalidate(key).await;
    }

    /// Bytes used now (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.weighted_size()
    }
}

/// Builds the cache key of a request. `caller` is `None` for shared routes.
#[allow(clippy::too_many_arguments, reason = "each part of the key is a separate input")]
pub fn key(
    rule: &ir::RouteCache,
    method: &http::Method,
    host: &str,
    stage: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    params: &Params<'_>,
    caller: Option<&str>,
) -> String {
    // Length-prefixed parts, so no value can forge a boundary between two others.
    let mut key = String::with_capacity(128);
    let mut part = |text: &str| {
        let _ = write!(key, "{}:{text}|", text.len());
    };
    part(method.as_str());
    part(host);
    part(stage);
    part(path);
    for p in &rule.key_parameters {
        match p {
            ir::KeyParameter::Query(name) => {
                part(&super::query_value(query, name).unwrap_or_default());
            }
            ir::KeyParameter::Header(name) => {
                let values: Vec<&str> =
                    headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
                part(&values.join(","));
            }
            ir::KeyParameter::Path(name) => part(params.get(name).unwrap_or_default()),
        }
    }
    if !rule.shared {
        // Anonymous callers share the anonymous entry; identified ones get their own.
        match caller {
            Some(caller) => part(&format!("caller={caller}")),
            None => part("anonymous"),
        }
    }
    key
}

/// Whether a response may be stored: status, size (`body_len`: the exact body size when known
/// without reading it) and upstream `Cache-Control`.
pub fn storable(status: StatusCode, headers: &HeaderMap, body_len: Option<u64>, max_entry: u64) -> bool {
    if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
        return false;
    }
    let forbidden = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|d| {
            let d = d.trim().to_ascii_lowercase();
            d == "no-store" || d == "private" || d == "no-cache"
        })
    });
    if forbidden {
        return false;
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    length.or(body_len).is_some_and(|l| l <= max_entry)
}

/// Whether the client asks for a fresh answer (`Cache-Control: no-cache` or `max-age=0`).
pub fn client_wants_refresh(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|d| {
            let d = d.trim().to_ascii_lowercase();
            d == "no-cache" || d == "max-age=0"
        })
    })
}

/// The `Age` header value of an entry.
pub fn age(entry: &CachedResponse) -> HeaderValue {
    HeaderValue::from(entry.stored.elapsed().as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(shared: bool) -> ir::RouteCache {
        ir::RouteCache {
            ttl: tollgate_ir::Millis(1000),
            methods: vec!["GET".into()],
            key_parameters: vec![ir::KeyParameter::Query("page".into())],
            shared,
        }
    }

    #[test]
    fn key_separates_callers_unless_shared() {
        let h = HeaderMap::new();
        let p = Params::default();
        let k = |shared, caller, query| {
            key(&rule(shared), &http::Method::GET, "h", "prod", "/a", query, &h, &p, caller)
        };
        assert_ne!(k(false, Some("ns/a"), None), k(false, Some("ns/b"), None));
        assert_ne!(k(false, Some("ns/a"), None), k(false, None, None));
        assert_eq!(k(true, Some("ns/a"), None), k(true, Some("ns/b"), None));
        assert_ne!(k(true, None, Some("page=1")), k(true, None, Some("page=2")));
        assert_eq!(k(true, None, Some("page=1&x=2")), k(true, None, Some("x=3&page=1")));
    }

    #[test]
    fn upstream_cache_control_is_respected() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(storable(StatusCode::OK, &h, None, 100));
        assert!(!storable(StatusCode::NOT_FOUND, &h, None, 100));
        assert!(!storable(StatusCode::OK, &h, None, 5));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60, Private"));
        assert!(!storable(StatusCode::OK, &h, None, 100));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(!storable(StatusCode::OK, &h, None, 100));
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_many_keys() {
        let cache = ResponseCache::new(64 * 1024);
        for i in 0..2000 {
            let body = Bytes::from(vec![b'x'; 512]);
            cache
                .put(format!("key-{i}"), StatusCode::OK, HeaderMap::new(), body, Duration::from_secs(60))
                .await;
        }
        let used = cache.weighted_size().await;
        assert!(used <= 64 * 1024, "{used}");
        assert!(used > 32 * 1024, "the cache is used: {used}");
    }
}
