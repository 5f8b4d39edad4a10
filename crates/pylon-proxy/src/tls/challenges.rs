//! Answers to ACME challenges in flight (RFC 8555 §8.3 HTTP-01, RFC 8737 TLS-ALPN-01).
//!
//! The instance that places an order publishes its answers here and in the store; the CA may
//! reach any instance behind the load balancer, so an instance that has no local answer asks
//! the store, a few lookups at a time (the paths are unauthenticated).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The ALPN protocol a TLS-ALPN-01 validation negotiates.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Answers published locally at once: an order has one per domain.
const MAX_LOCAL: usize = 256;
/// Store lookups in flight from the unauthenticated challenge paths; more are answered 404.
const MAX_LOOKUPS: usize = 4;

/// Where answers published by another instance are found (the store).
pub trait ChallengeSource: Send + Sync {
    /// The key authorization published under `name`, if any.
    fn lookup(&self, name: String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>>;
}

/// The challenge answers this instance can give.
pub struct Challenges {
    local: Mutex<HashMap<String, String>>,
    remote: OnceLock<Arc<dyn ChallengeSource>>,
    lookups: tokio::sync::Semaphore,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges {
            local: Mutex::new(HashMap::new()),
            remote: OnceLock::new(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
        }
    }
}

/// The name an HTTP-01 answer is published under.
pub fn http01_name(token: &str) -> String {
    format!("http:{token}")
}

/// The name a TLS-ALPN-01 answer is published under.
pub fn alpn01_name(domain: &str) -> String {
    format!("alpn:{}", domain.to_ascii_lowercase())
}

impl Challenges {
    /// Sets where answers published by other instances are looked up.
    pub fn set_source(&self, source: Arc<dyn ChallengeSource>) {
        let _ = self.remote.set(source);
    }

    /// Publishes an answer on this instance (bounded: the oldest orders' answers are dropped).
    pub fn publish(&self, name: String, key_authorization: String) {
        if let Ok(mut m) = self.local.lock() {
            if m.len() >= MAX_LOCAL {
                m.clear();
            }
            m.insert(name, key_authorization);
        }
    }

    /// Withdraws an answer once its order is done.
    pub fn withdraw(&self, name: &str) {
        if let Ok(mut m) = self.local.lock() {
            m.remove(name);
        }
    }

    /// The answer published under `name` here or by another instance.
    pub async fn answer(&self, name: String) -> Option<String> {
        if let Some(local) = self.local.lock().ok().and_then(|m| m.get(&name).cloned()) {
            return Some(local);
        }
        let remote = self.remote.get()?;
        let _permit = self.lookups.try_acquire().ok()?;
        remote.lookup(name).await
    }

    /// The key authorization for an HTTP-01 token; tokens are base64url (RFC 8555 §8.1).
    pub async fn http01(&self, token: &str) -> Option<String> {
        let well_formed = !token.is_empty()
            && token.len() <= 128
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return None;
        }
        self.answer(http01_name(token)).await
    }

    /// A TLS configuration answering a TLS-ALPN-01 validation of `domain`: a self-signed
    /// certificate for it carrying the key authorization's digest (RFC 8737 §3).
    pub async fn alpn01(&self, domain: &str) -> Option<Arc<ServerConfig>> {
        let key_authorization = self.answer(alpn01_name(domain)).await?;
        match validation_config(domain, &key_authorization) {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!(target: "pylon::acme", %domain, error = %e, "cannot build the tls-alpn-01 certificate");
                None
            }
        }
    }
}

/// Serves one certificate whatever the client asks.
#[derive(Debug)]
struct One(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for One {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn validation_config(domain: &str, key_authorization: &str) -> Result<Arc<ServerConfig>, String> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Built by hand: rustls' own loaders reject the critical acmeIdentifier extension.
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    let certified =
        rustls::sign::CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signing);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(Arc::new(certified))));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Store(String);
    impl ChallengeSource for Store {
        fn lookup(&self, name: String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> {
            let found = (name == self.0).then(|| "from-store".to_owned());
            Box::pin(async move { found })
        }
    }

    /// Local answers first, then the store; malformed tokens never reach the store.
    #[tokio::test]
    async fn answers_come_from_here_or_the_store() {
        let c = Challenges::default();
        c.publish(http01_name("tok"), "tok.thumb".into());
        assert_eq!(c.http01("tok").await.as_deref(), Some("tok.thumb"));
        assert_eq!(c.http01("other").await, None);
        c.set_source(Arc::new(Store(http01_name("other"))));
        assert_eq!(c.http01("other").await.as_deref(), Some("from-store"));
        assert_eq!(c.http01("../etc").await, None);
        c.withdraw(&http01_name("tok"));
        assert_eq!(c.http01("tok").await, None);
        c.publish(alpn01_name("A.test"), "ka".into());
        let config = c.alpn01("a.test").await.expect("a validation config");
        assert_eq!(config.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
    }
}
