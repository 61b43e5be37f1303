-- Several servers of one oracle on one database. Each server's Matrix device (one per
-- server process, all logged in as the oracle's bot user) is registered here when it starts,
-- and `/.well-known/oracle-calls` lists them all (dead servers' too: a device leaving the
-- list would change the device set clients and key transparency pinned).
CREATE TABLE bot_devices (
    oracle_did      TEXT NOT NULL,
    matrix_user_id  TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    ed25519         TEXT NOT NULL,
    registered_at   BIGINT NOT NULL,
    last_started_at BIGINT NOT NULL,
    PRIMARY KEY (oracle_did, matrix_user_id, device_id)
);

-- LiveKit webhook event ids claimed for handling, whichever server received them: an id is
-- acted on once across all servers. A row is kept until the event's signature expires (a
-- replay after that fails verification anyway) and is deleted when its handling failed, so
-- that LiveKit's retry is handled.
CREATE TABLE webhook_claims (
    event_id    TEXT PRIMARY KEY NOT NULL,
    valid_until BIGINT NOT NULL
);
CREATE INDEX webhook_claims_by_expiry ON webhook_claims (valid_until);
