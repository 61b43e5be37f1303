-- The status last written to (or read from) the call's Matrix event. A call whose status
-- differs from it still owes Matrix an edit: the bot retries until Matrix has it.
ALTER TABLE calls ADD COLUMN mirrored_status TEXT;
