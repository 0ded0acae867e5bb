//! ServiceExports: each export compiles on its own into a backend (Service endpoints, fixed
//! private addresses or a DNS name, with upstream TLS, balancing and outlier detection), and a
//! Route may use it only when the export's `allowedApis` lists the Route's API.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tollgate_crds::ServiceExport;
use tollgate_crds::common::LocalRef;
use tollgate_crds::service_export::{
    ExportTarget, ExternalBackend, LoadBalancing, LoadBalancingPolicy, OutlierDetection, ServiceExportSpec,
};
use tollgate_ir::upstream::{self as up, AddressScope};
use tollgate_ir::{self as ir};

use super::backend::{ServiceError, ServiceIndex, http_backend};
use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Kind, Object};

const K: Kind = Kind::ServiceExport;

/// Default `outlierDetection.consecutiveErrors`.
pub const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;
/// Default `outlierDetection.ejectionTime`.
pub const DEFAULT_EJECTION_TIME: ir::Millis = ir::Millis(30_000);
/// Default `outlierDetection.maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// How long a proxy uses one resolution of `external.dnsName`.
pub const DNS_REFRESH: ir::Millis = ir::Millis(30_000);

/// Every ServiceExport after compiling, by namespace and name.
#[derive(Default)]
pub struct Exports<'a> {
    by_key: BTreeMap<ir::ObjectKey, Export<'a>>,
}

struct Export<'a> {
    spec: &'a ServiceExportSpec,
    /// `None` when the export cannot be used (invalid, or its Secrets do not resolve).
    backend: Option<ir::Backend>,
}

/// Why a Route cannot use an export.
#[derive(Debug, PartialEq)]
pub enum ExportRefError {
    /// No such ServiceExport.
    NotFound,
    /// The export's `allowedApis` does not list the Route's API.
    NotAllowed,
    /// The export is invalid or its references do not resolve.
    Unusable,
}

impl Exports<'_> {
    /// The backend of export `export` for a Route attached to GatewayAPI `api`.
    pub fn resolve(
        &self,
        export: &ir::ObjectKey,
        api: &ir::ObjectKey,
    ) -> Result<&ir::Backend, ExportRefError> {
        let found = self.by_key.get(export).ok_or(ExportRefError::NotFound)?;
        if !found.spec.allows(&api.namespace, &api.name) {
            return Err(ExportRefError::NotAllowed);
        }
        found.backend.as_ref().ok_or(ExportRefError::Unusable)
    }
}

/// The target of a Route whose integration is `serviceExport: {name, namespace}`, attached to
/// GatewayAPI `api`; `None` (reported on the Route) when the export is missing, does not allow the
/// API, or cannot be used.
pub fn route_target(
    route: &ir::ObjectKey,
    api: &ir::ObjectKey,
    reference: &tollgate_crds::common::NamespacedRef,
    exports: &Exports<'_>,
    d: &mut Diagnostics,
) -> Option<super::route::Target> {
    let field = "spec.integration.serviceExport";
    let namespace = reference.namespace.clone().unwrap_or_else(|| route.namespace.clone());
    let export = ir::ObjectKey::new(namespace, reference.name.clone());
    let (why, message) = match exports.resolve(&export, api) {
        Ok(backend) => return Some(super::route::Target::Export(Box::new(backend.clone()))),
        Err(ExportRefError::NotFound) => (
            reason::NOT_FOUND,
            format!(
                "ServiceExport {export} not found: create it in namespace {} or fix the reference",
                export.namespace
            ),
        ),
        Err(ExportRefError::NotAllowed) => (
            reason::NOT_PERMITTED,
            format!(
                "ServiceExport {export} does not allow GatewayAPI {api}: add {{namespace: {}, name: {}}} to \
                 the export's spec.allowedApis",
                api.namespace, api.name
            ),
        ),
        Err(ExportRefError::Unusable) => (
            reason::INVALID,
            format!("ServiceExport {export} cannot be used: fix the problems in its conditions"),
        ),
    };
    d.unresolved(Kind::Route, route, why, field, message);
    None
}

