//! `Authorizer`: how callers are authenticated and authorized (JWT, external service, SigV4).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, Duration, HTTP_URL_PATTERN, LabelSelector, LocalRef, OneOfError, exactly_one,
};

/// The specification of an `Authorizer`: exactly one of jwt, external or sigv4.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[allow(clippy::duplicated_attributes, reason = "printcolumn(...) repeats its keys by design")]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "Authorizer",
    namespaced,
    status = "AuthorizerStatus",
    derive = "PartialEq",
    doc = "Authorizer checks callers of the Routes that use it (like an Amazon API Gateway JWT \
           authorizer, Lambda authorizer or IAM authorization): JSON Web Tokens, an external \
           HTTP service that answers allow or deny, or AWS Signature Version 4.",
    shortname = "tgauthz",
    category = "tollgate",
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.jwt.issuer", priority = 1),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.external.url", priority = 1),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.jwt) ? 1 : 0) + (has(self.external) ? 1 : 0) + (has(self.sigv4) ? 1 : 0) == 1"
).message(
    "spec: set exactly one of jwt, external or sigv4"
))]
pub struct AuthorizerSpec {
    /// Accept requests bearing a valid JSON Web Token (`Authorization: Bearer ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthorizer>,

    /// Ask an HTTP service whether to allow each request (like a Lambda authorizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalAuthorizer>,

    /// Accept requests signed with AWS Signature Version 4, so AWS SDKs and tools can call the
    /// API with access keys kept in Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<SigV4Authorizer>,
}

/// JSON Web Token validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.jwksUri) ? 1 : 0) + (has(self.jwksSecretRef) ? 1 : 0) + ((has(self.discovery) && self.discovery) ? 1 : 0) <= 1"
).message(
    "jwt: choose at most one key source: jwksUri, discovery: true or jwksSecretRef"
))]
#[x_kube(validation = Rule::new(
    "!has(self.discovery) || self.discovery || has(self.jwksUri) || has(self.jwksSecretRef)"
).message(
    "jwt: discovery: false needs jwksUri or jwksSecretRef to find the signing keys"
))]
pub struct JwtAuthorizer {
    /// Expected issuer: the token's `iss` claim must equal it. Also the base of OIDC discovery.
    #[schemars(length(min = 1))]
    pub issuer: String,

    /// Accepted audiences: the token's `aud` claim must contain at least one of them.
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,

    /// URL of the JSON Web Key Set with the issuer's signing keys.
    /// Default: found by OIDC discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HTTP_URL_PATTERN))]
    pub jwks_uri: Option<String>,

    /// Whether the key set is found through OpenID Connect discovery
    /// (`<issuer>/.well-known/openid-configuration`). Default: true when neither jwksUri nor
    /// jwksSecretRef is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<bool>,

    /// Secret in this namespace whose `jwks.json` entry holds the JSON Web Key Set, for issuers
    /// that publish no URL. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<LocalRef>,

    /// Claims copied into request headers for the backend, claim name to header name
    /// (`{sub: x-user-id}`). Incoming headers of those names are removed first. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,

    /// Clock skew tolerated when checking `exp` and `nbf`. Default: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Duration>,

    /// Claim holding the token's scopes, a space-separated string or an array; checked against
    /// a Route's authorization.scopes. Default: `scope`, else `scp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_claim: Option<String>,
}

/// An external authorization service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuthorizer {
    /// URL of the service (`http://authz.shop.svc:8080/check`). For each request it is sent the
    /// identity sources and request metadata and answers allow or deny, with a principal id and
    /// context values for the backend. Errors and timeouts deny the request.
    #[schemars(regex(pattern = HTTP_URL_PATTERN))]
    pub url: String,

    /// Request parts that identify the caller, `header.NAME` or `query.NAME`. A request missing
    /// any of them is refused with 401 without calling the service; together they are the key
    /// of the result cache. Empty (default): the service is called for every request and
    /// nothing is cached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(header|query)\..+$")))]
    pub identity_sources: Vec<String>,

    /// How long an answer is reused for the same identity sources; `0s` disables caching.
    /// Default: `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ttl: Option<Duration>,

    /// Time allowed for the service to answer. Default: `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// Values of the service's answer `context` copied into request headers for the backend,
    /// context key to header name (`{tenant: x-tenant-id}`). Incoming headers of those names
    /// are removed first, so clients cannot forge them. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_to_headers: BTreeMap<String, String>,
}

/// AWS Signature Version 4 verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigV4Authorizer {
    /// Region in the signature's credential scope (`us-east-1`).
    #[schemars(length(min = 1), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,

    /// Service in the signature's credential scope. Default: `execute-api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), regex(pattern = r"^[a-z0-9-]+$"))]
    pub service: Option<String>,

    /// Selects, by label, Secrets of type `tollgate.dev/access-key` in this namespace; each holds
    /// `accessKeyId` and `secretAccessKey`. The access key id becomes the caller's principal.
    pub credential_selector: LabelSelector,
}

/// Observed state of an `Authorizer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: `Accepted` (the Authorizer is valid and its Secrets resolve), and others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The one mechanism of an [`AuthorizerSpec`], as an enum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AuthorizerMechanism<'a> {
    /// `jwt`
    Jwt(&'a JwtAuthorizer),
    /// `external`
    External(&'a ExternalAuthorizer),
    /// `sigv4`
    SigV4(&'a SigV4Authorizer),
}

impl AuthorizerSpec {
    /// The mechanism, or an error when not exactly one of jwt / external / sigv4 is set (the API
    /// server rejects such objects; standalone manifests are not checked by it).
    pub fn mechanism(&self) -> Result<AuthorizerMechanism<'_>, OneOfError> {
        exactly_one(
            "spec",
            &["jwt", "external", "sigv4"],
            [
                self.jwt.as_ref().map(AuthorizerMechanism::Jwt),
                self.external.as_ref().map(AuthorizerMechanism::External),
                self.sigv4.as_ref().map(AuthorizerMechanism::SigV4),
            ],
        )
    }
}
