-- Portable DDL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    rpm BIGINT,
    tpm BIGINT,
    budget_usd DOUBLE PRECISION,
    budget_period TEXT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    team_id TEXT REFERENCES teams (id),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    team_id TEXT REFERENCES teams (id),
    user_id TEXT REFERENCES users (id),
    allowed_models TEXT,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrent BIGINT,
    budget_usd DOUBLE PRECISION,
    budget_period TEXT,
    metadata TEXT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    replaced_by TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE provider_credentials (
    provider TEXT PRIMARY KEY,
    ciphertext TEXT NOT NULL,
    nonce TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE usage_daily (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, key_id, model)
);

CREATE INDEX usage_daily_team ON usage_daily (team_id, day);
