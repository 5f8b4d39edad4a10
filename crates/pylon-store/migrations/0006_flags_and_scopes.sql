-- What a key may do: JSON list of scopes (`ai`, `flags`); NULL: everything.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
-- Feature flags made through the admin API (flagd definitions, as JSON), shared by instances.
CREATE TABLE flags (
    flag_key TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
-- Every change to a flag: who, when, what, and the definition after it (NULL when deleted).
CREATE TABLE flag_changes (
    flag_key TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    definition TEXT
);
CREATE INDEX flag_changes_by_key ON flag_changes (flag_key, at);
