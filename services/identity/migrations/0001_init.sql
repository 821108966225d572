-- Identity: organizations and everything that belongs to them.
-- Times are unix microseconds; NULL means "never" / "not yet".
CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    max_key_lifetime_secs BIGINT NOT NULL,
    allow_non_expiring_keys BIGINT NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE members (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    description TEXT NOT NULL,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    UNIQUE (org_id, agent_id)
);

CREATE TABLE projects (
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (org_id, project_id)
);

-- Only the SHA-256 of a key is stored; id is the token's public part.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    expire_time BIGINT,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    last_used_time BIGINT,
    revoke_time BIGINT
);
CREATE INDEX api_keys_owner ON api_keys (org_id, owner_id);

CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    accept_time BIGINT
);

-- The platform bootstrap token (hash only).
CREATE TABLE platform_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
