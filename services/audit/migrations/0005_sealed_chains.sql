-- Chains of deleted organizations: sealed by identity's organization.delete
-- event, in the transaction that appends it. Nobody in an organization reads
-- a sealed chain again (even one made later with the same id); the platform
-- still reads and verifies it. Events that arrive later are still chained.
CREATE TABLE sealed_chains (
    org_id TEXT PRIMARY KEY,
    seal_time BIGINT NOT NULL,
    event_id TEXT NOT NULL
);
