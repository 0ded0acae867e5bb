//! Authorization: Authorizers (JWT, external, SigV4) and their Secrets, each Route's requirement
//! (own authorizerRef, the API's defaultAuthorizer, or `type: None`), resource policies and mTLS.
//!
//! Fail closed throughout: a Route whose authorizer does not resolve or is invalid is not served,
//! and an API whose policy or client validation cannot be compiled is not served.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tollgate_crds::Authorizer;
use tollgate_crds::authorizer::{AuthorizerMechanism, ExternalAuthorizer, JwtAuthorizer, SigV4Authorizer};
use tollgate_crds::gateway_api::{ClientValidationMode, GatewayApiSpec};
use tollgate_crds::route::AuthorizationType;
use tollgate_ir::auth as ira;
use tollgate_ir::{self as ir};

use super::api::ApiInfo;
use super::route::RouteInfo;
use super::selector;
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Kind, Object};

/// Secret type of SigV4 access keys.
pub const ACCESS_KEY_SECRET_TYPE: &str = "tollgate.dev/access-key";

const K: Kind = Kind::Authorizer;

/// Every Authorizer that compiled, by key. Invalid ones are absent (and reported).
pub type Authorizers = BTreeMap<ir::ObjectKey, ira::Authorizer>;

/// Compiles every Authorizer, reporting problems on the Authorizer itself.
pub fn compile_authorizers(
    objects: &[&Object<Authorizer>],
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Authorizers {
    let mut out = BTreeMap::new();
    for object in objects {
        let key = object.key();
        let mechanism = match object.object.spec.mechanism() {
            Ok(AuthorizerMechanism::Jwt(jwt)) => compile_jwt(jwt, &key, secrets, d).map(ira::Mechanism::Jwt),
            Ok(AuthorizerMechanism::External(ext)) => {
                compile_external(ext, &key, d).map(ira::Mechanism::External)
            }
            Ok(AuthorizerMechanism::SigV4(sig)) => {
                compile_sigv4(sig, &key, secrets, d).map(ira::Mechanism::SigV4)
            }
            Err(error) => {
                d.invalid(K, &key, "spec", error.to_string());
                None
            }
        };
        if let Some(mechanism) = mechanism
            && !d.is_rejected(K, &key)
        {
            out.insert(key.clone(), ira::Authorizer { key, mechanism });
        }
    }
    out
}

fn duration(
    value: Option<&tollgate_crds::common::Duration>,
    default_ms: u64,
    field: &str,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<ir::Millis> {
    match value {
        None => Some(ir::Millis(default_ms)),
        Some(v) => match v.parse() {
            Ok(t) => Some(t.into()),
            Err(e) => {
                d.invalid(K, key, field, e.to_string());
                None
            }
        },
    }
}

fn header_name(name: &str, field: String, key: &ir::ObjectKey, d: &mut Diagnostics) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        d.invalid(K, key, field, format!("{name:?} is not a valid header name"));
        return None;
    }
    if matches!(
        lower.as_str(),
        "host" | "authorization" | "content-length" | "transfer-encoding" | "connection"
    ) {
        d.invalid(K, key, field, format!("{name:?} cannot be set from a claim; choose another header"));
        return None;
    }
    Some(lower)
}

fn http_url(url: &str, field: &str, key: &ir::ObjectKey, d: &mut Diagnostics) -> bool {
    match http::Uri::try_from(url) {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => true,
        _ => {
            d.invalid(K, key, field, format!("{url:?} is not an http:// or https:// URL"));
            false
        }
    }
}

