//! Who may subscribe: proxies present a bearer token, checked against a shared token (for the
//! folder source, where there is no API server) and/or with a Kubernetes TokenReview (projected
//! ServiceAccount tokens bound to an audience; only listed ServiceAccounts are accepted).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// How long a TokenReview verdict is reused for the same token.
const ALLOW_TTL: Duration = Duration::from_secs(60);
const DENY_TTL: Duration = Duration::from_secs(5);
const CACHE_LIMIT: usize = 4096;

/// Who a proxy authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity(pub String);

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token matched nothing.
    #[error("invalid token")]
    Invalid,
    /// The token is valid but its ServiceAccount is not allowed.
    #[error("{0} is not an allowed proxy ServiceAccount")]
    NotAllowed(String),
    /// The TokenReview call failed.
    #[error("TokenReview failed: {0}")]
    Review(#[source] kube::Error),
}

/// Checks bearer tokens.
pub struct Authenticator {
    token: Option<[u8; 32]>,
    review: Option<TokenReviewer>,
}

/// A TokenReview verdict (the identity, or the refused user name) and when it expires.
type CachedVerdict = (Result<Identity, String>, Instant);

/// TokenReview settings.
pub struct TokenReviewer {
    client: Client,
    audiences: Vec<String>,
    allowed: BTreeSet<String>,
    cache: Mutex<HashMap<[u8; 32], CachedVerdict>>,
}

impl TokenReviewer {
    /// Accepts tokens bound to one of `audiences` whose user is one of `allowed`
    /// (`system:serviceaccount:NAMESPACE:NAME`).
    pub fn new(client: Client, audiences: Vec<String>, allowed: BTreeSet<String>) -> TokenReviewer {
        TokenReviewer { client, audiences, allowed, cache: Mutex::new(HashMap::new()) }
    }

    async fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock()
            && let Some((verdict, until)) = cache.get(&digest)
            && *until > Instant::now()
        {
            return verdict.clone().map_err(AuthError::NotAllowed);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(self.audiences.clone()) },
            ..TokenReview::default()
        };
        let answer =
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await;
        let status = answer.map_err(AuthError::Review)?.status.unwrap_or_default();
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        let verdict = if status.authenticated != Some(true) {
            Err(String::new())
        } else if self.allowed.contains(&user) {
            Ok(Identity(user))
        } else {
            Err(user)
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            let ttl = if verdict.is_ok() { ALLOW_TTL } else { DENY_TTL };
            cache.insert(digest, (verdict.clone(), Instant::now() + ttl));
        }
        verdict.map_err(|user| if user.is_empty() { AuthError::Invalid } else { AuthError::NotAllowed(user) })
    }
}

impl Authenticator {
    /// Accepts `token` (when set) and tokens the reviewer accepts (when set). With neither,
    /// every request is refused.
    pub fn new(token: Option<&str>, review: Option<TokenReviewer>) -> Authenticator {
        Authenticator { token: token.map(|t| Sha256::digest(t.trim().as_bytes()).into()), review }
    }

    /// Checks the request's `Authorization: Bearer` token.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Identity, AuthError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if let Some(expected) = &self.token {
            let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Compare digests in constant time: no early exit on the first differing byte.
            if presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                return Ok(Identity("token".to_string()));
            }
        }
        match &self.review {
            Some(review) => review.check(token).await,
            None => Err(AuthError::Invalid),
        }
    }
}
