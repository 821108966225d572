-- The installation id: made once, kept with the data, so that resources on
-- a Docker host shared by several Paddock installations never collide
-- (cache volumes are per organization *and* installation).
CREATE TABLE installation (
    singleton INTEGER PRIMARY KEY,
    id TEXT NOT NULL
);