fn compile_jwt(
    jwt: &JwtAuthorizer,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<ira::JwtAuthorizer> {
    if jwt.issuer.is_empty() {
        d.invalid(K, key, "spec.jwt.issuer", "must not be empty (the token's expected iss claim)");
    }
    if jwt.audiences.is_empty() || jwt.audiences.iter().any(String::is_empty) {
        d.invalid(
            K,
            key,
            "spec.jwt.audiences",
            "list at least one non-empty audience (the token's aud claim)",
        );
    }
    let sources = [jwt.jwks_uri.is_some(), jwt.jwks_secret_ref.is_some(), jwt.discovery == Some(true)];
    let keys = if sources.iter().filter(|s| **s).count() > 1 {
        d.invalid(K, key, "spec.jwt", "choose one key source: jwksUri, discovery: true or jwksSecretRef");
        None
    } else if let Some(uri) = &jwt.jwks_uri {
        http_url(uri, "spec.jwt.jwksUri", key, d).then(|| ira::KeySource::JwksUri { uri: uri.clone() })
    } else if let Some(secret_ref) = &jwt.jwks_secret_ref {
        jwks_from_secret(&secret_ref.name, key, secrets, d).map(|jwks| ira::KeySource::Inline { jwks })
    } else if jwt.discovery == Some(false) {
        d.invalid(K, key, "spec.jwt.discovery", "discovery: false needs jwksUri or jwksSecretRef");
        None
    } else {
        let uri = format!("{}/.well-known/openid-configuration", jwt.issuer.trim_end_matches('/'));
        http_url(&uri, "spec.jwt.issuer", key, d).then_some(ira::KeySource::Discovery { uri })
    };
    let mut claims_to_headers = BTreeMap::new();
    for (claim, header) in &jwt.claims_to_headers {
        if let Some(h) = header_name(header, format!("spec.jwt.claimsToHeaders.{claim}"), key, d) {
            claims_to_headers.insert(claim.clone(), h);
        }
    }
    let leeway = duration(jwt.leeway.as_ref(), 30_000, "spec.jwt.leeway", key, d)?;
    Some(ira::JwtAuthorizer {
        issuer: jwt.issuer.clone(),
        audiences: jwt.audiences.clone(),
        keys: keys?,
        claims_to_headers,
        leeway,
        scopes_claim: jwt.scopes_claim.clone().filter(|c| !c.is_empty()),
    })
}

fn secret_text(secret: &Secret, entry: &str) -> Option<String> {
    let from_data =
        secret.data.as_ref().and_then(|d| d.get(entry)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    from_data.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(entry)).cloned())
}

fn jwks_from_secret(
    name: &str,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<String> {
    let field = "spec.jwt.jwksSecretRef";
    let secret_key = ir::ObjectKey::new(key.namespace.clone(), name);
    let Some(secret) = secrets.get(&secret_key) else {
        d.unresolved(K, key, reason::NOT_FOUND, field, format!("Secret {secret_key} not found"));
        return None;
    };
    let Some(text) = secret_text(secret, "jwks.json") else {
        d.unresolved(K, key, reason::INVALID, field, format!("Secret {secret_key} has no jwks.json entry"));
        return None;
    };
    let usable = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(|keys| !keys.is_empty()))
        .unwrap_or(false);
    if !usable {
        d.unresolved(
            K,
            key,
            reason::INVALID,
            field,
            format!("Secret {secret_key}: jwks.json must be a JSON Web Key Set ({{\"keys\": [...]}}) with at least one key"),
        );
        return None;
    }
    Some(text)
}

