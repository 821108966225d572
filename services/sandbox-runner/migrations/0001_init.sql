CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    spec TEXT NOT NULL,
    state INTEGER NOT NULL,
    end_reason INTEGER NOT NULL DEFAULT 0,
    exit_code BIGINT,
    message TEXT NOT NULL DEFAULT '',
    worker_id TEXT NOT NULL,
    container_id TEXT NOT NULL DEFAULT '',
    workspace TEXT NOT NULL,
    uid BIGINT NOT NULL DEFAULT 65534,
    create_time BIGINT NOT NULL,
    start_time BIGINT,
    end_time BIGINT,
    expire_time BIGINT NOT NULL,
    cpu_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory_peak BIGINT NOT NULL DEFAULT 0,
    execs BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sandboxes_org ON sandboxes (org_id, create_time, id);
CREATE INDEX sandboxes_worker_state ON sandboxes (worker_id, state);
CREATE INDEX sandboxes_agent_state ON sandboxes (org_id, agent_id, state);

CREATE TABLE worker_hosts (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    cpus BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
