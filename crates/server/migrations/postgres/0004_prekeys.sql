-- Prekeys of the oracle (forward secrecy): X25519 public keys signed by the oracle's prekey
-- signing key, published by its agent. A one-time prekey is deleted when a client claims it
-- (oldest first: id order); the last-resort prekey (at most one per oracle) is kept until the
-- next one replaces it. The server only stores them: it checks shapes, never signatures.
CREATE TABLE prekeys (
    id          BIGSERIAL PRIMARY KEY,
    oracle_did  TEXT NOT NULL,
    prekey_id   TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    last_resort BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);
CREATE INDEX prekeys_by_oracle ON prekeys (oracle_did, last_resort, id);
CREATE UNIQUE INDEX prekeys_one_last_resort ON prekeys (oracle_did) WHERE last_resort = 1;
