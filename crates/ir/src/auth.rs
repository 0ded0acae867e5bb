//! Authorization in the Snapshot: compiled authorizers, resource policies, mTLS and per-route
//! requirements.
//!
//! Authorizers are carried by the API whose routes use them (an Authorizer used by two APIs is
//! carried twice; proxies share its runtime state by content). Secrets are reduced to what the
//! proxy needs: JWKS documents (public keys) and SigV4 secret access keys, the latter wrapped in
//! [`Redacted`] so they never reach a log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, ObjectKey, Redacted};

/// Authorization settings of one API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAuth {
    /// Every authorizer a served route of this API uses, sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorizers: Vec<Authorizer>,
    /// Source-address policy (`spec.policy`). `None`: every address may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SourcePolicy>,
    /// Client certificate validation (`spec.tls.clientValidation`). `None`: no mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

impl ApiAuth {
    /// Whether nothing is configured (kept out of serialized snapshots).
    pub fn is_empty(&self) -> bool {
        self.authorizers.is_empty() && self.policy.is_none() && self.client_validation.is_none()
    }

    /// A summary for the admin `/config` view: authorizer names and kinds, the policy, the CA
    /// Secret's name. No key material, no JWKS, no secret access keys.
    pub fn view(&self) -> serde_json::Value {
        let authorizers: Vec<serde_json::Value> = self
            .authorizers
            .iter()
            .map(|a| {
                let detail = match &a.mechanism {
                    Mechanism::Jwt(j) => serde_json::json!({"type": "jwt", "issuer": j.issuer,
                        "audiences": j.audiences, "keys": match &j.keys {
                            KeySource::JwksUri { uri } => serde_json::json!({"jwksUri": uri}),
                            KeySource::Discovery { uri } => serde_json::json!({"discovery": uri}),
                            KeySource::Inline { .. } => serde_json::json!("secret"),
                        }}),
                    Mechanism::External(e) => serde_json::json!({"type": "external", "url": e.url}),
                    Mechanism::SigV4(s) => serde_json::json!({"type": "sigv4", "region": s.region,
                        "service": s.service,
                        "accessKeyIds": s.access_keys.iter().map(|k| k.access_key_id.as_str()).collect::<Vec<_>>()}),
                };
                serde_json::json!({"name": a.key.to_string(), "mechanism": detail})
            })
            .collect();
        serde_json::json!({
            "authorizers": authorizers,
            "policy": self.policy,
            "clientValidation": self.client_validation.as_ref().map(|c| serde_json::json!({
                "caSecret": c.source.to_string(), "mode": c.mode,
            })),
        })
    }
}

/// One compiled Authorizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorizer {
    /// The Authorizer object.
    pub key: ObjectKey,
    /// The mechanism and its settings.
    pub mechanism: Mechanism,
}

/// How an authorizer checks callers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Mechanism {
    /// JSON Web Tokens.
    Jwt(JwtAuthorizer),
    /// An external HTTP service.
    External(ExternalAuthorizer),
    /// AWS Signature Version 4.
    #[serde(rename = "sigv4")]
    SigV4(SigV4Authorizer),
}

/// JWT validation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthorizer {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// Claim name → upstream header name (lower-case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Clock skew tolerated for `exp` / `nbf`.
    pub leeway: Millis,
    /// Claim holding scopes; `None`: `scope`, else `scp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_claim: Option<String>,
}

/// Where a JWT authorizer finds its signing keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum KeySource {
    /// A JWKS URL, fetched and refreshed by the proxy.
    JwksUri {
        /// The URL.
        uri: String,
    },
    /// OpenID Connect discovery at `<issuer>/.well-known/openid-configuration`.
    Discovery {
        /// The discovery document's URL.
        uri: String,
    },
    /// A JWKS document from a Secret (public keys only).
    Inline {
        /// The JWKS JSON.
        jwks: String,
    },
}

/// External authorization service settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuthorizer {
    /// The service's URL (`http` or `https`).
    pub url: String,
    /// Request parts that identify the caller, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_sources: Vec<IdentitySource>,
    /// How long an answer is reused for the same identity values (0: not cached).
    pub result_ttl: Millis,
    /// Time the service has to answer.
    pub timeout: Millis,
    /// Context key → upstream header name (lower-case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_to_headers: BTreeMap<String, String>,
}

/// A request part naming the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "from", content = "name")]
pub enum IdentitySource {
    /// A request header (lower-case name).
    Header(String),
    /// A query parameter.
    Query(String),
}

/// SigV4 verification settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigV4Authorizer {
    /// Region of the credential scope.
    pub region: String,
    /// Service of the credential scope.
    pub service: String,
    /// Accepted access keys, sorted by id.
    pub access_keys: Vec<AccessKey>,
}

/// One access key pair (a `tollgate.dev/access-key` Secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKey {
    /// The Secret it came from.
    pub source: ObjectKey,
    /// The access key id (not secret; becomes the principal).
    pub access_key_id: String,
    /// The secret access key; never printed.
    pub secret_access_key: Redacted,
}

/// Source-address policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourcePolicy {
    /// Allowed networks (CIDR, normalized). Empty: every address not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Denied networks; deny wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

/// Client certificate validation of an API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// The Secret holding the CA bundle.
    pub source: ObjectKey,
    /// PEM certificate authorities.
    pub ca_pem: String,
    /// Whether a certificate is mandatory.
    pub mode: ClientCertMode,
}

/// Whether a client certificate is mandatory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientCertMode {
    /// Connections without a valid certificate are refused.
    Require,
    /// A certificate is verified when presented.
    Optional,
}

/// Who may call one route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RouteAuth {
    /// Public.
    #[default]
    None,
    /// Checked by an authorizer of the API ([`ApiAuth::authorizers`]).
    Authorizer {
        /// The authorizer's key.
        authorizer: ObjectKey,
        /// Scopes the caller must all hold (JWT).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        scopes: Vec<String>,
    },
    /// Every call is refused (authorization required, no authorizer named).
    Deny,
}

impl RouteAuth {
    /// Whether the route is public (kept out of serialized snapshots).
    pub fn is_none(&self) -> bool {
        matches!(self, RouteAuth::None)
    }
}
