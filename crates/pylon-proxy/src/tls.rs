//! TLS termination: rustls with TLS 1.2 and 1.3 only (AEAD suites with forward secrecy, in the
//! server's order of preference), ALPN for HTTP/2 and HTTP/1.1, session resumption by ticket
//! and by id, an optional stapled OCSP response, and a certificate that can be swapped while
//! serving (SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setup problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot read the OCSP response {path}: {reason}")]
    Ocsp { path: String, reason: String },
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Config(String),
}

/// The server's TLS configuration and where it came from.
#[derive(Clone)]
pub struct Tls {
    pub(crate) config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    ocsp: Option<PathBuf>,
    /// The leaf certificate's `notAfter` (unix seconds) as last loaded; 0 when unreadable.
    not_after: Arc<AtomicI64>,
}

/// The `notAfter` of the first certificate in a PEM chain, in unix seconds.
fn leaf_not_after(cert: &Path) -> Option<i64> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

fn server_config(
    cert: &Path,
    key: &Path,
    ocsp: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    // A DER OCSP response for the leaf, refreshed by whoever fetches it (as nginx's
    // `ssl_stapling_file`); empty when there is none.
    let ocsp = match ocsp {
        None => Vec::new(),
        Some(path) => std::fs::read(path).map_err(|e| TlsError::Ocsp {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert_with_ocsp(certs, key, ocsp)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server picks from its own list (strongest first), not the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

impl Tls {
    /// Loads the certificate chain and key, and the OCSP response to staple if there is one.
    pub fn load(cert: &Path, key: &Path, ocsp: Option<&Path>) -> Result<Tls, TlsError> {
        let config = RustlsConfig::from_config(server_config(cert, key, ocsp)?);
        Ok(Tls {
            config,
            cert: cert.to_owned(),
            key: key.to_owned(),
            ocsp: ocsp.map(Path::to_owned),
            not_after: Arc::new(AtomicI64::new(leaf_not_after(cert).unwrap_or(0))),
        })
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.not_after.load(Ordering::Relaxed)).ok()?;
        (secs > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Re-reads the files; new connections use the new certificate, open ones are untouched.
    /// On error the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config
            .reload_from_config(server_config(&self.cert, &self.key, self.ocsp.as_deref())?);
        self.not_after
            .store(leaf_not_after(&self.cert).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}
