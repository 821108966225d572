-- Appends maintain every index on every event. These three served no
-- query: SQLite answers action, resource and trace filters by walking the
-- organization's events newest first (the `(org_id, sequence)` order the
-- page needs) and never chose them, and a LIKE prefix cannot use a plain
-- B-tree index on either backend (SQLite's LIKE is case-insensitive,
-- PostgreSQL's index needs the C collation). The actor and time indexes
-- stay: the actor + time query is driven by them.
DROP INDEX IF EXISTS events_org_action;
DROP INDEX IF EXISTS events_org_resource;
DROP INDEX IF EXISTS events_org_trace;
