//! What the pipeline learns about a request as it goes through the phases: the caller's identity
//! (set by authorization and API-key checks) for throttles, quotas, the cache key, templates and
//! the access log.

use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

/// Per-request state shared by the pipeline phases.
#[derive(Debug)]
pub struct RequestContext {
    /// The authenticated caller (JWT `sub`, the external authorizer's `principalId`, the SigV4
    /// access key id, the mTLS subject), when a phase established one.
    pub principal: Option<String>,
    /// Verified JWT claims (`${context.authorizer.claims.NAME}`).
    pub claims: Arc<Map<String, Value>>,
    /// Context values returned by an external authorizer (`${context.authorizer.NAME}`).
    pub authorizer_context: Arc<Map<String, Value>>,
    /// A non-secret identifier of the API key used (never the key itself).
    pub api_key_id: Option<String>,
}

/// The empty claim and context maps every request starts with: shared, so that a request that
/// never gets any does not allocate (and free) two maps.
static EMPTY: LazyLock<Arc<Map<String, Value>>> = LazyLock::new(Arc::default);

impl Default for RequestContext {
    fn default() -> Self {
        RequestContext {
            principal: None,
            claims: Arc::clone(&EMPTY),
            authorizer_context: Arc::clone(&EMPTY),
            api_key_id: None,
        }
    }
}

impl RequestContext {
    /// The caller's identity for per-caller state (cache keys, limits): the principal, else the
    /// API key id. `None` for anonymous callers.
    pub fn caller(&self) -> Option<&str> {
        self.principal.as_deref().or(self.api_key_id.as_deref())
    }
}
