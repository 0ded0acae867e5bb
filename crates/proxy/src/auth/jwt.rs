//! JWT authorizer: bearer token → verified claims.
//!
//! The algorithm is pinned by the key (see `jwks`): `none`, HMAC with public material and
//! algorithm/key-type mismatches never verify. `exp` is required, `nbf` checked when present,
//! both with the configured leeway; `iss` must equal the issuer and `aud` must hold one of the
//! audiences. Verified tokens are cached (keyed by the token text, bounded in bytes) until they expire, so a
//! repeat caller costs one hash and one map lookup.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, JwksError, KeySet};
use super::{AuthError, Identity};

/// Longest token accepted (bytes of the compact form).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Memory for verified tokens: 16 MiB (about 10,000 typical 1 KiB tokens).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A verified token.
struct Verified {
    claims: Arc<Map<String, Value>>,
    principal: Option<String>,
    exp: u64,
    kid: Option<String>,
}

/// Verifies tokens for one JWT authorizer.
pub struct JwtVerifier {
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    scopes_claim: Option<String>,
    jwks: Arc<Jwks>,
    /// Verified tokens by their text (keyed by the token itself: hashing it with SipHash is
    /// cheaper than SHA-256 on the hot path, and equality is exact).
    cache: moka::sync::Cache<Box<str>, Arc<Verified>>,
}

impl JwtVerifier {
    /// A verifier for `config`, reading keys from `jwks`.
    pub fn new(config: &tollgate_ir::auth::JwtAuthorizer, jwks: Jwks) -> JwtVerifier {
        JwtVerifier {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway.as_duration().as_secs(),
            scopes_claim: config.scopes_claim.clone(),
            jwks: Arc::new(jwks),
            cache: moka::sync::Cache::builder()
                // Bounded in bytes of token text (plus a fixed cost per entry).
                .weigher(weigh_token)
                .max_capacity(CACHE_BYTES)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Verifies the bearer token in `authorization` and checks `scopes`.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        scopes: &[String],
    ) -> Result<Identity, AuthError> {
        let token = bearer(authorization)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::unauthenticated("token_too_large", "the token is too large"));
        }
        let now = jsonwebtoken::get_current_timestamp();
        let cached = self.cache.get(token).filter(|v| now <= v.exp.saturating_add(self.leeway));
        let verified = match cached {
            // A cached token stays valid only while its key is still published.
            Some(v) if self.key_still_present(v.kid.as_deref()) => v,
            _ => {
                let verified = Arc::new(self.verify_uncached(token).await?);
                self.cache.insert(token.into(), Arc::clone(&verified));
                verified
            }
        };
        let held = token_scopes(&verified.claims, self.scopes_claim.as_deref());
        if let Some(missing) = scopes.iter().find(|s| !held.iter().any(|h| h == *s)) {
            tracing::debug!(scope = %missing, "token lacks a required scope");
            return Err(AuthError::forbidden_caller(
                "insufficient_scope",
                "the token lacks a required scope",
                verified.principal.clone(),
            ));
        }
        Ok(Identity {
            principal: verified.principal.clone(),
            claims: Arc::clone(&verified.claims),
            context: Arc::default(),
        })
    }

    fn key_still_present(&self, kid: Option<&str>) -> bool {
        match kid {
            None => true,
            Some(kid) => self.jwks.current().is_some_and(|set| set.has_kid(kid)),
        }
    }

    async fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::unauthenticated("invalid_token", "the token is malformed"))?;
        let alg = header.alg;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(AuthError::unauthenticated(
                "invalid_algorithm",
                "the token's algorithm is not accepted",
            ));
        }
        let keys = self.jwks.keys().await.map_err(keys_unavailable)?;
        let kid = header.kid.as_deref();
        let mut set: Arc<KeySet> = keys;
        if let Some(kid) = kid
            && !set.has_kid(kid)
        {
            match self.jwks.refetch_for_unknown_kid(kid).await {
                Some(fresh) if fresh.has_kid(kid) => set = fresh,
                _ => {
                    return Err(AuthError::unauthenticated(
                        "unknown_key",
                        "the token's signing key is unknown",
                    ));
                }
            }
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let mut last = None;
        for key in set.candidates(kid, alg).take(8) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let principal = claims.get("sub").and_then(Value::as_str).map(str::to_string);
                    return Ok(Verified { claims: Arc::new(claims), principal, exp, kid: key.kid.clone() });
                }
                Err(error) => {
                    let signature_failed = matches!(error.kind(), ErrorKind::InvalidSignature);
                    last = Some(error);
                    // Claims errors are final; a bad signature may just be the wrong key.
                    if !signature_failed {
                        break;
                    }
                }
            }
        }
        Err(match last {
            None => AuthError::unauthenticated(
                "invalid_algorithm",
                "the token's algorithm does not match its key",
            ),
            Some(error) => claim_error(error.kind()),
        })
    }
}

fn keys_unavailable(error: JwksError) -> AuthError {
    tracing::debug!(%error, "no signing keys available");
    AuthError::unavailable("keys_unavailable", "the authorizer's signing keys could not be fetched")
}

fn claim_error(kind: &ErrorKind) -> AuthError {
    let (reason, detail) = match kind {
        ErrorKind::ExpiredSignature => ("expired", "the token has expired"),
        ErrorKind::ImmatureSignature => ("not_yet_valid", "the token is not valid yet"),
        ErrorKind::InvalidIssuer => ("wrong_issuer", "the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => ("wrong_audience", "the token's audience is not accepted"),
        ErrorKind::InvalidSignature => ("bad_signature", "the token's signature is invalid"),
        ErrorKind::MissingRequiredClaim(_) => {
            ("missing_claim", "the token lacks a required claim (exp, iss, aud)")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            ("invalid_algorithm", "the token's algorithm is not accepted")
        }
        _ => ("invalid_token", "the token is invalid"),
    };
    AuthError::unauthenticated(reason, detail)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let missing = || AuthError::unauthenticated("missing_token", "a bearer token is required");
    let value = authorization.ok_or_else(missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// Scopes from the scopes claim: a space-separated string or an array of strings.
fn token_scopes<'a>(claims: &'a Map<String, Value>, claim: Option<&str>) -> Vec<&'a str> {
    let value = match claim {
        Some(name) => claims.get(name),
        None => claims.get("scope").or_else(|| claims.get("scp")),
    };
    match value {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The verified-token cache's weight of one entry: its text plus a fixed cost.
#[allow(clippy::borrowed_box)] // moka's weigher signature takes `&K`.
fn weigh_token(token: &Box<str>, _: &Arc<Verified>) -> u32 {
    u32::try_from(token.len() + 256).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")).ok(), Some("abc"));
        assert!(bearer(Some("Basic abc")).is_err());
        assert!(bearer(Some("Bearer ")).is_err());
        assert!(bearer(None).is_err());
    }

    #[test]
    fn scopes_from_string_or_array() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"scope":"a b","scp":["c"],"perms":["x","y"]}"#).unwrap_or_default();
        assert_eq!(token_scopes(&claims, None), vec!["a", "b"]);
        assert_eq!(token_scopes(&claims, Some("perms")), vec!["x", "y"]);
        assert_eq!(token_scopes(&claims, Some("nope")), Vec::<&str>::new());
    }
}
