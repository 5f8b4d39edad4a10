-- One row per budget threshold crossed per period: the row's insertion is the claim that makes
-- exactly one instance send the notification.
CREATE TABLE budget_events (
    owner TEXT NOT NULL,
    period_tag TEXT NOT NULL,
    threshold_pct BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, period_tag, threshold_pct)
);
