-- A call's room name is `oc-` and 32 lower-case hex characters, and it belongs to that call
-- alone (security review H2). Calls stored earlier under another name (clients made 16 hex
-- characters before), or in a room an older call already holds, can no longer be served: they
-- move, unchanged, to calls_legacy, kept for the record. Then one call per room name.
CREATE TABLE calls_legacy AS SELECT * FROM calls WHERE 0;
INSERT INTO calls_legacy
SELECT * FROM calls
WHERE NOT (room_name GLOB 'oc-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]')
   OR call_id IN (
       SELECT call_id FROM (
           SELECT call_id, ROW_NUMBER() OVER (
               PARTITION BY room_name ORDER BY created_at, call_id) AS n
           FROM calls)
       WHERE n > 1);
DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls_legacy);
CREATE UNIQUE INDEX calls_one_per_room ON calls (room_name);
