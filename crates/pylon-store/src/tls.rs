//! ACME state: certificates with sealed keys, sealed account credentials, and the challenges
//! in flight.

use crate::{get, Credential, Store, StoreError};

/// A certificate shared by every instance.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateRow {
    /// The certificate's name (its first domain).
    pub name: String,
    /// The chain, leaf first, in PEM.
    pub chain_pem: String,
    /// The private key in PEM, sealed; its `provider` is the label it was sealed under.
    pub key: Credential,
    /// The leaf's `notAfter`, unix seconds.
    pub not_after: i64,
    /// When it was stored, unix milliseconds (instances compare this to what they serve).
    pub updated_at: i64,
}

/// The label a certificate's key is sealed under, so a sealed key cannot be moved to another
/// certificate's row.
pub fn certificate_label(name: &str) -> String {
    format!("tls:{name}")
}

/// The label an ACME account is sealed under.
pub fn account_label(directory: &str) -> String {
    format!("acme:{directory}")
}

impl Store {
    /// The stored certificate `name`, if any.
    pub async fn certificate(&self, name: &str) -> Result<Option<CertificateRow>, StoreError> {
        let row = sqlx::query(
            "SELECT name, chain_pem, key_ciphertext, key_nonce, master_key_id, not_after, updated_at \
             FROM tls_certificates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| certificate_row(&r)).transpose()
    }

    /// Every stored certificate (for master-key rotation).
    pub async fn certificates(&self) -> Result<Vec<CertificateRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, chain_pem, key_ciphertext, key_nonce, master_key_id, not_after, updated_at \
             FROM tls_certificates ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(certificate_row).collect()
    }

    /// Stores (or replaces) a certificate.
    pub async fn put_certificate(&self, c: &CertificateRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tls_certificates (name, chain_pem, key_ciphertext, key_nonce, master_key_id, not_after, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET chain_pem = excluded.chain_pem, \
             key_ciphertext = excluded.key_ciphertext, key_nonce = excluded.key_nonce, \
             master_key_id = excluded.master_key_id, not_after = excluded.not_after, updated_at = excluded.updated_at",
        )
        .bind(&c.name)
        .bind(&c.chain_pem)
        .bind(&c.key.ciphertext)
        .bind(&c.key.nonce)
        .bind(&c.key.master_key_id)
        .bind(c.not_after)
        .bind(c.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The sealed account for an ACME directory, if one was registered.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<Credential>, StoreError> {
        let row = sqlx::query(
            "SELECT ciphertext, nonce, master_key_id, updated_at FROM acme_accounts WHERE directory = $1",
        )
        .bind(directory)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| account(directory, &r)).transpose()
    }

    /// Every stored ACME account, by directory (for master-key rotation).
    pub async fn acme_accounts(&self) -> Result<Vec<(String, Credential)>, StoreError> {
        let rows = sqlx::query(
            "SELECT directory, ciphertext, nonce, master_key_id, updated_at FROM acme_accounts ORDER BY directory",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let directory: String = get(r, "directory")?;
                let sealed = account(&directory, r)?;
                Ok((directory, sealed))
            })
            .collect()
    }

    /// Stores (or replaces) the sealed account for `directory`.
    pub async fn put_acme_account(
        &self,
        directory: &str,
        sealed: &Credential,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, ciphertext, nonce, master_key_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (directory) DO UPDATE SET ciphertext = excluded.ciphertext, nonce = excluded.nonce, \
             master_key_id = excluded.master_key_id, updated_at = excluded.updated_at",
        )
        .bind(directory)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.master_key_id)
        .bind(sealed.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Publishes a challenge answer until `expires_at` (unix ms); expired ones are removed.
    pub async fn put_acme_challenge(
        &self,
        name: &str,
        key_authorization: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM acme_challenges WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO acme_challenges (name, key_authorization, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET key_authorization = excluded.key_authorization, expires_at = excluded.expires_at",
        )
        .bind(name)
        .bind(key_authorization)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The answer to a challenge in flight, unless it expired.
    pub async fn acme_challenge(&self, name: &str, now: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT key_authorization FROM acme_challenges WHERE name = $1 AND expires_at >= $2",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| get(&r, "key_authorization")).transpose()
    }

    /// Withdraws a challenge once its order is done.
    pub async fn delete_acme_challenge(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM acme_challenges WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn certificate_row(r: &sqlx::any::AnyRow) -> Result<CertificateRow, StoreError> {
    let name: String = get(r, "name")?;
    let updated_at = get(r, "updated_at")?;
    Ok(CertificateRow {
        chain_pem: get(r, "chain_pem")?,
        key: Credential {
            provider: certificate_label(&name),
            ciphertext: get(r, "key_ciphertext")?,
            nonce: get(r, "key_nonce")?,
            master_key_id: get(r, "master_key_id")?,
            updated_at,
        },
        not_after: get(r, "not_after")?,
        updated_at,
        name,
    })
}

fn account(directory: &str, r: &sqlx::any::AnyRow) -> Result<Credential, StoreError> {
    Ok(Credential {
        provider: account_label(directory),
        ciphertext: get(r, "ciphertext")?,
        nonce: get(r, "nonce")?,
        master_key_id: get(r, "master_key_id")?,
        updated_at: get(r, "updated_at")?,
    })
}
