//! Mutual TLS: the client-certificate verifier is chosen per connection from the SNI name.
//!
//! The TLS listener reads the ClientHello first (rustls `LazyConfigAcceptor`), finds the API
//! that serves the SNI name, and continues the handshake with a server configuration for that
//! API's client validation: none, or one per distinct CA bundle and mode (`Require` refuses a
//! handshake without a valid certificate; `Optional` verifies one when presented). Those
//! configurations are built on first use and cached in the Runtime.
//!
//! The handshake alone is not trusted for authorization: SNI and `Host` may name different APIs.
//! Every request is checked again (phase 5): a route of an API that requires a client
//! certificate is served only when the connection's certificate was verified against that API's
//! CA bundle — also on the plain-HTTP listener, where there is none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tollgate_ir::{self as ir, auth::ClientCertMode};

use super::AuthError;
use crate::runtime::Runtime;
use crate::tls::RuntimeCertResolver;

/// The verified identity of a TLS client.
#[derive(Debug)]
pub struct PeerIdentity {
    /// The certificate's subject, RFC 4514 style (`CN=partner-a, O=Partners`).
    pub subject: String,
    /// Which CA bundle verified it.
    pub ca_id: Arc<str>,
}

/// Client validation of one API.
#[derive(Debug)]
pub struct ClientAuth {
    ca_id: Arc<str>,
    mode: ClientCertMode,
    roots: Arc<rustls::RootCertStore>,
}

/// What a route requires of the connection.
#[derive(Clone, Debug)]
pub struct Requirement {
    ca_id: Arc<str>,
    mode: ClientCertMode,
}

impl ClientAuth {
    /// Loads the CA bundle; `None` (with a warning) when no certificate in it is usable.
    pub fn build(cv: &ir::auth::ClientValidation) -> Option<Arc<ClientAuth>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cv.ca_pem.as_bytes()).flatten() {
            if let Err(error) = roots.add(cert) {
                tracing::warn!(secret = %cv.source, %error, "skipping a CA certificate");
            }
        }
        if roots.is_empty() {
            tracing::warn!(secret = %cv.source, "no usable CA certificate; client certificates cannot verify");
        }
        let digest = hex::encode(Sha256::digest(cv.ca_pem.as_bytes()));
        Some(Arc::new(ClientAuth {
            ca_id: digest.get(..16).unwrap_or_default().into(),
            mode: cv.mode,
            roots: Arc::new(roots),
        }))
    }

    /// The per-request requirement.
    pub fn requirement(&self) -> Requirement {
        Requirement { ca_id: Arc::clone(&self.ca_id), mode: self.mode }
    }
}

impl Requirement {
    /// Checks the connection's certificate; returns the subject to use as principal.
    pub fn check<'a>(&self, peer: Option<&'a PeerIdentity>) -> Result<Option<&'a str>, AuthError> {
        match peer.filter(|p| p.ca_id == self.ca_id) {
            Some(peer) => Ok(Some(peer.subject.as_str())),
            None if self.mode == ClientCertMode::Require => Err(AuthError::forbidden(
                "client_certificate_required",
                "a valid client certificate is required for this API",
            )),
            None => Ok(None),
        }
    }
}

/// Server configurations by (CA bundle id, optional mode).
type ConfigCache = HashMap<(Arc<str>, bool), Arc<rustls::ServerConfig>>;

/// SNI name → client validation, plus the server configurations built so far.
#[derive(Default)]
pub struct MtlsTable {
    exact: HashMap<String, Option<Arc<ClientAuth>>>,
    wildcards: Vec<(String, Option<Arc<ClientAuth>>)>,
    any: Option<Option<Arc<ClientAuth>>>,
    configs: Mutex<ConfigCache>,
    enabled: bool,
}

