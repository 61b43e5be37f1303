-- Calls: an index of the Matrix call events, rebuilt from Matrix if lost.
CREATE TABLE calls (
    call_id         TEXT PRIMARY KEY NOT NULL,
    matrix_room_id  TEXT NOT NULL,
    sender          TEXT NOT NULL,
    user_did        TEXT NOT NULL,
    oracle_did      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    room_name       TEXT NOT NULL,
    call_type       TEXT NOT NULL,
    status          TEXT NOT NULL,
    encryption_key  TEXT NOT NULL,
    key_derivation  TEXT NOT NULL,
    content_json    TEXT NOT NULL,
    call_started_at BIGINT NOT NULL,
    call_ended_at   BIGINT,
    reason          TEXT,
    key_blocked     BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX calls_by_sender ON calls (sender, created_at DESC, call_id DESC);

-- API keys of oracle agents: only an HMAC of the key is stored.
CREATE TABLE api_keys (
    key_id     TEXT PRIMARY KEY NOT NULL,
    oracle_did TEXT NOT NULL,
    label      TEXT NOT NULL,
    key_hash   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Audit of key requests: which API key asked for which call, when, from where, and the answer.
CREATE TABLE key_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id    TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    remote     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX key_requests_by_call ON key_requests (call_id);
