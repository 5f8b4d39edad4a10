//! Provider credentials at rest: AES-256-GCM under a master key, each record naming its key.
//!
//! The keyring holds the current master key and, during a rotation, previous ones: records are
//! always written under the current key and read under whichever key they name, so instances keep
//! working while `pylon secrets rotate-master` re-encrypts everything.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pylon_store::Credential;
use sha2::{Digest, Sha256};

/// A credential problem; never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// No master key is configured, so credentials cannot be stored.
    #[error("no master key: set PYLON_MASTER_KEY (32 random bytes, base64; `pylon secrets gen-master` makes one)")]
    NoMasterKey,
    /// The master key is not 32 bytes of base64.
    #[error("{0} must be 32 bytes, base64-encoded")]
    BadMasterKey(&'static str),
    /// A record was encrypted under a key the keyring does not have.
    #[error("credential of `{provider}` is encrypted under master key {key_id}, which is not configured (set it as PYLON_MASTER_KEY_PREVIOUS)")]
    UnknownKey { provider: String, key_id: String },
    /// Decryption failed: wrong key or tampered record.
    #[error("credential of `{0}` does not decrypt (wrong master key or tampered record)")]
    Corrupt(String),
    /// The OS random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl MasterKey {
    fn parse(text: &str, what: &'static str) -> Result<MasterKey, SecretsError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SecretsError::BadMasterKey(what))?;
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretsError::BadMasterKey(what))?;
        if bytes.len() != 32 {
            return Err(SecretsError::BadMasterKey(what));
        }
        // The id names the key without revealing it.
        let id = Sha256::digest(&bytes)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(MasterKey { id, cipher })
    }
}

/// The master keys this instance can use.
#[derive(Default)]
pub struct Keyring {
    current: Option<MasterKey>,
    previous: Vec<MasterKey>,
}

impl Keyring {
    /// From `PYLON_MASTER_KEY` and `PYLON_MASTER_KEY_PREVIOUS` (comma-separated) values.
    pub fn new(current: Option<&str>, previous: Option<&str>) -> Result<Keyring, SecretsError> {
        let current = current
            .filter(|c| !c.trim().is_empty())
            .map(|c| MasterKey::parse(c, "PYLON_MASTER_KEY"))
            .transpose()?;
        let previous = previous
            .into_iter()
            .flat_map(|p| p.split(','))
            .filter(|p| !p.trim().is_empty())
            .map(|p| MasterKey::parse(p, "PYLON_MASTER_KEY_PREVIOUS"))
            .collect::<Result<_, _>>()?;
        Ok(Keyring { current, previous })
    }

    /// The id of the key new records are written under.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Encrypts a provider's credential under the current key; the provider name is
    /// authenticated too, so a record cannot be moved to another provider.
    pub fn seal(&self, provider: &str, secret: &str, now: i64) -> Result<Credential, SecretsError> {
        let key = self.current.as_ref().ok_or(SecretsError::NoMasterKey)?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| SecretsError::Random(e.to_string()))?;
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: provider.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Corrupt(provider.to_owned()))?;
        Ok(Credential {
            provider: provider.to_owned(),
            ciphertext: B64.encode(ciphertext),
            nonce: B64.encode(nonce),
            master_key_id: key.id.clone(),
            updated_at: now,
        })
    }

    /// Decrypts a record under the key it names.
    pub fn open(&self, c: &Credential) -> Result<String, SecretsError> {
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == c.master_key_id)
            .ok_or_else(|| SecretsError::UnknownKey {
                provider: c.provider.clone(),
                key_id: c.master_key_id.clone(),
            })?;
        let corrupt = || SecretsError::Corrupt(c.provider.clone());
        let nonce = B64.decode(&c.nonce).map_err(|_| corrupt())?;
        let ciphertext = B64.decode(&c.ciphertext).map_err(|_| corrupt())?;
        if nonce.len() != 12 {
            return Err(corrupt());
        }
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: c.provider.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

/// A new random master key, base64.
pub fn generate_master() -> Result<String, SecretsError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_rotate() {
        let a = generate_master().unwrap();
        let b = generate_master().unwrap();
        let old = Keyring::new(Some(&a), None).unwrap();
        let c = old.seal("openai", "sk-secret", 1).unwrap();
        assert!(!c.ciphertext.contains("sk-secret"));
        assert_eq!(old.open(&c).unwrap(), "sk-secret");
        let both = Keyring::new(Some(&b), Some(&a)).unwrap();
        assert_eq!(
            both.open(&c).unwrap(),
            "sk-secret",
            "previous keys still read"
        );
        let resealed = both.seal("openai", &both.open(&c).unwrap(), 2).unwrap();
        assert_eq!(resealed.master_key_id, both.current_id().unwrap());
        let new_only = Keyring::new(Some(&b), None).unwrap();
        assert_eq!(new_only.open(&resealed).unwrap(), "sk-secret");
        assert!(matches!(
            new_only.open(&c),
            Err(SecretsError::UnknownKey { .. })
        ));
        let moved = Credential {
            provider: "anthropic".into(),
            ..resealed
        };
        assert!(
            matches!(new_only.open(&moved), Err(SecretsError::Corrupt(_))),
            "bound to its provider"
        );
        assert!(matches!(
            Keyring::new(Some("short"), None),
            Err(SecretsError::BadMasterKey(_))
        ));
        assert!(matches!(
            Keyring::default().seal("x", "y", 0),
            Err(SecretsError::NoMasterKey)
        ));
    }
}