impl MtlsTable {
    /// Builds the table with the same host precedence as routing: exact name, longest
    /// wildcard, then the API that accepts any host.
    pub fn build(snapshot: &ir::Snapshot) -> MtlsTable {
        let mut table = MtlsTable::default();
        for api in &snapshot.apis {
            let auth = api.auth.client_validation.as_ref().and_then(ClientAuth::build);
            table.enabled |= auth.is_some();
            let mut names: Vec<&String> = api.hostnames.iter().collect();
            names.extend(api.stages.iter().flat_map(|s| s.hostnames.iter()));
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => {
                        if !table.wildcards.iter().any(|(s, _)| s == suffix) {
                            table.wildcards.push((suffix.to_string(), auth.clone()));
                        }
                    }
                    None => {
                        table.exact.entry(name).or_insert_with(|| auth.clone());
                    }
                }
            }
            if api.hostnames.is_empty()
                && api.stages.iter().any(|s| s.hostnames.is_empty())
                && table.any.is_none()
            {
                table.any = Some(auth);
            }
        }
        table.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table
    }

    fn lookup(&self, sni: Option<&str>) -> Option<&Arc<ClientAuth>> {
        let by_name = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()).and_then(|sni| {
            self.exact.get(&sni).or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
                    .map(|(_, auth)| auth)
            })
        });
        by_name.or(self.any.as_ref())?.as_ref()
    }

    /// The server configuration for a ClientHello's SNI name: `default` when the API there has
    /// no client validation.
    fn config_for(
        &self,
        sni: Option<&str>,
        default: &Arc<rustls::ServerConfig>,
        slot: &Arc<ArcSwapOption<Runtime>>,
    ) -> Arc<rustls::ServerConfig> {
        let Some(auth) = self.lookup(sni) else {
            return Arc::clone(default);
        };
        let optional = auth.mode == ClientCertMode::Optional;
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = configs.get(&(Arc::clone(&auth.ca_id), optional)) {
            return Arc::clone(config);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::clone(&auth.roots), provider);
        if optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = match builder.build() {
            Ok(v) => v,
            Err(error) => {
                // An unusable CA bundle: refuse every certificate rather than skip validation.
                tracing::warn!(%error, "client certificate verifier unavailable; refusing mTLS handshakes");
                return Arc::new(refusing_config(default));
            }
        };
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(RuntimeCertResolver::new(Arc::clone(slot))));
        config.alpn_protocols = default.alpn_protocols.clone();
        let config = Arc::new(config);
        configs.insert((Arc::clone(&auth.ca_id), optional), Arc::clone(&config));
        config
    }
}

/// A configuration no client can complete a handshake with (no ALPN match is not enough, so
/// it carries no certificate resolver result).
fn refusing_config(default: &Arc<rustls::ServerConfig>) -> rustls::ServerConfig {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let mut config =
        rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(NoCert));
    config.alpn_protocols = default.alpn_protocols.clone();
    config
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake failed.
    #[error("TLS handshake failed: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
}

/// Completes a TLS handshake, choosing the client validation by SNI; returns the stream and the
/// verified client identity, if any.
pub async fn accept(
    stream: TcpStream,
    default: &Arc<rustls::ServerConfig>,
    slot: &Arc<ArcSwapOption<Runtime>>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Option<Arc<PeerIdentity>>), HandshakeError> {
    let handshake = async {
        let start = tokio_rustls::LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let runtime = slot.load_full();
        let config = match runtime.as_deref() {
            Some(rt) if rt.mtls.enabled => {
                rt.mtls.config_for(start.client_hello().server_name(), default, slot)
            }
            _ => Arc::clone(default),
        };
        let stream = start.into_stream(config).await?;
        let peer = identity(&stream, runtime.as_deref());
        Ok::<_, HandshakeError>((stream, peer))
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| HandshakeError::Timeout)?
}

fn identity(stream: &TlsStream<TcpStream>, runtime: Option<&Runtime>) -> Option<Arc<PeerIdentity>> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    let sni = connection.server_name();
    let auth = runtime?.mtls.lookup(sni)?;
    let subject = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => cert.subject().to_string(),
        Err(_) => return None,
    };
    Some(Arc::new(PeerIdentity { subject, ca_id: Arc::clone(&auth.ca_id) }))
}
