-- Per-agent policies and organization security settings. A row holds the
-- message (protobuf, hex) without its name and update fields, which are
-- columns; `network_mode` is a column too, to find the agents that reach
-- the network. `revision` makes read-modify-write updates safe under
-- concurrency on both backends (compare-and-set).
CREATE TABLE agent_policies (
    org_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    network_mode TEXT NOT NULL,
    revision BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (org_id, agent_id)
);

CREATE TABLE security_settings (
    org_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    revision BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
