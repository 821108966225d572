CREATE TABLE audit_outbox_quarantine (
    id TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    quarantined BIGINT NOT NULL,
    event TEXT NOT NULL
);
