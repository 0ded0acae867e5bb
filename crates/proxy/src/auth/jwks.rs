//! JSON Web Key Sets: fetched from a URL (directly or through OIDC discovery) or given inline,
//! cached, refreshed in the background, and re-fetched on an unknown `kid` at a bounded rate.
//!
//! Rates, so a flood of tokens with made-up key ids cannot hammer the identity provider:
//! - any two fetches are at least [`MIN_FETCH_INTERVAL`] apart;
//! - fetches triggered by an unknown `kid` are at least [`UNKNOWN_KID_INTERVAL`] apart;
//! - a scheduled refresh runs in the background once the keys are [`REFRESH_AFTER`] old, while
//!   requests keep using the cached keys; a failed fetch keeps the cached keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::IntCounterVec;
use tracing::Instrument;

use super::fetch;

/// Minimum time between two fetches of the same key set.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum time between two fetches caused by tokens with an unknown `kid`.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// Age after which the keys are refreshed in the background.
pub const REFRESH_AFTER: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT: usize = 1024 * 1024;
const MAX_KEYS: usize = 64;

/// One usable verification key.
pub struct Key {
    /// The key id, when the JWK has one.
    pub kid: Option<String>,
    /// Algorithms this key may verify (pinned by its type, or by its `alg`).
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub decoding: DecodingKey,
}