/// Compiles every export, reporting its problems on the export itself.
pub fn compile_exports<'a>(
    exports: &[&'a Object<ServiceExport>],
    services: &ServiceIndex<'_>,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Exports<'a> {
    let mut out = Exports::default();
    for object in exports {
        let key = object.key();
        let spec = &object.object.spec;
        let backend = compile_export(&key, spec, services, secrets, d);
        out.by_key.insert(key, Export { spec, backend });
    }
    out
}

fn compile_export(
    key: &ir::ObjectKey,
    spec: &ServiceExportSpec,
    services: &ServiceIndex<'_>,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Option<ir::Backend> {
    if spec.allowed_apis.is_empty() {
        d.warn(
            K,
            key,
            reason::UNUSED,
            "spec.allowedApis",
            "no API may use this export: list them, e.g. allowedApis: [{namespace: shop, name: shop}]",
        );
    }
    let load_balancing = compile_load_balancing(key, spec.load_balancing.as_ref(), d);
    let outlier_detection = spec.outlier_detection.as_ref().and_then(|o| compile_outlier(key, o, d));
    let tls = spec.tls.as_ref().map(|t| {
        compile_tls(key, t.ca_certificate_ref.as_ref(), t.client_certificate_ref.as_ref(), secrets, d)
    });
    let mut backend = match spec.target() {
        Err(error) => {
            d.invalid(K, key, "spec", error.to_string());
            return None;
        }
        Ok(ExportTarget::Service(service)) => {
            let name = format!("export:{key}");
            match services.resolve(&key.namespace, &service.name, service.port) {
                Ok(mut backend) => {
                    if backend.endpoints.is_empty() && backend.service.is_some() {
                        d.warn(
                            K,
                            key,
                            reason::NO_ENDPOINTS,
                            "spec.service",
                            format!(
                                "Service {}/{} has no ready endpoints: requests get 503",
                                key.namespace, service.name
                            ),
                        );
                    }
                    backend.name = name;
                    backend
                }
                Err(error) => {
                    let message = match error {
                        ServiceError::NotFound => format!(
                            "Service {}/{} not found: create it, or fix spec.service.name (requests get 503)",
                            key.namespace, service.name
                        ),
                        ServiceError::NoSuchPort { available } => format!(
                            "Service {}/{} has no port {} (it has {available:?}): fix spec.service.port \
                             (requests get 503)",
                            key.namespace, service.name, service.port
                        ),
                    };
                    d.unresolved(K, key, reason::NOT_FOUND, "spec.service", message);
                    http_backend(name, Vec::new(), None)
                }
            }
        }
        Ok(ExportTarget::External(external)) => compile_external(key, external, d)?,
    };
    let sni = spec.tls.as_ref().and_then(|t| t.sni.clone());
    if let Some(tls) = tls {
        backend.scheme = ir::Scheme::Https;
        backend.tls = Some(tls.ok()?);
        backend.tls_server_name = match (&sni, &backend.dns, &spec.service) {
            (Some(sni), _, _) => Some(sni.to_ascii_lowercase()),
            (None, Some(dns), _) => Some(dns.name.clone()),
            (None, None, Some(service)) => Some(format!("{}.{}.svc", service.name, key.namespace)),
            (None, None, None) => None,
        };
    }
    backend.load_balancing = load_balancing?;
    backend.outlier_detection = outlier_detection;
    if d.is_rejected(K, key) { None } else { Some(backend) }
}

fn compile_external(
    key: &ir::ObjectKey,
    external: &ExternalBackend,
    d: &mut Diagnostics,
) -> Option<ir::Backend> {
    let name = format!("export:{key}");
    match (&external.dns_name, external.addresses.is_empty(), external.port) {
        (Some(dns_name), true, Some(port)) => {
            let Ok(port) =
                u16::try_from(port).map_err(|_| ()).and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
            else {
                d.invalid(K, key, "spec.external.port", "must be a port number from 1 to 65535");
                return None;
            };
            let host = dns_name.trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || !is_hostname(&host) {
                d.invalid(
                    K,
                    key,
                    "spec.external.dnsName",
                    format!("{dns_name:?} is not a DNS name (write IP addresses in addresses as IP:port)"),
                );
                return None;
            }
            let mut backend = http_backend(
                name,
                Vec::new(),
                Some(if port == 80 || port == 443 { host.clone() } else { format!("{host}:{port}") }),
            );
            backend.dns = Some(up::DnsTarget { name: host, port, refresh: DNS_REFRESH });
            Some(backend)
        }
        (None, false, None) => {
            let mut endpoints = Vec::new();
            for (i, address) in external.addresses.iter().enumerate() {
                let field = format!("spec.external.addresses[{i}]");
                let Ok(parsed) = address.parse::<SocketAddr>() else {
                    d.invalid(
                        K,
                        key,
                        field,
                        format!("{address:?} is not IP:port (e.g. 10.1.2.3:443 or [fd00::1]:443)"),
                    );
                    continue;
                };
                if parsed.port() == 0 {
                    d.invalid(K, key, field, format!("{address:?}: the port must be from 1 to 65535"));
                    continue;
                }
                match up::address_scope(parsed.ip()) {
                    AddressScope::Private => endpoints.push(parsed.to_string()),
                    AddressScope::Public => d.invalid(
                        K,
                        key,
                        field,
                        format!(
                            "{address:?} is a public address: exports reach private networks (like a VPC \
                             link); use a Route url integration for public endpoints"
                        ),
                    ),
                    AddressScope::Forbidden(what) => {
                        d.invalid(K, key, field, format!("{address:?} is {what} and never a backend"))
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            Some(http_backend(name, endpoints, None))
        }
        (Some(_), false, _) => {
            d.invalid(K, key, "spec.external", "set exactly one of addresses or dnsName");
            None
        }
        (None, true, _) => {
            d.invalid(
                K,
                key,
                "spec.external",
                "set addresses (IP:port) or dnsName with port, e.g. {dnsName: orders.internal, port: 443}",
            );
            None
        }
        (Some(_), true, None) => {
            d.invalid(K, key, "spec.external.port", "required with dnsName (e.g. port: 443)");
            None
        }
        (None, false, Some(_)) => {
            d.invalid(
                K,
                key,
                "spec.external.port",
                "not allowed with addresses: write each address as IP:port",
            );
            None
        }
    }
}

fn is_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `Err(())` when invalid (already reported).
fn compile_load_balancing(
    key: &ir::ObjectKey,
    lb: Option<&LoadBalancing>,
    d: &mut Diagnostics,
) -> Option<up::LoadBalancing> {
    let Some(lb) = lb else { return Some(up::LoadBalancing::RoundRobin) };
    let policy = lb.policy.unwrap_or_default();
    if lb.hash_on.is_some() && policy != LoadBalancingPolicy::ConsistentHash {
        d.invalid(
            K,
            key,
            "spec.loadBalancing.hashOn",
            "applies only to policy ConsistentHash: set the policy or remove hashOn",
        );
        return None;
    }
    Some(match policy {
        LoadBalancingPolicy::RoundRobin => up::LoadBalancing::RoundRobin,
        LoadBalancingPolicy::LeastRequest => up::LoadBalancing::LeastRequest,
        LoadBalancingPolicy::ConsistentHash => {
            let hash_on = match parse_hash_on(lb.hash_on.as_deref().unwrap_or("sourceIp")) {
                Ok(h) => h,
                Err(message) => {
                    d.invalid(K, key, "spec.loadBalancing.hashOn", message);
                    return None;
                }
            };
            up::LoadBalancing::ConsistentHash { hash_on }
        }
    })
}

/// Parses `header.NAME`, `query.NAME`, `cookie.NAME`, `principal` or `sourceIp`.
pub fn parse_hash_on(text: &str) -> Result<up::HashOn, String> {
    let named = |prefix: &str| text.strip_prefix(prefix).filter(|n| !n.is_empty());
    if text == "sourceIp" {
        Ok(up::HashOn::SourceIp)
    } else if text == "principal" {
        Ok(up::HashOn::Principal)
    } else if let Some(name) = named("header.") {
        let lower = name.to_ascii_lowercase();
        http::HeaderName::from_bytes(lower.as_bytes())
            .map(|_| up::HashOn::Header(lower))
            .map_err(|_| format!("{text:?}: {name:?} is not a valid header name"))
    } else if let Some(name) = named("query.") {
        Ok(up::HashOn::Query(name.to_string()))
    } else if let Some(name) = named("cookie.") {
        Ok(up::HashOn::Cookie(name.to_string()))
    } else {
        Err(format!("{text:?}: use header.NAME, query.NAME, cookie.NAME, principal or sourceIp"))
    }
}

fn compile_outlier(
    key: &ir::ObjectKey,
    o: &OutlierDetection,
    d: &mut Diagnostics,
) -> Option<up::OutlierDetection> {
    let consecutive_errors = o.consecutive_errors.unwrap_or(DEFAULT_CONSECUTIVE_ERRORS);
    if consecutive_errors == 0 {
        d.invalid(K, key, "spec.outlierDetection.consecutiveErrors", "must be at least 1");
        return None;
    }
    let ejection_time = match &o.ejection_time {
        None => DEFAULT_EJECTION_TIME,
        Some(t) => match t.parse() {
            Ok(t) if !t.is_zero() => t.into(),
            Ok(_) => {
                d.invalid(K, key, "spec.outlierDetection.ejectionTime", "must be more than 0 (e.g. 30s)");
                return None;
            }
            Err(e) => {
                d.invalid(K, key, "spec.outlierDetection.ejectionTime", e.to_string());
                return None;
            }
        },
    };
    let max_ejection_percent = o.max_ejection_percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
    if !(1..=100).contains(&max_ejection_percent) {
        d.invalid(K, key, "spec.outlierDetection.maxEjectionPercent", "must be from 1 to 100");
        return None;
    }
    Some(up::OutlierDetection { consecutive_errors, ejection_time, max_ejection_percent })
}

/// `Err(())` when a reference does not resolve (already reported): the export is then unusable,
/// since serving without the configured TLS would talk to the wrong peer or in the clear.
fn compile_tls(
    key: &ir::ObjectKey,
    ca: Option<&LocalRef>,
    client: Option<&LocalRef>,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Result<up::UpstreamTls, ()> {
    let mut out = up::UpstreamTls::default();
    let mut ok = true;
    if let Some(r) = ca {
        let field = "spec.tls.caCertificateRef";
        match secret_text(key, r, secrets, "ca.crt", field, d) {
            Some(pem) if certificates_ok(&pem) => out.ca_pem = Some(pem),
            Some(_) => {
                d.unresolved(
                    K,
                    key,
                    reason::INVALID,
                    field,
                    format!("Secret {}/{}: ca.crt holds no valid PEM certificate", key.namespace, r.name),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(r) = client {
        let field = "spec.tls.clientCertificateRef";
        let secret_key = ir::ObjectKey::new(key.namespace.clone(), r.name.clone());
        let typed = secrets.get(&secret_key).is_none_or(|s| s.type_.as_deref() == Some("kubernetes.io/tls"));
        if !typed {
            let actual = secrets.get(&secret_key).and_then(|s| s.type_.clone()).unwrap_or_default();
            d.unresolved(
                K,
                key,
                reason::INVALID,
                field,
                format!("Secret {secret_key} must have type kubernetes.io/tls (has {actual:?})"),
            );
            ok = false;
        } else {
            let cert = secret_text(key, r, secrets, "tls.crt", field, d);
            let private = cert.as_ref().and_then(|_| secret_text(key, r, secrets, "tls.key", field, d));
            match (cert, private) {
                (Some(cert_pem), Some(key_pem)) => {
                    if !certificates_ok(&cert_pem) {
                        d.unresolved(
                            K,
                            key,
                            reason::INVALID,
                            field,
                            format!("Secret {secret_key}: tls.crt holds no valid PEM certificate"),
                        );
                        ok = false;
                    } else if PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).is_err() {
                        // The message never includes key material.
                        d.unresolved(
                            K,
                            key,
                            reason::INVALID,
                            field,
                            format!("Secret {secret_key}: tls.key holds no valid PEM private key"),
                        );
                        ok = false;
                    } else {
                        out.client_certificate =
                            Some(up::ClientCertificate { cert_pem, key_pem: ir::Redacted::new(key_pem) });
                    }
                }
                _ => ok = false,
            }
        }
    }
    if ok { Ok(out) } else { Err(()) }
}

/// The UTF-8 text of `entry` in the referenced Secret; reports and returns `None` when missing.
fn secret_text(
    key: &ir::ObjectKey,
    r: &LocalRef,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    entry: &str,
    field: &str,
    d: &mut Diagnostics,
) -> Option<String> {
    let secret_key = ir::ObjectKey::new(key.namespace.clone(), r.name.clone());
    let Some(secret) = secrets.get(&secret_key) else {
        d.unresolved(
            K,
            key,
            reason::NOT_FOUND,
            field,
            format!("Secret {secret_key} not found: create it in {} or fix the name", key.namespace),
        );
        return None;
    };
    let text = secret
        .data
        .as_ref()
        .and_then(|data| data.get(entry))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| secret.string_data.as_ref().and_then(|data| data.get(entry).cloned()));
    if text.is_none() {
        d.unresolved(
            K,
            key,
            reason::INVALID,
            field,
            format!("Secret {secret_key} has no {entry} entry (PEM)"),
        );
    }
    text
}

fn certificates_ok(pem: &str) -> bool {
    matches!(
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>(),
        Ok(certs) if !certs.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_on_syntax() {
        assert_eq!(parse_hash_on("header.X-User"), Ok(up::HashOn::Header("x-user".into())));
        assert_eq!(parse_hash_on("query.id"), Ok(up::HashOn::Query("id".into())));
        assert_eq!(parse_hash_on("cookie.session"), Ok(up::HashOn::Cookie("session".into())));
        assert_eq!(parse_hash_on("principal"), Ok(up::HashOn::Principal));
        assert_eq!(parse_hash_on("sourceIp"), Ok(up::HashOn::SourceIp));
        assert!(parse_hash_on("header.").is_err());
        assert!(parse_hash_on("header.bad name").unwrap_err().contains("header name"));
        assert!(parse_hash_on("body").unwrap_err().contains("header.NAME"));
    }

    #[test]
    fn hostnames() {
        assert!(is_hostname("orders.internal"));
        assert!(is_hostname("localhost"));
        assert!(!is_hostname("-x.internal"));
        assert!(!is_hostname("a..b"));
    }
}
