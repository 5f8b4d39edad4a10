-- One row per AI request, written in batches by the request-log writer. No surrogate id (SQLite
-- and PostgreSQL spell auto-increment differently): pages are keyed by (at_ms, request_id).
CREATE TABLE requests (
    at_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    user_id TEXT,
    team_id TEXT,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    served_model TEXT,
    provider TEXT,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error_class TEXT,
    error TEXT,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cache TEXT,
    attempts BIGINT NOT NULL,
    fallback TEXT,
    stream BIGINT NOT NULL,
    trace_id TEXT
);
CREATE INDEX requests_at ON requests (at_ms);
CREATE INDEX requests_key ON requests (key_id, at_ms);
CREATE INDEX requests_model ON requests (model, at_ms);

-- Hourly rollups, so usage reports never scan the request log.
CREATE TABLE usage_hourly (
    hour BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    latency_ms_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (hour, key_id, team_id, model, provider)
);

-- Errors grouped by class and route.
CREATE TABLE error_groups (
    error_class TEXT NOT NULL,
    route TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    example_request_id TEXT NOT NULL,
    last_message TEXT,
    PRIMARY KEY (error_class, route)
);
