//! TLS Secrets (`kubernetes.io/tls`) referenced by a GatewayAPI, checked and reduced to PEM.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tollgate_crds::common::LocalRef;
use tollgate_ir as ir;

use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::Kind;

/// Resolves each certificate reference to a Secret in the API's namespace and checks it holds a
/// PEM chain and key. Unresolved references are reported (`ResolvedRefs=False`); the API is still
/// served on its other certificates.
pub fn resolve_certificates(
    api: &ir::ObjectKey,
    refs: &[LocalRef],
    hostnames: &BTreeSet<String>,
    secrets: &BTreeMap<ir::ObjectKey, &Secret>,
    d: &mut Diagnostics,
) -> Vec<ir::Certificate> {
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let field = format!("spec.tls.certificateRefs[{i}]");
        let key = ir::ObjectKey::new(api.namespace.clone(), r.name.clone());
        let Some(secret) = secrets.get(&key) else {
            d.unresolved(Kind::GatewayAPI, api, reason::NOT_FOUND, field, format!("Secret {key} not found"));
            continue;
        };
        if secret.type_.as_deref() != Some("kubernetes.io/tls") {
            d.unresolved(
                Kind::GatewayAPI,
                api,
                reason::INVALID,
                field,
                format!(
                    "Secret {key} must have type kubernetes.io/tls (has {:?})",
                    secret.type_.as_deref().unwrap_or("")
                ),
            );
            continue;
        }
        let data = secret.data.clone().unwrap_or_default();
        let text = |name: &str| data.get(name).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let (Some(cert_pem), Some(key_pem)) = (text("tls.crt"), text("tls.key")) else {
            d.unresolved(
                Kind::GatewayAPI,
                api,
                reason::INVALID,
                field,
                format!("Secret {key} must hold tls.crt and tls.key (PEM)"),
            );
            continue;
        };
        let certs_ok = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>();
        if !matches!(certs_ok, Ok(ref c) if !c.is_empty()) {
            d.unresolved(
                Kind::GatewayAPI,
                api,
                reason::INVALID,
                field,
                format!("Secret {key}: tls.crt holds no valid PEM certificate"),
            );
            continue;
        }
        if PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).is_err() {
            // The message never includes key material.
            d.unresolved(
                Kind::GatewayAPI,
                api,
                reason::INVALID,
                field,
                format!("Secret {key}: tls.key holds no valid PEM private key"),
            );
            continue;
        }
        out.push(ir::Certificate {
            source: key,
            hostnames: hostnames.iter().cloned().collect(),
            cert_pem,
            key_pem: ir::Redacted::new(key_pem),
        });
    }
    out
}