fn compile_external(
    ext: &ExternalAuthorizer,
    key: &ir::ObjectKey,
    d: &mut Diagnostics,
) -> Option<ira::ExternalAuthorizer> {
    let url_ok = http_url(&ext.url, "spec.external.url", key, d);
    let mut identity_sources = Vec::new();
    for (i, source) in ext.identity_sources.iter().enumerate() {
        let field = format!("spec.external.identitySources[{i}]");
        match source.split_once('.') {
            Some(("header", name))
                if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_ok() =>
            {
                identity_sources.push(ira::IdentitySource::Header(name.to_ascii_lowercase()))
            }
            Some(("query", name)) if !name.is_empty() => {
                identity_sources.push(ira::IdentitySource::Query(name.to_string()))
            }
            _ => d.invalid(K, key, field, format!("{source:?}: use header.NAME or query.NAME")),
        }
    }
    let mut context_to_headers = BTreeMap::new();
    for (name, header) in &ext.context_to_headers {
        if let Some(h) = header_name(header, format!("spec.external.contextToHeaders.{name}"), key, d) {
            context_to_headers.insert(name.clone(), h);
        }
    }
    let result_ttl = duration(ext.result_ttl.as_ref(), 300_000, "spec.external.resultTtl", key, d)?;
    let timeout = duration(ext.timeout.as_ref(), 1_000, "spec.external.timeout", key, d)?;
    if timeout.0 == 0 {
        d.invalid(K, key, "spec.external.timeout", "must be more than 0 (e.g. 1s)");
    }
    url_ok.then(|| ira::ExternalAuthorizer {
        url: ext.url.clone(),
        identity_sources,
        result_ttl,
        timeout,
        context_to_headers,
    })
}

