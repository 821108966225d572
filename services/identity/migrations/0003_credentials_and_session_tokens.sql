-- Sandbox session tokens are API keys minted for one sandbox
-- (organizations/{o}/sandboxes/{s}); NULL for every other key.
ALTER TABLE api_keys ADD COLUMN sandbox TEXT;
CREATE INDEX api_keys_sandbox ON api_keys (sandbox);

-- Stored credentials. The value is only ever here sealed: hex of nonce,
-- ciphertext and tag (XChaCha20-Poly1305, bound to org_id and
-- credential_id), with the fingerprint of the key that sealed it.
CREATE TABLE credentials (
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    sealed_value TEXT NOT NULL,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (org_id, credential_id)
);
