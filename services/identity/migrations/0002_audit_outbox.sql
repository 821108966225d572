CREATE TABLE audit_outbox (
    id TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX audit_outbox_created ON audit_outbox (created, id);
