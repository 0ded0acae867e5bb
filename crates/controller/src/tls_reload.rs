//! The controller's serving certificate, re-read when its files change.
//!
//! In a cluster the certificate and key are a mounted Secret (cert-manager, or the chart's
//! generated one); when it is rotated, the kubelet swaps the files under the running process.
//! [`ReloadingCert`] looks at the files' modification times at most once per check interval,
//! during a TLS handshake, and loads the new pair; a pair that does not load (half-written files,
//! a key that does not match) is logged and the previous certificate keeps serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Loads a PEM certificate chain and its PEM private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let file_error =
        |path: &Path, message: String| CertError::File { path: path.display().to_string(), message };
    let cert_pem = std::fs::read(cert).map_err(|e| file_error(cert, e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| file_error(key, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(cert, "holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, key_der, &provider).map_err(CertError::Rustls)
}

/// A server certificate that follows its files.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    check_every: Duration,
    /// When the files were last looked at, and their modification times then.
    checked: Mutex<(Instant, Option<(SystemTime, SystemTime)>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl ReloadingCert {
    /// Loads the pair now (an error here is a startup error) and re-checks the files at most once
    /// per `check_every`.
    pub fn new(cert: &Path, key: &Path, check_every: Duration) -> Result<ReloadingCert, CertError> {
        let loaded = load_pair(cert, key)?;
        Ok(ReloadingCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: ArcSwap::from_pointee(loaded),
            check_every,
            checked: Mutex::new((Instant::now(), modified(cert, key))),
        })
    }

    /// The certificate served now, after reloading it if the files changed and a check is due.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.refresh();
        self.current.load_full()
    }

    fn refresh(&self) {
        let Ok(mut checked) = self.checked.lock() else { return };
        if checked.0.elapsed() < self.check_every {
            return;
        }
        let stamps = modified(&self.cert_path, &self.key_path);
        checked.0 = Instant::now();
        if stamps == checked.1 {
            return;
        }
        match load_pair(&self.cert_path, &self.key_path) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                checked.1 = stamps;
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
            }
            // Keep the stamps: the next check tries again (the files may be mid-rotation).
            Err(error) => {
                tracing::warn!(%error, "serving certificate changed but does not load; keeping the previous one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((stamp(cert)?, stamp(key)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn leaf(cert: &CertifiedKey) -> Vec<u8> {
        cert.cert[0].as_ref().to_vec()
    }

    fn set_mtime(path: &Path, seconds: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)).unwrap();
    }

    #[test]
    fn a_rotated_pair_is_served_after_the_check_interval_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a) = pair("controller.a");
        std::fs::write(&cert_path, &cert_a).unwrap();
        std::fs::write(&key_path, &key_a).unwrap();
        set_mtime(&cert_path, 1_000);
        set_mtime(&key_path, 1_000);
        let reloading = ReloadingCert::new(&cert_path, &key_path, Duration::ZERO).unwrap();
        let first = leaf(&reloading.current());

        // Rotation: new files, new modification times.
        let (cert_b, key_b) = pair("controller.b");
        std::fs::write(&cert_path, &cert_b).unwrap();
        std::fs::write(&key_path, &key_b).unwrap();
        set_mtime(&cert_path, 2_000);
        set_mtime(&key_path, 2_000);
        let second = leaf(&reloading.current());
        assert_ne!(first, second, "the rotated certificate is served");
        assert_eq!(second, leaf(&load_pair(&cert_path, &key_path).unwrap()));

        // Half-written rotation: the key does not parse. The previous pair keeps serving.
        std::fs::write(&key_path, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        set_mtime(&key_path, 3_000);
        assert_eq!(leaf(&reloading.current()), second);

        // The rotation completes: picked up on the next check.
        let (cert_c, key_c) = pair("controller.c");
        std::fs::write(&cert_path, &cert_c).unwrap();
        std::fs::write(&key_path, &key_c).unwrap();
        set_mtime(&cert_path, 4_000);
        set_mtime(&key_path, 4_000);
        assert_eq!(leaf(&reloading.current()), leaf(&load_pair(&cert_path, &key_path).unwrap()));
    }

    #[test]
    fn files_are_not_looked_at_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a) = pair("controller.a");
        std::fs::write(&cert_path, &cert_a).unwrap();
        std::fs::write(&key_path, &key_a).unwrap();
        let reloading = ReloadingCert::new(&cert_path, &key_path, Duration::from_secs(3600)).unwrap();
        let first = leaf(&reloading.current());
        let (cert_b, key_b) = pair("controller.b");
        std::fs::write(&cert_path, &cert_b).unwrap();
        std::fs::write(&key_path, &key_b).unwrap();
        set_mtime(&cert_path, 2_000);
        assert_eq!(leaf(&reloading.current()), first);
    }

    #[test]
    fn a_mismatched_key_is_a_startup_error_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, "not pem").unwrap();
        std::fs::write(&key_path, pair("x").1).unwrap();
        let error = ReloadingCert::new(&cert_path, &key_path, Duration::ZERO).unwrap_err().to_string();
        assert!(error.contains("tls.crt"), "{error}");
    }
}
