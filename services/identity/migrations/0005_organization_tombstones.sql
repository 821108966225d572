-- Deleted organizations. An id is never reused, so nothing a service still
-- holds for a deleted organization can reach a new one; the other services
-- read this table (ListDeletedOrganizations) to purge what they hold.
CREATE TABLE deleted_organizations (
    id TEXT PRIMARY KEY,
    delete_time BIGINT NOT NULL
);
