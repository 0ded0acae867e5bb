//! External authorizer (the Lambda-authorizer analogue): the proxy POSTs a JSON description of
//! the request to an HTTP service and reads `{"allow": bool, "principalId": "...", "context": {}}`.
//!
//! Answers (allow and deny alike) are cached by the identity-source values for `resultTtl`;
//! concurrent misses for the same identity share one call. A request missing an identity source
//! is refused (401) without calling the service. Errors and timeouts are not cached and fail
//! closed: 500 for a failed or malformed answer, 503 when the service does not answer in time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use prometheus::IntCounterVec;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tollgate_ir::auth::{self as ira, IdentitySource};

use super::{AuthError, Identity, fetch};

const MAX_ANSWER: usize = 64 * 1024;
const CACHE_ENTRIES: u64 = 100_000;

/// What the service decided.
#[derive(Clone)]
struct Decision {
    allow: bool,
    principal: Option<String>,
    context: Arc<Map<String, Value>>,
}

/// The request facts sent to the service.
pub struct Facts<'a> {
    /// `GET /orders/{id}`.
    pub route_key: &'a str,
    /// `namespace/name` of the API.
    pub api: &'a str,
    /// Stage name.
    pub stage: &'a str,
    /// `namespace/name` of the Route.
    pub route: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Normalized request path.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The client's address (after the trusted-proxy rules).
    pub source_ip: String,
}

/// One external authorizer.
pub struct ExternalAuthorizer {
    url: String,
    sources: Vec<IdentitySource>,
    timeout: Duration,
    cache: Option<moka::future::Cache<[u8; 32], Decision>>,
    label: String,
    calls: IntCounterVec,
}

impl ExternalAuthorizer {
    /// An authorizer for `config`.
    pub fn new(config: &ira::ExternalAuthorizer, label: String, calls: IntCounterVec) -> ExternalAuthorizer {
        let ttl = config.result_ttl.as_duration();
        let cache = (!ttl.is_zero() && !config.identity_sources.is_empty())
            .then(|| moka::future::Cache::builder().max_capacity(CACHE_ENTRIES).time_to_live(ttl).build());
        ExternalAuthorizer {
            url: config.url.clone(),
            sources: config.identity_sources.clone(),
            timeout: config.timeout.as_duration(),
            cache,
            label,
            calls,
        }
    }

    /// Asks the service (or the cache) about a request.
    pub async fn authorize(&self, facts: &Facts<'_>) -> Result<Identity, AuthError> {
        let mut identity = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            match identity_value(source, facts) {
                Some(value) if !value.is_empty() => identity.push(value),
                _ => {
                    return Err(AuthError::unauthenticated_plain(
                        "missing_identity",
                        "the request lacks an identity source of the authorizer",
                    ));
                }
            }
        }
        let decision = match &self.cache {
            None => self.call(facts, &identity).await?,
            Some(cache) => {
                let key = cache_key(&identity);
                cache.try_get_with(key, self.call(facts, &identity)).await.map_err(|e| (*e).clone())?
            }
        };
        if !decision.allow {
            return Err(AuthError::forbidden("denied", "the authorizer denied the request"));
        }
        Ok(Identity { principal: decision.principal, claims: Arc::default(), context: decision.context })
    }

    async fn call(&self, facts: &Facts<'_>, identity: &[String]) -> Result<Decision, AuthError> {
        let body = request_document(facts, identity);
        let request = Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "tollgate")
            .header("x-request-id", facts.request_id)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| AuthError::authorizer_failed("authorizer_error"))?;
        let result = fetch::send(request, self.timeout, MAX_ANSWER).await;
        let outcome = match result {
            Err(fetch::FetchError::Timeout(_)) => {
                self.count("timeout");
                return Err(AuthError::unavailable(
                    "authorizer_timeout",
                    "the authorizer did not answer in time",
                ));
            }
            Err(error) => {
                self.count("error");
                tracing::warn!(authorizer = %self.label, %error, "external authorizer call failed");
                return Err(AuthError::authorizer_failed("authorizer_error"));
            }
            Ok((status, body)) if status.is_success() => parse_answer(&body),
            Ok((status, _)) => {
                tracing::warn!(authorizer = %self.label, %status, "external authorizer answered with an error status");
                None
            }
        };
        match outcome {
            Some(decision) => {
                self.count(if decision.allow { "allow" } else { "deny" });
                Ok(decision)
            }
            None => {
                self.count("error");
                Err(AuthError::authorizer_failed("authorizer_error"))
            }
        }
    }

    fn count(&self, result: &str) {
        self.calls.with_label_values(&[&self.label, result]).inc();
    }
}

fn identity_value(source: &IdentitySource, facts: &Facts<'_>) -> Option<String> {
    match source {
        IdentitySource::Header(name) => {
            let values: Vec<&str> =
                facts.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        }
        IdentitySource::Query(name) => {
            query_pairs(facts.query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
        }
    }
}

/// Length-prefixed values hashed, so `["a,b"]` and `["a", "b"]` never share an entry.
fn cache_key(identity: &[String]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for value in identity {
        hash.update((value.len() as u64).to_be_bytes());
        hash.update(value.as_bytes());
    }
    hash.finalize().into()
}

/// Decoded `name=value` pairs of a query string.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode =
        |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn request_document(facts: &Facts<'_>, identity: &[String]) -> Value {
    let mut headers = Map::new();
    for name in facts.headers.keys() {
        let values: Vec<&str> = facts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.as_str().to_string(), Value::String(values.join(",")));
    }
    let mut query = Map::new();
    for (k, v) in query_pairs(facts.query) {
        query.entry(k).or_insert(Value::String(v));
    }
    json!({
        "version": "1.0",
        "type": "REQUEST",
        "routeKey": facts.route_key,
        "method": facts.method,
        "path": facts.path,
        "rawQueryString": facts.query.unwrap_or_default(),
        "headers": headers,
        "queryStringParameters": query,
        "sourceIp": facts.source_ip,
        "identitySource": identity,
        "requestContext": {
            "api": facts.api,
            "stage": facts.stage,
            "route": facts.route,
            "requestId": facts.request_id,
        },
    })
}

/// `{"allow": true, "principalId": "...", "context": {...}}`; `isAuthorized` is accepted for
/// `allow` (the shape of AWS HTTP API simple responses).
fn parse_answer(body: &[u8]) -> Option<Decision> {
    let doc: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let allow = doc.get("allow").or_else(|| doc.get("isAuthorized"))?.as_bool()?;
    let principal = match doc.get("principalId") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let context = match doc.get("context") {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    Some(Decision { allow, principal, context: Arc::new(context) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_fail_closed() {
        let d = parse_answer(br#"{"allow":true,"principalId":"u1","context":{"tenant":"t"}}"#);
        assert!(d.as_ref().is_some_and(|d| d.allow && d.principal.as_deref() == Some("u1")));
        assert!(parse_answer(br#"{"isAuthorized":false}"#).is_some_and(|d| !d.allow));
        assert!(parse_answer(br#"{"allow":"yes"}"#).is_none());
        assert!(parse_answer(b"not json").is_none());
    }

    #[test]
    fn identity_keys_do_not_collide() {
        assert_ne!(cache_key(&["a,b".into()]), cache_key(&["a".into(), "b".into()]));
    }

    #[test]
    fn query_pairs_decode() {
        assert_eq!(
            query_pairs(Some("a=1&b=x%20y&c")),
            vec![("a".into(), "1".into()), ("b".into(), "x y".into()), ("c".into(), "".into())]
        );
    }
}
