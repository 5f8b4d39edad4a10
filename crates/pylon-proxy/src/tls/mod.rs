//! TLS termination: rustls with TLS 1.2 and 1.3 only (AEAD suites with forward secrecy, in the
//! server's order of preference), ALPN for HTTP/2 and HTTP/1.1, session resumption by ticket
//! and by id, an optional stapled OCSP response, and a certificate that can be swapped while
//! serving: re-read from files (SIGHUP) or installed by the ACME client.

pub mod challenges;

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
    source: Source,
    /// The leaf certificate's `notAfter` (unix seconds) as last loaded; 0 when unreadable.
    not_after: Arc<AtomicI64>,
}

#[derive(Clone)]
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        ocsp: Option<PathBuf>,
    },
    /// Installed by the ACME client; TLS-ALPN-01 validations answered when `alpn` is set.
    Acme {
        challenges: Arc<challenges::Challenges>,
        alpn: bool,
    },
}

/// The leaf's `notAfter` and `notBefore`, in unix seconds.
fn validity(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let v = parsed.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The `notAfter` of the first certificate in a PEM chain, in unix seconds.
fn leaf_not_after(cert: &Path) -> Option<i64> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    Some(validity(&der)?.1)
}

/// The validity (`notBefore`, `notAfter`, unix seconds) of the first certificate of a PEM chain.
pub fn chain_validity(chain_pem: &str) -> Option<(i64, i64)> {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    validity(&der)
}

/// A handshake before the first certificate is installed fails (no certificate to offer).
#[derive(Debug)]
struct NoCertificateYet;

impl rustls::server::ResolvesServerCert for NoCertificateYet {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))
}

fn finish(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server picks from its own list (strongest first), not the client's.
    config.ignore_client_order = true;
    Arc::new(config)
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
    let config = builder()?
        .with_no_client_auth()
        .with_single_cert_with_ocsp(certs, key, ocsp)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(finish(config))
}

impl Tls {
    /// Loads the certificate chain and key, and the OCSP response to staple if there is one.
    pub fn load(cert: &Path, key: &Path, ocsp: Option<&Path>) -> Result<Tls, TlsError> {
        let config = RustlsConfig::from_config(server_config(cert, key, ocsp)?);
        Ok(Tls {
            config,
            source: Source::Files {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ocsp: ocsp.map(Path::to_owned),
            },
            not_after: Arc::new(AtomicI64::new(leaf_not_after(cert).unwrap_or(0))),
        })
    }

    /// TLS whose certificate the ACME client installs; until it does, handshakes fail.
    /// `alpn`: answer TLS-ALPN-01 validations on this listener.
    pub fn acme(alpn: bool) -> Result<Tls, TlsError> {
        let config = builder()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificateYet));
        Ok(Tls {
            config: RustlsConfig::from_config(finish(config)),
            source: Source::Acme {
                challenges: Arc::default(),
                alpn,
            },
            not_after: Arc::new(AtomicI64::new(0)),
        })
    }

    /// The ACME challenge answers, when the certificate comes from ACME.
    pub fn challenges(&self) -> Option<&Arc<challenges::Challenges>> {
        match &self.source {
            Source::Acme { challenges, .. } => Some(challenges),
            Source::Files { .. } => None,
        }
    }

    /// The challenge answers to consult during handshakes (TLS-ALPN-01).
    pub(crate) fn alpn_challenges(&self) -> Option<&Arc<challenges::Challenges>> {
        match &self.source {
            Source::Acme {
                challenges,
                alpn: true,
            } => Some(challenges),
            _ => None,
        }
    }

    /// Serves a new certificate (PEM chain, leaf first, and PEM key) to new connections; open
    /// ones keep theirs.
    pub fn install(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let what = |reason: String| TlsError::Cert {
            path: "(from the store)".into(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| what(e.to_string()))?;
        let (_, not_after) = certs
            .first()
            .and_then(validity)
            .ok_or_else(|| what("no readable certificate in the chain".into()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
            path: "(from the store)".into(),
            reason: e.to_string(),
        })?;
        let config = builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        self.config.reload_from_config(finish(config));
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.not_after.load(Ordering::Relaxed)).ok()?;
        (secs > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Re-reads the files; new connections use the new certificate, open ones are untouched.
    /// On error the current certificate stays in use. ACME certificates are not in files: the
    /// ACME client keeps them current.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Source::Files { cert, key, ocsp } = &self.source else {
            return Ok(());
        };
        self.config
            .reload_from_config(server_config(cert, key, ocsp.as_deref())?);
        self.not_after
            .store(leaf_not_after(cert).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}