fn compile_sigv4(
    sig: &SigV4Authorizer,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<ira::SigV4Authorizer> {
    let field = "spec.sigv4.credentialSelector";
    if let Err(message) = selector::validate(&sig.credential_selector) {
        d.invalid(K, key, field, message);
        return None;
    }
    let scope_ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !scope_ok(&sig.region) {
        d.invalid(
            K,
            key,
            "spec.sigv4.region",
            format!("{:?} is not a region name (e.g. us-east-1)", sig.region),
        );
    }
    let service = sig.service.clone().unwrap_or_else(|| "execute-api".to_string());
    if !scope_ok(&service) {
        d.invalid(
            K,
            key,
            "spec.sigv4.service",
            format!("{service:?} is not a service name (e.g. execute-api)"),
        );
    }
    let access_keys = select_access_keys(K, key, &sig.credential_selector, field, secrets, d);
    if access_keys.is_empty() {
        d.warn(
            K,
            key,
            reason::NOT_FOUND,
            field,
            format!(
                "no Secret of type {ACCESS_KEY_SECRET_TYPE} in namespace {} matches: every request is refused",
                key.namespace
            ),
        );
    }
    Some(ira::SigV4Authorizer { region: sig.region.clone(), service, access_keys })
}

/// The API-level part: resource policy and client validation. Returns `None` when the API must
/// not be served (fail closed).
pub fn compile_api_auth(
    spec: &GatewayApiSpec,
    key: &ir::ObjectKey,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<ira::ApiAuth> {
    let k = Kind::GatewayAPI;
    let mut ok = true;
    let policy = match &spec.policy {
        Some(p) if !(p.allow_cidrs.is_empty() && p.deny_cidrs.is_empty()) => {
            let mut list = |items: &[String], field: &str| -> Vec<String> {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match parse_cidr(item) {
                        Some(net) => out.push(net.to_string()),
                        None => {
                            d.invalid(
                                k,
                                key,
                                format!("spec.policy.{field}[{i}]"),
                                format!("{item:?} is not an IP address or CIDR (10.0.0.0/8)"),
                            );
                            ok = false;
                        }
                    }
                }
                out.sort();
                out.dedup();
                out
            };
            Some(ira::SourcePolicy {
                allow: list(&p.allow_cidrs, "allowCidrs"),
                deny: list(&p.deny_cidrs, "denyCidrs"),
                trusted_proxies: list(&p.trusted_proxies, "trustedProxies"),
            })
        }
        Some(p) if !p.trusted_proxies.is_empty() => {
            d.warn(
                k,
                key,
                reason::INVALID,
                "spec.policy.trustedProxies",
                "has no effect without allowCidrs or denyCidrs",
            );
            None
        }
        _ => None,
    };
    let client_validation = match spec.tls.as_ref().and_then(|t| t.client_validation.as_ref()) {
        None => None,
        Some(cv) => {
            let field = "spec.tls.clientValidation.caCertificateRef";
            let secret_key = ir::ObjectKey::new(key.namespace.clone(), cv.ca_certificate_ref.name.clone());
            let pem = secrets.get(&secret_key).and_then(|s| secret_text(s, "ca.crt"));
            let valid = pem.as_ref().is_some_and(|pem| {
                let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
                matches!(certs, Ok(ref c) if !c.is_empty())
            });
            match pem {
                Some(ca_pem) if valid => Some(ira::ClientValidation {
                    source: secret_key,
                    ca_pem,
                    mode: match cv.mode.unwrap_or_default() {
                        ClientValidationMode::Require => ira::ClientCertMode::Require,
                        ClientValidationMode::Optional => ira::ClientCertMode::Optional,
                    },
                }),
                _ => {
                    let message = if secrets.contains_key(&secret_key) {
                        format!(
                            "Secret {secret_key} must hold ca.crt with at least one PEM certificate; the API is not served (fail closed)"
                        )
                    } else {
                        format!("Secret {secret_key} not found; the API is not served (fail closed)")
                    };
                    d.unresolved(k, key, reason::NOT_FOUND, field, message);
                    ok = false;
                    None
                }
            }
        }
    };
    if client_validation.is_some() && spec.tls.as_ref().is_none_or(|t| t.certificate_refs.is_empty()) {
        d.invalid(k, key, "spec.tls.certificateRefs", "client validation needs a server certificate");
        ok = false;
    }
    ok.then_some(ira::ApiAuth { authorizers: Vec::new(), policy, client_validation })
}

/// `10.0.0.0/8`, or a bare address meaning that one address.
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

/// Resolves each Route's authorization: its own `authorizerRef`, else the API's
/// `defaultAuthorizer`, unless `type: None`. A Route whose authorizer is missing or invalid is not
/// served and says why.
pub fn resolve_routes(
    routes: &mut [RouteInfo<'_>],
    apis: &[ApiInfo<'_>],
    authorizers: &Authorizers,
    d: &mut Diagnostics,
) {
    for route in routes.iter_mut() {
        let spec = &route.object.spec;
        let api_ns = spec.api_ref.namespace.clone().unwrap_or_else(|| route.key.namespace.clone());
        let api_key = ir::ObjectKey::new(api_ns, spec.api_ref.name.clone());
        let api = apis.iter().find(|a| a.key == api_key);
        let default = api.and_then(|a| a.object.spec.default_authorizer.as_ref()).map(|r| {
            (
                ir::ObjectKey::new(api_key.namespace.clone(), r.name.clone()),
                format!("GatewayAPI {api_key} spec.defaultAuthorizer"),
            )
        });
        let auth = spec.authorization.as_ref();
        let explicit_none = auth.is_some_and(|a| a.type_ == Some(AuthorizationType::None));
        if explicit_none {
            if auth.is_some_and(|a| a.authorizer_ref.is_some() || !a.scopes.is_empty()) {
                d.invalid(
                    Kind::Route,
                    &route.key,
                    "spec.authorization",
                    "type None turns authorization off; remove authorizerRef and scopes, or remove type",
                );
                route.servable = false;
            }
            route.auth = ira::RouteAuth::None;
            continue;
        }
        let own = auth.and_then(|a| a.authorizer_ref.as_ref()).map(|r| {
            (
                ir::ObjectKey::new(route.key.namespace.clone(), r.name.clone()),
                "spec.authorization.authorizerRef".to_string(),
            )
        });
        let scopes: Vec<String> = auth.map(|a| a.scopes.clone()).unwrap_or_default();
        let wants_auth =
            auth.is_some_and(|a| a.type_ == Some(AuthorizationType::Authorizer) || !a.scopes.is_empty());
        let Some((authorizer_key, via)) = own.or(default) else {
            if wants_auth {
                d.warn(
                    Kind::Route,
                    &route.key,
                    reason::INVALID,
                    "spec.authorization",
                    "authorization is required but neither authorizerRef nor the API's defaultAuthorizer names an \
                     Authorizer: every call is refused with 403",
                );
                route.auth = ira::RouteAuth::Deny;
            } else {
                route.auth = ira::RouteAuth::None;
            }
            continue;
        };
        match authorizers.get(&authorizer_key) {
            None => {
                d.unresolved(
                    Kind::Route,
                    &route.key,
                    reason::NOT_FOUND,
                    "spec.authorization",
                    format!(
                        "Authorizer {authorizer_key} (from {via}) is missing or invalid (see its conditions): the Route \
                         is not served (fail closed)"
                    ),
                );
                route.servable = false;
            }
            Some(authorizer) => {
                if !scopes.is_empty() && !matches!(authorizer.mechanism, ira::Mechanism::Jwt(_)) {
                    d.invalid(
                        Kind::Route,
                        &route.key,
                        "spec.authorization.scopes",
                        format!("scopes apply to JWT authorizers only; Authorizer {authorizer_key} is not one: remove scopes"),
                    );
                    route.servable = false;
                }
                route.auth = ira::RouteAuth::Authorizer { authorizer: authorizer_key, scopes };
            }
        }
    }
}

/// The API's authorization in the Snapshot: its policy and mTLS, plus every authorizer its served
/// routes use.
pub fn api_auth(api: &ApiInfo<'_>, authorizers: &Authorizers, stages: &[ir::Stage]) -> ira::ApiAuth {
    let used: BTreeSet<&ir::ObjectKey> = stages
        .iter()
        .flat_map(|s| s.routes.iter())
        .filter_map(|r| match &r.auth {
            ira::RouteAuth::Authorizer { authorizer, .. } => Some(authorizer),
            _ => None,
        })
        .collect();
    let mut auth = api.auth.clone();
    auth.authorizers = used.into_iter().filter_map(|k| authorizers.get(k).cloned()).collect();
    auth
}

/// The access keys (`tollgate.dev/access-key` Secrets of `key`'s namespace) that `selector`
/// picks, for a SigV4 Authorizer or a WebSocket API's `@connections` API. Secrets that cannot be
/// used are skipped with a warning on `field`; the result is sorted by access key id.
pub(super) fn select_access_keys(
    kind: Kind,
    key: &ir::ObjectKey,
    selector: &tollgate_crds::LabelSelector,
    field: &str,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Vec<ira::AccessKey> {
    let mut access_keys: Vec<ira::AccessKey> = Vec::new();
    for (secret_key, secret) in secrets.range(
        ir::ObjectKey::new(key.namespace.clone(), "")..ir::ObjectKey::new(format!("{}\0", key.namespace), ""),
    ) {
        if secret.type_.as_deref() != Some(ACCESS_KEY_SECRET_TYPE) {
            continue;
        }
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        if !selector::matches(selector, &labels) {
            continue;
        }
        let (Some(id), Some(secret_access_key)) =
            (secret_text(secret, "accessKeyId"), secret_text(secret, "secretAccessKey"))
        else {
            d.warn(
                kind,
                key,
                reason::INVALID,
                field,
                format!("Secret {secret_key} is skipped: it must hold accessKeyId and secretAccessKey"),
            );
            continue;
        };
        let id = id.trim().to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            d.warn(
                kind,
                key,
                reason::INVALID,
                field,
                format!("Secret {secret_key} is skipped: accessKeyId must be letters and digits"),
            );
            continue;
        }
        if let Some(other) = access_keys.iter().find(|a| a.access_key_id == id) {
            d.warn(
                kind,
                key,
                reason::CONFLICT,
                field,
                format!(
                    "Secret {secret_key} is skipped: access key id {id} is already defined by Secret {}",
                    other.source
                ),
            );
            continue;
        }
        access_keys.push(ira::AccessKey {
            source: secret_key.clone(),
            access_key_id: id,
            secret_access_key: ir::Redacted::new(secret_access_key.trim().to_string()),
        });
    }
    access_keys.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
    access_keys
}
