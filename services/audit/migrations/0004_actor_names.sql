-- Every (display name, principal id) pair an organization's events carry,
-- so that an actor filter by name is answered through the actor id index:
-- appends maintain one index less that is written at random places (a
-- few pages of the write-ahead log per event at scale).
CREATE TABLE actor_names (
    org_id TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    PRIMARY KEY (org_id, actor_name, actor_id)
);
INSERT INTO actor_names (org_id, actor_name, actor_id)
    SELECT DISTINCT org_id, actor_name, actor_id FROM events WHERE actor_name <> '';
DROP INDEX IF EXISTS events_org_actor_name;
