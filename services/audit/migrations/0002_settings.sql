-- Audit settings of each organization (a missing row means the defaults:
-- keep every event forever).
CREATE TABLE audit_settings (
    org_id TEXT PRIMARY KEY,
    retention_days BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
