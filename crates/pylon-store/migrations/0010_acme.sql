-- Certificates obtained over ACME, shared by every instance: the chain in PEM and the private
-- key sealed under the master key (as provider credentials are).
CREATE TABLE tls_certificates (
    name TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    key_ciphertext TEXT NOT NULL,
    key_nonce TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- ACME accounts by directory URL: the account key and URL (instant-acme's credentials JSON),
-- sealed under the master key.
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    ciphertext TEXT NOT NULL,
    nonce TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Challenges being validated (`http:<token>` or `alpn:<domain>` → key authorization), so
-- whichever instance the CA reaches can answer. Short-lived; not backed up.
CREATE TABLE acme_challenges (
    name TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
