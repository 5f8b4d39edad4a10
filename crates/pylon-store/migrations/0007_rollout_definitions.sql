-- Rollouts made through the admin API (the `[[rollouts]]` entry, as JSON), shared by instances;
-- rollouts declared in pylon.toml are not stored here.
CREATE TABLE rollout_definitions (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
