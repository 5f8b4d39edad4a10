-- Rollouts: the state each instance applies, every verdict with its figures, and leases (one
-- judge at a time across instances).
CREATE TABLE rollouts (
    name TEXT PRIMARY KEY,
    -- The state machine's progress as JSON (state, step, weight, counters).
    progress TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE rollout_verdicts (
    rollout TEXT NOT NULL,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    -- The verdict with every check's figures, as JSON.
    detail TEXT NOT NULL,
    -- The state after the verdict.
    state TEXT NOT NULL,
    weight DOUBLE PRECISION NOT NULL
);
CREATE INDEX rollout_verdicts_by_rollout ON rollout_verdicts (rollout, at);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
-- Per-arm counts each instance has not yet handed to the judge: one row per instance, rollout
-- and second at most; the judge takes (deletes) them when it evaluates.
CREATE TABLE rollout_windows (
    rollout TEXT NOT NULL,
    instance TEXT NOT NULL,
    at BIGINT NOT NULL,
    -- Both arms' windows, as JSON.
    data TEXT NOT NULL
);
CREATE INDEX rollout_windows_by_rollout ON rollout_windows (rollout, at);
