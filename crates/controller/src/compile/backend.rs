//! Resolving a Route's integration target to a Snapshot backend: Services through their
//! EndpointSlices (ready endpoints only), ExternalName Services, and URLs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tollgate_ir as ir;

/// Service and EndpointSlice indexes for one compile.
#[derive(Default)]
pub struct ServiceIndex<'a> {
    services: BTreeMap<ir::ObjectKey, &'a Service>,
    /// EndpointSlices by the Service they belong to (`kubernetes.io/service-name`).
    slices: BTreeMap<ir::ObjectKey, Vec<&'a EndpointSlice>>,
}

/// Why a service reference did not resolve.
#[derive(Debug, PartialEq)]
pub enum ServiceError {
    /// No such Service.
    NotFound,
    /// The Service has no such port.
    NoSuchPort {
        /// The ports it does have.
        available: Vec<i32>,
    },
}

impl<'a> ServiceIndex<'a> {
    /// Indexes the inputs.
    pub fn new(inputs: &'a crate::Inputs) -> ServiceIndex<'a> {
        let mut index = ServiceIndex::default();
        for service in &inputs.services {
            index.services.insert(service.key(), &service.object);
        }
        for slice in &inputs.endpoint_slices {
            let key = slice.key();
            let Some(service) = slice.labels().get("kubernetes.io/service-name").cloned() else {
                continue;
            };
            index.slices.entry(ir::ObjectKey::new(key.namespace, service)).or_default().push(&slice.object);
        }
        index
    }

    /// Resolves `service:port` in `namespace` to a backend with its ready endpoints (possibly
    /// none: the route then answers 503).
    pub fn resolve(&self, namespace: &str, name: &str, port: i32) -> Result<ir::Backend, ServiceError> {
        let key = ir::ObjectKey::new(namespace, name);
        let service = self.services.get(&key).ok_or(ServiceError::NotFound)?;
        let spec = service.spec.clone().unwrap_or_default();
        let ports = spec.ports.clone().unwrap_or_default();
        let backend_name = format!("{key}:{port}");
        if spec.type_.as_deref() == Some("ExternalName") {
            let host = spec.external_name.clone().unwrap_or_default();
            return Ok(http_backend(backend_name, vec![format!("{host}:{port}")], None));
        }
        let service_port = ports
            .iter()
            .find(|p| p.port == port)
            .ok_or_else(|| ServiceError::NoSuchPort { available: ports.iter().map(|p| p.port).collect() })?;
        let port_name = service_port.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in self.slices.get(&key).into_iter().flatten() {
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // Kubernetes: a nil `ready` means ready.
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    endpoints.push(authority(address, target));
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        let mut backend = http_backend(backend_name, endpoints, None);
        backend.service =
            Some(ir::distribution::ServiceRef { namespace: key.namespace, name: key.name, port });
        Ok(backend)
    }
}

fn authority(address: &str, port: i32) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// A plain-HTTP backend with default balancing and no outlier detection.
pub fn http_backend(name: String, endpoints: Vec<String>, host_header: Option<String>) -> ir::Backend {
    ir::Backend {
        name,
        scheme: ir::Scheme::Http,
        endpoints,
        host_header,
        tls_server_name: None,
        service: None,
        tls: None,
        load_balancing: ir::upstream::LoadBalancing::RoundRobin,
        outlier_detection: None,
        dns: None,
    }
}

/// A parsed `integration.url`.
#[derive(Debug, PartialEq)]
pub struct UrlTarget {
    /// The backend (one endpoint: the URL's authority; Host header set to it).
    pub backend: ir::Backend,
    /// The URL's path without trailing slash (`""` for none), prefixed to the forwarded path.
    pub path: String,
}

/// Parses an `http://` or `https://` URL with an authority and an optional path (no query, no
/// fragment, no user info).
pub fn parse_url(url: &str) -> Result<UrlTarget, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (ir::Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (ir::Scheme::Https, rest)
    } else {
        return Err("must start with http:// or https://".into());
    };
    if rest.contains(['?', '#']) {
        return Err("must not contain a query or fragment: use transforms to add query parameters".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("must not contain credentials (user@host)".into());
    }
    let parsed: http::uri::Authority =
        authority.parse().map_err(|_| format!("host {authority:?} is not valid"))?;
    let default_port = match scheme {
        ir::Scheme::Http => 80,
        ir::Scheme::Https => 443,
    };
    let port = parsed.port_u16().unwrap_or(default_port);
    let host = parsed.host().to_ascii_lowercase();
    let host_header = match parsed.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    Ok(UrlTarget {
        backend: ir::Backend {
            name: host_header.clone(),
            scheme,
            endpoints: vec![format!("{host}:{port}")],
            host_header: Some(host_header),
            tls_server_name: (scheme == ir::Scheme::Https).then(|| host.trim_matches(['[', ']']).to_string()),
            service: None,
            tls: None,
            load_balancing: ir::upstream::LoadBalancing::RoundRobin,
            outlier_detection: None,
            dns: None,
        },
        path: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_and_without_path() {
        let t = parse_url("https://Legacy.example/orders/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.backend.endpoints, vec!["legacy.example:443".to_string()]);
        assert_eq!(t.backend.host_header.as_deref(), Some("legacy.example"));
        assert_eq!(t.path, "/orders");
        let t = parse_url("http://127.0.0.1:8081").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.backend.endpoints, vec!["127.0.0.1:8081".to_string()]);
        assert_eq!(t.path, "");
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(parse_url("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_url("http://x/a?b=1").unwrap_err().contains("query"));
        assert!(parse_url("http://u:p@x/").unwrap_err().contains("credentials"));
        assert!(parse_url("http:///x").unwrap_err().contains("no host"));
    }
}
