-- Anomaly detectors' seasonal history (each quarter-hour's mean over the last four weeks, as a
-- JSON array of [t_ms, value]), saved by the evaluator so a restart or a new evaluator keeps
-- every series' weekly pattern — latency and TTFT too, which the hourly rollups do not keep.
CREATE TABLE alert_detectors (
    name TEXT PRIMARY KEY,
    points TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
