-- Alerts: each rule's current alert (shared by instances: any of them answers the API), and
-- every transition, notification, delivery attempt and acknowledgement, for the history API.
CREATE TABLE alerts (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    -- Labels and annotations, as JSON objects.
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    value DOUBLE PRECISION,
    active_since BIGINT,
    firing_since BIGINT,
    resolved_at BIGINT,
    acked_by TEXT,
    acked_until BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE alert_events (
    id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    alert TEXT NOT NULL,
    -- pending, firing, resolved, cleared, notified, delivery_failed, acked, rollout
    kind TEXT NOT NULL,
    -- What it was about (receiver, value, window, error), as JSON.
    detail TEXT NOT NULL
);
CREATE INDEX alert_events_by_time ON alert_events (at);
CREATE INDEX alert_events_by_alert ON alert_events (alert, at);
-- Silences: alerts matching every matcher are not notified between starts_at and ends_at.
CREATE TABLE alert_silences (
    id TEXT PRIMARY KEY,
    -- Label equality matchers, as a JSON object.
    matchers TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Alert rules made through the admin API (the `[[alerts]]` entry, as JSON), shared by instances;
-- rules declared in pylon.toml are not stored here.
CREATE TABLE alert_rules (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
