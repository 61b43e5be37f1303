-- How many times the call's agent was dispatched again after leaving while its user stayed
-- (`livekit.max_redispatches`). Kept with the call, so that every server of the oracle counts
-- against one limit: a webhook may reach any of them.
ALTER TABLE calls ADD COLUMN redispatches BIGINT NOT NULL DEFAULT 0;
