-- When a credential's value was last replaced (RotateCredential); NULL if never.
ALTER TABLE credentials ADD COLUMN rotate_time BIGINT;
