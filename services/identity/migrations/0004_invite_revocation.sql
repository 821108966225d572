-- Invites can be revoked: by RevokeInvite, or with their inviter's removal
-- or demotion below the invited role. NULL: not revoked.
ALTER TABLE invites ADD COLUMN revoke_time BIGINT;
CREATE INDEX invites_inviter ON invites (org_id, created_by);

-- Pending invites whose inviter is already gone die now (when is unknown:
-- their create time stands in).
UPDATE invites SET revoke_time = create_time
WHERE accept_time IS NULL
  AND created_by NOT IN (SELECT 'organizations/' || org_id || '/members/' || id FROM members)
  AND created_by NOT IN (SELECT 'organizations/' || org_id || '/agents/' || agent_id FROM agents);
