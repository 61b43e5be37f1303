-- LiveKit rooms a user claimed before its call event was synced (early join, docs/PROTOCOL.md
-- §6.9): the user is in the room while the event travels through Matrix, and the call's sync
-- adopts the room. A claim belongs to one user; the sync of that user's call event naming the
-- room removes it, and one that no sync took in time is swept (its room deleted) by whichever
-- server of the oracle gets to it first.
CREATE TABLE room_claims (
    room_name  TEXT PRIMARY KEY NOT NULL,
    oracle_did TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX room_claims_by_user ON room_claims (oracle_did, user_id, created_at);
CREATE INDEX room_claims_by_age ON room_claims (oracle_did, created_at);
