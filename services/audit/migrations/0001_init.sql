-- Audit: the events of every organization, one hash chain per organization.
-- Times are unix microseconds. Outcome is the Outcome enum's number.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    time BIGINT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    actor_key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome BIGINT NOT NULL,
    error_code TEXT NOT NULL,
    source_service TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    details_json TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (org_id, sequence)
);

-- Query paths: time range, actor (+ time), action prefix, resource, trace.
CREATE INDEX events_org_time ON events (org_id, time);
CREATE INDEX events_org_actor_id ON events (org_id, actor_id, time);
CREATE INDEX events_org_actor_name ON events (org_id, actor_name, time);
CREATE INDEX events_org_action ON events (org_id, action);
CREATE INDEX events_org_resource ON events (org_id, resource);
CREATE INDEX events_org_trace ON events (org_id, trace_id);

-- The last event of each organization's chain.
CREATE TABLE chain_heads (
    org_id TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    hash TEXT NOT NULL
);

-- Retention: the chain is verifiable from the event after the checkpoint.
CREATE TABLE checkpoints (
    org_id TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    hash TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
