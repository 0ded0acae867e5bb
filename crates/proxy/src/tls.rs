//! TLS termination: certificates chosen by SNI from the current Runtime.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tollgate_ir as ir;

use crate::runtime::Runtime;

/// Why a certificate from the snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate PEM held no certificate.
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    /// The PEM could not be parsed.
    #[error("tls.crt is not valid PEM: {0}")]
    CertPem(#[source] rustls_pki_types::pem::Error),
    /// The private key could not be parsed.
    #[error("tls.key is not a valid PEM private key: {0}")]
    KeyPem(#[source] rustls_pki_types::pem::Error),
    /// The key type is not supported or does not match.
    #[error("tls.key is not a supported key: {0}")]
    Key(#[source] rustls::Error),
}

/// Parses a PEM chain and key into a rustls certified key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::CertPem)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CertError::KeyPem)?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(CertError::Key)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(CertError::Key)?;
    Ok(certified)
}

/// Certificates by hostname.
#[derive(Default)]
pub struct CertTable {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    wildcards: Vec<(String, Vec<Arc<CertifiedKey>>)>,
    /// Served when the client sends no SNI and exactly one certificate is configured.
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// Loads every certificate; one that fails to load is skipped with a warning (compile has
    /// already reported it on the GatewayAPI).
    pub fn build(certs: &[ir::Certificate]) -> CertTable {
        let mut table = CertTable::default();
        let mut loaded = 0;
        for cert in certs {
            let key = match certified_key(&cert.cert_pem, cert.key_pem.expose()) {
                Ok(key) => Arc::new(key),
                Err(error) => {
                    tracing::warn!(secret = %cert.source, %error, "skipping TLS certificate");
                    continue;
                }
            };
            loaded += 1;
            table.default = Some(Arc::clone(&key));
            for host in &cert.hostnames {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => match table.wildcards.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, keys)) => keys.push(Arc::clone(&key)),
                        None => table.wildcards.push((suffix.to_string(), vec![Arc::clone(&key)])),
                    },
                    None => table.exact.entry(host).or_default().push(Arc::clone(&key)),
                }
            }
        }
        if loaded != 1 {
            table.default = None;
        }
        table.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table
    }

    /// The certificate for an SNI name: exact name, then the longest wildcard. When several
    /// certificates claim the name, the first whose subject names cover it wins.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let sni = sni.to_ascii_lowercase();
        let candidates = self.exact.get(&sni).or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
                .map(|(_, keys)| keys)
        })?;
        if candidates.len() == 1 {
            return candidates.first().cloned();
        }
        let name = ServerName::try_from(sni.as_str()).ok()?;
        candidates
            .iter()
            .find(|key| {
                key.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
            .or_else(|| candidates.first())
            .cloned()
    }
}

/// Resolves server certificates from whatever Runtime is current.
pub struct RuntimeCertResolver {
    runtime: Arc<ArcSwapOption<Runtime>>,
}

impl std::fmt::Debug for RuntimeCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeCertResolver")
    }
}

impl RuntimeCertResolver {
    /// A resolver reading the given runtime slot.
    pub fn new(runtime: Arc<ArcSwapOption<Runtime>>) -> Self {
        Self { runtime }
    }
}

impl ResolvesServerCert for RuntimeCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.runtime.load().as_ref()?.certs.resolve(hello.server_name())
    }
}

/// A rustls server configuration for the gateway's TLS listener (ALPN h2 and http/1.1).
pub fn server_config(runtime: Arc<ArcSwapOption<Runtime>>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(RuntimeCertResolver::new(runtime)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