/// The keys of one fetch.
pub struct KeySet {
    /// Usable keys.
    pub keys: Vec<Key>,
    fetched: Instant,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`. Without a `kid`, every key that
    /// allows the algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| match kid {
            Some(kid) => k.kid.as_deref() == Some(kid),
            None => true,
        } && k.algorithms.contains(&alg))
    }

    /// Whether a key with this id is present.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP call failed.
    #[error("fetching {url}: {source}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: fetch::FetchError,
    },
    /// The server answered with an error status.
    #[error("fetching {url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: http::StatusCode,
    },
    /// The document is not what was expected.
    #[error("{0}")]
    Document(String),
    /// Fetches are rate limited right now.
    #[error("rate limited")]
    RateLimited,
}

enum Source {
    Uri(String),
    Discovery { uri: String, issuer: String },
    Static,
}

#[derive(Default)]
struct Gate {
    last_attempt: Option<Instant>,
    last_unknown_kid: Option<Instant>,
    discovered: Option<String>,
}

/// A key set and how to keep it fresh.
pub struct Jwks {
    source: Source,
    state: ArcSwapOption<KeySet>,
    gate: tokio::sync::Mutex<Gate>,
    refreshing: AtomicBool,
    label: String,
    fetches: IntCounterVec,
}

impl Jwks {
    /// A key set fetched from `uri`.
    pub fn from_uri(uri: String, label: String, fetches: IntCounterVec) -> Jwks {
        Self::new(Source::Uri(uri), None, label, fetches)
    }

    /// A key set found through OIDC discovery at `uri`, whose `issuer` must match.
    pub fn discovered(uri: String, issuer: String, label: String, fetches: IntCounterVec) -> Jwks {
        Self::new(Source::Discovery { uri, issuer }, None, label, fetches)
    }

    /// A fixed key set (from a Secret).
    pub fn inline(document: &str, label: String, fetches: IntCounterVec) -> Jwks {
        let set = match parse(document.as_bytes()) {
            Ok(set) => Some(Arc::new(set)),
            Err(error) => {
                tracing::warn!(authorizer = %label, %error, "JWKS from Secret has no usable key");
                None
            }
        };
        Self::new(Source::Static, set, label, fetches)
    }

    fn new(source: Source, set: Option<Arc<KeySet>>, label: String, fetches: IntCounterVec) -> Jwks {
        Jwks {
            source,
            state: ArcSwapOption::new(set),
            gate: tokio::sync::Mutex::new(Gate::default()),
            refreshing: AtomicBool::new(false),
            label,
            fetches,
        }
    }

    /// The cached keys, without fetching.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.state.load_full()
    }

    /// The current keys, fetching them first if there are none yet.
    pub async fn keys(self: &Arc<Self>) -> Result<Arc<KeySet>, JwksError> {
        if let Some(set) = self.state.load_full() {
            if !matches!(self.source, Source::Static) && set.fetched.elapsed() >= REFRESH_AFTER {
                self.spawn_refresh();
            }
            return Ok(set);
        }
        if matches!(self.source, Source::Static) {
            return Err(JwksError::Document("the Secret's JWKS has no usable key".into()));
        }
        let mut gate = self.gate.lock().await;
        if let Some(set) = self.state.load_full() {
            return Ok(set);
        }
        if gate.last_attempt.is_some_and(|t| t.elapsed() < MIN_FETCH_INTERVAL) {
            return Err(JwksError::RateLimited);
        }
        self.fetch(&mut gate).await
    }

    /// Called when a token names a key id the cached set lacks: re-fetches, at most once per
    /// [`UNKNOWN_KID_INTERVAL`]. `None` when no fetch was allowed or it failed (the cached keys
    /// stay).
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>, kid: &str) -> Option<Arc<KeySet>> {
        if matches!(self.source, Source::Static) {
            return None;
        }
        let mut gate = self.gate.lock().await;
        // Another request may have fetched while this one waited for the gate.
        if let Some(set) = self.state.load_full()
            && set.has_kid(kid)
        {
            return Some(set);
        }
        let allowed = gate.last_unknown_kid.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_INTERVAL)
            && gate.last_attempt.is_none_or(|t| t.elapsed() >= MIN_FETCH_INTERVAL);
        if !allowed {
            return None;
        }
        gate.last_unknown_kid = Some(Instant::now());
        self.fetch(&mut gate).await.ok()
    }

    fn spawn_refresh(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        let span = tracing::debug_span!("jwks_refresh", authorizer = %self.label);
        tokio::spawn(
            async move {
                let mut gate = this.gate.lock().await;
                if gate.last_attempt.is_none_or(|t| t.elapsed() >= MIN_FETCH_INTERVAL) {
                    let _ = this.fetch(&mut gate).await;
                }
                drop(gate);
                this.refreshing.store(false, Ordering::Release);
            }
            .instrument(span),
        );
    }

    /// Fetches and installs a new key set; on failure the cached one stays.
    async fn fetch(&self, gate: &mut Gate) -> Result<Arc<KeySet>, JwksError> {
        gate.last_attempt = Some(Instant::now());
        let result = self.fetch_inner(gate).await;
        match &result {
            Ok(set) => {
                self.fetches.with_label_values(&[&self.label, "ok"]).inc();
                tracing::debug!(authorizer = %self.label, keys = set.keys.len(), "JWKS fetched");
            }
            Err(error) => {
                self.fetches.with_label_values(&[&self.label, "error"]).inc();
                gate.discovered = None;
                tracing::warn!(authorizer = %self.label, %error, "JWKS fetch failed; keeping the cached keys");
            }
        }
        result
    }

    async fn fetch_inner(&self, gate: &mut Gate) -> Result<Arc<KeySet>, JwksError> {
        let url = match &self.source {
            Source::Static => return Err(JwksError::RateLimited),
            Source::Uri(uri) => uri.clone(),
            Source::Discovery { uri, issuer } => match &gate.discovered {
                Some(url) => url.clone(),
                None => {
                    let url = discover(uri, issuer).await?;
                    gate.discovered = Some(url.clone());
                    url
                }
            },
        };
        let body = get(&url).await?;
        let set = Arc::new(parse(&body)?);
        self.state.store(Some(Arc::clone(&set)));
        Ok(set)
    }
}

async fn get(url: &str) -> Result<bytes::Bytes, JwksError> {
    let (status, body) = fetch::get_json(url, FETCH_TIMEOUT, MAX_DOCUMENT)
        .await
        .map_err(|source| JwksError::Fetch { url: url.to_string(), source })?;
    if !status.is_success() {
        return Err(JwksError::Status { url: url.to_string(), status });
    }
    Ok(body)
}

async fn discover(uri: &str, issuer: &str) -> Result<String, JwksError> {
    let body = get(uri).await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| JwksError::Document(format!("{uri}: not a JSON discovery document: {e}")))?;
    let found_issuer = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
    if found_issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(JwksError::Document(format!(
            "{uri}: the discovery document names issuer {found_issuer:?}, expected {issuer:?}"
        )));
    }
    doc.get("jwks_uri")
        .and_then(|v| v.as_str())
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(str::to_string)
        .ok_or_else(|| JwksError::Document(format!("{uri}: the discovery document has no jwks_uri")))
}

/// Parses a JWKS, keeping the keys usable for signature verification. Symmetric (`oct`) keys and
/// encryption keys are ignored: a published key set must never let a token be "signed" with
/// public material.
pub fn parse(document: &[u8]) -> Result<KeySet, JwksError> {
    let doc: serde_json::Value = serde_json::from_slice(document)
        .map_err(|e| JwksError::Document(format!("JWKS is not JSON: {e}")))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| JwksError::Document("JWKS has no keys array".into()))?;
    let mut keys = Vec::new();
    for entry in entries.iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else { continue };
        if let Some(key) = usable(&jwk) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::Document("JWKS has no usable signing key".into()));
    }
    Ok(KeySet { keys, fetched: Instant::now() })
}

fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys never verify tokens here (no HS* with published material).
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(alg) => {
            let alg = key_algorithm(alg)?;
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), algorithms, decoding })
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_mismatched_keys_are_ignored() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"EC","crv":"P-256","kid":"ec","alg":"RS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"ec2",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let set = parse(doc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("ec2"));
        assert_eq!(set.keys[0].algorithms, vec![Algorithm::ES256]);
        assert_eq!(set.candidates(Some("ec2"), Algorithm::HS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 1);
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        assert!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"[]").is_err());
    }
}
